"""vss_core.model: the official checkpoint layout, strict loading, dtypes, and the training forward
on prepared samples (collate, losses, padding, gradients)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

from vss_core import data, lora, sequence
from vss_core import model as omni
from vss_core.config import DataConfig
from vss_core.errors import ModelError
from vss_core.model.checkpoint import build_tiny_model

H = omni.TINY_LLM_CONFIG["hidden_size"]
V_AUDIO = 8224  # official audio vocab: 8192 codes + 32 special ids (longcat_omni_demo.py)

# Every file the official loaders read (longcat_omni_demo.py `load_encoder_ckpt`, the SGLang port's
# LongcatFlashOmniForCausalLM) plus the tokenizer the tiny checkpoint carries.
OFFICIAL_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
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
}

# Exact key -> shape of the small official state dicts (encoders/embedding.py TextEmbedding /
# AudioEmbedding, encoders/audio_adaptor.py audio_projector = Sequential(Linear, GELU, Linear),
# encoders/vision_adaptor.py VisionProjector p0 = Sequential(LayerNorm, Linear, GELU, Linear) + proj,
# SGLang AudioOutputLayer with has_proj=False: no `linear.weight`).
EXACT_KEYS: dict[str, dict[str, tuple[int, ...] | None]] = {
    "language_model_embedding.pt": {"word_embeddings.weight": (sequence.TINY_VOCAB_SIZE, H)},
    "audio/audio_embeddings.pt": {f"audio_embeddings.{i}.weight": (V_AUDIO, H) for i in range(4)},
    "audio/audio_output_layers.pt": {
        **{f"audio_output_layers.{i}.weight": (V_AUDIO, H) for i in range(4)},
        **{f"embedding.{i}.weight": (V_AUDIO, H) for i in range(3)},
    },
    "audio/audio_projector.pt": {"0.weight": None, "0.bias": None, "2.weight": (H, H), "2.bias": (H,)},
    "vision/vision_projector.pt": {
        "p0.0.weight": None,
        "p0.0.bias": None,
        "p0.1.weight": None,
        "p0.1.bias": None,
        "p0.3.weight": None,
        "p0.3.bias": None,
        "proj.weight": None,
        "proj.bias": (H,),
    },
}
# Top-level prefixes of the encoders' state dicts (LongCatVisionModel: embeddings, encoder;
# LongCatAudioEncoder: ffn, fsmn_layers, dnn, output).
KEY_PREFIXES = {
    "vision/vision_model.pt": {"embeddings", "encoder"},
    "audio/audio_encoder.pt": {"ffn", "fsmn_layers", "dnn", "output"},
}


def _rel_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture()
def ckpt_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> omni.OmniModel:
    return omni.load_omni(tiny_model_dir)


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tiny_codec_dir, demo_data_dir, tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    """Two prepared demo samples of different lengths (2 s / 4 frames and 1 s / 2 frames)."""
    out = tmp_path_factory.mktemp("prepared")
    items = []
    for i, (seconds, frames) in enumerate([(2.0, 4), (1.0, 2)]):
        cfg = DataConfig(
            root=str(demo_data_dir),
            video_frames=frames,
            video_fps=2.0,
            audio_seconds=seconds,
            workers=1,
            validation_cache=str(out / "validation-cache"),
        )
        samples = data.select_samples(data.validate_dataset(cfg), "fail")
        data.prepare_dataset(samples[i : i + 1], cfg, tiny_model_dir, tiny_codec_dir, out / str(i))
        (item,) = data.load_prepared(out / str(i))
        items.append(item)
    assert items[0]["input_ids"].shape[0] != items[1]["input_ids"].shape[0]
    return items


# --- the layout -----------------------------------------------------------------------------------


def test_tiny_checkpoint_writes_exactly_the_official_files(tiny_model_dir: Path) -> None:
    assert _rel_files(tiny_model_dir) == OFFICIAL_FILES
    assert set(omni.PT_FILES) == {f for f in OFFICIAL_FILES if f.endswith(".pt")}
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "longcat_flash" and cfg["architectures"] == ["LongcatFlashForCausalLM"]
    assert cfg["hidden_size"] == H and cfg["n_routed_experts"] == 4 and cfg["zero_expert_num"] == 2
    assert sum((tiny_model_dir / f).stat().st_size for f in OFFICIAL_FILES) < 30_000_000
    # written through a temp dir renamed at the end: nothing else beside it
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]


@pytest.mark.parametrize("rel", sorted(EXACT_KEYS))
def test_pt_files_hold_the_official_keys(tiny_model_dir: Path, rel: str) -> None:
    state = torch.load(tiny_model_dir / rel, weights_only=True)
    assert set(state) == set(EXACT_KEYS[rel]), rel
    for key, shape in EXACT_KEYS[rel].items():
        if shape is not None:
            assert tuple(state[key].shape) == shape, key
    assert "linear.weight" not in state  # the official AudioOutputLayer runs with has_proj=False


@pytest.mark.parametrize("rel", sorted(KEY_PREFIXES))
def test_encoder_files_hold_the_official_prefixes(tiny_model_dir: Path, rel: str) -> None:
    state = torch.load(tiny_model_dir / rel, weights_only=True)
    assert {k.split(".")[0] for k in state} == KEY_PREFIXES[rel]


def test_safetensors_hold_the_llm_with_embed_tokens_lm_head_and_one_mtp_key(tiny_model_dir: Path) -> None:
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= keys
    assert [k for k in keys if k.startswith("model.mtp.")] == ["model.mtp.layers.0.eh_proj.weight"]
    assert all(k.startswith(("model.", "lm_head.")) for k in keys)


def test_loaded_model_equals_the_files(tiny_model_dir: Path, loaded: omni.OmniModel) -> None:
    state = loaded.state_dict()
    seen = set()
    for rel, name in omni.PT_FILES.items():
        for key, value in torch.load(tiny_model_dir / rel, weights_only=True).items():
            assert torch.equal(state[f"{name}.{key}"], value), f"{rel}: {key}"
            seen.add(f"{name}.{key}")
    for key, value in load_file(str(tiny_model_dir / "model.safetensors")).items():
        if key.startswith("model.mtp."):
            assert f"llm.{key}" not in state
            continue
        assert torch.equal(state[f"llm.{key}"], value), key
        seen.add(f"llm.{key}")
    # every parameter came from a file (buffers such as rotary inv_freq are computed)
    assert {n for n, _ in loaded.named_parameters()} <= seen
    assert loaded.skipped_keys == ["model.mtp.layers.0.eh_proj.weight"]


def test_write_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        omni.write_tiny_checkpoint(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


# --- strict loading -------------------------------------------------------------------------------


def _edit_pt(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _edit_st(path: Path, edit) -> None:
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


ST_KEY = "model.layers.0.self_attn.1.kv_b_proj.weight"
CASES = {
    # (file, edit, key the message must name, word it must use)
    "pt-extra": (
        "audio/audio_output_layers.pt",
        lambda s: s.__setitem__("linear.weight", torch.zeros(H, H)),
        "linear.weight",
        "unexpected",
    ),
    "pt-missing": (
        "audio/audio_embeddings.pt",
        lambda s: s.pop("audio_embeddings.2.weight"),
        "audio_embeddings.2.weight",
        "missing",
    ),
    "pt-shape": (
        "audio/audio_output_layers.pt",
        lambda s: s.__setitem__("embedding.1.weight", torch.zeros(5, H)),
        "embedding.1.weight",
        f"(5, {H})",
    ),
    "st-extra": (
        "model.safetensors",
        lambda s: s.__setitem__("model.layers.0.extra.weight", torch.zeros(3)),
        "model.layers.0.extra.weight",
        "unexpected",
    ),
    "st-missing": ("model.safetensors", lambda s: s.pop(ST_KEY), ST_KEY, "missing"),
    "st-shape": (
        "model.safetensors",
        lambda s: s.__setitem__("lm_head.weight", torch.zeros(7, H)),
        "lm_head.weight",
        f"(7, {H})",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_weight_names_file_and_key(ckpt_copy: Path, case: str) -> None:
    rel, edit, key, word = CASES[case]
    (_edit_st if rel.endswith(".safetensors") else _edit_pt)(ckpt_copy / rel, edit)
    with pytest.raises(ModelError) as exc:
        omni.load_omni(ckpt_copy)
    line = next((ln for ln in str(exc.value).splitlines() if key in ln), None)
    assert line is not None, str(exc.value)
    assert str(ckpt_copy / rel) in line and word in line


def test_all_problems_are_reported_at_once(ckpt_copy: Path) -> None:
    for rel, edit, _, _ in CASES.values():
        (_edit_st if rel.endswith(".safetensors") else _edit_pt)(ckpt_copy / rel, edit)
    with pytest.raises(ModelError) as exc:
        omni.load_omni(ckpt_copy)
    msg = str(exc.value)
    for rel, _, key, word in CASES.values():
        assert any(key in ln and rel in ln and word in ln for ln in msg.splitlines()), (key, msg)


def test_mtp_keys_are_accounted_for_not_errors(ckpt_copy: Path) -> None:
    extra = "model.mtp.layers.0.enorm.weight"
    _edit_st(ckpt_copy / "model.safetensors", lambda s: s.__setitem__(extra, torch.ones(H)))
    model = omni.load_omni(ckpt_copy)
    assert sorted(model.skipped_keys) == sorted(["model.mtp.layers.0.eh_proj.weight", extra])
    assert not any("mtp" in n for n in model.state_dict())


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


def test_load_in_bfloat16_keeps_the_router_fp32(tiny_model_dir: Path) -> None:
    model = omni.load_omni(tiny_model_dir, dtype=torch.bfloat16)
    fp32 = re.compile(r"llm\.model\.layers\.\d+\.mlp\.router\.(classifier\.weight|e_score_correction_bias)")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert sum(bool(fp32.fullmatch(n)) for n, _ in tensors) == 2 * omni.TINY_LLM_CONFIG["num_layers"]
    for name, t in tensors:
        assert t.dtype == (torch.float32 if fp32.fullmatch(name) else torch.bfloat16), name


# --- the model and its forward --------------------------------------------------------------------


def test_tiny_model_is_deterministic_by_seed(tiny_model_dir: Path) -> None:
    a, b, c = (build_tiny_model(tiny_model_dir, s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    key = "llm.model.layers.0.self_attn.0.q_a_proj.weight"
    assert not torch.equal(a[key], c[key])


def test_collate_pads_right_and_concatenates_media(prepared: list[dict]) -> None:
    a, b = prepared
    batch = omni.collate([a, b])
    n = a["input_ids"].shape[0]
    m = b["input_ids"].shape[0]
    assert batch["input_ids"].shape == (2, n) and batch["codec_ids"].shape == (2, n, 4)
    assert batch["attention_mask"][1].tolist() == [1] * m + [0] * (n - m)
    assert (batch["input_ids"][1, m:] == sequence.PADDING_IDX).all()
    assert (batch["codec_ids"][1, m:] == sequence.CODEC_PAD_ID).all()
    assert (batch["text_labels"][1, m:] == omni.IGNORE).all() and (batch["codec_labels"][1, m:] == omni.IGNORE).all()
    assert torch.equal(batch["pixel_values"], torch.cat([a["pixel_values"], b["pixel_values"]]))
    assert torch.equal(batch["grid_shapes"], torch.cat([a["grid_shapes"], b["grid_shapes"]]))
    la, lb = a["audio_features"].shape[0], b["audio_features"].shape[0]
    assert batch["audio_mask"].sum(1).tolist() == [la, lb]
    assert (
        torch.equal(batch["audio_features"][1, :lb], b["audio_features"])
        and (batch["audio_features"][1, lb:] == 0).all()
    )
    assert "token_types" not in batch and "role_flags" not in batch


def test_forward_gives_finite_losses_and_weights_them(loaded: omni.OmniModel, prepared: list[dict]) -> None:
    with torch.no_grad():
        out = loaded(**omni.collate(prepared))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert out.text_loss.ndim == 0 and torch.isfinite(out.text_loss)
        assert out.codebook_losses.shape == (4,) and torch.isfinite(out.codebook_losses).all()
        # random weights over 8224 ids: near log(8224) ~ 9.0
        assert ((out.codebook_losses > 8) & (out.codebook_losses < 10)).all()
        torch.testing.assert_close(out.loss, torch.cat([out.text_loss[None], out.codebook_losses]).mean())
        semantic = loaded(**omni.collate(prepared), text_weight=0.0, codebook_weights=[1.0, 0.0, 0.0, 0.0])
        torch.testing.assert_close(semantic.loss, semantic.codebook_losses[0])
        with pytest.raises(ModelError, match="codebook_weights"):
            loaded(**omni.collate(prepared), codebook_weights=[1.0, 1.0])


def test_a_loaded_model_is_deterministic(loaded: omni.OmniModel, prepared: list[dict]) -> None:
    # fresh from load_omni (train mode, .train() never called): the audio encoder's dropout is off
    assert loaded.training and not loaded.audio_encoder.training
    with torch.no_grad():
        first, second = (loaded(**omni.collate(prepared)) for _ in range(2))
    assert torch.equal(first.loss, second.loss) and torch.equal(first.codebook_losses, second.codebook_losses)


def test_padding_does_not_change_a_samples_losses(loaded: omni.OmniModel, prepared: list[dict]) -> None:
    # float64: in float32 a different batch shape changes the matmul order (~1e-5 noise)
    model = copy.deepcopy(loaded).double()
    a, b = prepared

    def only(batch: dict, keep: int) -> dict:
        # the other sample stays in the batch (and pads/ is padded), its labels carry no loss
        batch = dict(batch)
        for key in ("text_labels", "codec_labels"):
            batch[key] = batch[key].clone()
            batch[key][1 - keep] = omni.IGNORE
        return batch

    with torch.no_grad():
        both = omni.collate([a, b])
        for i, sample in enumerate(prepared):
            alone = model(**omni.collate([sample]))
            in_batch = model(**only(both, i))
            torch.testing.assert_close(in_batch.text_loss, alone.text_loss, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(in_batch.codebook_losses, alone.codebook_losses, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(
            model(**omni.collate([a])).codebook_losses, model(**omni.collate([b])).codebook_losses
        )


def test_pad_counts_must_match_the_media(loaded: omni.OmniModel, prepared: list[dict]) -> None:
    batch = omni.collate(prepared[:1])
    with pytest.raises(ModelError, match="audio_pad"):
        loaded(**{**batch, "audio_features": None, "audio_mask": None})
    with pytest.raises(ModelError, match="image_pad"):
        first = int(batch["grid_shapes"][0].prod())  # one frame pair fewer than the sequence has pads for
        loaded(**{**batch, "pixel_values": batch["pixel_values"][:first], "grid_shapes": batch["grid_shapes"][:1]})


def test_backward_reaches_the_lora_targets(tiny_model_dir: Path, prepared: list[dict]) -> None:
    model = omni.load_omni(tiny_model_dir)
    model.train()
    model(**omni.collate(prepared)).loss.backward()
    for set_name in lora.TARGET_SETS:
        names, _ = lora.resolve_targets(model, [set_name])
        assert names, set_name
        for name in names:
            grad = model.get_submodule(name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, name
    for pattern in lora.PARAMETER_SETS.values():
        rx = re.compile(pattern)
        params = [(n, p) for n, p in model.named_parameters() if rx.fullmatch(n)]
        assert params and all(p.grad is not None for _, p in params)
        assert all(p.grad.abs().sum() > 0 for _, p in params)  # some routed expert got tokens
    # the frozen-by-recipe audio encoder still gets gradients here: freezing is the trainer's job,
    # but its dropout is off in train mode (the official SFT keeps it deterministic)
    assert not model.audio_encoder.training


def test_zero3_leaves_and_parameter_count(loaded: omni.OmniModel, tiny_model_dir: Path) -> None:
    assert LongcatFlashMoE in omni.zero3_leaf_classes()
    model = omni.load_omni(tiny_model_dir)
    trainable, total = omni.count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    assert omni.count_parameters(model) == (0, total)
