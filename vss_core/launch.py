"""Start the training process through the DeepSpeed launcher and judge it by what it wrote.

gloo can abort at teardown after a successful run (DESIGN.md), so the outcome is the adapter and
train_summary.json on disk, not the exit code alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from vss_core.config import VSSConfig
from vss_core.errors import TrainingError
from vss_core.runs import RunPaths

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class TrainingReport(BaseModel):
    run_dir: str
    adapter_dir: str
    steps: int
    first_loss: float
    final_loss: float
    trainable_parameters: int
    total_parameters: int
    resumed_from_step: int
    exit_code: int


def _deepspeed_bin() -> str:
    here = Path(sys.executable).with_name("deepspeed")
    return str(here) if here.exists() else (shutil.which("deepspeed") or "deepspeed")


def free_port() -> int:
    """A TCP port free on this machine now (two runs on one box must not share 29500)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(
    cfg: VSSConfig, run: RunPaths, model_dir: Path, prepared_dir: Path, master_port: int | None = None
) -> list[str]:
    """The launcher command line. Multi-node goes through DeepSpeed's own hostfile mechanism.

    A single-node run gets a free rendezvous port, so concurrent runs on one machine don't collide
    on DeepSpeed's default 29500; multi-node runs keep the launcher's default unless one is given.
    """
    hw = cfg.hardware
    cmd = [_deepspeed_bin()]
    if hw.hostfile:
        cmd += ["--hostfile", hw.hostfile, "--num_nodes", str(hw.nodes), "--num_gpus", str(hw.gpus_per_node)]
    else:
        cmd += ["--num_gpus", str(hw.gpus_per_node)]
        master_port = master_port or free_port()
    if master_port:
        cmd += ["--master_port", str(master_port)]
    cmd += [
        "--module",
        "vss_core.train",
        "--config",
        run.config,
        "--model-dir",
        str(model_dir),
        "--prepared-dir",
        str(prepared_dir),
    ]
    return cmd


def training_env(cfg: VSSConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the training process: CPU accelerator for the demo, cached op builds."""
    env = dict(os.environ if base is None else base)
    if cfg.hardware.accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", "1")
    # DeepSpeed compiles cpu_adam / shm_comm on first use (~75 s); keep the builds between runs.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vss" / "torch_extensions"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_training(
    cfg: VSSConfig,
    run: RunPaths,
    model_dir: Path,
    prepared_dir: Path,
    on_line: Callable[[str], None] = lambda line: None,
) -> TrainingReport:
    """Run training to completion, streaming each output line to `on_line` and to RUN/train.log.

    Raises:
        TrainingError: the process failed, or finished without writing a complete adapter.
    """
    cmd = build_command(cfg, run, model_dir, prepared_dir)
    with open(run.log, "a") as log_file:
        log_file.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=training_env(cfg),
            cwd=str(Path(run.root)),
            bufsize=1,
        )
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            log_file.write(line + "\n")
            tail = (tail + [line])[-40:]
            on_line(line)
        code = proc.wait()

    adapter = Path(run.adapter)
    summary_file = Path(run.root) / "train_summary.json"
    complete = all((adapter / f).is_file() for f in ADAPTER_FILES) and summary_file.is_file()
    if not complete:
        raise TrainingError(
            f"training exited with code {code} without writing a complete adapter to {adapter}. "
            f"Full log: {run.log}. Last lines:\n" + "\n".join(tail[-15:])
        )
    summary = json.loads(summary_file.read_text())
    return TrainingReport(
        run_dir=run.root,
        adapter_dir=str(adapter),
        steps=summary["steps"],
        first_loss=summary["first_loss"] if summary["first_loss"] is not None else float("nan"),
        final_loss=summary["final_loss"] if summary["final_loss"] is not None else float("nan"),
        trainable_parameters=summary["trainable_parameters"],
        total_parameters=summary["total_parameters"],
        resumed_from_step=summary["resumed_from_step"],
        exit_code=code,
    )
