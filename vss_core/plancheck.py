"""Every run checks the planner: its measured peaks beside what `vss plan` predicted for its config.

Rank 0 plans its own run once training is done (`predicted_for`: the checkpoint's shape, the run's
config; capacities are not needed for the figures) and compares (`compare`) with what every rank
measured (`train.measured_peaks`): RAM per rank (peak RSS of the rank process against the plan's
`ram_per_rank`: the rank's share of the node's items with the shared library pages whole, as RSS
counts them; the launcher and the loader workers are other processes, left out of both sides), the
ranks' RAM together (their peaks summed against the same figure times the ranks: an upper bound,
they need not peak together), GPU memory per rank where there is a GPU (the allocator's reserved
peak), and seconds per optimizer step. A memory peak above the prediction by more than
the margin is a warning in the train log, the summary and the flow's artifacts: the plan was wrong
for this run, and its next "fits" should not be trusted as far.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vss_core import plan as planner

MARGIN = 0.10  # a measured peak this much above the prediction is a warning


class Figure(BaseModel):
    name: str
    predicted: float
    measured: float
    unit: str  # "GiB" or "s"
    judged: bool  # memory peaks are judged against the margin; times are recorded
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted else float("inf")

    @property
    def over(self) -> bool:
        return self.judged and self.ratio > 1 + MARGIN


class PlanCheck(BaseModel):
    figures: list[Figure]
    warnings: list[str]

    def table(self) -> str:
        rows = ["| figure | predicted | measured | measured / predicted | |", "|---|---|---|---|---|"]
        for f in self.figures:
            flag = f"**over by {f.ratio - 1:.0%}**" if f.over else ("ok" if f.judged else "recorded")
            rows.append(
                f"| {f.name} | {f.predicted:,.3f} {f.unit} | {f.measured:,.3f} {f.unit} | {f.ratio:.2f} | {flag} "
                f"{f.note} |"
            )
        return "\n".join([*rows, *(["", *(f"warning: {w}" for w in self.warnings)] if self.warnings else [])])


def predicted_for(cfg: Any, model_dir: Path) -> planner.Plan:
    """The plan of this run's config for the checkpoint at model_dir (capacities not given)."""
    ins = planner.inputs_from_config(cfg, planner.read_model_shape(model_dir))
    machine = planner.Machine(
        gpus_per_node=cfg.hardware.gpus_per_node, gpu_memory_gib=None, ram_gib=None, disk_gib=None
    )
    return planner.plan(ins, machine, suggest=False)


def compare(predicted: planner.Plan, measured: dict[str, Any], ranks_per_node: int) -> PlanCheck:
    """The run's measured figures beside the plan's (see the module)."""
    rank = planner.ram_per_rank(predicted.resource("CPU RAM").items)
    per_rank = measured["per_rank"]
    peaks = [r["peak_rss_bytes"] / 2**30 for r in per_rank]
    figures = [
        Figure(
            name="RAM per rank (peak RSS)",
            predicted=rank,
            measured=max(peaks),
            unit="GiB",
            judged=True,
            note="plan: the rank's share of the node's RAM, shared library pages whole (plan.ram_per_rank)",
        ),
        Figure(
            name="RAM of this node's ranks (their peaks summed)",
            predicted=rank * ranks_per_node,
            measured=sum(peaks[:ranks_per_node]),
            unit="GiB",
            judged=True,
            note="not the launcher or the loader workers",
        ),
    ]
    reserved = [r["gpu_max_reserved_bytes"] / 2**30 for r in per_rank if "gpu_max_reserved_bytes" in r]
    if reserved:
        gpu = predicted.resource("GPU memory")
        figures.append(
            Figure(
                name="GPU memory per rank (max reserved)",
                predicted=gpu.need_gib,
                measured=max(reserved),
                unit="GiB",
                judged=True,
            )
        )
    if predicted.time is not None and measured.get("step_time_s"):
        figures.append(
            Figure(
                name="seconds per optimizer step",
                predicted=predicted.time.step_s,
                measured=measured["step_time_s"],
                unit="s",
                judged=False,
                note="(rates of the estimate: " + predicted.time.assumptions[0].removeprefix("rates: ") + ")",
            )
        )
    warnings = [
        f"{f.name}: measured {f.measured:,.2f} {f.unit}, {f.ratio - 1:.0%} above the plan's {f.predicted:,.2f} "
        f"{f.unit} (margin {MARGIN:.0%}): `vss plan` under-counts this run; leave more headroom than it says"
        for f in figures
        if f.over
    ]
    return PlanCheck(figures=figures, warnings=warnings)
