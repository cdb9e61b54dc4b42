"""NVML is faked at the pynvml boundary: the functions hardware.probe_gpus calls."""

from types import SimpleNamespace

import pynvml
import pytest

from vss_core import hardware
from vss_core.config import load_config
from vss_core.errors import PreflightError

GiB = 1024**3


def fake_nvml(monkeypatch, cards=None, init_error=None, count_error=None):
    def init():
        if init_error:
            raise init_error

    def count():
        if count_error:
            raise count_error
        return len(cards)

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: "580.65")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", count)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: cards[h][0])
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(total=int(cards[h][1] * GiB), free=int(cards[h][1] * GiB))
    )


def test_this_machine_without_driver_reports_zero_gpus():
    report = hardware.probe(".")
    assert report.cpu_count >= 1 and report.ram_total_gb > 0 and report.disk_free_gb > 0
    assert report.gpus == [] and report.gpu_error


def test_nvml_driver_not_loaded(monkeypatch):
    fake_nvml(monkeypatch, init_error=pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    gpus, err, _ = hardware.probe_gpus()
    assert gpus == [] and "no NVIDIA driver" in err


def test_nvml_error_after_init(monkeypatch):
    fake_nvml(monkeypatch, cards=[], count_error=pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN))
    gpus, err, _ = hardware.probe_gpus()
    assert gpus == [] and err.startswith("NVML error")


def test_two_b200_pass_conservative_profile(monkeypatch):
    fake_nvml(monkeypatch, cards=[("NVIDIA B200", 179), ("NVIDIA B200", 179)])
    report = hardware.probe(".").model_copy(update={"ram_total_gb": 3000, "disk_free_gb": 2000})
    assert [g.name for g in report.gpus] == ["NVIDIA B200", "NVIDIA B200"]
    cfg = load_config("conservative-2xb200")
    assert hardware.check(cfg.hardware, report, cfg.profile).profile == "conservative-2xb200"


def test_eight_h100_pass_standard_but_mixed_cards_do_not(monkeypatch):
    fake_nvml(monkeypatch, cards=[("NVIDIA H100 80GB HBM3", 79.6)] * 8)
    report = hardware.probe(".").model_copy(update={"ram_total_gb": 512, "disk_free_gb": 2000})
    cfg = load_config("standard-8xh100")
    hardware.check(cfg.hardware, report, cfg.profile)
    fake_nvml(monkeypatch, cards=[("NVIDIA H100 80GB HBM3", 79.6)] * 4 + [("NVIDIA A10", 24)] * 4)
    report = hardware.probe(".").model_copy(update={"ram_total_gb": 512, "disk_free_gb": 2000})
    with pytest.raises(PreflightError, match="needs 8 NVIDIA GPU.*found 8 GPU.*NVIDIA A10 24 GB"):
        hardware.check(cfg.hardware, report, cfg.profile)


def test_gpu_profile_refused_on_cpu_machine_with_what_was_needed_and_found():
    cfg = load_config("conservative-2xb200")
    with pytest.raises(PreflightError) as err:
        hardware.preflight(cfg.hardware, ".", cfg.profile)
    msg = str(err.value)
    assert "needs 2 NVIDIA GPU(s) with at least 175 GB each; found 0 GPU(s)" in msg
    assert "needs 1500 GB of RAM" in msg  # every shortfall, at once
    assert "--profile cpu-demo" in msg


def test_cpu_demo_accepted_on_this_machine():
    cfg = load_config("cpu-demo")
    report = hardware.preflight(cfg.hardware, ".", cfg.profile)
    assert report.hardware.gpus == []


def test_swap_in_use_is_a_warning():
    cfg = load_config("cpu-demo")
    report = hardware.probe(".").model_copy(update={"swap_used_gb": 4.0})
    assert "swap already in use" in hardware.check(cfg.hardware, report).warnings[0]
