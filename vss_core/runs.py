"""The run directory: one folder per run holding the resolved config, the DeepSpeed JSON, logs,
metrics, checkpoints and the adapter. Files between stages, never tensors.

    <training.output_dir>/<run_name>/
        config.json        resolved VSSConfig (re-validated by the training process)
        ds_config.json     generated DeepSpeed config
        train.log          the training subprocess's output
        metrics.jsonl      one JSON object per logged step
        checkpoints/       step-N/ (complete ones only)
        adapter/           adapter_config.json, adapter_model.safetensors
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vss_core.config import VSSConfig, deepspeed_config
from vss_core.errors import ConfigError


class RunPaths(BaseModel):
    root: str

    def _p(self, name: str) -> str:
        return str(Path(self.root) / name)

    @property
    def config(self) -> str:
        return self._p("config.json")

    @property
    def ds_config(self) -> str:
        return self._p("ds_config.json")

    @property
    def log(self) -> str:
        return self._p("train.log")

    @property
    def metrics(self) -> str:
        return self._p("metrics.jsonl")

    @property
    def checkpoints(self) -> str:
        return self._p("checkpoints")

    @property
    def adapter(self) -> str:
        return self._p("adapter")

    @property
    def prepared(self) -> str:
        return self._p("prepared")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON through a temp file and rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def create_run(cfg: VSSConfig) -> RunPaths:
    """Create a fresh run directory and write config.json and ds_config.json into it.

    Raises:
        ConfigError: training.run_name names a directory that already exists.
    """
    base = Path(cfg.training.output_dir).absolute()
    base.mkdir(parents=True, exist_ok=True)
    name = cfg.training.run_name or f"{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    root = base / name
    try:
        root.mkdir()  # exclusive: two runs never share a directory
    except FileExistsError:
        raise ConfigError(
            f"training.run_name: run directory {root} already exists. Choose another name or leave it unset."
        ) from None
    paths = RunPaths(root=str(root))
    write_json_atomic(paths.config, cfg.model_dump(mode="json"))
    write_json_atomic(paths.ds_config, deepspeed_config(cfg))
    return paths


class StageOutcome(BaseModel):
    stage: str
    status: str
    detail: str


class RunResult(BaseModel):
    """What a whole run produced: each stage's outcome and where the adapter is."""

    run_dir: str
    profile: str
    stages: list[StageOutcome] = []
    adapter_dir: str | None = None
    hub_url: str | None = None

    def add(self, stage: str, status: str, detail: str) -> None:
        self.stages.append(StageOutcome(stage=stage, status=status, detail=detail))

    def table(self) -> str:
        rows = "\n".join(f"| {s.stage} | {s.status} | {s.detail} |" for s in self.stages)
        tail = f"\n\nAdapter: `{self.adapter_dir}`" + (f"\n\nHub: {self.hub_url}" if self.hub_url else "")
        return "| stage | outcome | detail |\n|---|---|---|\n" + rows + tail
