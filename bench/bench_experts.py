"""Expert benchmarks: vss's RoutedExperts against transformers 5.23's LongcatFlashExperts.

    .venv/bin/python bench/bench_experts.py                  # ~5 minutes on 2 cores
    .venv/bin/python bench/bench_experts.py --repeats 9 --mid-tokens 4096

1. Time of one forward + backward of each module on the same weights, tokens and routing, in this
   process, alternating the two modules; the median of `--repeats` runs after one warm-up each.
   Two cases: expert weights trainable (gradients w.r.t. input, routing weights and expert
   weights: what LoRA on the experts needs, the LoRA-parametrized weight requiring grad) and frozen
   (gradients w.r.t. input and routing weights only: LoRA elsewhere). CPU (vss's padded-bmm
   path; torch._grouped_mm is its CUDA bf16 path), fp32, for the tiny config and a mid-size one
   (hidden 1024, 64 routed + 32 zero experts, top-8, expert ffn 512). The routing is the router's
   own on random hidden states (softmax scores, top-k, times routed_scaling_factor), so zero
   experts are picked as often as the router picks them. The outputs are checked equal first.
2. Parameters of the real-size LLM (`LongcatFlashConfig()`) built on the meta device with each
   experts module, and of one MoE block (what ZeRO-3 gathers whole).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LongcatFlashConfig, LongcatFlashForCausalLM
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashExperts, LongcatFlashTopkRouter

from vss_core import experts
from vss_core import model as omni

MID = {"hidden_size": 1024, "n_routed_experts": 64, "zero_expert_num": 32, "moe_topk": 8, "expert_ffn_hidden_size": 512}


def _modules(cfg: LongcatFlashConfig) -> tuple[LongcatFlashExperts, experts.RoutedExperts]:
    torch.manual_seed(0)
    ref = LongcatFlashExperts(cfg)
    torch.nn.init.normal_(ref.gate_up_proj, std=0.02)
    torch.nn.init.normal_(ref.down_proj, std=0.02)
    ours = experts.RoutedExperts(cfg)
    ours.load_state_dict(experts.zero_expert_rows_dropped(ref.state_dict(), cfg))
    return ref, ours


def _step(module: torch.nn.Module, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> float:
    for p in module.parameters():
        p.grad = None
    x, weights = x.clone().requires_grad_(), weights.clone().requires_grad_()
    start = time.perf_counter()
    module(x, index, weights).square().mean().backward()
    return time.perf_counter() - start


def bench_case(name: str, cfg: LongcatFlashConfig, tokens: int, repeats: int, trainable: bool) -> dict[str, float]:
    ref, ours = _modules(cfg)
    ref.requires_grad_(trainable)
    ours.requires_grad_(trainable)
    torch.manual_seed(1)
    x = torch.randn(tokens, cfg.hidden_size)
    router = LongcatFlashTopkRouter(cfg)
    torch.nn.init.normal_(router.classifier.weight, std=0.02)
    with torch.no_grad():
        _, weights, index = router(x)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, index, weights), ref(x, index, weights), rtol=1e-4, atol=1e-5)
    times: dict[str, list[float]] = {"transformers": [], "vss": []}
    for module in (ref, ours):
        _step(module, x, index, weights)  # warm-up
    for _ in range(repeats):
        times["transformers"].append(_step(ref, x, index, weights))
        times["vss"].append(_step(ours, x, index, weights))
    med = {k: statistics.median(v) for k, v in times.items()}
    zero_share = (index >= cfg.n_routed_experts).float().mean().item()
    hit = len(set(index[index < cfg.n_routed_experts].tolist()))
    weights_state = "trainable" if trainable else "frozen"
    print(
        f"{name:5s} tokens={tokens:5d} hidden={cfg.hidden_size:5d} "
        f"experts={cfg.n_routed_experts}+{cfg.zero_expert_num} top-{cfg.moe_topk} ffn={cfg.expert_ffn_hidden_size}  "
        f"(routed experts hit {hit}, zero-expert picks {zero_share:.0%}), expert weights {weights_state}\n"
        f"      fwd+bwd median of {repeats}: transformers {med['transformers'] * 1e3:8.1f} ms, "
        f"vss {med['vss'] * 1e3:8.1f} ms  ->  vss is {med['transformers'] / med['vss']:.2f}x faster"
    )
    return med


def bench_params() -> None:
    real = LongcatFlashConfig()
    with torch.device("meta"):
        theirs = LongcatFlashForCausalLM(real)
        ours = experts.build_llm(real)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    t, o = count(theirs), count(ours)
    tm, om = count(theirs.model.layers[0].mlp), count(ours.model.layers[0].mlp)
    print(
        f"real-size LLM on meta: transformers {t / 1e9:.2f}B params, vss {o / 1e9:.2f}B "
        f"({(t - o) / 1e9:.2f}B = {2 * (t - o) / 1e9:.0f} GB bf16 less, ratio {t / o:.3f})\n"
        f"one MoE block (ZeRO-3 leaf): transformers {tm / 1e9:.2f}B, vss {om / 1e9:.2f}B "
        f"({2 * tm / 1e9:.1f} vs {2 * om / 1e9:.1f} GB bf16 gathered per layer)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny-tokens", type=int, default=512)
    parser.add_argument("--mid-tokens", type=int, default=2048)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32")
    for trainable in (False, True):
        bench_case("tiny", omni._llm_config(omni.TINY_LLM_CONFIG), args.tiny_tokens, args.repeats, trainable)
        mid = omni._llm_config(dict(omni.TINY_LLM_CONFIG, **MID))
        bench_case("mid", mid, args.mid_tokens, args.repeats, trainable)
    bench_params()


if __name__ == "__main__":
    main()
