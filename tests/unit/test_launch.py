"""Process hygiene of the training launcher: no run starts beside live ranks of an earlier run of its
directory, and a rank dies with the process that launched it (real processes, no training)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from vss_core import launch, runs
from vss_core.config import load_config
from vss_core.runs import RunInProgressError, create_run


def _gone(pid: int, within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_run_refuses_to_start_beside_live_ranks_of_its_directory(tmp_path):
    cfg = load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=busy"])
    run = create_run(cfg)
    # A process with a rank's command line for this run directory (what an orphaned rank looks like).
    rank = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "-m",
            "vss_core.train",
            "--config",
            run.config,
            "--local_rank=0",
        ]
    )
    try:
        with pytest.raises(RunInProgressError, match=rf"pid {rank.pid}\b"):
            launch.run_training(cfg, run, Path("/nonexistent-model"), Path("/nonexistent-prepared"))
        with pytest.raises(RunInProgressError, match=rf"pid {rank.pid}\b"):
            with runs.locked(run):
                pass
        other = create_run(load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=free"]))
        assert runs.live_ranks(other) == []  # another directory's ranks do not count
    finally:
        rank.kill()
        rank.wait()
    assert runs.live_ranks(run) == []


_CHILD = textwrap.dedent("""
    import subprocess, sys, time
    rank = subprocess.Popen([sys.executable, "-c",
        "import sys, time; from vss_core import lifetime; lifetime.die_with_parent(int(sys.argv[1])); "
        "print('armed', flush=True); time.sleep(120)", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    rank.stdout.readline()
    print(rank.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("killed", ["direct parent (parent-death signal)", "watched launcher pid (watchdog)"])
def test_a_rank_dies_with_its_parent(killed):
    # `launcher` stands for the vss process; `parent` for DeepSpeed's launcher between it and a rank.
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    parent = subprocess.Popen([sys.executable, "-c", _CHILD, str(launcher.pid)], stdout=subprocess.PIPE, text=True)
    try:
        rank_pid = int(parent.stdout.readline())
        assert not _gone(rank_pid, within=0.5)
        (parent if killed.startswith("direct") else launcher).kill()
        assert _gone(rank_pid, within=5), f"rank {rank_pid} outlived its {killed}"
    finally:
        for p in (launcher, parent):
            p.kill()
            p.wait()
