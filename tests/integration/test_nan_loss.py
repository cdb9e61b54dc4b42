"""A NaN loss stops training under the real DeepSpeed launcher (2 CPU ranks), naming the sample,
with no adapter and no retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vss_core import data
from vss_core.errors import TrainingDivergedError

pytestmark = pytest.mark.integration


def test_training_on_a_sample_that_gives_a_nan_loss_stops_naming_it_and_writes_no_adapter(
    tmp_path, tiny_model_dir, tiny_codec_dir, demo_data_dir
):
    from vss_core import launch
    from vss_core.config import load_config
    from vss_core.runs import create_run

    cfg = load_config(
        "cpu-demo",
        [
            f"data.root={demo_data_dir}",
            f"training.output_dir={tmp_path}",
            "training.run_name=nan",
            "training.max_steps=4",
            "training.save_every_n_steps=1",
        ],
    )
    report = data.validate_dataset(cfg.data)
    prepared = data.prepare_dataset(report.valid, cfg.data, tiny_model_dir, tiny_codec_dir, tmp_path / "prep")
    poisoned = Path(prepared.files[1])  # shapes intact, values not: what a bad recording can make
    item = torch.load(poisoned, weights_only=True)
    torch.save({**item, "audio_features": torch.full_like(item["audio_features"], float("nan"))}, poisoned)
    # as if preparation had written these values: the manifest records the file's size
    manifest_path = Path(prepared.dir) / data.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["samples"]:
        if Path(entry["file"]).name == poisoned.name:
            entry["bytes"] = poisoned.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    run = create_run(cfg)
    with pytest.raises(TrainingDivergedError) as err:
        launch.run_training(cfg, run, tiny_model_dir, Path(prepared.dir))
    log = Path(run.log).read_text()
    assert "the loss is not finite (NaN/Inf) at step" in log and f"sample(s) {prepared.samples[1]}" in log, str(
        err.value
    )
    assert not err.value.retryable  # the same samples give the same loss: no retry
    assert not Path(run.adapter).exists()
    for ckpt in Path(run.checkpoints).glob("step-*"):  # whatever was saved came from finite steps
        step = int(ckpt.name.split("-")[1])
        losses = [json.loads(line)["loss"] for line in Path(run.metrics).read_text().splitlines()]
        assert step <= len(losses) and all(map(lambda x: x == x, losses[:step]))
