"""What this machine has: disk and RAM through psutil, GPUs through NVML (pynvml).

A machine without an NVIDIA driver, or an NVML that errors, reports 0 GPUs with the reason — never
a crash. Tests fake NVML at the pynvml boundary (the functions this module calls), nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
from pydantic import BaseModel

from vss_core.config import HardwareConfig
from vss_core.errors import PreflightError, bullet_list

# GiB throughout, as nvidia-smi, free -h and df -h report (an "80GB" H100 shows 79.6 GiB).
GB = 1024**3


class GPUInfo(BaseModel):
    index: int
    name: str
    memory_total_gb: float
    memory_free_gb: float


class HardwareReport(BaseModel):
    cpu_count: int
    ram_total_gb: float
    ram_available_gb: float
    swap_total_gb: float
    swap_used_gb: float
    disk_path: str
    disk_free_gb: float
    gpus: list[GPUInfo]
    gpu_error: str | None = None
    driver_version: str | None = None

    def table(self) -> str:
        """A markdown table a person reads at a glance."""
        rows = [
            ("CPU cores", str(self.cpu_count)),
            ("RAM (available / total)", f"{self.ram_available_gb:.1f} / {self.ram_total_gb:.1f} GB"),
            ("Swap (used / total)", f"{self.swap_used_gb:.1f} / {self.swap_total_gb:.1f} GB"),
            (f"Free disk at {self.disk_path}", f"{self.disk_free_gb:.1f} GB"),
            ("GPUs", str(len(self.gpus)) + (f" ({self.gpu_error})" if self.gpu_error else "")),
        ]
        rows += [(f"GPU {g.index}", f"{g.name}, {g.memory_total_gb:.0f} GB") for g in self.gpus]
        return "| resource | found |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def probe_gpus() -> tuple[list[GPUInfo], str | None, str | None]:
    """GPUs through NVML: (gpus, error, driver_version). Never raises."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency, but a broken install must not crash preflight
        return [], f"pynvml not importable: {exc}", None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return [], f"no NVIDIA driver (NVML: {exc})", None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GPUInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_gb=mem.total / GB,
                    memory_free_gb=mem.free / GB,
                )
            )
        return gpus, None, driver
    except Exception as exc:
        return [], f"NVML error: {exc}", None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe(disk_path: str | Path = ".") -> HardwareReport:
    """Probe CPU, RAM, swap, free disk at `disk_path` (or its nearest existing parent) and GPUs."""
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    where = _existing_parent(Path(disk_path))
    gpus, err, driver = probe_gpus()
    return HardwareReport(
        cpu_count=os.cpu_count() or 1,
        ram_total_gb=vm.total / GB,
        ram_available_gb=vm.available / GB,
        swap_total_gb=sw.total / GB,
        swap_used_gb=sw.used / GB,
        disk_path=str(where),
        disk_free_gb=psutil.disk_usage(str(where)).free / GB,
        gpus=gpus,
        gpu_error=err,
        driver_version=driver,
    )


class PreflightReport(BaseModel):
    hardware: HardwareReport
    warnings: list[str]
    profile: str


def check(cfg: HardwareConfig, report: HardwareReport, profile: str = "custom") -> PreflightReport:
    """Compare what the profile needs with what was found.

    Raises:
        PreflightError: listing every unmet need, what was needed and what was found.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if cfg.accelerator == "cuda":
        need = cfg.gpus_per_node
        fit = [g for g in report.gpus if g.memory_total_gb >= cfg.min_gpu_memory_gb]
        if len(fit) < need:
            found = f"{len(report.gpus)} GPU(s)"
            if report.gpus:
                found += ": " + ", ".join(f"{g.name} {g.memory_total_gb:.0f} GB" for g in report.gpus)
            if report.gpu_error:
                found += f" ({report.gpu_error})"
            problems.append(
                f"hardware.gpus_per_node: profile {profile!r} needs {need} NVIDIA GPU(s) with at least "
                f"{cfg.min_gpu_memory_gb:.0f} GB each; found {found}. Run on such a machine, or lower "
                "hardware.gpus_per_node / hardware.min_gpu_memory_gb, or use --profile cpu-demo to try vss on CPU."
            )
    if report.ram_total_gb < cfg.min_ram_gb:
        problems.append(
            f"hardware.min_ram_gb: needs {cfg.min_ram_gb:.0f} GB of RAM, found {report.ram_total_gb:.1f} GB total."
        )
    if report.disk_free_gb < cfg.min_free_disk_gb:
        problems.append(
            f"hardware.min_free_disk_gb: needs {cfg.min_free_disk_gb:.0f} GB free at {report.disk_path}, "
            f"found {report.disk_free_gb:.1f} GB. Free space or point training.output_dir / HF_HOME at a larger volume."
        )
    if report.swap_used_gb > 0.5:
        warnings.append(
            f"{report.swap_used_gb:.1f} GB of swap already in use: a training run that swaps crawls; free RAM first."
        )
    if problems:
        raise PreflightError(f"preflight failed for profile {profile!r}:\n{bullet_list(problems)}")
    return PreflightReport(hardware=report, warnings=warnings, profile=profile)


def preflight(cfg: HardwareConfig, disk_path: str | Path = ".", profile: str = "custom") -> PreflightReport:
    """Probe this machine and check it against the profile's needs.

    Raises:
        PreflightError: the machine does not meet the profile (every shortfall listed).
    """
    return check(cfg, probe(disk_path), profile)
