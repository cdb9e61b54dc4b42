"""vss_core.model.checkpoint: the official checkpoint layout, strict loading, dtypes, the tiny model, ZeRO-3
leaves and parameter counts, and checkpoints written from transformers' module or per expert as published."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LongcatFlashForCausalLM
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

from vss_core import experts, sequence
from vss_core import model as omni
from vss_core.errors import ModelError
from vss_core.model.checkpoint import build_tiny_model, llm_config

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


def test_loaded_model_equals_the_files(tiny_model_dir: Path, tiny_omni: omni.OmniModel) -> None:
    state = tiny_omni.state_dict()
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
    assert {n for n, _ in tiny_omni.named_parameters()} <= seen
    assert tiny_omni.skipped_keys == ["model.mtp.layers.0.eh_proj.weight"]


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


# --- the tiny model, its counts, and checkpoints written by others ---------------------------------


def test_tiny_model_is_deterministic_by_seed(tiny_model_dir: Path) -> None:
    a, b, c = (build_tiny_model(tiny_model_dir, s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    key = "llm.model.layers.0.self_attn.0.q_a_proj.weight"
    assert not torch.equal(a[key], c[key])


def test_zero3_leaves_and_parameter_count(tiny_omni: omni.OmniModel, tiny_model_dir: Path) -> None:
    assert LongcatFlashMoE in omni.zero3_leaf_classes()
    model = omni.load_omni(tiny_model_dir)
    trainable, total = omni.count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    assert omni.count_parameters(model) == (0, total)


def _transformers_llm(seed: int) -> LongcatFlashForCausalLM:
    torch.manual_seed(seed)
    llm = LongcatFlashForCausalLM(llm_config(omni.TINY_LLM_CONFIG))
    with torch.no_grad():
        for p in llm.parameters():
            if p.ndim > 1:
                p.normal_(std=0.05)
    return llm.eval()


@pytest.mark.parametrize("zero_rows", ["dropped", "kept"])
def test_checkpoint_written_from_transformers_module_gives_its_outputs(
    tmp_path: Path, zero_rows: str, prepared_sample: dict
) -> None:
    """A vss checkpoint whose LLM weights come from transformers' LongcatFlashForCausalLM, its
    gate_up_proj with the zero-expert rows dropped (as the real checkpoint) or kept (as transformers'
    state dict has them): load_omni's model gives transformers' logits and loss."""
    ref = _transformers_llm(3)
    model_dir = omni.write_tiny_checkpoint(tmp_path / "ckpt")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if zero_rows == "dropped":
        state = experts.zero_expert_rows_dropped(state, ref.config)
    # the official layout: embed_tokens and lm_head stay in the safetensors (language_model_embedding.pt
    # is the omni text embedding, a separate file)
    assert "model.embed_tokens.weight" in state and "lm_head.weight" in state
    save_file({k: v.clone() for k, v in state.items()}, str(model_dir / "model.safetensors"))

    loaded = omni.load_omni(model_dir).eval()
    ids = torch.randint(0, 128, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=ids, labels=ids)
        got = loaded.llm(input_ids=ids, labels=ids)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss)

    # The whole Omni model too: the same model with transformers' experts module swapped back in.
    reference = omni.load_omni(model_dir).eval()
    for ref_layer, layer in zip(ref.model.layers, reference.llm.model.layers):
        layer.mlp.experts = ref_layer.mlp.experts
    batch = omni.collate([prepared_sample])
    with torch.no_grad():
        ours, theirs = loaded(**batch), reference(**batch)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.codebook_losses, theirs.codebook_losses, rtol=1e-5, atol=1e-6)


def test_per_expert_checkpoint_as_published_loads_into_the_fused_module(tmp_path) -> None:
    # The Hub checkpoint and transformers' save_pretrained store experts one by one
    # (mlp.experts.{e}.{gate,up,down}_proj.weight); load_omni fuses them into the module's layout.
    src = omni.write_tiny_checkpoint(tmp_path / "fused")
    model = omni.load_omni(src)
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    per_expert = {}
    for key, t in state.items():
        if key.endswith("mlp.experts.gate_up_proj"):
            prefix, ffn = key.removesuffix(".gate_up_proj"), t.shape[1] // 2
            for e in range(t.shape[0]):
                per_expert[f"{prefix}.{e}.gate_proj.weight"] = t[e, :ffn].clone()
                per_expert[f"{prefix}.{e}.up_proj.weight"] = t[e, ffn:].clone()
        elif key.endswith("mlp.experts.down_proj"):
            prefix = key.removesuffix(".down_proj")
            for e in range(t.shape[0]):
                per_expert[f"{prefix}.{e}.down_proj.weight"] = t[e].clone()
        else:
            per_expert[key] = t
    import shutil

    dst = tmp_path / "per-expert"
    shutil.copytree(src, dst)
    save_file(per_expert, str(dst / "model.safetensors"))
    loaded = omni.load_omni(dst)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    del per_expert["llm.model.layers.0.mlp.experts.1.up_proj.weight".removeprefix("llm.")]
    save_file(per_expert, str(dst / "model.safetensors"))
    with pytest.raises(ModelError, match=r"experts\.1\.up_proj\.weight"):
        omni.load_omni(dst)
