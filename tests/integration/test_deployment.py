"""`vss serve` against a real local Prefect server started by the test: a bad parameter is refused
naming the field, an emitted `vss.data.updated` event starts a training run, and a run started from
the CLI with the same data completes by reusing that adapter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited early with {p.returncode}")
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _flow_runs(env) -> list[dict]:
    code = (
        "import json; from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    runs = c.read_flow_runs()\n"
        "    print(json.dumps([{'name': r.name, 'state': r.state.type.value if r.state else None, "
        "'deployment': str(r.deployment_id)} for r in runs]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_served_deployments_refuse_bad_params_retrain_on_data_events_and_reuse(
    tmp_path, tiny_model_dir, tiny_codec_dir, demo_data_dir
):
    # The demo-cpu deployment's own paths (.vss/demo/...), relative to where `vss serve` runs.
    shutil.copytree(tiny_model_dir, tmp_path / ".vss/demo/tiny-model")
    shutil.copytree(tiny_codec_dir, tmp_path / ".vss/demo/tiny-codec")
    shutil.copytree(demo_data_dir, tmp_path / ".vss/demo/data")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=logs["server"], stderr=subprocess.STDOUT)
    served = None
    try:
        _wait(lambda: _healthy(api), 120, "prefect server", [server])
        served = subprocess.Popen(
            [str(BIN / "vss"), "serve", "--no-demo-assets", "--debounce", "3", "--watch-interval", "3600"],
            cwd=tmp_path, env=env, stdout=logs["serve"], stderr=subprocess.STDOUT,
        )
        listed = lambda: subprocess.run([str(BIN / "prefect"), "deployment", "ls"], env=env, capture_output=True,
                                        text=True).stdout
        _wait(lambda: "demo-cpu" in listed() and "watch-data" in listed(), 120, "vss serve to register", [served])
        assert "train-2xb200" in listed() and "train-8xh100" in listed()

        # A bad parameter is refused when the run is created, naming the field.
        bad = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "vss/demo-cpu",
             "--params", json.dumps({"overrides": {"training": {"lerning_rate": 0.1}}})],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert bad.returncode != 0 and "lerning_rate" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
        assert _flow_runs(env) == []

        # A data update event starts one training run of the deployment watching that dataset.
        note = subprocess.run([str(BIN / "vss"), "notify-data-updated"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert note.returncode == 0 and "Emitted vss.data.updated" in note.stdout, note.stdout + note.stderr
        done = lambda: [r for r in _flow_runs(env) if r["state"] in ("COMPLETED", "FAILED", "CRASHED")]
        _wait(lambda: done(), 600, "the event-triggered run to finish", [served])
        assert [r["state"] for r in done()] == ["COMPLETED"], (tmp_path / "serve.log").read_text()[-4000:]
        adapters = list((tmp_path / ".vss/runs").glob("cpu-demo-*/adapter/adapter_model.safetensors"))
        assert len(adapters) == 1

        # Started from the CLI with the same data and config, the run reuses that adapter: no training.
        out = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "vss/demo-cpu", "--watch", "--watch-timeout", "600"],
            env=env, capture_output=True, text=True, timeout=660,
        )
        assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, out.stdout + out.stderr
        assert "already exists (same data and config): nothing to train" in (tmp_path / "serve.log").read_text()
        assert len(list((tmp_path / ".vss/runs").glob("cpu-demo-*/adapter"))) == 1
    finally:
        for p in (served, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs.values():
            f.close()
