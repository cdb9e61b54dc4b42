"""Nothing outlives its run: the process that runs training is SIGKILLed mid-run and no DeepSpeed
rank survives it; the re-run resumes from the last complete checkpoint. And the monitor's guard
survives a failing callback and a malformed metrics line (real DeepSpeed, 2 CPU ranks)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from devtools.processes import ranks, training_processes
from vss_core import launch
from vss_core.config import load_config
from vss_core.runs import create_run

pytestmark = pytest.mark.integration
GiB = 1024**3


# The process that runs the training stage, as the flow process does (launch.run_training in it).
_STAGE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vss_core import launch
    from vss_core.config import config_from_json
    from vss_core.runs import RunPaths
    run = RunPaths(root=sys.argv[1])
    launch.run_training(config_from_json(run.config), run, Path(sys.argv[2]), Path(sys.argv[3]))
""")


def test_kill_9_of_the_training_stage_process_leaves_no_rank_and_the_rerun_resumes(tmp_path, tiny_model_dir, prepared):
    cfg = load_config(
        "cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=orphans", "training.max_steps=12"]
    )
    run = create_run(cfg)
    stage = subprocess.Popen(
        [sys.executable, "-c", _STAGE, run.root, str(tiny_model_dir), prepared.dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (
            any(Path(run.checkpoints).glob("step-*/COMPLETE"))
            and Path(run.metrics).is_file()
            and len(Path(run.metrics).read_text().splitlines()) >= 5
        ):
            assert stage.poll() is None and time.time() < deadline, "training ended before it could be killed"
            time.sleep(0.1)
        assert len(ranks(training_processes(run))) == 2
        os.kill(stage.pid, 9)
        stage.wait()
        steps_at_kill = len(Path(run.metrics).read_text().splitlines())
        deadline = time.time() + 5
        while training_processes(run) and time.time() < deadline:
            time.sleep(0.2)
        left = [p.pid for p in training_processes(run)]
        assert not left, f"processes of the killed run still alive 5 s after the kill: {left}"
        time.sleep(2)
        assert len(Path(run.metrics).read_text().splitlines()) <= steps_at_kill + 1  # nothing trained on
    finally:
        for p in training_processes(run):  # never leave ranks behind, even when the test fails
            p.kill()
    assert not Path(run.adapter).exists()
    resumed = launch.run_training(cfg, run, tiny_model_dir, Path(prepared.dir))
    assert resumed.resumed_from_step == 4 and resumed.steps == 12
    assert "Resumed from checkpoint" in Path(run.log).read_text()


def test_a_raising_callback_and_a_malformed_line_then_swap_growth_still_stop_training(
    tmp_path, monkeypatch, tiny_model_dir, prepared
):
    real = psutil.swap_memory
    calls = {"n": 0}

    def swapping():  # psutil is the boundary: this machine has no swap to fill
        calls["n"] += 1
        return real()._replace(total=8 * GiB, used=0 if calls["n"] <= 3 else 6 * GiB)

    monkeypatch.setattr(psutil, "swap_memory", swapping)
    cfg = load_config(
        "cpu-demo",
        [
            f"training.output_dir={tmp_path}",
            "training.run_name=guard",
            "training.monitor_interval_s=1",
            "training.max_steps=8",
        ],
    )
    run = create_run(cfg)
    Path(run.metrics).write_text("{truncated by a crash\n")

    def failing_artifact_call(records):
        raise RuntimeError("artifact API unavailable")

    with pytest.raises(launch.TrainingStoppedError, match="swap"):
        launch.run_training(cfg, run, tiny_model_dir, Path(prepared.dir), on_metrics=failing_artifact_call)
    stopped = json.loads((Path(run.root) / "stopped.json").read_text())
    assert (Path(stopped["checkpoint"]) / "COMPLETE").is_file()
    assert not training_processes(run)


def test_an_interrupted_training_stage_ends_the_launchers_whole_process_group(tmp_path, tiny_model_dir, prepared):
    # What a cancel does in the flow process: Prefect turns the runner's SIGTERM into TerminationSignal
    # (a BaseException, like KeyboardInterrupt) raised where the stage is reading the training output.
    cfg = load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=interrupted"])
    run = create_run(cfg)

    def interrupt_once_ranks_run(line):
        if "Starting training" in line:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            launch.run_training(cfg, run, tiny_model_dir, Path(prepared.dir), on_line=interrupt_once_ranks_run)
        assert not training_processes(run), "the launcher's process group outlived the interrupted stage"
    finally:
        for p in training_processes(run):
            p.kill()


_PREPARE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from vss_core import data
    from vss_core.config import load_config

    cfg = load_config("cpu-demo", [f"data.root={sys.argv[1]}", "data.workers=2"])
    report = data.validate_dataset(cfg.data)
    data.prepare_dataset(report.valid * 8, cfg.data, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    """
)


def test_kill_9_during_preparation_leaves_no_worker(tmp_path, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    """A spawn pool worker holds the pool's queue itself, so a SIGKILLed parent used to leave it waiting
    forever (found alive an hour later); it now dies with the process that started the pool."""
    stage = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PREPARE,
            str(demo_data_dir),
            str(tiny_model_dir),
            str(tiny_codec_dir),
            str(tmp_path / "prepared"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[psutil.Process] = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2:
            assert stage.poll() is None and time.time() < deadline, "preparation ended before its workers started"
            workers = [c for c in psutil.Process(stage.pid).children() if "multiprocessing" in " ".join(c.cmdline())]
            time.sleep(0.1)
        os.kill(stage.pid, 9)
        stage.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, (
            f"preparation workers still alive 10 s after their parent was killed: {[p.pid for p in alive]}"
        )
    finally:
        for p in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
