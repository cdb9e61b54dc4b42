"""Process hygiene of the training launcher: no run starts beside live ranks of an earlier run of its
directory, and a rank dies with the process that launched it (real processes, no training)."""

from __future__ import annotations

import os
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


def test_the_shared_memory_buffers_of_a_finished_launch_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "SHM_DIR", tmp_path)
    uid = os.getuid()
    mine = [tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_41234_{r}" for r in (0, 1)]
    others = [
        tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_41235_0",  # another launch's port
        tmp_path / f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_41234_0",  # another user's
        tmp_path / "unrelated",
    ]
    for path in mine + others:
        path.write_bytes(b"x")
    removed = launch.remove_shm_buffers(["deepspeed", "--num_gpus", "2", "--master_port", "41234", "--module", "m"])
    assert sorted(removed) == sorted(p.name for p in mine)
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert launch.remove_shm_buffers(["deepspeed", "--hostfile", "h"]) == []  # no port of its own: nothing


def test_stale_buffers_of_ended_launches_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(launch, "SHM_DIR", tmp_path)
    uid = os.getuid()
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))  # a live run's rendezvous port: held
        live_port = live.getsockname()[1]
        ended_port = launch.free_port()
        names = {
            "ended": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{ended_port}_0",
            "live": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{live_port}_0",
            "young": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{ended_port}_1",
            "remote": f"deepspeed_allreduce_buffer_{uid}_10.0.0.7_{ended_port}_0",  # another node's master
        }
        old = time.time() - 600
        for key, name in names.items():
            (tmp_path / name).write_bytes(b"x")
            if key != "young":
                os.utime(tmp_path / name, (old, old))
        assert launch.remove_stale_shm_buffers() == [names["ended"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "ended")
