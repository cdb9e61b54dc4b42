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


@pytest.fixture(scope="session")
def prepared_sample(tiny_model_dir, tiny_codec_dir, demo_data_dir, tmp_path_factory) -> dict:
    """The first demo sample prepared alone (1 s, 2 frames; read-only); every tiny checkpoint has the
    same tokenizer."""
    from tests.helpers import prepare_demo_sample

    out = tmp_path_factory.mktemp("prepared")
    return prepare_demo_sample(demo_data_dir, tiny_model_dir, tiny_codec_dir, out, frames=2, seconds=1.0)[0]


# --- datasets a test may edit (function scope, in its tmp_path) -----------------------------------


def _demo_train(tmp_path: Path, samples: int) -> Path:
    """`samples` demo samples of 2 s in tmp_path/train."""
    from vss_core import demo

    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=samples, seconds=2.0)
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Three demo samples of 2 s in tmp_path/train (the data tests' dataset)."""
    return _demo_train(tmp_path, 3)


@pytest.fixture
def dataset_of_two(tmp_path) -> Path:
    """Two demo samples of 2 s in tmp_path/train."""
    return _demo_train(tmp_path, 2)


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir) -> Path:
    """A private copy of the tiny checkpoint: some tests edit its files."""
    import shutil

    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def manifest_folders(dataset) -> Path:
    """`dataset` (three demo samples of 2 s as sample folders, tmp_path/train), the twin of `scattered_manifest`."""
    return dataset


@pytest.fixture
def scattered_manifest(tmp_path, manifest_folders) -> Path:
    """The same three samples as `manifest_folders`, their files spread over other folders with other
    names, listed by a manifest in a folder of its own (paths relative to it, one absolute)."""
    import shutil

    from tests.helpers import write_jsonl

    media = tmp_path / "shared" / "media"
    (media / "video").mkdir(parents=True)
    (media / "speech").mkdir()
    lines = []
    for sample in sorted(manifest_folders.iterdir()):
        n = sample.name
        shutil.copy2(sample / "in.mp4", media / "video" / f"clip-{n}.mp4")
        shutil.copy2(sample / "in.wav", media / "speech" / f"{n}-question.wav")
        shutil.copy2(sample / "out.wav", media / "speech" / f"{n}-answer.wav")
        lines.append(
            {
                "name": n,
                "video": f"../shared/media/video/clip-{n}.mp4",
                "input_speech": f"../shared/media/speech/{n}-question.wav",
                "target_speech": str(media / "speech" / f"{n}-answer.wav"),  # absolute works too
                "transcript": (sample / "out.txt").read_text(encoding="utf-8"),
            }
        )
    (tmp_path / "lists").mkdir()
    return write_jsonl(tmp_path / "lists" / "train.jsonl", ["# three samples", *lines, ""])


# --- the tiny model and prepared samples (module scope: one per test module) ----------------------


@pytest.fixture(scope="module")
def tiny_omni(tiny_model_dir):
    """The tiny checkpoint loaded by load_omni (train mode, as loaded; tests must not alter it)."""
    from vss_core import model

    return model.load_omni(tiny_model_dir)


@pytest.fixture(scope="module")
def two_samples(tiny_model_dir, tiny_codec_dir, demo_data_dir, tmp_path_factory):
    """Two prepared demo samples of different lengths (2 s / 4 frames and 1 s / 2 frames)."""
    from tests.helpers import prepare_demo_sample

    out = tmp_path_factory.mktemp("prepared")
    items = [
        prepare_demo_sample(
            demo_data_dir, tiny_model_dir, tiny_codec_dir, out, index=i, frames=frames, seconds=seconds
        )[0]
        for i, (seconds, frames) in enumerate([(2.0, 4), (1.0, 2)])
    ]
    assert items[0]["input_ids"].shape[0] != items[1]["input_ids"].shape[0]
    return items


# --- one demo sample as inference reads it (module scope) -----------------------------------------


@pytest.fixture(scope="module")
def infer_sample(demo_data_dir) -> Path:
    """The first demo sample folder."""
    return sorted(p for p in demo_data_dir.iterdir() if p.is_dir())[0]


@pytest.fixture(scope="module")
def infer_prompt(infer_sample, tiny_model_dir):
    """`infer_sample` prepared as inference prepares its prompt (`helpers.INFER_DATA`)."""
    from tests.helpers import INFER_DATA
    from vss_core import data
    from vss_core.config import DataConfig

    return data.prepare_inputs(infer_sample, DataConfig(**INFER_DATA), tiny_model_dir)


@pytest.fixture(scope="module")
def special_ids(tiny_model_dir):
    """The tiny checkpoint's special token ids."""
    from vss_core import model

    return model.CheckpointConfigs(tiny_model_dir).special_ids
