"""The `vss` flow: the stages in order, nothing else.

    preflight -> validate data -> download weights -> prepare data -> train -> evaluate -> upload adapter

The evaluate stage scores the adapter against the base model on held-out samples (data.eval_fraction,
never trained on, or data.eval_root) and gates the upload (eval.gate: block / pause / off).

Data is validated before the download so a bad dataset costs nothing; preparation needs the
checkpoint's preprocessing configs and codec, so it follows the download. Every stage keeps its
state in vss_core, so a run started again with the same inputs skips work already done: validation
re-probes only changed samples, the download only missing files, preparation only changed samples,
and training reuses the adapter these inputs already produced or resumes from their checkpoint.

Run it: `vss run --profile cpu-demo` (local), or `prefect deployment run vss/demo-cpu` against
`vss serve`. The `vss-watch-data/watch-data` deployment runs `watch_data` (its own flow name, so its
runs do not fill the training flow's list).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks import stages
from vss_core import config, data, evaluate, runs, summary

Overrides = config.VSSOverrides


@flow(name="vss", description="Fine-tune LongCat-Flash-Omni with LoRA under DeepSpeed ZeRO-3.")
def vss(profile: str = "cpu-demo", overrides: Overrides | None = None) -> summary.RunResult:
    """Run the whole pipeline.

    Args:
        profile: a shipped profile (cpu-demo, conservative-2xb200, standard-8xh100) or a YAML path.
        overrides: values to change in the profile, by section, e.g. {"training": {"learning_rate": 1e-5}}.
    """
    cfg = config.load_config(profile, overrides)
    out = Path(cfg.training.output_dir).absolute()
    result = summary.RunResult(profile=cfg.profile)

    pre = stages.preflight(cfg, str(out))
    result.add("preflight", "ok", f"{len(pre.hardware.gpus)} GPU(s); {len(pre.warnings)} warning(s)")
    dataset = stages.validate_dataset(cfg.data)
    result.add(
        "validate data",
        "ok",
        f"{len(dataset.valid)} valid, {len(dataset.invalid)} invalid, "
        f"{len(dataset.reused)} unchanged (not probed again)",
    )
    weights = stages.download_weights(cfg.model)
    result.add(
        "download weights",
        "ok",
        f"{weights.path}{'' if weights.downloaded else ' (local, used in place)'}; "
        f"codec {weights.codec_path}{'' if weights.codec_downloaded else ' (local)'}",
    )
    # keyed by the data and by every setting that shapes a prepared file: runs that differ never share one
    prepared_dir = data.prepared_dir(
        out / "prepared", dataset.fingerprint, Path(weights.path), Path(weights.codec_path), cfg.data
    )
    prepared = stages.prepare_dataset(dataset, cfg.data, weights.path, weights.codec_path, str(prepared_dir))
    result.add(
        "prepare data", "ok", f"{len(prepared.samples)} samples ({len(prepared.reused)} reused) in {prepared.dir}"
    )

    run, cfg = stages.open_run(cfg, weights, dataset, prepared)
    result.run_dir = run.root
    node = cfg.hardware.node_rank
    with runs.locked(run, node):  # two runs of the same inputs never write one run directory at once
        trained = stages.run_training(cfg, run, weights.path, prepared.dir)
        result.add("train", "reused" if trained.reused else "ok", summary.describe_training(trained))
        result.adapter_dir, result.training_wall_s = trained.adapter_dir, trained.wall_s
        if node:  # multi-node without ssh: the other nodes train; node 0 judges and ships the adapter
            result.add("evaluate", "skipped", f"node {node} of {cfg.hardware.nodes}: node 0 evaluates and uploads")
        else:
            evaluated = _evaluate(cfg, run, trained, weights, dataset, prepared, out, result)
            if evaluated is not None:
                _gate(cfg, evaluated, result)
            uploaded = stages.upload_adapter(trained.adapter_dir, cfg.upload)
            result.add("upload adapter", "uploaded" if uploaded.uploaded else "skipped", uploaded.message)
            result.hub_url = uploaded.url

    create_markdown_artifact(key="vss-summary", markdown=result.table(), description="vss run summary")
    return result


def _evaluate(cfg, run, trained, weights, dataset, prepared, out, result) -> evaluate.EvalReport | None:
    """The evaluate stage, when there is something to evaluate on; None (and a row saying why) otherwise."""
    if not cfg.eval.enabled:
        result.add("evaluate", "skipped", "eval.enabled=false")
        return None
    if cfg.data.eval_root:
        eval_cfg = cfg.data.model_copy(update={"root": cfg.data.eval_root, "eval_fraction": 0.0})
        eval_data = stages.validate_dataset(eval_cfg)
        eval_dir = data.prepared_dir(
            out / "prepared", eval_data.fingerprint, Path(weights.path), Path(weights.codec_path), eval_cfg
        )
        eval_prepared = stages.prepare_dataset(eval_data, eval_cfg, weights.path, weights.codec_path, str(eval_dir))
        samples = evaluate.all_samples(eval_data, eval_prepared)
    else:
        samples = evaluate.held_out_samples(dataset, prepared, cfg.data.eval_fraction)
    if not samples:
        result.add("evaluate", "skipped", "no held-out samples (set data.eval_fraction or data.eval_root)")
        return None
    report = stages.evaluate_adapter(
        cfg, run, trained.adapter_dir, weights.path, weights.codec_path, samples, trained.steps
    )
    result.add("evaluate", "ok", report.headline())
    return report


def _gate(cfg, report: evaluate.EvalReport, result) -> None:
    """eval.gate: block (fail when worse), pause (wait for approval in the UI), off."""
    if cfg.eval.gate == "off" or not cfg.eval.base:
        return
    decision = evaluate.gate(report, cfg.eval.metric, cfg.eval.tolerance)
    if cfg.eval.gate == "block" and not decision.passed:
        result.add("gate", "blocked", decision.message)
        raise evaluate.EvalGateError(
            f"upload blocked (eval.gate=block): {decision.message}. The adapter stays in {report.adapter_dir}; "
            "train longer or on more data, or set eval.gate=pause to decide yourself, or eval.gate=off"
        )
    if cfg.eval.gate == "pause":
        stages.wait_for_approval(report, decision, cfg.eval.pause_timeout_s)
    result.add("gate", "passed", decision.message)


@flow(name="vss-watch-data", description="Emit vss.data.updated when the dataset changes.")
def watch_data(profile: str = "cpu-demo", overrides: Overrides | None = None) -> bool:
    """Fingerprint the dataset; when it changed since the last look, emit `vss.data.updated`."""
    cfg = config.load_config(profile, overrides)
    change = stages.check_data_changed(cfg.data, str(Path(cfg.training.output_dir).absolute() / ".vss-state"))
    if change.changed:
        stages.emit_data_updated(change, profile)
    return change.changed
