"""The dataset manifest: a JSONL file, one sample per line, naming files that may live anywhere.

    {"name": "clip-0001", "video": "clips/0001.mp4", "input_speech": "wav/0001-in.wav",
     "target_speech": "wav/0001-out.wav", "transcript": "Sure, the red one.", "system": "..."}

`video`, `input_speech` and `target_speech` are required: paths relative to the manifest's folder
(or absolute). `transcript` (what the target speech says), `instruction` and `system` are optional
texts, inline. `name` is optional; without it the sample is named after its video's path
(`clips/0001.mp4` -> `clips_0001`). Names must be unique and file-name safe: prepared files are
named by them. Blank lines and lines starting with `#` are ignored.

A line maps onto the folder layout's roles (`video` is in.mp4, `transcript` is out.txt, ...), so
validation, the fingerprint and preparation treat a manifest's sample and a sample folder the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vss_core.data.reports import SampleFiles
from vss_core.errors import DatasetError, bullet_list

SUFFIX = ".jsonl"
FILE_FIELDS = {"video": "in.mp4", "input_speech": "in.wav", "target_speech": "out.wav"}
TEXT_FIELDS = {"transcript": "out.txt", "instruction": "in.txt", "system": "system.txt"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_EXAMPLE = '{"video": "a.mp4", "input_speech": "a-in.wav", "target_speech": "a-out.wav"}'


def is_manifest(root: Path) -> bool:
    """Whether data.root names a manifest (a .jsonl file) rather than a folder of sample folders."""
    return Path(root).suffix == SUFFIX and not Path(root).is_dir()


def _default_name(video: str) -> str:
    stem = str(Path(video).with_suffix("")).strip("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-") or "sample"


def _locate(base: Path, given: str) -> str:
    """A listed path made absolute against the manifest's folder, its folders resolved (so `..` reads
    as the OS reads it); the file itself is left as named, a link included."""
    path = base / Path(given).expanduser()
    return str(path.parent.resolve() / path.name)


def read_manifest(path: Path) -> list[tuple[str, str, SampleFiles]]:
    """The samples a manifest lists: (name, `<manifest>:<line>`, where its parts are), in file order.

    Files are not checked here (validation does, sample by sample, as for folders); what is checked
    is the manifest itself, every line of it.

    Raises:
        DatasetError: the manifest cannot be read, a line is not a JSON object, lacks a required
            field, has an unknown field or a value that is not a string, or two lines share a name
            (every problem of every line listed), or it lists no sample.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"data.root manifest {path}: cannot be read ({exc}); it must be UTF-8 JSONL") from None
    base = path.parent.absolute()
    problems: list[str] = []
    samples: list[tuple[str, str, SampleFiles]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"line {number}"
        try:
            entry = json.loads(line)
        except ValueError as exc:
            problems.append(f"{where}: not JSON ({exc.args[0].split(':')[0]})")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a JSON object, like {_EXAMPLE}")
            continue
        line_problems = []
        unknown = sorted(set(entry) - set(FILE_FIELDS) - set(TEXT_FIELDS) - {"name"})
        if unknown:
            known = ", ".join([*FILE_FIELDS, *TEXT_FIELDS, "name"])
            line_problems.append(f"unknown field(s) {', '.join(unknown)} (known: {known})")
        missing = [k for k in FILE_FIELDS if k not in entry]
        if missing:
            line_problems.append(f"missing {', '.join(missing)}")
        wrong = [k for k, v in entry.items() if k not in unknown and not isinstance(v, str)]
        if wrong:
            line_problems.append(f"{', '.join(wrong)} must be strings")
        empty = [k for k in FILE_FIELDS if isinstance(entry.get(k), str) and not entry[k].strip()]
        if empty:
            line_problems.append(f"{', '.join(empty)} must not be empty")
        if line_problems:
            problems.append(f"{where}: {'; '.join(line_problems)}")
            continue
        name = entry.get("name") or _default_name(entry["video"])
        if not _NAME.fullmatch(name):
            problems.append(
                f"{where}: name {name!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
                "or digit (prepared files are named by it)"
            )
            continue
        if name in seen:
            problems.append(f'{where}: name {name!r} is also line {seen[name]}\'s; give one of them another "name"')
            continue
        seen[name] = number
        files = {role: _locate(base, entry[field]) for field, role in FILE_FIELDS.items()}
        texts = {role: entry[field] for field, role in TEXT_FIELDS.items() if field in entry}
        samples.append((name, f"{path}:{number}", SampleFiles(files=files, texts=texts)))
    if problems:
        raise DatasetError(
            f"data.root manifest {path} has {len(problems)} bad line(s):\n{bullet_list(problems)}\n"
            f"Each line is one sample, e.g. {_EXAMPLE}, paths relative to the manifest's folder."
        )
    if not samples:
        raise DatasetError(f"data.root manifest {path} lists no sample; add one line per sample, e.g. {_EXAMPLE}")
    return samples
