"""Where training scalars go: TensorBoard always (`<run>/tensorboard`), and Weights & Biases as well when
WANDB_API_KEY is set, as the source documents use it (`export WANDB_API_KEY=...`).

W&B reads the key from the environment itself; vss never passes, prints or writes it. The W&B run is
named after the run directory and resumed by that id when training resumes, so one vss run is one W&B
run. WANDB_PROJECT (default "vss"), WANDB_ENTITY and WANDB_MODE (e.g. offline) are W&B's own variables.
A W&B that cannot start (no network, a bad key) costs a warning, never the training.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Scalars:
    """One writer for every sink (rank 0 only)."""

    def __init__(self, run_root: Path, config: dict[str, Any], wandb_enabled: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(Path(run_root) / "tensorboard"))
        self.wandb = _start_wandb(Path(run_root), config) if wandb_enabled else None

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            try:
                self.wandb.log(values, step=step)
            except Exception as exc:  # noqa: BLE001 - a tracking failure must not stop training
                log.warning("W&B logging failed (%s); TensorBoard keeps the metrics", type(exc).__name__)
                self.wandb = None

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B did not finish cleanly (%s)", type(exc).__name__)


def _start_wandb(run_root: Path, config: dict[str, Any]):
    import os

    try:
        import wandb

        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_root.name)[:64]
        return wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "vss",
            name=run_root.name,
            id=run_id,
            resume="allow",
            dir=str(run_root),
            config=config,
            settings=wandb.Settings(console="off", silent=True),
        )
    except Exception as exc:  # noqa: BLE001 - no network, a bad key, a missing package: TensorBoard only
        log.warning(
            "Weights & Biases did not start (%s: %s); metrics go to TensorBoard only",
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
        return None
