"""LoRA targets resolved against the real module names of OmniModel, and the peft model built on them.

`lora.targets` holds named sets (TARGET_SETS) or module-name suffixes. Every entry is resolved to the
full names of the modules it matches; peft then gets that explicit list, so what is trained is exactly
what the resolution reports. A target that matches nothing is a config error naming real modules.

Choices:
- The source documents' `q_proj`, `k_proj`, `v_proj`, `o_proj` name no module of LongCat's MLA
  attention; they map to the `attention` set (q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj,
  o_proj) with a warning.
- `audio_encoder` maps to the audio projector (`audio_projector`): the SFT recipe keeps the FSMN
  encoder frozen, so its adaptor into the LLM is what adapts. `audio_decoder` maps to `audio_heads`
  (LoRA on the 4 speech output heads): the codec decoder itself is outside the model.
- The audio heads stay frozen apart from LoRA on them (full heads are hidden x 8224 x 4 ≈ 200M
  parameters on the real model and would bloat every adapter).
"""

from __future__ import annotations

import logging
import re

import peft
from torch import nn

from vss_core.config import LoraConfig
from vss_core.errors import ConfigError

log = logging.getLogger(__name__)

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
_EXTRA_SETS = {"audio_projector": r"audio_projector\.\d+", "vision_projector": r"vision_projector\.(p0\.\d+|proj)"}

# Module types peft's LoRA can wrap.
_LORA_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _matches(model: nn.Module, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [n for n, m in model.named_modules() if rx.fullmatch(n) and isinstance(m, _LORA_TYPES)]


def resolve_targets(model: nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """Resolve lora.targets to full module names (sorted, unique) plus warnings.

    Parameter sets (PARAMETER_SETS, e.g. 'experts') are skipped here: see `resolve_parameter_targets`.

    Raises:
        ConfigError: a target matches no module LoRA can wrap (all such targets at once).
    """
    names: set[str] = set()
    warnings: list[str] = []
    problems: list[str] = []
    for target in targets:
        if target in PARAMETER_SETS:
            continue
        if target in TARGET_SETS:
            pattern = TARGET_SETS[target]
        elif target in ALIASES:
            set_name, why = ALIASES[target]
            pattern = TARGET_SETS.get(set_name) or _EXTRA_SETS[set_name]
            msg = f"lora.targets: {target!r} is read as {set_name!r} ({why}); write {set_name!r} to silence this"
            warnings.append(msg)
            log.warning(msg)
        else:
            pattern = rf"(.*\.)?{re.escape(target)}"
        found = _matches(model, pattern)
        if not found:
            problems.append(_no_match(model, target, pattern))
            continue
        router = [n for n in found if n.endswith("router.classifier")]
        if router:
            msg = (
                f"lora.targets: {target!r} matches the MoE router ({router[0]}, ...), which runs through "
                "F.linear: LoRA there gets no gradient"
            )
            warnings.append(msg)
            log.warning(msg)
        names.update(found)
    if problems:
        raise ConfigError("\n".join(problems))
    return sorted(names), warnings


def _no_match(model: nn.Module, target: str, pattern: str) -> str:
    rx = re.compile(pattern)
    wrong_type = [n for n, m in model.named_modules() if n and rx.fullmatch(n)]
    examples = [found[0] for found in (_matches(model, p) for p in TARGET_SETS.values()) if found]
    where = (
        f" (it names {wrong_type[0]}, a {type(model.get_submodule(wrong_type[0])).__name__}, which LoRA cannot wrap)"
        if wrong_type
        else ""
    )
    return (
        f"lora.targets: {target!r} matches no module in this model{where}. "
        f"Valid sets: {', '.join([*TARGET_SETS, *PARAMETER_SETS])}; example module names: {', '.join(examples)}"
    )


def resolve_parameter_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the parameters the parameter sets in lora.targets select (sorted).

    Raises:
        ConfigError: a parameter set matches no parameter in this model.
    """
    names: list[str] = []
    for target in targets:
        if target in PARAMETER_SETS:
            rx = re.compile(PARAMETER_SETS[target])
            found = [n for n, _ in model.named_parameters() if rx.fullmatch(n)]
            if not found:
                raise ConfigError(f"lora.targets: {target!r} matches no parameter in this model (pattern {rx.pattern})")
            names += found
    return sorted(set(names))


def build_lora_config(model: nn.Module, cfg: LoraConfig) -> tuple[peft.LoraConfig, list[str]]:
    """peft LoraConfig with the resolved, explicit target_modules list, plus warnings.

    Raises:
        ConfigError: a target matches no module.
    """
    names, warnings = resolve_targets(model, cfg.targets)
    parameters = resolve_parameter_targets(model, cfg.targets)
    config = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=names,
        target_parameters=parameters or None,
        bias="none",
    )
    return config, warnings


def apply_lora(model: nn.Module, cfg: LoraConfig) -> peft.PeftModel:
    """Freeze the model and add LoRA adapters on the resolved targets (only they train).

    Raises:
        ConfigError: a target matches no module.
    """
    config, _ = build_lora_config(model, cfg)
    return peft.get_peft_model(model, config)
