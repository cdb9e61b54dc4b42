"""vss_core.monitor: a resource sample (RAM and swap from psutil, GPUs from NVML) and the reasons it gives
training to stop (swap growth; available RAM on a machine without swap). psutil and pynvml are faked at
their boundary; the follower thread that acts on them is tested in test_launch.py."""

from __future__ import annotations

from types import SimpleNamespace

import psutil
import pynvml

from vss_core import monitor
from vss_core.config import load_config

GiB = 1024**3


def _training(**changes):
    return load_config("cpu-demo").training.model_copy(update=changes)


def _sample(swap_used=0.0, swap_total=8.0, ram_available=32.0, ram_total=64.0, gpus=()):
    return monitor.ResourceSample(
        time=0.0,
        gpus=list(gpus),
        ram_used_gb=ram_total - ram_available,
        ram_total_gb=ram_total,
        swap_used_gb=swap_used,
        ram_available_gb=ram_available,
        swap_total_gb=swap_total,
    )


def test_swap_grown_past_the_limit_is_a_reason_to_stop_naming_the_growth_and_the_key():
    training = _training(swap_stop_gb=2.0)
    assert monitor.stop_reason(_sample(swap_used=3.0), 1.0, training) is None  # grew by exactly the limit
    reason = monitor.stop_reason(_sample(swap_used=3.5), 1.0, training)
    assert reason == "swap in use grew by 2.50 GiB (from 1.00 to 3.50 GiB), past training.swap_stop_gb=2"
    # swap in use before the run started is not growth
    assert monitor.stop_reason(_sample(swap_used=6.0), 5.0, training) is None


def test_low_ram_stops_only_a_machine_without_swap_and_only_when_the_guard_is_on():
    training = _training(ram_stop_gb=1.5, swap_stop_gb=2.0)
    no_swap_low = _sample(swap_total=0.0, ram_available=0.25, ram_total=16.0)
    assert monitor.stop_reason(no_swap_low, 0.0, training) == (
        "available RAM fell to 0.25 GiB of 16.0 GiB on a machine without swap, below training.ram_stop_gb=1.5"
    )
    assert monitor.stop_reason(_sample(swap_total=0.0, ram_available=1.5), 0.0, training) is None  # not below
    assert monitor.stop_reason(_sample(swap_total=8.0, ram_available=0.25), 0.0, training) is None  # swap guards it
    assert monitor.stop_reason(no_swap_low, 0.0, _training(ram_stop_gb=0.0)) is None  # the guard off
    unmeasured = no_swap_low.model_copy(update={"ram_available_gb": None})
    assert monitor.stop_reason(unmeasured, 0.0, training) is None
    # swap growth is named first when both hold
    both = _sample(swap_used=5.0, swap_total=0.0, ram_available=0.25)
    assert monitor.stop_reason(both, 0.0, training).startswith("swap in use grew by 5.00 GiB")


def test_the_log_line_reads_like_nvidia_smi_and_free():
    gpu = monitor.GPUSample(index=1, memory_used_gb=12.345, memory_total_gb=79.6, utilization_pct=37.4)
    sample = _sample(swap_used=0.125, ram_available=22.0, ram_total=64.0, gpus=[gpu])
    assert sample.line() == "Resources: GPU1 12.3/80 GiB 37% | RAM 42.0/64.0 GiB | swap 0.12 GiB"
    assert _sample(swap_used=0.0, ram_available=60.0).line() == "Resources: RAM 4.0/64.0 GiB | swap 0.00 GiB"


def _fake_memory(monkeypatch, total, available, swap_total, swap_used):
    real_vm, real_swap = psutil.virtual_memory, psutil.swap_memory
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real_vm()._replace(total=total, available=available))
    monkeypatch.setattr(psutil, "swap_memory", lambda: real_swap()._replace(total=swap_total, used=swap_used))


def test_a_sample_without_nvml_has_no_gpu_part_and_ram_and_swap_in_gib(monkeypatch):
    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    _fake_memory(monkeypatch, total=64 * GiB, available=48 * GiB, swap_total=8 * GiB, swap_used=GiB // 2)
    s = monitor.sample_resources()
    assert s.gpus == []
    assert (s.ram_total_gb, s.ram_used_gb, s.ram_available_gb) == (64.0, 16.0, 48.0)
    assert (s.swap_total_gb, s.swap_used_gb) == (8.0, 0.5)
    assert s.time > 0


def test_a_sample_reads_each_gpus_memory_and_utilisation_from_nvml(monkeypatch):
    cards = [(80 * GiB, 20 * GiB, 55), (80 * GiB, 60 * GiB, 100)]  # total, used, utilisation %
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(cards))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(total=cards[h][0], used=cards[h][1])
    )
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=cards[h][2]))
    _fake_memory(monkeypatch, total=16 * GiB, available=8 * GiB, swap_total=0, swap_used=0)
    s = monitor.sample_resources()
    assert [(g.index, g.memory_used_gb, g.memory_total_gb, g.utilization_pct) for g in s.gpus] == [
        (0, 20.0, 80.0, 55.0),
        (1, 60.0, 80.0, 100.0),
    ]
    assert s.line().startswith("Resources: GPU0 20.0/80 GiB 55% GPU1 60.0/80 GiB 100% | RAM 8.0/16.0 GiB")


def test_a_gpu_that_stops_answering_costs_the_gpu_part_not_the_sample(monkeypatch):
    def lost(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 1)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lost)
    _fake_memory(monkeypatch, total=16 * GiB, available=8 * GiB, swap_total=0, swap_used=0)
    s = monitor.sample_resources()
    assert s.gpus == [] and s.ram_used_gb == 8.0
