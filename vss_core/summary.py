"""What a whole `vss` run produced, stage by stage: the flow's return value, its summary artifact and what
`vss run` prints. Plain data (no Prefect), so the CLI and the tests read it as the flow does."""

from __future__ import annotations

from pydantic import BaseModel


class StageOutcome(BaseModel):
    stage: str
    status: str
    detail: str


class RunResult(BaseModel):
    """What a whole run produced: each stage's outcome and where the adapter is."""

    run_dir: str | None = None
    profile: str
    stages: list[StageOutcome] = []
    adapter_dir: str | None = None
    hub_url: str | None = None
    training_wall_s: float | None = None  # the training subprocess's own wall time (0 when reused)

    def add(self, stage: str, status: str, detail: str) -> None:
        self.stages.append(StageOutcome(stage=stage, status=status, detail=detail))

    def table(self) -> str:
        rows = "\n".join(f"| {s.stage} | {s.status} | {s.detail} |" for s in self.stages)
        tail = f"\n\nAdapter: `{self.adapter_dir}`" + (f"\n\nHub: {self.hub_url}" if self.hub_url else "")
        return "| stage | outcome | detail |\n|---|---|---|\n" + rows + tail


def describe_training(report) -> str:
    """One line on what the training stage did (a TrainingReport from vss_core.launch)."""
    if report.reused:
        return f"adapter already produced by these inputs: {report.adapter_dir}"
    how = f"resumed from step {report.resumed_from_step}, " if report.resumed_from_step else ""
    downs = f"; {len(report.step_downs)} memory step-down(s)" if report.step_downs else ""
    return f"{how}{report.steps} steps, loss {report.first_loss:.3f} -> {report.final_loss:.3f}{downs}"
