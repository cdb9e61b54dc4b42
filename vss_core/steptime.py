"""How long a planned run takes: seconds per micro batch, per optimizer step and per epoch, from the
bytes a step moves and the FLOPs it computes, each at a stated, overridable rate.

The model of one micro batch on one rank, no overlap assumed (an upper bound; with perfect overlap of
traffic and compute a step would take the larger of the two, also shown):

- compute: 2 FLOPs per active parameter per token forward, 2 again for the recompute of activation
  checkpointing, 2 for the backward's input gradients (the frozen base computes no weight
  gradients; LoRA's are negligible): 6 x active x tokens, at `tflops x mfu`. Active parameters: the
  LLM less its input embedding and the routed experts a token does not use (top-k of n, zero
  experts counted as used: an upper bound), plus the frozen encoders' forward per patch / frame.
- parameter all-gathers (ZeRO-3): every weight is gathered for the forward, the recompute and the
  backward (3 passes; 2 without checkpointing). Under ZeRO-3 a MoE layer is one leaf: all its
  experts move, not the top-k. Each pass moves the rank's partition host -> device over PCIe when
  parameters are offloaded, and (world-1)/world of all weights into each rank over NVLink (inside a
  node) or the network (between nodes, shared by the node's ranks).
- gradients: LoRA's reduce-scattered over the same links, then (offloaded optimizer) each rank's
  fp32 shard copied to the host.

Per optimizer step, on top: the CPU Adam update of each rank's shard and its copy back, and a
checkpoint's write spread over training.save_every_n_steps.

The rates are datasheet figures of the GPU (`GPUS`) times an efficiency, or assumptions; every one
can be overridden (`vss plan --assume mfu=0.3`). bench/bench_plan.py measures what it can on CPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

# Datasheet figures per GPU: dense BF16 TFLOPS; NVLink GB/s per direction; PCIe GB/s per direction.
# H100/H200 SXM: 989 TFLOPS, NVLink 4 900 GB/s bidirectional, PCIe Gen5 x16 128 GB/s bidirectional
# (NVIDIA H100 / H200 datasheets). B200 (HGX): 2.25 PFLOPS dense BF16, NVLink 5 1.8 TB/s bidirectional,
# PCIe Gen5 (NVIDIA HGX B200 datasheet). A100 SXM: 312 TFLOPS, NVLink 3 600 GB/s, PCIe Gen4 64 GB/s.
GPUS: dict[str, tuple[float, float, float]] = {
    "B200": (2250.0, 900.0, 64.0),
    "H200": (989.0, 450.0, 64.0),
    "H100": (989.0, 450.0, 64.0),
    "A100": (312.0, 300.0, 32.0),
}
DEFAULT_GPU = "H100"


@dataclass(frozen=True)
class Speeds:
    """The rates a time estimate assumes. `source` says where each default came from."""

    tflops: float = 989.0  # peak dense BF16 TFLOPS per device
    mfu: float = 0.2  # share of the peak the matmuls reach: few tokens per micro batch, top-k of many experts
    pcie_gbps: float = 64.0  # host <-> device, GB/s per direction per device
    nvlink_gbps: float = 450.0  # device <-> device inside a node, GB/s per direction per device
    net_gbps: float = 50.0  # between nodes, GB/s per node (e.g. 4 x 100 Gb/s); assumed
    link_efficiency: float = 0.7  # share of a link's datasheet rate a transfer reaches; assumed
    disk_gbps: float = 2.0  # checkpoint writes, GB/s; assumed (one NVMe)
    adam_gparams: float = 1.0  # DeepSpeed CPU Adam, billions of parameters updated per second per rank; assumed
    source: str = "H100 datasheet"

    @classmethod
    def for_device(cls, accelerator: str, gpu_name: str | None) -> Speeds:
        """The datasheet rates of a named GPU (matched by model, e.g. 'NVIDIA B200' -> B200), H100's
        when the GPU is unknown or not given; for the CPU accelerator, rates of one CPU rank."""
        if accelerator == "cpu":
            # One CPU rank (the demo): fp32 matmuls on one core, gloo over shared memory; assumed.
            return cls(tflops=0.05, mfu=0.5, pcie_gbps=10.0, nvlink_gbps=2.0, source="assumed, CPU rank")
        model = next((m for m in GPUS if gpu_name and m in gpu_name.upper()), None)
        flops, nvlink, pcie = GPUS[model or DEFAULT_GPU]
        source = f"{model} datasheet" if model else f"{DEFAULT_GPU} datasheet (GPU {gpu_name or 'not given'})"
        return cls(tflops=flops, nvlink_gbps=nvlink, pcie_gbps=pcie, source=source)

    def with_overrides(self, overrides: dict[str, float]) -> Speeds:
        """These speeds with `name=value` overrides (names of the fields).

        Raises:
            ValueError: an unknown name, or a value that is not a positive number.
        """
        names = {f.name for f in dataclasses.fields(self)} - {"source"}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ValueError(f"unknown --assume name(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
        wrong = [k for k, v in overrides.items() if not (isinstance(v, (int, float)) and v > 0)]
        if wrong:
            raise ValueError(f"--assume {', '.join(wrong)}: must be positive numbers")
        if not overrides:
            return self
        given = ", ".join(f"{k}={v:g}" for k, v in overrides.items())
        return dataclasses.replace(self, **overrides, source=f"{self.source}; given {given}")


class TimeItem(BaseModel):
    component: str
    seconds: float
    per: str  # "micro batch", "step", "epoch"
    note: str = ""


class TimeEstimate(BaseModel):
    items: list[TimeItem]
    micro_batch_s: float
    step_s: float  # no overlap (upper bound)
    step_overlap_s: float  # traffic and compute fully overlapped (lower bound)
    steps_per_epoch: int | None  # None: samples not counted
    epoch_s: float | None
    run_s: float | None  # all epochs (or training.max_steps)
    assumptions: list[str]

    def lines(self) -> list[str]:
        """Markdown: the per-step figure, the per-epoch figure, the components, the rates."""
        out = [
            f"Time per optimizer step: {_duration(self.step_s)} (no overlap; {_duration(self.step_overlap_s)} if "
            "traffic and compute overlap fully)",
        ]
        if self.epoch_s is not None:
            out.append(
                f"Time per epoch: {_duration(self.epoch_s)} ({self.steps_per_epoch} optimizer step(s)); "
                f"the whole run: {_duration(self.run_s or 0.0)}"
            )
        else:
            out.append("Time per epoch: samples not counted (data.root not found)")
        out += ["", "| time component | seconds | per | note |", "|---|---|---|---|"]
        out += [f"| {i.component} | {i.seconds:,.3f} | {i.per} | {i.note} |" for i in self.items]
        out += ["", "Time assumptions: " + "; ".join(self.assumptions)]
        return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def estimate(
    *,
    speeds: Speeds,
    cuda: bool,
    world: int,
    ranks_per_node: int,
    nodes: int,
    weight_bytes: float,
    trainable: int,
    dtype_bytes: int,
    active_llm_params: float,
    encoder_flops_per_sample: float,
    tokens_per_sample: int,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    activation_checkpointing: bool,
    offload_param: str,
    offload_optimizer: str,
    zero_stage: int,
    checkpoint_bytes: float,
    save_every_n_steps: int,
    num_samples: int,
    epochs: int,
    max_steps: int | None,
) -> TimeEstimate:
    """The time of one micro batch, one optimizer step and one epoch on each rank (see the module)."""
    sp = speeds
    eff = sp.link_efficiency
    tokens = tokens_per_sample * micro_batch_size
    passes = 3 if activation_checkpointing else 2
    flops = passes * 2 * active_llm_params * tokens + encoder_flops_per_sample * micro_batch_size
    compute = flops / (sp.tflops * 1e12 * sp.mfu)
    items = [
        TimeItem(
            component=f"compute ({flops / 1e12:,.1f} TFLOP: {2 * passes} x {active_llm_params / 1e9:,.2f}B active "
            f"x {tokens:,} tokens + encoders)",
            seconds=compute,
            per="micro batch",
            note=f"{sp.tflops:g} TFLOPS x mfu {sp.mfu:g}",
        )
    ]
    traffic = 0.0
    if zero_stage == 3:
        if offload_param != "none":
            pcie = passes * weight_bytes / world / (sp.pcie_gbps * 1e9 * eff)
            items.append(
                TimeItem(
                    component=f"parameters host -> device ({passes} passes x this rank's 1/{world} partition)",
                    seconds=pcie,
                    per="micro batch",
                    note=f"{offload_param} offload; PCIe {sp.pcie_gbps:g} GB/s x {eff:g}" if cuda else "CPU copy",
                )
            )
            traffic += pcie
        if world > 1:
            inward = passes * weight_bytes * (world - 1) / world
            gather = inward / (_link_rate(sp, ranks_per_node, nodes) * 1e9 * eff)
            items.append(
                TimeItem(
                    component=f"parameter all-gathers ({passes} passes x {(world - 1)}/{world} of "
                    f"{weight_bytes / 2**30:,.1f} GiB, whole MoE leaves)",
                    seconds=gather,
                    per="micro batch",
                    note=_link_note(sp, ranks_per_node, nodes),
                )
            )
            traffic += gather
    grads = trainable * dtype_bytes * (world - 1) / world / (_link_rate(sp, ranks_per_node, nodes) * 1e9 * eff)
    if offload_optimizer != "none":
        grads += trainable * 4 / world / (sp.pcie_gbps * 1e9 * eff)
    items.append(TimeItem(component="LoRA gradients reduced (+ to the host)", seconds=grads, per="micro batch"))
    traffic += grads
    micro = compute + traffic
    accum = gradient_accumulation_steps
    adam = trainable / world / (sp.adam_gparams * 1e9) if offload_optimizer != "none" else 0.0
    back = trainable * dtype_bytes / world / (sp.pcie_gbps * 1e9 * eff) if offload_optimizer != "none" else 0.0
    ckpt = checkpoint_bytes / (sp.disk_gbps * 1e9) / save_every_n_steps
    items += [
        TimeItem(
            component=f"optimizer: CPU Adam on 1/{world} of {trainable / 1e6:,.1f}M + copy back",
            seconds=adam + back,
            per="step",
            note=f"{sp.adam_gparams:g}B params/s per rank",
        ),
        TimeItem(
            component=f"checkpoint write ({checkpoint_bytes / 2**30:,.2f} GiB every {save_every_n_steps} steps)",
            seconds=ckpt,
            per="step",
            note=f"{sp.disk_gbps:g} GB/s",
        ),
    ]
    step = accum * micro + adam + back + ckpt
    step_overlap = accum * max(compute, traffic) + adam + back + ckpt
    steps_per_epoch = epoch = run = None
    if num_samples:
        micro_per_epoch = math.ceil(num_samples / world / micro_batch_size)
        steps_per_epoch = math.ceil(micro_per_epoch / accum)
        epoch = micro_per_epoch * micro + steps_per_epoch * (adam + back + ckpt)
        total_steps = max_steps if max_steps is not None else steps_per_epoch * epochs
        run = epoch * total_steps / steps_per_epoch
    assumptions = [
        f"rates: {sp.source}",
        "no overlap of traffic and compute in the step figure (an upper bound)",
        "zero experts counted as computing (top-k all routed: an upper bound)",
        "start-up, model load, preparation and evaluation not included",
    ]
    return TimeEstimate(
        items=items,
        micro_batch_s=micro,
        step_s=step,
        step_overlap_s=step_overlap,
        steps_per_epoch=steps_per_epoch,
        epoch_s=epoch,
        run_s=run,
        assumptions=assumptions,
    )


def _link_rate(sp: Speeds, ranks_per_node: int, nodes: int) -> float:
    """GB/s into one rank for collectives: NVLink inside a node; between nodes, the node's network
    shared by its ranks (the slower part bounds a ring)."""
    if nodes <= 1:
        return sp.nvlink_gbps
    return min(sp.nvlink_gbps, sp.net_gbps / ranks_per_node)


def _link_note(sp: Speeds, ranks_per_node: int, nodes: int) -> str:
    if nodes <= 1:
        return f"NVLink {sp.nvlink_gbps:g} GB/s x {sp.link_efficiency:g}"
    return (
        f"network {sp.net_gbps:g} GB/s per node / {ranks_per_node} ranks (x {sp.link_efficiency:g}), slower than NVLink"
    )


def parse_assume(values: list[str]) -> dict[str, Any]:
    """`name=value` pairs of `vss plan --assume` as numbers.

    Raises:
        ValueError: a pair without '=' or a value that is not a number.
    """
    out: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--assume {item!r}: write name=value, e.g. --assume mfu=0.3")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--assume {item!r}: {value!r} is not a number") from None
    return out
