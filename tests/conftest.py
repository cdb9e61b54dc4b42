"""Shared fixtures: a tiny checkpoint and a generated dataset, written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# DeepSpeed compiles its CPU ops on first use; keep the builds in the repo's cache between runs.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from vss_core import model

    return model.write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def tiny_codec_dir(tmp_path_factory) -> Path:
    from vss_core import codec

    return codec.write_tiny_codec(tmp_path_factory.mktemp("codec") / "tiny-codec")


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    from vss_core import demo

    root = tmp_path_factory.mktemp("data") / "train"
    demo.write_demo_dataset(root, samples=4, seed=0, seconds=2.0)
    return root


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    """The demo dataset prepared for the tiny model on cpu-demo (read-only: a test that alters
    prepared files prepares its own)."""
    from vss_core import data
    from vss_core.config import load_config

    cfg = load_config("cpu-demo", [f"data.root={demo_data_dir}"])
    report = data.validate_dataset(cfg.data)
    return data.prepare_dataset(
        report.valid, cfg.data, tiny_model_dir, tiny_codec_dir, tmp_path_factory.mktemp("prepared")
    )
