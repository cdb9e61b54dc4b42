"""LongCat-Flash experts sized for the routed experts only, computed grouped.

transformers 5.23's `LongcatFlashExperts` (MODEL_FACTS.md) has two costs vss does not want to pay:
- its `gate_up_proj` is allocated for routed *and* zero experts ([512 + 256, 2 * 2048, 6144] per
  layer on the real model) although zero experts are identities that never read it and the
  checkpoint has no weights for them: ~180B parameters, ~360 GB bf16, and a 25.8B- instead of a
  19.3B-parameter MoE block for ZeRO-3 to gather whole;
- its forward loops in Python over every expert the batch hits (nearly all 512 at top-12).

`RoutedExperts` keeps transformers' parameter names, layout and forward signature, so
`LongcatFlashMoE`, the checkpoint keys, peft's `target_parameters` and the ZeRO-3 leaf setting are
unchanged; it holds the routed experts only and computes them with one grouped product for gate-up
and one for down (`torch._grouped_mm` on CUDA in bf16, padded `torch.bmm` elsewhere).

No upstream transformers issue tracks the oversized allocation as of 5.23; if a later release
sizes `gate_up_proj` for the routed experts, `build_llm` can go back to plain construction.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
from torch import nn
from transformers import LongcatFlashConfig, LongcatFlashForCausalLM
from transformers.activations import ACT2FN
from transformers.models.longcat_flash import modeling_longcat_flash

from vss_core.errors import ModelError

# torch._grouped_mm needs 16-byte aligned rows: hidden and expert ffn sizes a multiple of 8 in bf16.
_GROUPED_MM_ALIGN = 8


class RoutedExperts(nn.Module):
    """The experts of one LongCat-Flash MoE block: weights for the routed experts only.

    Parameters, as in transformers' `LongcatFlashExperts` (a row is an `F.linear` weight):
        gate_up_proj  [n_routed, 2 * expert_ffn, hidden]  (gate rows first, then up rows)
        down_proj     [n_routed, hidden, expert_ffn]

    Expert ids >= n_routed in `top_k_index` are zero-computation experts: each adds its routing
    weight times the input, as transformers does.
    """

    def __init__(self, config: LongcatFlashConfig) -> None:
        super().__init__()
        self.intermediate_size = config.expert_ffn_hidden_size
        self.hidden_size = config.hidden_size
        self.num_routed_experts = config.n_routed_experts
        self.zero_expert_num = config.zero_expert_num or 0
        self.total_experts = self.num_routed_experts + self.zero_expert_num
        self.act_fn = ACT2FN[config.hidden_act]
        if self.num_routed_experts > 0:
            self.gate_up_proj = nn.Parameter(
                torch.empty(self.num_routed_experts, 2 * self.intermediate_size, self.hidden_size)
            )
            self.down_proj = nn.Parameter(
                torch.empty(self.num_routed_experts, self.hidden_size, self.intermediate_size)
            )
        else:
            self.register_parameter("gate_up_proj", None)
            self.register_parameter("down_proj", None)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states [T, H], top_k_index [T, K] (ids over routed + zero experts), top_k_weights
        [T, K] -> [T, H] in the dtype of hidden_states."""
        if top_k_index.numel() == 0:
            return torch.zeros_like(hidden_states)
        n_routed = self.num_routed_experts
        # Combine in fp32 (the router's weights are fp32): one rounding to the activation dtype at the end.
        out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)

        is_zero = top_k_index >= n_routed
        if self.zero_expert_num or n_routed == 0:
            zero_weight = torch.where(is_zero, top_k_weights, 0).sum(dim=-1, keepdim=True)
            out = out + hidden_states * zero_weight
        if n_routed == 0:
            return out.to(hidden_states.dtype)

        # Routed (token, slot) pairs, sorted by expert so each expert's tokens are contiguous.
        k = top_k_index.shape[1]
        flat_index = top_k_index.reshape(-1)
        slots = (~is_zero).reshape(-1).nonzero().squeeze(1)
        order = torch.argsort(flat_index[slots], stable=True)
        slots = slots[order]
        expert = flat_index[slots]
        token = torch.div(slots, k, rounding_mode="floor")
        counts = torch.bincount(expert, minlength=n_routed)
        x = hidden_states[token]

        # Attribute reads, once each: peft's ParamWrapper (LoRA via target_parameters) parametrizes
        # these names, and the parametrization applies on access.
        gate_up_proj, down_proj = self.gate_up_proj, self.down_proj
        if _use_grouped_mm(x, self.hidden_size, self.intermediate_size) and slots.numel() > 0:
            y = _grouped_experts(x, counts, gate_up_proj, down_proj, self.act_fn)
        else:
            y = _padded_experts(x, expert, counts, gate_up_proj, down_proj, self.act_fn)
        y = y * top_k_weights.reshape(-1)[slots, None]
        out = out.index_add(0, token, y.to(out.dtype))
        return out.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return (
            f"routed={self.num_routed_experts}, zero={self.zero_expert_num}, "
            f"hidden={self.hidden_size}, ffn={self.intermediate_size}"
        )


def _grouped_experts(
    x: torch.Tensor, counts: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, act_fn: nn.Module
) -> torch.Tensor:
    """x [N, H] sorted by expert, counts [E] -> [N, H] with one grouped GEMM per projection."""
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    gate, up = torch._grouped_mm(x, gate_up_proj.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
    return torch._grouped_mm(act_fn(gate) * up, down_proj.transpose(-2, -1), offs=offs)


def _padded_experts(
    x: torch.Tensor,
    expert: torch.Tensor,
    counts: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: nn.Module,
) -> torch.Tensor:
    """x [N, H] sorted by expert (ids `expert` [N]) -> [N, H]: each expert's tokens padded to the
    largest group, one bmm per projection. Padded rows are zeros and add nothing to any gradient;
    the cost is n_routed * largest group rows, close to N when routing is balanced."""
    n_routed = gate_up_proj.shape[0]
    capacity = int(counts.max()) if x.shape[0] else 0
    start = torch.cumsum(counts, 0) - counts
    position = torch.arange(x.shape[0], device=x.device) - start[expert]
    padded = x.new_zeros(n_routed, capacity, x.shape[1]).index_put((expert, position), x)
    gate, up = torch.bmm(padded, gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
    y = torch.bmm(act_fn(gate) * up, down_proj.transpose(1, 2))
    return y[expert, position]


def _use_grouped_mm(x: torch.Tensor, hidden: int, ffn: int) -> bool:
    return (
        x.is_cuda
        and x.dtype == torch.bfloat16
        and hidden % _GROUPED_MM_ALIGN == 0
        and ffn % _GROUPED_MM_ALIGN == 0
        and _grouped_mm_works(x.device)
    )


@functools.cache
def _grouped_mm_works(device: torch.device) -> bool:
    """Whether torch._grouped_mm runs forward and backward in bf16 on this device (it needs a recent
    torch and, depending on the version, a recent GPU); checked once per device by trying it."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        # The first call may come from inside no_grad / inference_mode (evaluation): the answer is
        # cached for training too, so the probe runs its backward regardless.
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.randn(16, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
            w = torch.randn(2, 16, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
            offs = torch.tensor([8, 16], device=device, dtype=torch.int32)
            torch._grouped_mm(x, w.transpose(-2, -1), offs=offs).float().sum().backward()
    except (RuntimeError, NotImplementedError):
        return False
    return True


# --- building the LLM with them -----------------------------------------------------------------

_SWAP_LOCK = threading.Lock()


@contextlib.contextmanager
def _routed_experts_in_transformers() -> Iterator[None]:
    # `LongcatFlashMoE.__init__` looks `LongcatFlashExperts` up in its module's globals, so this is
    # the one place to keep the oversized module from ever being allocated (under zero.Init it would
    # be materialized on the device before being partitioned). transformers' `_init_weights` reads
    # the same global, so it initializes RoutedExperts the way it initializes its own experts.
    with _SWAP_LOCK:
        original = modeling_longcat_flash.LongcatFlashExperts
        modeling_longcat_flash.LongcatFlashExperts = RoutedExperts
        try:
            yield
        finally:
            modeling_longcat_flash.LongcatFlashExperts = original


def build_llm(config: LongcatFlashConfig) -> LongcatFlashForCausalLM:
    """transformers' `LongcatFlashForCausalLM` with `RoutedExperts` in every MoE block.

    Works under `torch.device("meta")` and `deepspeed.zero.Init` like plain construction.

    Raises:
        ModelError: transformers no longer builds its MoE experts the way this relies on (a
            transformers upgrade); pin transformers to the version in pyproject.toml.
    """
    with _routed_experts_in_transformers():
        llm = LongcatFlashForCausalLM(config)
    wrong = [
        f"model.layers.{i}.mlp.experts ({type(layer.mlp.experts).__name__})"
        for i, layer in enumerate(llm.model.layers)
        if not isinstance(layer.mlp.experts, RoutedExperts)
    ]
    if wrong:
        raise ModelError(
            f"transformers {_transformers_version()} built {', '.join(wrong)} instead of vss's RoutedExperts; "
            "this transformers version builds LongCat-Flash experts differently. Install the transformers "
            "version pinned in pyproject.toml."
        )
    return llm


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def zero_expert_rows_dropped(state: dict[str, torch.Tensor], config: LongcatFlashConfig) -> dict[str, torch.Tensor]:
    """A transformers `LongcatFlashForCausalLM` state dict with `gate_up_proj` cut to the routed
    experts: the tensors `RoutedExperts` loads (and what the real checkpoint holds)."""
    n = config.n_routed_experts
    return {k: (v[:n] if k.rsplit(".", 1)[-1] == "gate_up_proj" else v) for k, v in state.items()}
