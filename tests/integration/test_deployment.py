"""`vss serve` against a real local Prefect server started by the test: a bad parameter is refused
naming the field, an emitted `vss.data.updated` event starts one training run (of the deployment of
its profile), a run started from the CLI with the same data completes by reusing that adapter, and a
run whose flow process stops answering (SIGSTOP: alive, silent) is marked Crashed by the automation
`vss serve` created from prefect.yaml."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from devtools import prefect_server
from devtools.prefect_server import flow_runs as _flow_runs
from devtools.prefect_server import wait as _wait
from devtools.processes import ranks, training_processes
from vss_core.runs import RunPaths

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@dataclass
class Served:
    root: Path
    env: dict
    process: subprocess.Popen


def _prefect(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The prefect CLI against the test's server."""
    return subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _automation_names(env) -> list[str]:
    code = (
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print(sorted(a.name for a in c.read_automations() if not a.name.startswith('train-') "
        "and '__automation' not in a.name))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def _flow_process(serve_pid: int, flow_run_id: str) -> psutil.Process:
    """The process `vss serve` started for this flow run (Prefect gives it the run id in its environment)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for child in psutil.Process(serve_pid).children(recursive=True):
            try:
                if child.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.5)
    raise AssertionError(f"no process of flow run {flow_run_id} under vss serve ({serve_pid})")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    """A real Prefect server and `vss serve` beside it, in a folder holding the demo-cpu deployment's assets."""
    tmp_path = tmp_path_factory.mktemp("served")
    # The demo-cpu deployment's own paths (.vss/demo/...), relative to where `vss serve` runs.
    shutil.copytree(tiny_model_dir, tmp_path / ".vss/demo/tiny-model")
    shutil.copytree(tiny_codec_dir, tmp_path / ".vss/demo/tiny-codec")
    shutil.copytree(demo_data_dir, tmp_path / ".vss/demo/data")
    with (
        prefect_server.local_server(
            tmp_path / "prefect",
            tmp_path / "server.log",
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",  # Prefect's minimum
        ) as env,
        open(tmp_path / "serve.log", "w") as log,
    ):
        served = subprocess.Popen(
            [
                str(BIN / "vss"),
                "serve",
                "--no-demo-assets",
                "--debounce",
                "3",
                "--watch-interval",
                "3600",
                "--crash-after",
                "40",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            listed = lambda: _prefect(env, "deployment", "ls").stdout
            _wait(lambda: "demo-cpu" in listed() and "watch-data" in listed(), 120, "vss serve to register", [served])
            assert "train-2xb200" in listed() and "train-8xh100" in listed()
            assert "vss-watch-data/watch-data" in listed()
            assert _automation_names(env) == ["vss-crash-silent-runs"]

            yield Served(tmp_path, env, served)
        finally:
            prefect_server.stop(served)


def test_served_deployments_refuse_bad_params_retrain_on_data_events_and_reuse(served):
    tmp_path, env, served = served.root, served.env, served.process
    # A bad parameter is refused when the run is created, naming the field.
    bad = _prefect(
        env,
        "deployment",
        "run",
        "vss/demo-cpu",
        "--params",
        json.dumps({"overrides": {"training": {"lerning_rate": 0.1}}}),
    )
    assert bad.returncode != 0 and "lerning_rate" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert _flow_runs(env) == []

    # A data update event starts one training run of the deployment watching that dataset.
    note = subprocess.run(
        [str(BIN / "vss"), "notify-data-updated"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert note.returncode == 0 and "Emitted vss.data.updated" in note.stdout, note.stdout + note.stderr
    done = lambda: [r for r in _flow_runs(env) if r["state"] in ("COMPLETED", "FAILED", "CRASHED")]
    _wait(lambda: done(), 600, "the event-triggered run to finish", [served])
    assert [r["state"] for r in done()] == ["COMPLETED"], (tmp_path / "serve.log").read_text()[-4000:]
    adapters = list((tmp_path / ".vss/runs").glob("cpu-demo-*/adapter/adapter_model.safetensors"))
    assert len(adapters) == 1

    # Started from the CLI with the same data and config, the run reuses that adapter: no training.
    out = _prefect(env, "deployment", "run", "vss/demo-cpu", "--watch", "--watch-timeout", "600", timeout=660)
    assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "already exists (same data and config): nothing to train" in (tmp_path / "serve.log").read_text()
    assert len(list((tmp_path / ".vss/runs").glob("cpu-demo-*/adapter"))) == 1


def test_a_run_cancelled_from_prefect_leaves_no_rank_and_its_rerun_resumes(served):
    tmp_path, env, served = served.root, served.env, served.process
    # long enough that the cancel (the runner polls for it every ~10 s) lands well before the last step
    params = json.dumps({"overrides": {"training": {"seed": 11, "max_steps": 40}}})
    before = set((tmp_path / ".vss/runs").glob("cpu-demo-*"))
    started = _prefect(env, "deployment", "run", "vss/demo-cpu", "--params", params)
    assert started.returncode == 0, started.stdout + started.stderr
    new_dirs = lambda: set((tmp_path / ".vss/runs").glob("cpu-demo-*")) - before
    checkpointed = lambda: [d for d in new_dirs() if any(d.glob("checkpoints/step-*/COMPLETE"))]
    _wait(lambda: checkpointed(), 400, "the run's first complete checkpoint", [served])
    (run_dir,) = checkpointed()
    paths = RunPaths(root=str(run_dir))
    assert len(ranks(training_processes(paths))) == 2
    (run,) = [r for r in _flow_runs(env) if r["state"] == "RUNNING"]
    try:
        cancel = _prefect(env, "flow-run", "cancel", run["id"])
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        state = lambda: next(r["state"] for r in _flow_runs(env) if r["id"] == run["id"])
        _wait(lambda: state() == "CANCELLED", 120, "the run to be cancelled", [served])
        deadline = time.time() + 10
        while training_processes(paths) and time.time() < deadline:
            time.sleep(0.2)
        left = [p.pid for p in training_processes(paths)]
        assert not left, f"ranks of the cancelled run still alive 10 s after it was cancelled: {left}"
    finally:
        for p in training_processes(paths):  # never leave ranks behind, even when the test fails
            p.kill()
    assert not (run_dir / "adapter").exists()

    again = _prefect(
        env, "deployment", "run", "vss/demo-cpu", "--params", params, "--watch", "--watch-timeout", "600", timeout=660
    )
    assert again.returncode == 0 and "Completed" in again.stdout + again.stderr, again.stdout + again.stderr
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from_step"] >= 4 and summary["steps"] == 40, summary


def test_a_silent_run_is_marked_crashed_by_the_automation(served):
    env, served = served.env, served.process
    # A run whose flow process hangs (stopped: alive, silent) is marked Crashed once its heartbeats stop.
    started = _prefect(
        env, "deployment", "run", "vss/demo-cpu", "--params", json.dumps({"overrides": {"training": {"seed": 7}}})
    )
    assert started.returncode == 0, started.stdout + started.stderr
    running = lambda: [r for r in _flow_runs(env) if r["state"] == "RUNNING"]
    _wait(lambda: running(), 120, "the new run to start", [served])
    (run,) = running()
    process = _flow_process(served.pid, run["id"])
    time.sleep(2)  # its first heartbeat goes out as it starts
    os.kill(process.pid, signal.SIGSTOP)
    try:
        crashed = lambda: [r for r in _flow_runs(env) if r["id"] == run["id"] and r["state"] == "CRASHED"]
        _wait(lambda: crashed(), 180, "the automation to mark the silent run Crashed", [served])
        assert "vss-crash-silent-runs" in crashed()[0]["message"]
    finally:
        os.kill(process.pid, signal.SIGKILL)
        os.kill(process.pid, signal.SIGCONT)
