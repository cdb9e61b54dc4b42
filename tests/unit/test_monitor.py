"""The follower thread that watches a training run: it survives bad input and failing callbacks,
and its guards (swap growth; available RAM on a machine without swap) still ask training to stop.
psutil is faked at its boundary: this machine has no swap to fill and RAM we must not exhaust."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from vss_core import launch
from vss_core.config import load_config
from vss_core.runs import STOP_REQUEST, RunPaths

GiB = 1024**3


def _follow_until_stop(tmp_path, cfg, on_metrics, on_resources=lambda s: None, timeout=15.0):
    run = RunPaths(root=str(tmp_path))
    stop = threading.Event()
    thread = threading.Thread(
        target=launch._follow, args=(run, cfg, stop, on_metrics, on_resources, launch.sample_resources), daemon=True
    )
    thread.start()
    stop_file = Path(run.root) / STOP_REQUEST
    deadline = time.time() + timeout
    while not stop_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    alive = thread.is_alive()
    stop.set()
    thread.join(timeout=5)
    return stop_file, alive


def test_a_raising_callback_and_a_malformed_line_do_not_end_the_swap_guard(tmp_path, monkeypatch):
    real = psutil.swap_memory
    calls = {"n": 0}

    def swapping():
        calls["n"] += 1
        s = real()
        return s._replace(total=8 * GiB, used=0 if calls["n"] <= 2 else 6 * GiB)

    monkeypatch.setattr(psutil, "swap_memory", swapping)
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0, "lr": 0.1, "total_steps": 4}\n{not json\n'
        '{"step": 2, "loss": 1.5, "lr": 0.1, "total_steps": 4}\n'
    )
    seen = []

    def failing_artifact_call(records):
        seen.extend(records)
        raise RuntimeError("artifact API unavailable")

    def failing_resources(sample):
        raise RuntimeError("log handler broke")

    cfg = load_config("cpu-demo", ["training.monitor_interval_s=0.2"])
    stop_file, alive = _follow_until_stop(tmp_path, cfg, failing_artifact_call, failing_resources)
    assert stop_file.is_file() and "swap in use grew" in stop_file.read_text()
    assert alive, "the follower thread died"
    assert [r["step"] for r in seen] == [1, 2]  # the malformed line is skipped, its neighbours delivered


def test_ram_guard_stops_a_machine_without_swap(tmp_path, monkeypatch):
    real_vm, real_swap = psutil.virtual_memory, psutil.swap_memory
    calls = {"n": 0}

    def shrinking():
        calls["n"] += 1
        vm = real_vm()
        return vm._replace(total=16 * GiB, available=(8 if calls["n"] <= 2 else 0.2) * GiB)

    monkeypatch.setattr(psutil, "virtual_memory", shrinking)
    monkeypatch.setattr(psutil, "swap_memory", lambda: real_swap()._replace(total=0, used=0, free=0))
    cfg = load_config("cpu-demo", ["training.monitor_interval_s=0.2", "training.ram_stop_gb=1"])
    stop_file, alive = _follow_until_stop(tmp_path, cfg, lambda records: None)
    assert stop_file.is_file(), "no stop request on low RAM"
    assert "available RAM" in stop_file.read_text() and "training.ram_stop_gb=1" in stop_file.read_text()
    assert alive


def test_ram_stop_gb_is_bounded():
    from vss_core.errors import ConfigError

    with pytest.raises(ConfigError, match="training.ram_stop_gb"):
        load_config("cpu-demo", ["training.ram_stop_gb=-1"])
    assert load_config("cpu-demo").training.ram_stop_gb > 0  # on by default
