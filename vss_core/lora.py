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
from vss_core.targets import PARAMETER_SETS, TARGET_SETS, target_pattern

log = logging.getLogger(__name__)

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
        pattern, alias = target_pattern(target)
        if alias:
            warnings.append(alias)
            log.warning(alias)
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
