"""vss_core.experts: RoutedExperts against transformers' LongcatFlashExperts (outputs, gradients,
LoRA), and the model vss builds with it (parameter counts)."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from transformers import LongcatFlashConfig, LongcatFlashForCausalLM
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashExperts, LongcatFlashMoE

from vss_core import experts, plan
from vss_core import model as omni
from vss_core.model.checkpoint import llm_config

# (tokens, hidden, expert ffn, routed, zero, top-k)
SHAPES = [(37, 64, 32, 4, 2, 2), (64, 48, 24, 8, 4, 4), (5, 32, 16, 6, 0, 3), (128, 64, 32, 16, 8, 8)]


def _config(hidden: int, ffn: int, routed: int, zero: int, topk: int) -> LongcatFlashConfig:
    cfg = dict(omni.TINY_LLM_CONFIG, hidden_size=hidden, expert_ffn_hidden_size=ffn, n_routed_experts=routed)
    return llm_config(dict(cfg, zero_expert_num=zero, moe_topk=topk))


def _pair(
    cfg: LongcatFlashConfig, dtype: torch.dtype, seed: int = 0
) -> tuple[LongcatFlashExperts, experts.RoutedExperts]:
    """transformers' module with random weights, and RoutedExperts holding the same routed weights."""
    torch.manual_seed(seed)
    ref = LongcatFlashExperts(cfg)
    torch.nn.init.normal_(ref.gate_up_proj, std=0.1)
    torch.nn.init.normal_(ref.down_proj, std=0.1)
    ours = experts.RoutedExperts(cfg)
    ours.load_state_dict(experts.zero_expert_rows_dropped(ref.state_dict(), cfg))
    return ref.to(dtype), ours.to(dtype)


def _routing(tokens: int, cfg: LongcatFlashConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """top-k ids with zero experts among them and routed expert 1 picked by no token; weights as the
    router gives them (fp32, times routed_scaling_factor)."""
    gen = torch.Generator().manual_seed(seed)
    total = cfg.n_routed_experts + cfg.zero_expert_num
    scores = torch.rand(tokens, total, generator=gen)
    scores[:, 1] = -1.0
    index = scores.topk(cfg.moe_topk, dim=-1).indices
    weights = torch.rand(tokens, cfg.moe_topk, generator=gen) * cfg.routed_scaling_factor
    return index, weights


def _tol(dtype: torch.dtype, scale: float) -> dict[str, float]:
    # bf16: transformers rounds each expert's contribution to bf16 before summing, vss sums in fp32
    # and rounds once: a few bf16 ulps of the output's magnitude apart.
    return {"rtol": 1e-5, "atol": 1e-5 * scale} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2 * scale}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{s[0]}-H{s[1]}-E{s[3]}+{s[4]}-k{s[5]}" for s in SHAPES])
def test_outputs_and_gradients_equal_transformers(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tokens, hidden, ffn, routed, zero, topk = shape
    cfg = _config(hidden, ffn, routed, zero, topk)
    ref, ours = _pair(cfg, dtype)
    index, weights = _routing(tokens, cfg)
    assert not (index == 1).any() and (zero == 0 or (index >= routed).any())
    x = torch.randn(tokens, hidden).to(dtype)
    grad_out = torch.randn(tokens, hidden).to(dtype)

    results = []
    for module in (ref, ours):
        xi, wi = x.clone().requires_grad_(), weights.clone().requires_grad_()
        out = module(xi, index, wi)
        out.backward(grad_out)
        results.append((out, xi.grad, wi.grad, module.gate_up_proj.grad[:routed], module.down_proj.grad))
    for name, r, o in zip(["output", "d input", "d routing weights", "d gate_up_proj", "d down_proj"], *results):
        assert o.dtype == r.dtype, name
        torch.testing.assert_close(o, r, **_tol(dtype, r.abs().max().item()), msg=name)
    assert (ours.gate_up_proj.grad[1] == 0).all() and (ours.down_proj.grad[1] == 0).all()  # expert nobody picks


def test_only_zero_experts_picked_gives_weighted_identity_and_zero_weight_gradients() -> None:
    cfg = _config(64, 32, 4, 2, 2)
    ref, ours = _pair(cfg, torch.float32)
    x = torch.randn(7, 64)
    index = torch.tensor([[4, 5]] * 7)
    weights = torch.rand(7, 2)
    out = ours(x, index, weights)
    torch.testing.assert_close(out, x * weights.sum(-1, keepdim=True))
    torch.testing.assert_close(out, ref(x, index, weights))
    out.sum().backward()
    # The weights stay in the graph with a zero gradient, so every ZeRO-3 rank reduces the same parameters.
    assert ours.gate_up_proj.grad is not None and (ours.gate_up_proj.grad == 0).all()


def test_no_tokens() -> None:
    _, ours = _pair(_config(64, 32, 4, 2, 2), torch.float32)
    out = ours(torch.zeros(0, 64), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert out.shape == (0, 64)


@pytest.mark.skipif(not experts._grouped_mm_works(torch.device("cpu")), reason="torch._grouped_mm unavailable on CPU")
def test_grouped_product_equals_padded_product() -> None:
    # The CUDA path (torch._grouped_mm) checked on the CPU kernel: same offsets and weight layout.
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 0, 5, 8])  # an expert with no token
    expert = torch.repeat_interleave(torch.arange(4), counts)
    x = torch.randn(16, 64, generator=gen).bfloat16().requires_grad_()
    gate_up = (torch.randn(4, 64, 64, generator=gen) * 0.1).bfloat16().requires_grad_()
    down = (torch.randn(4, 64, 32, generator=gen) * 0.1).bfloat16().requires_grad_()
    act = torch.nn.SiLU()
    grad = torch.randn(16, 64, generator=gen).bfloat16()
    grads = []
    for fn in (experts._grouped_experts, lambda *a: experts._padded_experts(a[0], expert, *a[1:])):
        y = fn(x, counts, gate_up, down, act)
        y.backward(grad)
        grads.append((y, x.grad, gate_up.grad, down.grad))
        x.grad = gate_up.grad = down.grad = None
    for g, p in zip(*grads):
        torch.testing.assert_close(g, p, rtol=2e-2, atol=2e-2)


# --- LoRA on the experts (peft target_parameters) -------------------------------------------------


class _Block(torch.nn.Module):
    def __init__(self, cfg: LongcatFlashConfig, experts_module: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = LongcatFlashMoE(cfg)
        self.mlp.experts = experts_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _lora(block: torch.nn.Module) -> peft.PeftModel:
    cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=[], target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    )
    return peft.get_peft_model(block, cfg)


def _lora_weights(model: peft.PeftModel) -> dict[str, torch.nn.Parameter]:
    return {n.split("mlp.experts.")[1]: p for n, p in model.named_parameters() if "lora_" in n}


def _copy_routed_lora(ref: dict, ours: dict, routed: int) -> None:
    """Copy transformers-side LoRA factors of the routed experts into ours. peft lays expert e's
    factors out as lora_A rows [e*r:(e+1)*r] and lora_B columns e::E."""
    with torch.no_grad():
        for name, p in ours.items():
            src = ref[name]
            if "lora_A" in name:
                n_ref = src.shape[0] // (p.shape[0] // routed)
                p.copy_(src.view(n_ref, -1, src.shape[1])[:routed].reshape(p.shape))
            else:
                n_ref = src.shape[1] // (p.shape[1] // routed)
                p.copy_(src.view(src.shape[0], -1, n_ref)[..., :routed].reshape(p.shape))


def test_lora_on_experts_matches_transformers_module_with_lora_before_and_after_a_step() -> None:
    cfg = _config(64, 32, 4, 2, 2)
    ref_experts, our_experts = _pair(cfg, torch.float32)
    torch.manual_seed(1)
    ref_block = _Block(cfg, ref_experts)
    our_block = _Block(cfg, our_experts)
    our_block.mlp.router.load_state_dict(ref_block.mlp.router.state_dict())
    ref_model, our_model = _lora(ref_block), _lora(our_block)
    assert isinstance(our_model.base_model.model.mlp.experts, peft.tuners.lora.layer.ParamWrapper)
    ref_lora, our_lora = _lora_weights(ref_model), _lora_weights(our_model)
    assert sorted(ref_lora) == sorted(our_lora) and len(our_lora) == 4
    with torch.no_grad():  # lora_B starts at zero: make the adapters non-trivial before comparing
        for p in ref_lora.values():
            p.normal_(std=0.1)
    _copy_routed_lora(ref_lora, our_lora, cfg.n_routed_experts)

    x = torch.randn(2, 19, 64)
    with torch.no_grad(), our_model.disable_adapter():
        assert not torch.allclose(our_model(x), ref_model(x), atol=1e-3)  # the adapters do change the output
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (ref_model, our_model)]
    for step in range(2):
        outs = [m(x) for m in (ref_model, our_model)]
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5, msg=f"output after {step} steps")
        for out, opt in zip(outs, opts):
            opt.zero_grad()
            out.square().mean().backward()
            opt.step()
        for name, p in our_lora.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    copy = {n: p.detach().clone() for n, p in our_lora.items()}
    _copy_routed_lora(ref_lora, copy, cfg.n_routed_experts)
    for name, p in our_lora.items():
        torch.testing.assert_close(p, copy[name], msg=name)  # the same update on the routed experts


# --- the model vss builds and loads -----------------------------------------------------------------


def test_real_config_on_meta_allocates_routed_experts_only() -> None:
    real = LongcatFlashConfig()
    with torch.device("meta"):
        ours = sum(p.numel() for p in experts.build_llm(real).parameters())
        theirs = sum(p.numel() for p in LongcatFlashForCausalLM(real).parameters())
    zero_rows = real.num_layers * real.zero_expert_num * 2 * real.expert_ffn_hidden_size * real.hidden_size
    assert theirs - ours == zero_rows and zero_rows > 180e9
    assert 560e9 < ours < 561.5e9  # MODEL_FACTS: ~560.7B
    assert ours == plan.count_params(plan.real_model_shape()).llm


def test_omni_model_builds_routed_experts_and_planner_counts_what_it_allocates(tiny_model_dir: Path) -> None:
    model = omni.load_omni(tiny_model_dir)
    cfg = model.llm_config
    for layer in model.llm.model.layers:
        assert isinstance(layer.mlp, LongcatFlashMoE) and isinstance(layer.mlp.experts, experts.RoutedExperts)
        assert layer.mlp.experts.gate_up_proj.shape == (cfg.n_routed_experts, 2 * cfg.expert_ffn_hidden_size, 64)
    allocated = sum(p.numel() for p in model.parameters())
    assert omni.count_parameters(model)[1] == allocated
    assert plan.count_params(plan.read_model_shape(tiny_model_dir)).total == allocated
