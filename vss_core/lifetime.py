"""Processes that never outlive the vss process they serve: DeepSpeed ranks (`vss_core.train`) and data
preparation workers (`vss_core.data.prepare`) die when it does, even when it is SIGKILLed."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(watch_pid: int | None = None, interval_s: float = 0.5, *, pdeathsig: bool = True) -> None:
    """Make this process die when its parent does (Linux parent-death signal), and — given
    `watch_pid` — when that process ends (a watchdog thread: the vss process is the launcher's
    parent, not ours, so its death sends us no signal). Either way the process is SIGKILLed: every
    vss writer is atomic, so nothing is left half-done that a later run would trust.

    pdeathsig=False: the watchdog only. Linux sends the parent-death signal when the parent *thread*
    that forked us ends, which for a pool worker started from a short-lived thread is too early."""
    if pdeathsig and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): relying on the watchdog", ctypes.get_errno())
    if watch_pid is None:
        return
    import psutil

    try:
        born = psutil.Process(watch_pid).create_time()
    except psutil.NoSuchProcess:
        os.kill(os.getpid(), signal.SIGKILL)
        return

    def watch() -> None:
        while True:
            try:
                proc = psutil.Process(watch_pid)
                alive = proc.create_time() == born and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                alive = False
            if not alive:
                log.error(
                    "process %d this one serves is gone: stopping (a re-run resumes from what was completed)", watch_pid
                )
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval_s)

    threading.Thread(target=watch, daemon=True, name="vss-parent-watchdog").start()
