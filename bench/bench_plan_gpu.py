"""The planner's per-rank GPU figure against a real GPU's peaks, at the real model's widths (issue 18 item 3).

    .venv/bin/python bench/bench_plan_gpu.py [--experts 24 --layers 2 --steps 4]   # needs CUDA for the measured side

The model: LongCat-Flash-Omni's real LLM widths (hidden 6144, the real MLA dimensions: q_lora 1536,
kv_lora 512, 64 heads of 128 + 64 rope / 128 v, dense FFN 12288, expert width 2048, top-12 routing)
with fewer routed experts (--experts; zero experts in the real 1:2 ratio) and decoder layers
(--layers) so it fits one GPU, written through the tiny checkpoint's own code path
(`vss_core.model.write_tiny_checkpoint(dir, llm_overrides=...)`, the official layout); the text
vocabulary, the vision and the audio encoders stay tiny. Default: 24 experts, 2 layers.

On every machine (the CPU-safe part, no weights written: writing them takes ~8 bytes of RAM per
parameter, more than a 24 GiB machine has): the planner's figures for that LLM (with the official
encoders and vocabulary) under the conservative-2xb200 config on one GPU (ZeRO-3, parameter and
optimizer offload, bf16): the per-rank GPU items, the MoE leaf, the time estimate for a B200 and an
H200.

With CUDA (one GPU): the model is trained for --steps optimizer steps through vss_core.launch.run_training
(the DeepSpeed launcher, one rank) on the demo's samples, and the run's own planner check is printed
(`plan_check` of train_summary.json: torch.cuda.max_memory_allocated / max_memory_reserved per rank
against the plan's GPU figure, host RAM per rank, seconds per step against the estimate), and the
time the compute stream waited in DeepSpeed's forward fetches, the MoE leaves apart (`fetch_s_leaf`,
`fetch_s_other` of train_summary.json: CUDA event pairs around DeepSpeed's pre-forward hooks,
train._ZeroGathers; forward and recompute, not the backward's own fetches), per step.

Without CUDA the measured side is skipped and says so: no GPU was lent when this was written, so the
CUDA path has not run yet.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


def real_width_llm(experts: int, layers: int) -> dict:
    """The real LLM's widths with `experts` routed experts (zero experts at the real 1:2) and `layers`."""
    from transformers import LongcatFlashConfig

    real = LongcatFlashConfig()
    keep = (
        "hidden_size",
        "num_attention_heads",
        "ffn_hidden_size",
        "q_lora_rank",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "head_dim",
        "expert_ffn_hidden_size",
        "moe_topk",
    )
    out = {k: getattr(real, k) for k in keep if hasattr(real, k)}
    zero = round(experts * real.zero_expert_num / real.n_routed_experts)
    return out | {"n_routed_experts": experts, "zero_expert_num": zero, "num_layers": layers}


def planned(shape, overrides: dict, gpu: str):
    from vss_core import plan
    from vss_core.config import load_config

    cfg = load_config("conservative-2xb200", overrides)
    ins = plan.inputs_from_config(cfg, shape, num_samples=8)
    machine = plan.Machine(gpus_per_node=1, gpu_memory_gib=None, ram_gib=None, disk_gib=None, gpu_name=gpu)
    return cfg, plan.plan(ins, machine, suggest=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=24, help="routed experts per layer (default 24; real 512)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2; real 28)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps to train with CUDA (default 4)")
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    args = parser.parse_args()

    import torch
    from transformers import LongcatFlashConfig

    from vss_core import codec, data, demo, model, plan

    llm = real_width_llm(args.experts, args.layers)
    with tempfile.TemporaryDirectory(prefix="vss-bench-plan-gpu-", dir=args.dir) as tmp:
        work = Path(tmp)
        overrides = {
            "data.root": str(work / "data"),
            "data.eval_fraction": 0.0,
            "data.validation_cache": None,
            "data.video_frames": 4,
            "data.audio_seconds": 4.0,
            "hardware.gpus_per_node": 1,
            "training.output_dir": str(work / "runs"),
            "training.max_steps": args.steps,
            "training.gradient_accumulation_steps": 1,
            "training.save_every_n_steps": args.steps + 1,
        }
        shape = plan.shape_from_llm_config(LongcatFlashConfig(**llm), "real widths, fewer experts and layers")
        print(f"model: real widths ({json.dumps(llm)}); official encoders and vocabulary in the plan")
        for gpu in ("NVIDIA B200", "NVIDIA H200"):
            cfg, p = planned(shape, overrides, gpu)
            dev = p.resource("GPU memory")
            print(
                f"\nplanned for {gpu} (conservative-2xb200 on 1 GPU): {p.facts['total_params'] / 1e9:.2f}B params, "
                f"MoE leaf {p.facts['moe_leaf_gib']:.2f} GiB, GPU per rank {dev.need_gib:.2f} GiB"
            )
            for item in dev.items:
                print(f"  {item.component:<78} {item.gib:8.3f} GiB  {item.note}")
            print(f"  time per optimizer step {p.time.step_s:.2f} s (overlapped {p.time.step_overlap_s:.2f} s)")

        if not torch.cuda.is_available():
            print("\nmeasured: skipped, no CUDA on this machine (the planner's GPU figures above are not checked here)")
            return
        from vss_core import launch
        from vss_core.runs import create_run

        t0 = time.perf_counter()
        model_dir = model.write_tiny_checkpoint(work / "model", llm_overrides=llm)
        codec_dir = codec.write_tiny_codec(work / "codec")
        demo.write_demo_dataset(work / "data", 8, seconds=2.0)
        print(f"\ncheckpoint written in {time.perf_counter() - t0:.0f} s (tiny vocabulary and encoders)")
        sources = {"model.source": str(model_dir), "model.codec_source": str(codec_dir)}
        cfg, _ = planned(plan.read_model_shape(model_dir), overrides | sources, torch.cuda.get_device_name(0))
        report = data.validate_dataset(cfg.data)
        prepared = Path(data.prepare_dataset(report.valid, cfg.data, model_dir, codec_dir, work / "prepared").dir)
        run = create_run(cfg)
        t0 = time.perf_counter()
        launch.run_training(cfg, run, model_dir, prepared)
        summary = json.loads((Path(run.root) / "train_summary.json").read_text())
        print(f"\nmeasured on {torch.cuda.get_device_name(0)} ({args.steps} steps, {time.perf_counter() - t0:.0f} s):")
        for rank in summary["measured"]["per_rank"]:
            print(
                f"  max_memory_allocated {rank.get('gpu_max_allocated_bytes', 0) / 2**30:.2f} GiB, "
                f"max_memory_reserved {rank.get('gpu_max_reserved_bytes', 0) / 2**30:.2f} GiB, "
                f"step {rank['step_time_s']:.2f} s, forward fetches a step: MoE leaves "
                f"{rank.get('fetch_s_leaf', 0.0) / args.steps:.2f} s, the rest {rank.get('fetch_s_other', 0.0) / args.steps:.2f} s"
            )
        from vss_core.plancheck import PlanCheck

        print(PlanCheck.model_validate(summary["plan_check"]).table() if summary.get("plan_check") else "no plan check")


if __name__ == "__main__":
    main()
