"""NVML is faked at the pynvml boundary: the functions hardware.probe_gpus calls."""

from types import SimpleNamespace

import pynvml
import pytest

from tests.helpers import write_jsonl
from vss_core import hardware
from vss_core.config import load_config
from vss_core.errors import PreflightError

GiB = 1024**3


def fake_nvml(monkeypatch, cards=None, init_error=None, count_error=None, nvlink=None):
    """cards: [(name, GiB)]; nvlink: {gpu index: [remote bus ids of its active links]}."""
    nvlink = nvlink or {}

    def init():
        if init_error:
            raise init_error

    def count():
        if count_error:
            raise count_error
        return len(cards)

    def link_state(h, link):
        if link >= len(nvlink.get(h, [])):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.NVML_FEATURE_ENABLED

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: "580.65")
    monkeypatch.setattr(pynvml, "nvmlSystemGetCudaDriverVersion", lambda: 13000)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", count)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: cards[h][0])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPciInfo", lambda h: SimpleNamespace(busId=f"00000000:{h:02X}:00.0"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetNvLinkState", link_state)
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetNvLinkRemotePciInfo", lambda h, link: SimpleNamespace(busId=nvlink[h][link].encode())
    )
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetMemoryInfo",
        lambda h: SimpleNamespace(total=int(cards[h][1] * GiB), free=int(cards[h][1] * GiB)),
    )


def bus(i):
    return f"00000000:{i:02X}:00.0"


def test_this_machine_without_driver_reports_zero_gpus():
    report = hardware.probe(".")
    assert report.cpu_count >= 1 and report.ram_total_gb > 0 and report.disk_free_gb > 0
    assert report.gpus == [] and report.gpu_error


def test_nvml_driver_not_loaded(monkeypatch):
    fake_nvml(monkeypatch, init_error=pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    gpus, err, driver, _ = hardware.probe_gpus()
    assert gpus == [] and "no NVIDIA driver" in err and driver is None


def test_nvml_error_after_init(monkeypatch):
    fake_nvml(monkeypatch, cards=[], count_error=pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN))
    gpus, err, _, _ = hardware.probe_gpus()
    assert gpus == [] and err.startswith("NVML error")
    report = hardware.probe(".")  # the whole probe goes on without GPUs, with the reason
    assert report.gpus == [] and report.gpu_error.startswith("NVML error") and report.ram_total_gb > 0


def test_two_b200_pass_conservative_profile(monkeypatch):
    fake_nvml(
        monkeypatch, cards=[("NVIDIA B200", 179), ("NVIDIA B200", 179)], nvlink={0: [bus(1)] * 18, 1: [bus(0)] * 18}
    )
    report = hardware.probe(".").model_copy(update={"ram_total_gb": 3000, "disk_free_gb": 2000})
    assert [g.name for g in report.gpus] == ["NVIDIA B200", "NVIDIA B200"]
    assert [g.nvlink_peers for g in report.gpus] == [[1], [0]]
    assert (report.driver_version, report.cuda_version) == ("580.65", "13.0")
    assert "NVLink to 1" in report.table() and "179.0 / 179.0 GiB free" in report.table()
    cfg = load_config("conservative-2xb200")
    assert hardware.check(cfg.hardware, report, cfg.profile).profile == "conservative-2xb200"


def test_eight_h100_pass_standard_but_mixed_cards_do_not(monkeypatch):
    switch = "00000000:C0:00.0"  # an NVSwitch answers with its own bus id: every GPU is reachable
    fake_nvml(monkeypatch, cards=[("NVIDIA H100 80GB HBM3", 79.6)] * 8, nvlink={i: [switch] * 18 for i in range(8)})
    assert hardware.probe(".").gpus[3].nvlink_peers == [0, 1, 2, 4, 5, 6, 7]
    report = hardware.probe(".").model_copy(update={"ram_total_gb": 512, "disk_free_gb": 2000})
    cfg = load_config("standard-8xh100")
    hardware.check(cfg.hardware, report, cfg.profile)
    fake_nvml(monkeypatch, cards=[("NVIDIA H100 80GB HBM3", 79.6)] * 4 + [("NVIDIA A10", 24)] * 4)
    report = hardware.probe(".").model_copy(update={"ram_total_gb": 512, "disk_free_gb": 2000})
    assert [g.nvlink_peers for g in report.gpus] == [[]] * 8  # PCIe only
    with pytest.raises(PreflightError, match="needs 8 NVIDIA GPU.*found 8 GPU.*NVIDIA A10 24 GB"):
        hardware.check(cfg.hardware, report, cfg.profile)
    # the plan judges the smallest card: an A10's 24 GiB cannot hold one gathered MoE leaf
    assert hardware.machine_from_report(report, cfg.hardware).gpu_memory_gib == 24


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


def test_preflight_stops_8xh100_with_512gb_before_download_with_the_plan_and_fixes(monkeypatch):
    fake_nvml(monkeypatch, cards=[("NVIDIA H100 80GB HBM3", 79.6)] * 8)
    cfg = load_config("standard-8xh100")
    report = hardware.probe(".").model_copy(
        update={"ram_total_gb": 512, "ram_available_gb": 500, "disk_free_gb": 4000, "swap_used_gb": 0}
    )
    with pytest.raises(PreflightError) as err:
        hardware.check(cfg.hardware, report, cfg.profile, run=cfg)
    msg = str(err.value)
    assert "the run does not fit this machine" in msg
    assert "CPU RAM (per node): needs" in msg and "GPU memory (per rank): needs" in msg
    # at the official sequence length (~8.6k positions) no single change or pair of changes fits 8 x 80 GB
    assert "No single change" in msg and "vss plan --profile standard-8xh100" in msg


def test_preflight_on_two_b200_publishes_a_plan_that_fits(monkeypatch):
    fake_nvml(monkeypatch, cards=[("NVIDIA B200", 179)] * 2)
    cfg = load_config("conservative-2xb200")
    report = hardware.probe(".").model_copy(
        update={"ram_total_gb": 3000, "ram_available_gb": 2950, "disk_free_gb": 1863, "swap_used_gb": 2.0}
    )
    result = hardware.check(cfg.hardware, report, cfg.profile, run=cfg)
    assert result.plan.fits and "Verdict: FITS" in result.table()
    assert any("swap already in use" in w for w in result.warnings)


def test_cpu_demo_run_fits_this_machine(tiny_model_dir):
    cfg = load_config("cpu-demo", [f"model.source={tiny_model_dir}"])
    report = hardware.preflight(cfg.hardware, ".", cfg.profile, run=cfg)
    assert report.plan.fits
    assert [r.name for r in report.plan.resources] == ["CPU RAM (per node)", "disk"]  # no GPU on the CPU accelerator


def test_the_planner_counts_a_manifests_samples(scattered_manifest, tmp_path):
    from vss_core import hardware

    assert hardware.count_samples(scattered_manifest) == 3
    assert hardware.count_samples(write_jsonl(tmp_path / "broken.jsonl", ["{oops"])) == 0  # validation names it
