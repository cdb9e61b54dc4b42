"""The six stages of the `vss` flow as Prefect tasks.

Each task is one vss_core call plus logging and an artifact; no business branching lives here.
Retries only where they help, one layer per call: Hub requests are retried inside vss_core.hub (so the Hub
stages have no task retries); training is retried once (it resumes). Config errors, invalid data and bugs
are never retried.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.input import RunInput
from pydantic import Field, SecretStr

from tasks import events
from vss_core import data, evaluate, hardware, hub, launch, plancheck, runs
from vss_core.config import DataConfig, ModelConfig, UploadConfig, VSSConfig
from vss_core.errors import VSSError
from vss_core.runs import RunPaths
from vss_core.settings import Settings, load_settings

HF_TOKEN_BLOCK = "vss-hf-token"  # a Prefect Secret block holding the Hub token, used when HF_TOKEN is unset


def settings() -> Settings:
    """vss settings from the environment; the Hub token may come from the Prefect Secret block
    'vss-hf-token' instead. The token stays a SecretStr: never a parameter, never logged."""
    found = load_settings()
    if found.hf_token is None:
        from prefect.blocks.system import Secret

        try:
            token = Secret.load(HF_TOKEN_BLOCK).get()
        except ValueError:  # no such block
            token = None
        if token:
            found = found.model_copy(
                update={"hf_token": SecretStr(token), "hf_token_source": f"Prefect Secret block {HF_TOKEN_BLOCK!r}"}
            )
    return found


def is_retryable(exc: BaseException) -> bool:
    """The allow-list of what a task retry can fix: a transient network or Hub failure (connection error,
    timeout, HTTP 5xx/408/429, a HubError marked retryable; `hub.is_transient`) and a vss error that says
    it is retryable (a TrainingError: the training process died and resumes from its last checkpoint).
    Anything else (a TypeError, a bad upload.repo_id, a refused file name, config or data errors) is not."""
    return hub.is_transient(exc) or (isinstance(exc, VSSError) and bool(exc.retryable))


def _retry_transient(task, old_state, new_state) -> bool:
    """Prefect retry condition: retry only what `is_retryable` allows."""
    try:
        new_state.result()
    except Exception as exc:
        return is_retryable(exc)
    return False


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(cfg: VSSConfig, disk_path: str) -> hardware.PreflightReport:
    """Probe the machine and plan the run's memory; raises (no retry) before any download when the
    run cannot fit, with the plan and what would fit."""
    remote = functools.partial(hub.model_configs, settings=settings())  # configs + sizes only, no weights
    report = hardware.preflight(cfg.hardware, disk_path, cfg.profile, cfg, remote)
    logger = get_run_logger()
    for warning in report.warnings:
        logger.warning(warning)
    create_markdown_artifact(key="vss-preflight", markdown=report.table(), description="Machine and memory plan")
    logger.info(
        "Preflight OK: %d GPU(s), %.1f GiB RAM available, %.1f GiB free disk%s",
        len(report.hardware.gpus),
        report.hardware.ram_available_gb,
        report.hardware.disk_free_gb,
        "; the run fits" if report.plan else "",
    )
    return report


@task(name="validate_dataset", cache_policy=NO_CACHE)
def validate_dataset(cfg: DataConfig) -> data.DatasetReport:
    """Check every sample (files, decoders, lengths, optional texts), collecting all problems; the
    dataset report becomes an artifact. Raises on invalid samples unless data.on_invalid=skip."""
    report = data.validate_dataset(cfg)
    logger = get_run_logger()
    for warning in report.warnings:
        logger.warning(warning)
    create_markdown_artifact(key="vss-dataset", markdown=report.table(), description="Dataset validation")
    data.select_samples(report, cfg.on_invalid)  # raises on policy 'fail' with invalid samples
    if report.skipped:
        logger.warning(
            "Skipping %d invalid samples (data.on_invalid=skip): %s", len(report.skipped), ", ".join(report.skipped)
        )
    logger.info(
        "Dataset %s: %d valid, %d invalid samples (%d unchanged, not probed again)",
        cfg.root,
        len(report.valid),
        len(report.invalid),
        len(report.reused),
    )
    return report


# No task retries for the Hub stages: vss_core.hub is their one retry layer (each request retried alone, with
# backoff, on transient errors only), so a task retry would only repeat what it already retried.
@task(name="download_weights", retries=0, cache_policy=NO_CACHE)
def download_weights(cfg: ModelConfig) -> hub.WeightsReport:
    """Bring the checkpoint and the codec into the Hub cache (or use local folders in place): configs
    checked before any weight byte, files resumed after a kill and hashed as they arrive."""
    report = hub.download_weights(cfg, settings())
    if report.downloaded:
        get_run_logger().info(
            "Weights: %s (commit %s; %d files, %d bytes downloaded, %d cached, %d resumed, %d fetched again)",
            report.path,
            report.revision,
            report.files,
            report.bytes_downloaded,
            report.bytes_cached,
            report.bytes_resumed,
            report.bytes_refetched,
        )
    else:
        get_run_logger().info("Weights: %s (local, used in place)", report.path)
    return report


@task(name="prepare_dataset", cache_policy=NO_CACHE)
def prepare_dataset(
    report: data.DatasetReport, cfg: DataConfig, model_dir: str, codec_dir: str, out_dir: str
) -> data.PreparedDataset:
    """Turn the valid samples into model inputs (frames, audio features, codec ids, the official
    sequence) in a folder keyed by the data and every preparation setting; unchanged samples are reused."""
    samples = data.select_samples(report, cfg.on_invalid)
    prepared = data.prepare_dataset(samples, cfg, Path(model_dir), Path(codec_dir), Path(out_dir))
    get_run_logger().info("Prepared %d samples into %s", len(prepared.samples), prepared.dir)
    return prepared


class _TrainingMonitor:
    """Turns the training process's metrics and resource samples into Prefect logs and artifacts:
    a progress bar and the loss so far (a table, re-published at most every `every_s` seconds)."""

    def __init__(self, logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self.progress_id = create_progress_artifact(
            progress=0.0, key="vss-training-progress", description="Training steps done (%)"
        )
        self.losses: list[dict] = []
        self.published = 0.0

    def metrics(self, records: list[dict]) -> None:
        self.losses += [{"step": r["step"], "loss": round(r["loss"], 4), "lr": r["lr"]} for r in records]
        last = records[-1]
        update_progress_artifact(self.progress_id, 100.0 * last["step"] / last["total_steps"])
        if time.time() - self.published >= self.every_s or last["step"] == last["total_steps"]:
            self.published = time.time()
            create_table_artifact(key="vss-loss", table=self.losses, description="Training loss so far")

    def resources(self, sample) -> None:
        self.logger.info(sample.line())


@task(name="open_run", cache_policy=NO_CACHE)
def open_run(
    cfg: VSSConfig, weights: hub.WeightsReport, dataset: data.DatasetReport, prepared: data.PreparedDataset
) -> tuple[RunPaths, VSSConfig]:
    """Find or create the run directory of these inputs (weights, data, preparation, config): a re-run
    of the same inputs resumes or reuses it."""
    key = runs.training_key(cfg, weights.revision or weights.path, dataset.fingerprint, prepared.settings_key)
    run, effective = runs.open_run(cfg, key)
    get_run_logger().info("Run directory %s (training key %s)", run.root, key)
    return run, effective


@task(name="run_training", retries=1, retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def run_training(cfg: VSSConfig, run: RunPaths, model_dir: str, prepared_dir: str) -> launch.TrainingReport:
    """Train the LoRA under DeepSpeed ZeRO-3 in its own process group, streaming its log, metrics and
    resources into the flow run; resumes from the last complete checkpoint; retried once on a crash."""
    logger = get_run_logger()
    monitor = _TrainingMonitor(logger)
    try:
        report = launch.run_training(
            cfg,
            run,
            Path(model_dir),
            Path(prepared_dir),
            on_line=logger.info,
            on_metrics=monitor.metrics,
            on_resources=monitor.resources,
        )
    except (TerminationSignal, KeyboardInterrupt):  # a cancel (SIGTERM from the runner) or Ctrl-C
        logger.warning(
            "Training cancelled: its DeepSpeed process group was ended. A re-run resumes from the "
            "last complete checkpoint in %s.",
            run.checkpoints,
        )
        raise
    if report.reused:
        logger.info(
            "This run's adapter already exists (same data and config): nothing to train. %s", report.adapter_dir
        )
    for change in report.step_downs:
        logger.warning("Memory step-down applied in this run: %s", change)
    if report.plan_check is not None:
        check = plancheck.PlanCheck.model_validate(report.plan_check)
        for warning in check.warnings:
            logger.warning("Planner check: %s", warning)
        create_markdown_artifact(
            key="vss-plan-check", markdown=check.table(), description="Measured peaks against the plan's figures"
        )
    create_markdown_artifact(
        key="vss-training",
        markdown=(
            f"| steps | first loss | final loss | trainable params | resumed from | adapter |\n"
            f"|---|---|---|---|---|---|\n"
            f"| {report.steps} | {report.first_loss:.3f} | {report.final_loss:.3f} | "
            f"{report.trainable_parameters:,} | {report.resumed_from_step} | `{report.adapter_dir}` |"
        ),
        description="Training summary",
    )
    return report


@task(name="evaluate_adapter", cache_policy=NO_CACHE)
def evaluate_adapter(
    cfg: VSSConfig,
    run: RunPaths,
    adapter_dir: str,
    model_dir: str,
    codec_dir: str,
    samples: list[evaluate.EvalSample],
    step: int,
) -> evaluate.EvalReport:
    """Score the adapter against the base model on samples it never trained on (eval loss per stream, EOS
    before the cap, text WER, mel-cepstral distance); the table and the plots become artifacts, the
    adapter's model card gets the table."""
    report = evaluate.evaluate(
        Path(adapter_dir),
        Path(model_dir),
        Path(codec_dir),
        samples,
        cfg,
        Path(run.eval_dir),
        with_base=cfg.eval.base,
        tensorboard_dir=Path(run.tensorboard),
        step=step,
        metrics_file=Path(run.metrics),
    )
    evaluate.add_to_model_card(Path(adapter_dir), report)
    create_markdown_artifact(key="vss-eval", markdown=eval_markdown(report), description="Held-out evaluation")
    get_run_logger().info("Evaluated %s; report %s", report.headline(), Path(run.eval_dir) / evaluate.REPORT)
    return report


def eval_markdown(report: evaluate.EvalReport) -> str:
    """The eval table and its plots (PNG, embedded as data URIs so the Prefect UI shows them inline)."""
    import base64

    parts = ["# Held-out evaluation: adapter vs base", "", report.table(), ""]
    for name, path in report.plots.items():
        encoded = base64.b64encode(Path(path).read_bytes()).decode()
        parts += [f"![{name}](data:image/png;base64,{encoded})", ""]
    parts.append(f"Files: `{Path(report.plots.get('comparison', '')).parent}` (report.json, answers/, plots).")
    return "\n".join(parts)


class UploadApproval(RunInput):
    """Approve the upload after reading the evaluation (eval.gate=pause)."""

    approve: bool = Field(False, description="Upload the adapter to the Hub")
    note: str = Field("", description="Why (kept in the flow run's logs)")


def wait_for_approval(report: evaluate.EvalReport, decision: evaluate.GateDecision, timeout_s: float) -> None:
    """Pause the flow (eval.gate=pause) with the comparison shown until someone approves or rejects the
    upload in the Prefect UI. Called in the flow, not in a task: Prefect pauses flow runs.

    Raises:
        EvalGateError: rejected, or no answer within timeout_s.
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    logger = get_run_logger()
    create_markdown_artifact(
        key="vss-eval-approval",
        markdown=(
            f"## Approve the upload?\n\n{decision.message}.\n\n{report.table()}\n\n"
            "Resume this flow run in the UI and set `approve` to upload, or leave it off to stop here."
        ),
        description="Waiting for approval",
    )
    logger.warning(
        "Waiting for approval to upload (eval.gate=pause): %s. Resume the flow run in the Prefect UI.", decision.message
    )
    try:
        answer = pause_flow_run(
            wait_for_input=UploadApproval.with_initial_data(description=f"{decision.message}. Approve the upload?"),
            timeout=int(timeout_s),
        )
    except FlowPauseTimeout as exc:
        raise evaluate.EvalGateError(
            f"no approval within eval.pause_timeout_s={timeout_s:g} s ({exc}); the adapter "
            "stays in the run directory, not uploaded"
        ) from None
    if not answer.approve:
        raise evaluate.EvalGateError(
            f"upload rejected in the Prefect UI{': ' + answer.note if answer.note else ''}; "
            "the adapter stays in the run directory, not uploaded"
        )
    logger.info("Upload approved%s", f": {answer.note}" if answer.note else "")


@task(name="upload_adapter", retries=0, cache_policy=NO_CACHE)  # retried per request in vss_core.hub
def upload_adapter(adapter_dir: str, cfg: UploadConfig) -> hub.UploadReport:
    """Upload the adapter folder (with its model card) to upload.repo_id; skipped without a token or repo."""
    report = hub.upload_adapter(Path(adapter_dir), cfg, settings())
    get_run_logger().info(report.message)
    return report


# --- watching the data ----------------------------------------------------------------------------


@task(name="check_data_changed", cache_policy=NO_CACHE)
def check_data_changed(cfg: DataConfig, state_dir: str) -> data.DataChange:
    """Fingerprint the dataset and compare with the last look (state kept under the output directory)."""
    change = data.check_data_changed(cfg, Path(state_dir))
    get_run_logger().info(change.message)
    return change


@task(name="emit_data_updated", cache_policy=NO_CACHE)
def emit_data_updated(change: data.DataChange, profile: str) -> None:
    """Tell the train deployment of `profile` that its dataset changed (its trigger starts a run)."""
    events.emit_data_updated(change.root, profile, change.fingerprint, change.samples)
    get_run_logger().info("Emitted %s for %s (profile %s)", events.DATA_UPDATED, change.root, profile)
