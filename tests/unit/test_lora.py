"""vss_core.lora: target resolution against real module names, training through LoRA, adapter files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from vss_core import data, lora
from vss_core import model as omni
from vss_core.config import DataConfig, LoraConfig
from vss_core.errors import ConfigError
from vss_core.model.checkpoint import build_tiny_model

MLA = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
DATA = {"video_frames": 4, "video_fps": 2.0, "audio_seconds": 2.0, "workers": 1}


@pytest.fixture()
def tiny(tiny_model_dir: Path) -> omni.OmniModel:
    return build_tiny_model(tiny_model_dir, 0)


@pytest.fixture(scope="module")
def batch(tiny_model_dir: Path, tiny_codec_dir: Path, demo_data_dir: Path, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Two demo samples prepared into the official voice-chat sequence, batched for OmniModel.forward."""
    cfg = DataConfig(root=str(demo_data_dir), **DATA)
    samples = data.validate_dataset(cfg).samples[:2]
    prepared = data.prepare_dataset(samples, cfg, tiny_model_dir, tiny_codec_dir, tmp_path_factory.mktemp("lora-prep"))
    return omni.collate(data.load_prepared(prepared.dir))


def test_attention_resolves_to_the_ten_mla_projections(tiny: omni.OmniModel) -> None:
    names, warnings = lora.resolve_targets(tiny, ["attention"])
    expected = sorted(f"llm.model.layers.0.self_attn.{i}.{p}" for i in (0, 1) for p in MLA)
    assert names == expected and warnings == []


def test_other_sets_resolve(tiny: omni.OmniModel) -> None:
    dense, _ = lora.resolve_targets(tiny, ["dense_mlp"])
    assert len(dense) == 6 and all(".mlps." in n for n in dense)
    proj, _ = lora.resolve_targets(tiny, ["projectors"])
    # the official projector names: vision p0.1 / p0.3 + proj (p0.0 is its LayerNorm), audio 0 and 2
    assert proj == [
        "audio_projector.0",
        "audio_projector.2",
        "vision_projector.p0.1",
        "vision_projector.p0.3",
        "vision_projector.proj",
    ]
    heads, _ = lora.resolve_targets(tiny, ["audio_heads"])
    assert heads == [f"audio_output_layer.audio_output_layers.{i}" for i in range(4)]  # embedding.* stays frozen


@pytest.mark.parametrize("alias", ["q_proj", "k_proj", "v_proj", "o_proj"])
def test_source_document_aliases_map_to_attention_with_a_warning(
    tiny: omni.OmniModel, alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vss_core.lora"):
        names, warnings = lora.resolve_targets(tiny, [alias])
    assert len(names) == 10
    assert len(warnings) == 1 and "'attention'" in warnings[0] and alias in warnings[0]
    assert warnings[0] in caplog.text


def test_audio_aliases(tiny: omni.OmniModel) -> None:
    names, warnings = lora.resolve_targets(tiny, ["audio_encoder", "audio_decoder"])
    heads = [f"audio_output_layer.audio_output_layers.{i}" for i in range(4)]
    assert names == heads + ["audio_projector.0", "audio_projector.2"]
    assert len(warnings) == 2


def test_suffix_target(tiny: omni.OmniModel) -> None:
    names, warnings = lora.resolve_targets(tiny, ["kv_b_proj"])
    assert names == ["llm.model.layers.0.self_attn.0.kv_b_proj", "llm.model.layers.0.self_attn.1.kv_b_proj"]
    assert warnings == []


def test_unknown_target_raises_naming_valid_sets(tiny: omni.OmniModel) -> None:
    with pytest.raises(ConfigError) as exc:
        lora.resolve_targets(tiny, ["attention", "foo"])
    msg = str(exc.value)
    assert "lora.targets: 'foo' matches no module in this model" in msg
    assert "Valid sets: attention, dense_mlp, projectors" in msg
    assert "llm.model.layers.0.self_attn.0." in msg  # real example names


def test_moe_block_is_not_a_lora_target(tiny: omni.OmniModel) -> None:
    with pytest.raises(ConfigError, match="LongcatFlashMoE"):
        lora.resolve_targets(tiny, ["mlp"])


def test_build_lora_config_uses_explicit_names(tiny: omni.OmniModel) -> None:
    config, warnings = lora.build_lora_config(tiny, LoraConfig(rank=8, alpha=16, dropout=0.0, targets=["v_proj"]))
    assert sorted(config.target_modules) == sorted(lora.resolve_targets(tiny, ["attention"])[0])
    assert config.r == 8 and config.lora_alpha == 16 and len(warnings) == 1


def test_gradients_reach_only_lora(tiny: omni.OmniModel, batch: dict) -> None:
    peft_model = lora.apply_lora(tiny, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "projectors"]))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    out = peft_model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # lora_B starts at zero, so lora_A gets no gradient at step 0; lora_B must
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_a_few_adam_steps_lower_the_loss(tiny: omni.OmniModel, batch: dict) -> None:
    torch.manual_seed(0)
    peft_model = lora.apply_lora(tiny, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "projectors"]))
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        out = peft_model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.02


def test_adapter_save_writes_config_and_weights(
    tiny: omni.OmniModel, batch: dict, tmp_path: Path, tiny_model_dir: Path
) -> None:
    import peft

    peft_model = lora.apply_lora(tiny, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention"]))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # make the adapter change the output
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        expected = peft_model.eval()(**batch).loss
        reloaded = peft.PeftModel.from_pretrained(build_tiny_model(tiny_model_dir, 0), tmp_path).eval()
        torch.testing.assert_close(reloaded(**batch).loss, expected)
        assert not torch.allclose(build_tiny_model(tiny_model_dir, 0).eval()(**batch).loss, expected)


def test_experts_set_targets_the_fused_expert_parameters(tiny: omni.OmniModel) -> None:
    lora_mod, m = lora, tiny
    cfg, _ = lora_mod.build_lora_config(m, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["experts"]))
    assert sorted(cfg.target_parameters) == [
        "llm.model.layers.0.mlp.experts.down_proj",
        "llm.model.layers.0.mlp.experts.gate_up_proj",
    ]
    assert not cfg.target_modules
    pm = lora_mod.apply_lora(m, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "experts"]))
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any("experts" in n and "lora_A" in n for n in trainable)
    assert any("q_a_proj.lora_A" in n for n in trainable)
