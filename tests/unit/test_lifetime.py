"""vss_core.lifetime: a rank dies with the process that launched it, by the parent-death signal or the
watchdog on the vss process (real processes, no training)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest


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
