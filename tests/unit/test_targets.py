"""vss_core.targets: what a `lora.targets` entry names, as an anchored regex over OmniModel's module names
(a named set, a source-document alias read as its set with a warning, or a module-name suffix)."""

from __future__ import annotations

import re

import pytest

from vss_core import targets

MODULES = [
    "llm.model.layers.0.self_attn.0.q_a_proj",
    "llm.model.layers.11.self_attn.1.kv_b_proj",
    "llm.model.layers.0.self_attn.0.o_proj",
    "llm.model.layers.0.mlps.1.down_proj",
    "llm.model.layers.0.mlp.router.classifier",
    "vision_projector.p0.0",
    "vision_projector.p0.1",
    "vision_projector.proj",
    "audio_projector.0",
    "audio_projector.2",
    "audio_output_layer.audio_output_layers.3",
    "audio_output_layer.embedding.0",
    "llm.lm_head",
    "audio_encoder.ffn.0",
]


def _matched(target: str) -> list[str]:
    pattern, _ = targets.target_pattern(target)
    return [m for m in MODULES if re.fullmatch(pattern, m)]


def test_named_sets_match_their_modules_only():
    assert _matched("attention") == MODULES[:3]
    assert _matched("dense_mlp") == ["llm.model.layers.0.mlps.1.down_proj"]
    # every projector module by name (the LayerNorm p0.0 too: keeping the Linear ones is vss_core.lora's job)
    assert _matched("projectors") == MODULES[5:10]
    assert _matched("audio_heads") == ["audio_output_layer.audio_output_layers.3"]  # not the frozen embeddings
    assert _matched("text_head") == ["llm.lm_head"]
    assert targets.target_pattern("attention") == (targets.TARGET_SETS["attention"], None)


@pytest.mark.parametrize(
    ("alias", "set_name"), [("q_proj", "attention"), ("v_proj", "attention"), ("audio_decoder", "audio_heads")]
)
def test_an_alias_is_read_as_its_set_with_a_warning_naming_both(alias, set_name):
    pattern, warning = targets.target_pattern(alias)
    assert pattern == targets.TARGET_SETS[set_name]
    assert warning.startswith(f"lora.targets: {alias!r} is read as {set_name!r} (")
    assert warning.endswith(f"write {set_name!r} to silence this")


def test_audio_encoder_is_read_as_the_audio_projector_alone():
    pattern, warning = targets.target_pattern("audio_encoder")
    assert [m for m in MODULES if re.fullmatch(pattern, m)] == ["audio_projector.0", "audio_projector.2"]
    assert "'audio_projector'" in warning and "frozen" in warning


def test_anything_else_is_a_module_name_suffix_taken_literally():
    assert _matched("kv_b_proj") == ["llm.model.layers.11.self_attn.1.kv_b_proj"]
    assert _matched("p0.1") == ["vision_projector.p0.1"]  # the dot is literal: p0x1 would not match
    assert not re.fullmatch(targets.target_pattern("p0.1")[0], "vision_projector.p0x1")
    assert _matched("proj") == ["vision_projector.proj"]  # a whole name part, not the end of o_proj
    assert targets.target_pattern("lm_head")[1] is None


def test_every_alias_points_at_a_set_and_the_experts_are_parameters():
    for set_name, _why in targets.ALIASES.values():
        assert set_name in targets.TARGET_SETS or set_name in targets.EXTRA_SETS
    rx = re.compile(targets.PARAMETER_SETS["experts"])
    assert rx.fullmatch("llm.model.layers.2.mlp.experts.gate_up_proj")
    assert rx.fullmatch("llm.model.layers.2.mlp.experts.down_proj")
    assert not rx.fullmatch("llm.model.layers.2.mlp.router.classifier.weight")
