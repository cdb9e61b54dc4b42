"""Writing a file so that no reader ever sees half of it: the one rule every vss writer follows.

The bytes go to `.NAME.tmp-PID-N` beside the target, which is then renamed over it (`os.replace`, atomic on
one filesystem). The writer's pid in the name lets a cleaner tell the leftover of a killed writer from a
live one (`data` removes those whose pid is dead).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

_counter = itertools.count()


def temp_path(path: Path) -> Path:
    """A temp name beside `path`, unique in this process, ending with `path`'s suffix (some writers need it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}{path.suffix}")


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to fill a temp file beside `path`, then rename it to `path`. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, payload: Any, *, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """JSON (indented unless indent=None, for large caches; one trailing newline) written atomically."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))
