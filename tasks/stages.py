"""The six stages of the `vss` flow as Prefect tasks.

Each task is one vss_core call plus logging and an artifact; no business branching lives here.
Retries only where they help: the network stages. Config errors and invalid data are not retried.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from vss_core import data, hardware, hub, launch
from vss_core.config import DataConfig, HardwareConfig, ModelConfig, UploadConfig, VSSConfig
from vss_core.runs import RunPaths
from vss_core.settings import load_settings


def _retry_network(task, old_state, new_state) -> bool:
    """Retry only errors that a second try can fix (network/Hub), never config or data errors."""
    try:
        new_state.result()
    except Exception as exc:
        return bool(getattr(exc, "retryable", False)) or not hasattr(exc, "retryable")
    return False


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(cfg: HardwareConfig, disk_path: str, profile: str, run: VSSConfig | None = None) -> hardware.PreflightReport:
    """Probe the machine and, given the run's config, plan its memory; raises (no retry) before any
    download when the run cannot fit, with the plan and what would fit."""
    report = hardware.preflight(cfg, disk_path, profile, run)
    logger = get_run_logger()
    for warning in report.warnings:
        logger.warning(warning)
    create_markdown_artifact(key="vss-preflight", markdown=report.table(), description="Machine and memory plan")
    logger.info("Preflight OK: %d GPU(s), %.1f GiB RAM available, %.1f GiB free disk%s",
                len(report.hardware.gpus), report.hardware.ram_available_gb, report.hardware.disk_free_gb,
                "; the run fits" if report.plan else "")
    return report


@task(name="validate_dataset", cache_policy=NO_CACHE)
def validate_dataset(cfg: DataConfig) -> data.DatasetReport:
    report = data.validate_dataset(cfg)
    logger = get_run_logger()
    for warning in report.warnings:
        logger.warning(warning)
    create_markdown_artifact(key="vss-dataset", markdown=report.table(), description="Dataset validation")
    data.select_samples(report, cfg.on_invalid)  # raises on policy 'fail' with invalid samples
    if report.skipped:
        logger.warning("Skipping %d invalid samples (data.on_invalid=skip): %s", len(report.skipped),
                       ", ".join(report.skipped))
    logger.info("Dataset %s: %d valid, %d invalid samples (%d unchanged, not probed again)", cfg.root,
                len(report.valid), len(report.invalid), len(report.reused))
    return report


@task(name="download_weights", retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=_retry_network,
      cache_policy=NO_CACHE)
def download_weights(cfg: ModelConfig) -> hub.WeightsReport:
    report = hub.download_weights(cfg, load_settings())
    if report.downloaded:
        get_run_logger().info(
            "Weights: %s (commit %s; %d files, %d bytes downloaded, %d cached, %d resumed, %d fetched again)",
            report.path, report.revision, report.files, report.bytes_downloaded, report.bytes_cached,
            report.bytes_resumed, report.bytes_refetched,
        )
    else:
        get_run_logger().info("Weights: %s (local, used in place)", report.path)
    return report


@task(name="prepare_dataset", cache_policy=NO_CACHE)
def prepare_dataset(report: data.DatasetReport, cfg: DataConfig, model_dir: str, out_dir: str) -> data.PreparedDataset:
    samples = data.select_samples(report, cfg.on_invalid)
    prepared = data.prepare_dataset(samples, cfg, Path(model_dir), Path(out_dir))
    get_run_logger().info("Prepared %d samples into %s", len(prepared.samples), prepared.dir)
    return prepared


@task(name="run_training", retries=1, retry_condition_fn=_retry_network, cache_policy=NO_CACHE)
def run_training(cfg: VSSConfig, run: RunPaths, model_dir: str, prepared_dir: str) -> launch.TrainingReport:
    logger = get_run_logger()
    report = launch.run_training(cfg, run, Path(model_dir), Path(prepared_dir), on_line=logger.info)
    create_markdown_artifact(
        key="vss-training",
        markdown=(f"| steps | first loss | final loss | trainable params | adapter |\n|---|---|---|---|---|\n"
                  f"| {report.steps} | {report.first_loss:.3f} | {report.final_loss:.3f} | "
                  f"{report.trainable_parameters:,} | `{report.adapter_dir}` |"),
        description="Training summary",
    )
    return report


@task(name="upload_adapter", retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=_retry_network,
      cache_policy=NO_CACHE)
def upload_adapter(adapter_dir: str, cfg: UploadConfig) -> hub.UploadReport:
    report = hub.upload_adapter(Path(adapter_dir), cfg, load_settings())
    get_run_logger().info(report.message)
    return report
