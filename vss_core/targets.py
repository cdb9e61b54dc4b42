"""What `lora.targets` names, resolved to module-name patterns without peft or torch: the one rule
`vss_core.lora` (which builds the peft model) and `vss_core.plan` (which counts LoRA parameters before
anything is downloaded) both apply."""

from __future__ import annotations

import re

# set name -> anchored regex over full module names of OmniModel
TARGET_SETS: dict[str, str] = {
    "attention": r"llm\.model\.layers\.\d+\.self_attn\.\d+\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)",
    "dense_mlp": r"llm\.model\.layers\.\d+\.mlps\.\d+\.(gate_proj|up_proj|down_proj)",
    # the official projector module names: vision `p0.{1,3}` + `proj` (p0.0 is its LayerNorm), audio `0`, `2`
    "projectors": r"(vision_projector\.(p0\.\d+|proj)|audio_projector\.\d+)",
    # the 4 speech heads of the official AudioOutputLayer (its `embedding.*` tables stay frozen)
    "audio_heads": r"audio_output_layer\.audio_output_layers\.\d+",
    # the LLM's text output head (the text stream the model speaks along): LoRA on lm_head
    "text_head": r"llm\.lm_head",
}

# source-document name -> (set, why)
ALIASES: dict[str, tuple[str, str]] = {
    "q_proj": ("attention", "LongCat's MLA attention has no q_proj"),
    "k_proj": ("attention", "LongCat's MLA attention has no k_proj"),
    "v_proj": ("attention", "LongCat's MLA attention has no v_proj"),
    "o_proj": ("attention", "o_proj alone is one of the five MLA projections"),
    "audio_encoder": ("audio_projector", "the SFT recipe keeps the audio encoder frozen and adapts its projector"),
    "audio_decoder": ("audio_heads", "the speech decoder side of the model is its 4 output heads"),
}
# set name -> anchored regex over full PARAMETER names: the fused 3-D expert weights, which peft
# adapts through `target_parameters` (a Linear-module LoRA cannot wrap them).
PARAMETER_SETS: dict[str, str] = {
    "experts": r"llm\.model\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)",
}
# sets an alias may point at besides TARGET_SETS ("audio_encoder" -> the audio projector alone)
EXTRA_SETS = {"audio_projector": r"audio_projector\.\d+", "vision_projector": r"vision_projector\.(p0\.\d+|proj)"}


def target_pattern(target: str) -> tuple[str, str | None]:
    """(anchored regex over full module names, the alias warning or None) for one lora.targets entry:
    a named set, a source-document alias (read as its set, with a warning), or a module-name suffix."""
    if target in TARGET_SETS:
        return TARGET_SETS[target], None
    if target in ALIASES:
        set_name, why = ALIASES[target]
        warning = f"lora.targets: {target!r} is read as {set_name!r} ({why}); write {set_name!r} to silence this"
        return TARGET_SETS.get(set_name) or EXTRA_SETS[set_name], warning
    return rf"(.*\.)?{re.escape(target)}", None
