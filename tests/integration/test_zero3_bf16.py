"""The bf16 load of the GPU profiles under ZeRO-3 (on the CPU accelerator, one rank): the router's
weight and correction bias stay fp32, as transformers keeps them, and a training step runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vss_core import data
from vss_core.config import load_config

pytestmark = pytest.mark.integration


def test_router_stays_fp32_under_zero3_bf16(tmp_path, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    cfg = load_config("cpu-demo", [f"data.root={demo_data_dir}", "data.audio_seconds=1.0"])
    samples = data.select_samples(data.validate_dataset(cfg.data), "fail")[:1]
    data.prepare_dataset(samples, cfg.data, tiny_model_dir, tiny_codec_dir, tmp_path / "prep")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = Path(__file__).with_name("zero3_bf16_child.py")
    done = subprocess.run(
        [sys.executable, str(child), str(tiny_model_dir), str(tmp_path / "prep"), str(port)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    fp32 = sorted(n for n, d in out["dtypes"].items() if d == "torch.float32")
    assert fp32 == [
        "llm.model.layers.0.mlp.router.classifier.weight",
        "llm.model.layers.0.mlp.router.e_score_correction_bias",
    ]
    assert all(d == "torch.bfloat16" for n, d in out["dtypes"].items() if n not in fp32)
    assert out["router_equal"] and out["loss"] > 0
    # the cpu-demo's fp32 model holds fp32 partitions, and a config that disagrees with the dtype is an error
    assert out["fp32_dtypes"] == ["torch.float32"]
    assert out["mismatch"] and "bf16/fp16 flags must match model.dtype" in out["mismatch"]
