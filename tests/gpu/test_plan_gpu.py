"""GPU tests (`pytest -m gpu`; skipped without CUDA): a real GPU's peaks against the planner's figure.

Written without a GPU lent (no run of it yet): bench/bench_plan_gpu.py is its larger companion."""

import json
from pathlib import Path

import pytest
import torch

from vss_core import launch
from vss_core.config import load_config
from vss_core.runs import create_run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_one_gpu_run_records_its_gpu_peaks_within_the_plan(tmp_path, tiny_model_dir, tiny_codec_dir, prepared):
    cfg = load_config(
        "conservative-2xb200",
        [
            f"model.source={tiny_model_dir}",
            f"model.codec_source={tiny_codec_dir}",
            "hardware.gpus_per_node=1",
            f"training.output_dir={tmp_path}",
            "training.max_steps=2",
            "training.gradient_accumulation_steps=1",
            "training.save_every_n_steps=100",
        ],
    )
    run = create_run(cfg)
    launch.run_training(cfg, run, tiny_model_dir, Path(prepared.dir))
    summary = json.loads((Path(run.root) / "train_summary.json").read_text())
    rank = summary["measured"]["per_rank"][0]
    assert 0 < rank["gpu_max_allocated_bytes"] <= rank["gpu_max_reserved_bytes"]
    # the compute stream's waits in DeepSpeed's forward fetches, timed with CUDA events: some, under the loop
    assert 0 < rank["fetch_s_leaf"] and 0 < rank["fetch_s_other"]
    assert rank["fetch_s_leaf"] + rank["fetch_s_other"] < rank["step_time_s"] * 2
    figures = {f["name"]: f for f in summary["plan_check"]["figures"]}
    gpu = figures["GPU memory per rank (max reserved)"]
    assert gpu["measured"] == rank["gpu_max_reserved_bytes"] / 2**30
    assert gpu["measured"] <= gpu["predicted"] * 1.1, summary["plan_check"]
