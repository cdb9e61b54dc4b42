"""Small helpers several test modules share."""

from __future__ import annotations

from pathlib import Path

from vss_core.config import DataConfig


def data_config(root: Path, **changes) -> DataConfig:
    """The data settings the data tests use: 8 frames at 2 fps, 10 s of audio, one worker, and the
    validation cache beside the dataset (in tmp_path, never the user's home)."""
    base = {
        "root": str(root),
        "video_frames": 8,
        "video_fps": 2.0,
        "audio_seconds": 10.0,
        "workers": 1,
        "validation_cache": str(Path(root).parent / "validation-cache"),
    }
    return DataConfig(**(base | changes))
