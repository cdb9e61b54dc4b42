"""WANDB_API_KEY set: the training scalars go to Weights & Biases as well as TensorBoard (W&B offline
here, as in CI), the W&B run is named after the run directory, and the key is written nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from vss_core import data, launch
from vss_core.config import load_config
from vss_core.runs import create_run

pytestmark = pytest.mark.integration
KEY = "wandb-test-SECRET-0123456789abcdef0123456789abcdef"


def test_metrics_reach_wandb_offline_and_the_key_is_never_written(
    tmp_path, monkeypatch, tiny_model_dir, tiny_codec_dir, demo_data_dir
):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(
        "cpu-demo",
        [
            f"data.root={demo_data_dir}",
            f"training.output_dir={tmp_path}",
            "training.run_name=wandb",
            "training.max_steps=3",
        ],
    )
    report = data.validate_dataset(cfg.data)
    prepared = data.prepare_dataset(report.valid, cfg.data, tiny_model_dir, tiny_codec_dir, tmp_path / "prepared")
    run = create_run(cfg)
    launch.run_training(cfg, run, tiny_model_dir, Path(prepared.dir))

    (offline,) = list((Path(run.root) / "wandb").glob("offline-run-*-wandb"))
    (records,) = list(offline.glob("run-wandb.wandb"))
    blob = records.read_bytes()
    assert b"train/loss_semantic" in blob and b"train/lr" in blob  # the scalars, by name
    assert list((Path(run.root) / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard as before
    for path in Path(run.root).rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in Path(run.log).read_text()
