"""Reading one small config file (JSON or YAML) into a mapping: the one rule every checkpoint and codec
config reader follows.

A reader collects problems instead of raising, so a checkpoint with three bad files names all three
(STYLE: check everything, then raise once). The format is the file's suffix: `.yaml` / `.yml` is YAML,
anything else JSON (the official checkpoint's `config.json`, `vision/config.json`, ...; the codec's
`configs/*.yaml`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _format(path: Path) -> str:
    return "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"


def read_mapping(path: str | Path, problems: list[str], *, what: str = "", fix: str = "") -> dict[str, Any] | None:
    """The mapping a JSON or YAML file holds, or None with its problem appended to `problems`.

    `what` says what the file is (in the message for a missing file); `fix` is appended to the message
    for a file that cannot be parsed (e.g. "re-download the checkpoint").
    """
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        problems.append(f"{path}: file missing" + (f" ({what})" if what else ""))
        return None
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if fmt == "YAML" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{path}: not readable {fmt} ({exc})" + (f"; {fix}" if fix else ""))
        return None
    if not isinstance(raw, dict):
        kind = "mapping" if fmt == "YAML" else "object"
        problems.append(f"{path}: must hold a {fmt} {kind}, got {type(raw).__name__}")
        return None
    return raw
