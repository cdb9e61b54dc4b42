"""What this machine has: disk and RAM through psutil, GPUs through NVML (pynvml).

A machine without an NVIDIA driver, or an NVML that errors, reports 0 GPUs with the reason — never
a crash. Tests fake NVML at the pynvml boundary (the functions this module calls), nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import psutil
from pydantic import BaseModel

from vss_core import plan as planner
from vss_core.config import HardwareConfig, ModelConfig, VSSConfig, is_local_source
from vss_core.errors import DatasetError, PreflightError, bullet_list

# GiB throughout, as nvidia-smi, free -h and df -h report (an "80GB" H100 shows 79.6 GiB).
GB = 1024**3


class GPUInfo(BaseModel):
    index: int
    name: str
    memory_total_gb: float
    memory_free_gb: float
    pci_bus_id: str | None = None
    nvlink_peers: list[int] = []  # indices of the GPUs an active NVLink reaches


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
    cuda_version: str | None = None

    def table(self) -> str:
        """A markdown table a person reads at a glance."""
        rows = [
            ("CPU cores", str(self.cpu_count)),
            ("RAM (available / total)", f"{self.ram_available_gb:.1f} / {self.ram_total_gb:.1f} GB"),
            ("Swap (used / total)", f"{self.swap_used_gb:.1f} / {self.swap_total_gb:.1f} GB"),
            (f"Free disk at {self.disk_path}", f"{self.disk_free_gb:.1f} GB"),
            ("GPUs", str(len(self.gpus)) + (f" ({self.gpu_error})" if self.gpu_error else "")),
        ]
        if self.gpus:
            rows.append(("Driver / CUDA", f"{self.driver_version or '?'} / {self.cuda_version or '?'}"))
        rows += [
            (
                f"GPU {g.index}",
                f"{g.name}, {g.memory_free_gb:.1f} / {g.memory_total_gb:.1f} GiB free"
                + (f", NVLink to {', '.join(map(str, g.nvlink_peers))}" if g.nvlink_peers else ", no NVLink"),
            )
            for g in self.gpus
        ]
        return "| resource | found |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvlink_peers(pynvml, handle, bus_ids: dict[str, int]) -> list[int]:
    """GPU indices this GPU reaches over an active NVLink; [] where NVLink is absent or unsupported."""
    peers: set[int] = set()
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                continue
            remote = _text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
        except Exception:  # NVML_ERROR_NOT_SUPPORTED / INVALID_ARGUMENT past the last link: no more links
            break
        if remote in bus_ids:  # an NVSwitch answers with its own bus id: it links to every GPU
            peers.add(bus_ids[remote])
        else:
            peers.update(bus_ids.values())
    return sorted(peers)


class NVMLUnavailable(RuntimeError):
    """NVML cannot start here: pynvml is missing or broken, or there is no NVIDIA driver."""


@contextlib.contextmanager
def nvml():
    """NVML initialised for the block and shut down after (the one owner of that pairing; the monitor
    and the preflight probe both use it). Yields the pynvml module.

    Raises:
        NVMLUnavailable: pynvml cannot be imported, or nvmlInit fails (no driver).
    """
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency, but a broken install must not crash preflight
        raise NVMLUnavailable(f"pynvml not importable: {exc}") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        raise NVMLUnavailable(f"no NVIDIA driver (NVML: {exc})") from None
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def probe_gpus() -> tuple[list[GPUInfo], str | None, str | None, str | None]:
    """GPUs through NVML: (gpus, error, driver_version, cuda_version). Never raises."""
    try:
        with nvml() as pynvml:
            return _probe_gpus(pynvml)
    except NVMLUnavailable as exc:
        return [], str(exc), None, None
    except Exception as exc:
        return [], f"NVML error: {exc}", None, None


def _probe_gpus(pynvml) -> tuple[list[GPUInfo], str | None, str | None, str | None]:
    driver = _text(pynvml.nvmlSystemGetDriverVersion())
    try:
        v = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:
        cuda = None
    handles, gpus = [], []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            bus = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
        except Exception:
            bus = None
        handles.append(handle)
        gpus.append(
            GPUInfo(
                index=i,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_total_gb=mem.total / GB,
                memory_free_gb=mem.free / GB,
                pci_bus_id=bus,
            )
        )
    bus_ids = {g.pci_bus_id: g.index for g in gpus if g.pci_bus_id}
    for g, handle in zip(gpus, handles):
        g.nvlink_peers = [p for p in _nvlink_peers(pynvml, handle, bus_ids) if p != g.index]
    return gpus, None, driver, cuda


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe(disk_path: str | Path = ".") -> HardwareReport:
    """Probe CPU, RAM, swap, free disk at `disk_path` (or its nearest existing parent) and GPUs."""
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    where = _existing_parent(Path(disk_path))
    gpus, err, driver, cuda = probe_gpus()
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
        cuda_version=cuda,
    )


# --- the run's plan against this machine ------------------------------------------------------


def machine_from_report(report: HardwareReport, cfg: HardwareConfig) -> planner.Machine:
    """The planner's view of a probed node: the smallest card, RAM available now, free disk."""
    cards = report.gpus
    return planner.Machine(
        gpus_per_node=len(cards) if cfg.accelerator == "cuda" else cfg.gpus_per_node,
        gpu_memory_gib=min((g.memory_total_gb for g in cards), default=0.0) if cfg.accelerator == "cuda" else None,
        gpu_free_gib=min((g.memory_free_gb for g in cards), default=0.0) if cfg.accelerator == "cuda" else None,
        gpu_name=cards[0].name if cards and cfg.accelerator == "cuda" else None,
        ram_gib=report.ram_available_gb,
        disk_gib=report.disk_free_gb,
        nodes=cfg.nodes,
        swap_used_gib=report.swap_used_gb,
        source="probed",
    )


def model_shape(cfg: ModelConfig, configs_dir: Path | None = None) -> planner.ModelShape:
    """The model's shape: a local checkpoint's configs (or `configs_dir`, the configs fetched from the
    Hub for model.source), else the real model (`LongcatFlashConfig()`).

    Raises:
        ConfigError: a local model.source whose config files cannot be read.
    """
    if is_local_source(cfg.source):
        return planner.read_model_shape(Path(cfg.source).expanduser())
    if configs_dir is not None:
        return planner.read_model_shape(configs_dir)
    return planner.real_model_shape()


def cached_bytes(cfg: ModelConfig) -> int:
    """Bytes of model.source already in the Hugging Face cache (its blobs), 0 for a local source."""
    if is_local_source(cfg.source):
        return 0
    from vss_core.settings import hub_cache

    root = hub_cache(cfg.cache_dir) / ("models--" + cfg.source.replace("/", "--")) / "blobs"
    try:
        return sum(f.stat().st_size for f in root.iterdir() if f.is_file() and not f.name.endswith(".incomplete"))
    except OSError:
        return 0


def count_samples(root: str | Path) -> int:
    """Samples of data.root: its sample folders, or a manifest's sample lines (0 when it does not
    exist yet, or a manifest cannot be read: validation names its problems)."""
    from vss_core.data import manifest

    root = Path(root)
    if manifest.is_manifest(root):
        try:
            return len(manifest.read_manifest(root))
        except DatasetError:
            return 0
    return sum(1 for p in root.iterdir() if p.is_dir()) if root.is_dir() else 0


def plan_run(
    run: VSSConfig,
    machine: planner.Machine,
    remote: Callable[[ModelConfig], tuple[Path, int]] | None = None,
    speeds: dict[str, float] | None = None,
) -> planner.Plan:
    """Plan `run` on `machine`. For a Hub model.source, `remote(model_cfg)` may fetch its config files
    and give the download size from the Hub's file metadata (vss_core.hub.model_configs); without it
    the real model's shape is assumed and the size is estimated from the params. `speeds`: overrides
    of the time estimate's rates (`steptime.Speeds`, `vss plan --assume`).

    Raises:
        ConfigError: the model's configs cannot be read, or a LoRA target matches nothing.
    """
    download, configs_dir = None, None
    if remote is not None and not is_local_source(run.model.source):
        configs_dir, download = remote(run.model)
    ins = planner.inputs_from_config(
        run,
        model_shape(run.model, configs_dir),
        download_bytes=download,
        cached_bytes=cached_bytes(run.model),
        num_samples=count_samples(run.data.root),
        speeds=dict(speeds or {}),
    )
    return planner.plan(ins, machine)


class PreflightReport(BaseModel):
    hardware: HardwareReport
    warnings: list[str]
    profile: str
    plan: planner.Plan | None = None

    def table(self) -> str:
        """The machine, then the run's plan against it."""
        return self.hardware.table() + ("\n\n" + self.plan.table() if self.plan else "")


def check(
    cfg: HardwareConfig,
    report: HardwareReport,
    profile: str = "custom",
    run: VSSConfig | None = None,
    remote: Callable[[ModelConfig], tuple[Path, int]] | None = None,
) -> PreflightReport:
    """Compare what the profile needs with what was found; with `run`, also plan the run's memory
    on this machine (GPU, RAM, NVMe, disk) and refuse a run that does not fit.

    Raises:
        PreflightError: listing every unmet need, what was needed and what was found; when the run
            does not fit, the plan's table and the changes that would make it fit.
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
            f"{report.swap_used_gb:.1f} GiB of swap already in use: a training run that swaps crawls; free RAM first."
        )
    the_plan = None
    if run is not None:
        the_plan = plan_run(run, machine_from_report(report, cfg), remote)
        warnings = [w for w in warnings if "swap" not in w] + the_plan.warnings
        if not the_plan.fits:
            short = [
                f"{r.name}: needs {r.need_gib:,.1f} GiB, has {r.have_gib:,.1f} GiB"
                for r in the_plan.resources
                if r.fits is False
            ]
            problems.append(
                f"the run does not fit this machine ({'; '.join(short)}). Plan:\n\n{the_plan.table()}\n\n"
                f"Plan other settings or hardware with `vss plan --profile {profile} [KEY=VALUE ...]`."
            )
    if problems:
        raise PreflightError(f"preflight failed for profile {profile!r}:\n{bullet_list(problems)}")
    return PreflightReport(hardware=report, warnings=warnings, profile=profile, plan=the_plan)


def preflight(
    cfg: HardwareConfig,
    disk_path: str | Path = ".",
    profile: str = "custom",
    run: VSSConfig | None = None,
    remote: Callable[[ModelConfig], tuple[Path, int]] | None = None,
) -> PreflightReport:
    """Probe this machine and check it against the profile's needs (and, with `run`, the run's plan).

    Raises:
        PreflightError: the machine does not meet the profile or the run does not fit (every
            shortfall listed, with the plan and what would fit).
    """
    return check(cfg, probe(disk_path), profile, run, remote)
