"""vss_core.model: tiny checkpoint layout, strict loading, the forward pass and batching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

from vss_core import model as omni
from vss_core.errors import ModelError

CODEBOOK_SIZES = [64, 16, 16, 16]


def make_sample(gen: torch.Generator, frames: int = 4, fbank_len: int = 300, code_len: int = 50) -> dict:
    codes = torch.stack([torch.randint(0, n, (code_len,), generator=gen) for n in CODEBOOK_SIZES], 1)
    return {
        "frames": torch.rand(frames, 3, 56, 56, generator=gen),
        "fbank": torch.randn(fbank_len, 80, generator=gen),
        "codes": codes,
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return omni.write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture()
def ckpt_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "copy"))


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return omni.collate([make_sample(gen, fbank_len=300, code_len=50), make_sample(gen, fbank_len=277, code_len=43)])


def test_tiny_checkpoint_has_the_real_layout(tiny_dir: Path) -> None:
    for rel in [
        "config.json",
        "model.safetensors",
        "language_model_embedding.pt",
        "vision/config.json",
        "vision/vision_model.pt",
        "vision/vision_projector.pt",
        "audio/config.json",
        "audio/preprocessor_config.json",
        "audio/global_cmvn",
        "audio/audio_encoder.pt",
        "audio/audio_projector.pt",
        "audio/audio_embeddings.pt",
        "audio/audio_output_layers.pt",
        "audio_codec/config.yaml",
    ]:
        assert (tiny_dir / rel).is_file(), rel
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LongcatFlashOmniForCausalLM"]
    assert cfg["hidden_size"] == 64 and cfg["n_routed_experts"] == 4 and cfg["zero_expert_num"] == 2
    assert "model.embed_tokens.weight" not in load_file(str(tiny_dir / "model.safetensors"))
    assert json.loads((tiny_dir / "audio/preprocessor_config.json").read_text()) == {
        "sampling_rate": 16000,
        "num_mel_bins": 80,
    }
    assert json.loads((tiny_dir / "audio/config.json").read_text())["codebook_sizes"] == CODEBOOK_SIZES
    assert "vss-tiny" in (tiny_dir / "audio_codec/config.yaml").read_text()
    size = sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file())
    assert size < 5_000_000
    # written through a temp dir renamed at the end: nothing else left beside it
    assert [p.name for p in tiny_dir.parent.iterdir()] == ["tiny"]


def test_round_trip_gives_the_writing_model(tiny_dir: Path, batch: dict) -> None:
    loaded = omni.load_omni(tiny_dir)
    written = omni.build_tiny_model(seed=0)
    ref = written.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ref[key]), key
    with torch.no_grad():
        a, b = loaded(**batch), written(**batch)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.codebook_losses, b.codebook_losses)


def test_tiny_model_is_deterministic_by_seed() -> None:
    a, b, c = omni.build_tiny_model(0), omni.build_tiny_model(0), omni.build_tiny_model(1)
    key = "llm.model.layers.0.self_attn.0.q_a_proj.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


def test_write_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        omni.write_tiny_checkpoint(tmp_path / "x")


def test_missing_pt_key_names_file_and_key(ckpt_copy: Path) -> None:
    path = ckpt_copy / "audio/audio_projector.pt"
    state = torch.load(path, weights_only=True)
    del state["2.weight"]
    torch.save(state, path)
    with pytest.raises(ModelError) as exc:
        omni.load_omni(ckpt_copy)
    assert "audio_projector.pt" in str(exc.value) and "2.weight" in str(exc.value) and "missing" in str(exc.value)


def test_missing_safetensors_key_names_file_and_key(ckpt_copy: Path) -> None:
    path = ckpt_copy / "model.safetensors"
    state = load_file(str(path))
    del state["model.layers.0.self_attn.1.kv_b_proj.weight"]
    save_file(state, str(path))
    with pytest.raises(ModelError) as exc:
        omni.load_omni(ckpt_copy)
    assert "model.safetensors" in str(exc.value)
    assert "model.layers.0.self_attn.1.kv_b_proj.weight" in str(exc.value)


def test_unexpected_and_misshaped_keys_are_all_reported(ckpt_copy: Path) -> None:
    path = ckpt_copy / "vision/vision_model.pt"
    state = torch.load(path, weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    heads = ckpt_copy / "audio/audio_output_layers.pt"
    state = torch.load(heads, weights_only=True)
    state["0.weight"] = torch.zeros(5, 64)
    torch.save(state, heads)
    with pytest.raises(ModelError) as exc:
        omni.load_omni(ckpt_copy)
    msg = str(exc.value)
    assert "vision_model.pt" in msg and "unexpected" in msg and "extra.weight" in msg
    assert "audio_output_layers.pt" in msg and "0.weight" in msg and "(5, 64)" in msg


def test_missing_file_names_path_and_layout(ckpt_copy: Path) -> None:
    (ckpt_copy / "audio/audio_embeddings.pt").unlink()
    with pytest.raises(ModelError) as exc:
        omni.load_omni(ckpt_copy)
    assert str(ckpt_copy / "audio/audio_embeddings.pt") in str(exc.value)
    assert "audio_output_layers.pt" in str(exc.value)  # the expected layout is spelled out


def test_missing_config_and_not_a_directory(ckpt_copy: Path, tmp_path: Path) -> None:
    (ckpt_copy / "vision/config.json").unlink()
    with pytest.raises(ModelError, match="vision/config.json"):
        omni.load_omni(ckpt_copy)
    with pytest.raises(ModelError, match="not a directory"):
        omni.load_omni(tmp_path / "nowhere")


def test_load_in_bfloat16(tiny_dir: Path) -> None:
    model = omni.load_omni(tiny_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_collate_pads_and_returns_forward_kwargs() -> None:
    gen = torch.Generator().manual_seed(0)
    out = omni.collate([make_sample(gen, fbank_len=300, code_len=50), make_sample(gen, fbank_len=280, code_len=45)])
    assert set(out) == {"frames", "fbank", "fbank_lengths", "codes", "code_lengths"}
    assert out["frames"].shape == (2, 4, 3, 56, 56)
    assert out["fbank"].shape == (2, 300, 80) and out["fbank_lengths"].tolist() == [300, 280]
    assert out["codes"].shape == (2, 50, 4) and out["code_lengths"].tolist() == [50, 45]
    assert out["codes"].dtype == torch.long and torch.all(out["codes"][1, 45:] == 0)


def test_forward_loss_is_finite_and_weighted(batch: dict) -> None:
    model = omni.build_tiny_model(0)
    out = model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.codebook_losses.shape == (4,) and torch.all(torch.isfinite(out.codebook_losses))
    out.loss.backward()
    assert model.audio_heads[3].weight.grad is not None
    assert model.vision_projector[0].weight.grad.abs().sum() > 0
    assert model.audio_projector[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        semantic_only = model(**batch, codebook_weights=[1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(semantic_only.loss, semantic_only.codebook_losses[0])


def test_padding_does_not_change_a_samples_loss() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = make_sample(gen, fbank_len=300, code_len=50), make_sample(gen, fbank_len=200, code_len=30)
    model = omni.build_tiny_model(0)
    with torch.no_grad():
        alone = model(**omni.collate([b]))
        both = model(**omni.collate([b, a]))
        padded = model(**omni.collate([a, b]))
    assert torch.allclose(both.loss, padded.loss, atol=1e-5)
    assert not torch.allclose(alone.loss, both.loss)


def test_speech_targets_delay_acoustic_codebooks_one_step() -> None:
    model = omni.build_tiny_model(0)
    codes = torch.tensor([[[5, 1, 2, 3], [6, 4, 5, 7], [0, 0, 0, 0]]])  # one sample, 2 real frames
    ids, labels = model._speech_targets(codes, torch.tensor([2]))
    s = 32
    assert ids[0, :, 0].tolist() == [5 + s, 6 + s, omni.AUDIO_EOS, omni.AUDIO_PAD]
    assert ids[0, :, 1].tolist() == [omni.AUDIO_BOS, 1 + s, 4 + s, omni.AUDIO_PAD]
    assert labels[0, :, 0].tolist() == [5 + s, 6 + s, omni.AUDIO_EOS, omni.IGNORE]
    assert labels[0, :, 3].tolist() == [omni.IGNORE, 3 + s, 7 + s, omni.IGNORE]


def test_zero3_leaves_and_parameter_count() -> None:
    assert LongcatFlashMoE in omni.zero3_leaf_classes()
    model = omni.build_tiny_model(0)
    trainable, total = omni.count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    assert omni.count_parameters(model) == (0, total)
