"""Resource sampling while training runs: GPU memory and utilisation (NVML), RAM and swap (psutil).

The sampler never raises: a machine without NVML reports no GPUs. Swap growth past a threshold is
what stops a run cleanly (the source documents: "if swap is used, you're in trouble"); a machine
without swap has nothing to grow, so there low available RAM is what stops it (`stop_reason`).
"""

from __future__ import annotations

import time

import psutil
from pydantic import BaseModel

from vss_core import hardware
from vss_core.hardware import GB


class GPUSample(BaseModel):
    index: int
    memory_used_gb: float
    memory_total_gb: float
    utilization_pct: float


class ResourceSample(BaseModel):
    time: float
    gpus: list[GPUSample]
    ram_used_gb: float
    ram_total_gb: float
    swap_used_gb: float
    ram_available_gb: float | None = None  # None: not measured (then no RAM guard)
    swap_total_gb: float | None = None

    def line(self) -> str:
        """One log line a person reads, like a glance at nvidia-smi and free -h."""
        gpus = " ".join(
            f"GPU{g.index} {g.memory_used_gb:.1f}/{g.memory_total_gb:.0f} GiB {g.utilization_pct:.0f}%"
            for g in self.gpus
        )
        return (
            f"Resources: {gpus + ' | ' if gpus else ''}RAM {self.ram_used_gb:.1f}/{self.ram_total_gb:.1f} GiB"
            f" | swap {self.swap_used_gb:.2f} GiB"
        )


def _gpu_samples() -> list[GPUSample]:
    try:
        with hardware.nvml() as pynvml:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                out.append(
                    GPUSample(
                        index=i, memory_used_gb=mem.used / GB, memory_total_gb=mem.total / GB, utilization_pct=util.gpu
                    )
                )
            return out
    except Exception:  # no NVML here, or a GPU that stops answering: the sample has no GPU part
        return []


def sample_resources() -> ResourceSample:
    """GPU memory/utilisation, RAM and swap in use now. Never raises."""
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    return ResourceSample(
        time=time.time(),
        gpus=_gpu_samples(),
        ram_used_gb=(vm.total - vm.available) / GB,
        ram_total_gb=vm.total / GB,
        swap_used_gb=sw.used / GB,
        ram_available_gb=vm.available / GB,
        swap_total_gb=sw.total / GB,
    )


def stop_reason(sample: ResourceSample, swap_baseline_gb: float, training) -> str | None:
    """Why training should checkpoint and stop now, or None. `training` is the TrainingConfig.

    Swap in use grown past training.swap_stop_gb since the run started; on a machine without swap,
    available RAM below training.ram_stop_gb (the next allocation would meet the OOM killer, which
    leaves no checkpoint).
    """
    grown = sample.swap_used_gb - swap_baseline_gb
    if grown > training.swap_stop_gb:
        return (
            f"swap in use grew by {grown:.2f} GiB (from {swap_baseline_gb:.2f} to {sample.swap_used_gb:.2f} GiB), "
            f"past training.swap_stop_gb={training.swap_stop_gb:g}"
        )
    no_swap = sample.swap_total_gb == 0 and sample.ram_available_gb is not None
    if no_swap and training.ram_stop_gb > 0 and sample.ram_available_gb < training.ram_stop_gb:
        return (
            f"available RAM fell to {sample.ram_available_gb:.2f} GiB of {sample.ram_total_gb:.1f} GiB on a machine "
            f"without swap, below training.ram_stop_gb={training.ram_stop_gb:g}"
        )
    return None
