"""The `vss` flow: the stages in order, nothing else.

    preflight -> validate data -> download weights -> prepare data -> train -> upload adapter

Data is validated before the download so a bad dataset costs nothing (issue: "before any
download or GPU time"); preparation needs the checkpoint's preprocessing configs and codec, so it
follows the download.

Run it: `vss run --profile cpu-demo` (local), or `prefect deployment run vss/demo-cpu` against
`vss serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks import stages
from vss_core import config, runs


@flow(name="vss", description="Fine-tune LongCat-Flash-Omni with LoRA under DeepSpeed ZeRO-3.")
def vss(profile: str = "cpu-demo", overrides: dict[str, Any] | None = None) -> runs.RunResult:
    """Run the whole pipeline.

    Args:
        profile: a shipped profile (cpu-demo, conservative-2xb200, standard-8xh100) or a YAML path.
        overrides: dotted keys to override, e.g. {"training.learning_rate": 1e-5}.
    """
    cfg = config.load_config(profile, overrides or {})
    run = runs.create_run(cfg)
    result = runs.RunResult(run_dir=run.root, profile=cfg.profile)

    pre = stages.preflight(cfg.hardware, cfg.training.output_dir, cfg.profile, run=cfg)
    result.add("preflight", "ok", f"{len(pre.hardware.gpus)} GPU(s); {len(pre.warnings)} warning(s)")
    dataset = stages.validate_dataset(cfg.data)
    result.add("validate data", "ok", f"{len(dataset.valid)} valid, {len(dataset.invalid)} invalid samples")
    weights = stages.download_weights(cfg.model)
    result.add("download weights", "ok", weights.path + ("" if weights.downloaded else " (local, used in place)"))
    prepared_dir = Path(cfg.training.output_dir).absolute() / "prepared" / dataset.fingerprint[:16]
    prepared = stages.prepare_dataset(dataset, cfg.data, weights.path, str(prepared_dir))
    result.add("prepare data", "ok", f"{len(prepared.samples)} samples in {prepared.dir}")
    trained = stages.run_training(cfg, run, weights.path, prepared.dir)
    result.add("train", "ok", f"{trained.steps} steps, loss {trained.first_loss:.3f} -> {trained.final_loss:.3f}")
    result.adapter_dir = trained.adapter_dir
    uploaded = stages.upload_adapter(trained.adapter_dir, cfg.upload)
    result.add("upload adapter", "uploaded" if uploaded.uploaded else "skipped", uploaded.message)
    result.hub_url = uploaded.url

    create_markdown_artifact(key="vss-summary", markdown=result.table(), description="vss run summary")
    return result
