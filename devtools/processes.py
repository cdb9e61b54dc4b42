"""The live processes of one training run, found by their command line (tests use it to check that
nothing outlives a kill or a cancel)."""

from __future__ import annotations

import psutil

from vss_core.runs import RunPaths, live_ranks


def training_processes(run: RunPaths) -> list[psutil.Process]:
    """Live DeepSpeed launchers, ranks and the ranks' data-loader workers (forked: they carry the
    rank's command line) of one run directory: `runs.live_ranks`, as processes."""
    found = []
    for pid in live_ranks(run):
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return found


def ranks(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The ranks among `processes`: a launcher's children with --local_rank (a loader worker has it
    too, but its parent is a rank)."""
    with_rank_arg = {}
    for p in processes:
        try:
            if "--local_rank" in " ".join(p.cmdline()):
                with_rank_arg[p.pid] = p.ppid()
        except psutil.NoSuchProcess:
            continue
    return [p for p in processes if p.pid in with_rank_arg and with_rank_arg[p.pid] not in with_rank_arg]
