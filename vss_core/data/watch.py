"""Watching a dataset for changes: the fingerprint compared with the last look."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from vss_core.atomic import write_json_atomic
from vss_core.config import DataConfig
from vss_core.data.validate import validate_dataset

# --- watching for data updates --------------------------------------------------------------------


class DataChange(BaseModel):
    root: str
    fingerprint: str
    previous: str | None
    samples: int
    changed: bool
    message: str


def check_data_changed(cfg: DataConfig, state_dir: Path, cache_dir: Path | None = None) -> DataChange:
    """Fingerprint the dataset and compare it with the last one seen for this root (kept in state_dir).

    The first look records the fingerprint without calling it a change. Unchanged samples are not
    probed again (the validation cache), so a watch on an interval costs little.

    Raises:
        DatasetError: the dataset root is missing or empty.
    """
    report = validate_dataset(cfg, cache_dir)
    root = str(Path(cfg.root).absolute())
    state = Path(state_dir) / f"watch-{hashlib.sha256(root.encode()).hexdigest()[:12]}.json"
    previous = json.loads(state.read_text()).get("fingerprint") if state.is_file() else None
    state.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state, {"root": root, "fingerprint": report.fingerprint, "samples": len(report.samples)})
    changed = previous is not None and previous != report.fingerprint
    if previous is None:
        message = f"{root}: first look, {len(report.samples)} samples (fingerprint {report.fingerprint[:12]} recorded)"
    elif changed:
        message = f"{root}: changed ({previous[:12]} -> {report.fingerprint[:12]}, {len(report.samples)} samples)"
    else:
        message = f"{root}: unchanged ({len(report.samples)} samples)"
    return DataChange(
        root=root,
        fingerprint=report.fingerprint,
        previous=previous,
        samples=len(report.samples),
        changed=changed,
        message=message,
    )
