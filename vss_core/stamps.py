"""A file's change stamp, (size, mtime_ns): the cheap key every vss cache uses to notice that a file
was rewritten (preparation's sample and preparer keys, the codec's encoder fingerprint). Hashing the
contents instead cost more than preparing a sample's audio (bench/bench_data.py)."""

from __future__ import annotations

from pathlib import Path


def size_mtime(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file, following links; (-1, -1) when it cannot be stat-ed."""
    try:
        st = Path(path).stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns
