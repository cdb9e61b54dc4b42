"""Validation: every sample checked (files, decoders, lengths, optional texts), every problem collected,
the per-sample probe cache, the dataset fingerprint and the choice of samples to train on."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from vss_core.atomic import write_json_atomic
from vss_core.config import DataConfig
from vss_core.data import manifest as manifest_lib
from vss_core.data.probe import _probe_video, _probe_wav
from vss_core.data.reports import (
    _DEMO_FIX,
    DURATION_TOLERANCE_S,
    PROBE_FORMAT,
    SAMPLE_FILES,
    TEXT_FILES,
    AudioInfo,
    DatasetReport,
    SampleFiles,
    SampleReport,
    VideoInfo,
    _error_text,
    _sha256_json,
    _summarise,
)
from vss_core.errors import ConfigError, DatasetError, bullet_list

# --- validating one sample ------------------------------------------------------------------------


def _link_error(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "a symlink loop"
    return _error_text(exc)


def _inside(path: Path, root: Path) -> bool:
    return path == root or str(path).startswith(str(root).rstrip(os.sep) + os.sep)


def _locate(
    sample: SampleFiles, root: Path, folder: Path | None = None, roles: tuple[str, ...] = SAMPLE_FILES
) -> tuple[dict[str, Path], list[str], list[tuple[str, Any]]]:
    """Stat-level checks of one sample: which files can be probed, the problems, and the stat key rows.

    Links are followed only when they stay inside `root` (resolved); a plain file in a plain folder
    under the root is inside by construction, so only links cost a path resolution. `folder`: the
    sample folder of the folder layout (itself checked the same way); None for a manifest's sample,
    whose files are named by path (problems then name the path too).
    """
    present: dict[str, Path] = {}
    problems: list[str] = []
    rows: list[tuple[str, Any]] = []
    if folder is not None and folder.is_symlink():
        try:
            real_dir = folder.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            problems.append(
                f"the sample folder is a link that cannot be followed ({_link_error(exc)}); replace it "
                "with a real folder"
            )
            return present, problems, [("dir", "broken link")]
        if not _inside(real_dir, root):
            problems.append(
                f"the sample folder is a link to {real_dir}, outside the dataset root {root}: "
                "copy the files into the root instead of linking them"
            )
            return present, problems, [("dir", str(real_dir))]
    for fname in roles:
        f = sample.file(fname)
        label = fname if folder is not None or f is None else f"{fname} ({f})"
        if f is None:
            problems.append(f"{fname} is missing")
            rows.append((fname, "missing"))
            continue
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            problems.append(f"{label} is missing")
            rows.append((fname, "missing"))
            continue
        except OSError as exc:
            problems.append(f"{label} cannot be read ({_error_text(exc)})")
            rows.append((fname, "unreadable"))
            continue
        real = f
        if stat.S_ISLNK(st.st_mode):
            try:
                real = f.resolve()
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
                problems.append(f"{label} is a link that leads nowhere ({_link_error(exc)}); replace it with the file")
                rows.append((fname, "broken link"))
                continue
            if not _inside(real, root):
                problems.append(
                    f"{label} is a link to {real}, outside the dataset root {root}: "
                    "copy the file into the sample folder instead of linking it"
                )
                rows.append((fname, "outside"))
                continue
            try:
                st = real.stat()
            except OSError as exc:
                problems.append(f"{label} is a link that leads nowhere ({_link_error(exc)})")
                rows.append((fname, "broken link"))
                continue
        rows.append((fname, st.st_size, st.st_mtime_ns, st.st_ino))
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{label} is not a regular file")
        elif st.st_size == 0:
            problems.append(f"{label} is empty (0 bytes)")
        else:
            present[fname] = real
    return present, problems, rows


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _probe(present: dict[str, Path]) -> dict[str, Any]:
    """What decoding the present files finds: their facts and their own problems (cacheable)."""
    out: dict[str, Any] = {"problems": [], "video": None, "in_audio": None, "out_audio": None}
    if "in.mp4" in present:
        video, problems = _probe_video(present["in.mp4"])
        out["video"] = video.model_dump() if video else None
        out["problems"] += problems
    for fname, key in (("in.wav", "in_audio"), ("out.wav", "out_audio")):
        if fname in present:
            audio, problems = _probe_wav(present[fname], fname)
            out[key] = audio.model_dump() if audio else None
            out["problems"] += problems
    return out


def _apply_limits(report: SampleReport, cfg: DataConfig) -> None:
    """The configured rules over the probed facts: durations and loudness (cheap, never cached)."""
    durations = [
        (label, info.duration_s)
        for label, info in (("in.mp4", report.video), ("in.wav", report.in_audio), ("out.wav", report.out_audio))
        if info is not None and info.duration_s > 0
    ]
    limit = cfg.limit_seconds
    key = "data.max_seconds" if cfg.max_seconds is not None else "data.audio_seconds"
    for label, seconds in durations:
        if seconds < cfg.min_seconds:
            report.problems.append(f"{label} is {seconds:.2f} s, shorter than data.min_seconds={cfg.min_seconds:g}")
    long = [(label, seconds) for label, seconds in durations if seconds > limit + DURATION_TOLERANCE_S]
    if long:
        what = ", ".join(f"{label} {seconds:.2f} s" for label, seconds in long)
        if cfg.on_too_long == "error":
            report.problems.append(f"too long for {key}={limit:g} ({what}); cut the files or set data.on_too_long=crop")
        else:
            report.warnings.append(f"longer than {key}={limit:g} ({what}): only the first {limit:g} s is used")
    if cfg.require_non_silent:
        for label, info in (("in.wav", report.in_audio), ("out.wav", report.out_audio)):
            if info is not None and info.duration_s > 0 and info.rms_dbfs <= cfg.silence_dbfs:
                report.problems.append(
                    f"{label} is silent (RMS {info.rms_dbfs:.1f} dBFS <= data.silence_dbfs={cfg.silence_dbfs:g}); "
                    "record it again, or set data.require_non_silent=false"
                )


def _sample_key(
    sample: SampleFiles, root: Path, folder: Path | None, cfg: DataConfig
) -> tuple[dict[str, Path], list[str], list[Any], str]:
    """Stat-level checks of one sample and its cache key (with content hashes where asked)."""
    present, problems, rows = _locate(sample, root, folder)
    for fname in TEXT_FILES:  # the optional texts are training targets too: a change is a data change
        path, digest = sample.file(fname), sample.text_digest(fname)
        if digest is not None:  # inline in a manifest: its content is the key
            rows.append((fname, digest))
        elif path is not None and path.is_file():
            st = path.stat()
            rows.append(
                (fname, st.st_size, st.st_mtime_ns, st.st_ino)
                + ((_sha256_file(path),) if cfg.fingerprint == "content" else ())
            )
    if cfg.fingerprint == "content":
        rows = [(*row, _sha256_file(present[row[0]])) if row[0] in present and len(row) == 4 else row for row in rows]
    key = _sha256_json({"probe": PROBE_FORMAT, "present": sorted(present), "rows": rows})
    return present, problems, rows, key


def _fingerprint(mode: str, samples: list[tuple[str, list[Any]]]) -> str:
    """sha256 over sample names and each file's size and mtime (and sha256 in content mode).

    The inode in the stat rows is left out: it guards the cache against a file swapped in with the
    same size and mtime, but a dataset copied elsewhere is the same dataset.
    """
    rows = [[name, [row[:3] + row[4:] if len(row) >= 4 else row for row in stat_rows]] for name, stat_rows in samples]
    return _sha256_json({"mode": mode, "samples": rows})


def _sample_report(
    name: str, where: str, sample: SampleFiles, problems: list[str], probe: dict[str, Any], cfg: DataConfig
) -> SampleReport:
    """A sample's report from its stat problems and its probe, with the configured rules applied.

    Raises:
        ValueError, KeyError, TypeError: the probe is malformed (a damaged cache entry).
    """
    report = SampleReport(name=name, path=where, files=sample.files, texts=sample.texts, problems=list(problems))
    report.problems += [str(p) for p in probe["problems"]]
    report.video = VideoInfo.model_validate(probe["video"]) if probe["video"] else None
    report.in_audio = AudioInfo.model_validate(probe["in_audio"]) if probe["in_audio"] else None
    report.out_audio = AudioInfo.model_validate(probe["out_audio"]) if probe["out_audio"] else None
    _apply_limits(report, cfg)
    _check_texts(report, cfg)
    return report


# Characters per text token the length check assumes (byte-level BPE on English is ~4; on Chinese
# ~1.5, so the check only catches transcripts FAR too long; preparation checks the exact token count).
CHARS_PER_TOKEN = 4
_SPECIAL_STRINGS = (
    "<|audio|>",
    "<|/audio|>",
    "<|audio_pad|>",
    "<begin-of-system>",
    "<begin-of-user>",
    "<begin-of-assistant>",
    "<begin-of-voice-assistant>",
    "<|image_pad|>",
    "<image>",
)


def _check_texts(report: SampleReport, cfg: DataConfig) -> None:
    """The optional texts: UTF-8, no special strings of the model's template, a transcript that can
    fit in the answer (a segment of N codec frames has N + 1 text positions, `vss_core.sequence`)."""
    for fname in TEXT_FILES:
        try:
            text = report.text(fname)
        except UnicodeDecodeError as exc:
            report.problems.append(f"{fname} is not UTF-8 text (byte {exc.start}); save it as UTF-8")
            continue
        except OSError as exc:
            report.problems.append(f"{fname} cannot be read ({_error_text(exc)})")
            continue
        if text is None:
            continue
        specials = [t for t in _SPECIAL_STRINGS if t in text]
        if specials:
            report.problems.append(f"{fname} contains the model's special token(s) {', '.join(specials)}; remove them")
        if fname != "out.txt":
            continue
        if not text:
            report.warnings.append(
                "out.txt is empty: the sample trains as one without a transcript (speech only, no text loss)"
            )
            continue
        if "</pause>" in text:
            report.problems.append(
                "out.txt contains </pause>: answers of several segments need each segment's own audio, which vss "
                "does not split yet; remove </pause> (one segment) or split the sample"
            )
        if report.out_audio is not None and report.out_audio.duration_s > 0:
            seconds = min(report.out_audio.duration_s, cfg.crop_seconds)
            positions = math.ceil(seconds * 16000 / 960) + 1  # codec frames at 16.67 Hz, + the EOS position
            if len(text) > CHARS_PER_TOKEN * positions:
                report.problems.append(
                    f"out.txt is far longer than out.wav allows: {len(text)} characters for {seconds:.2f} s of speech "
                    f"({positions} text positions, about {CHARS_PER_TOKEN} characters each); shorten the transcript "
                    "or check it belongs to this out.wav"
                )


# --- the cache ------------------------------------------------------------------------------------


def _cache_file(cfg: DataConfig, root: Path, cache_dir: Path | None) -> Path | None:
    if cache_dir is None:
        if cfg.validation_cache is None:
            return None
        cache_dir = Path(cfg.validation_cache).expanduser()
    # One file per root and fingerprint mode: the two modes key samples differently.
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{digest}-{cfg.fingerprint}.json"


def _read_cache(path: Path | None, root: Path) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: everything is probed and the file rewritten
    if not isinstance(raw, dict) or raw.get("format") != PROBE_FORMAT or raw.get("root") != str(root):
        return {}
    samples = raw.get("samples")
    return samples if isinstance(samples, dict) else {}


# --- the dataset ----------------------------------------------------------------------------------


class _Listed(NamedTuple):
    """One sample as found: its name, where it was listed, its parts, and its folder (folder layout)."""

    name: str
    where: str
    sample: SampleFiles
    folder: Path | None


def _list_samples(cfg: DataConfig) -> tuple[Path, list[_Listed], list[str]]:
    """The dataset's samples: (root as reported, the samples, extra entries the folder layout ignores).

    Raises:
        DatasetError: the root does not exist, is neither a folder nor a .jsonl manifest, holds no
            sample, or the manifest has bad lines.
    """
    given = Path(cfg.root)
    if not given.exists():
        raise DatasetError(f"data.root={cfg.root!r}: {given.absolute()} does not exist. Fix: {_DEMO_FIX}.")
    if manifest_lib.is_manifest(given):
        listed = [_Listed(n, w, sf, None) for n, w, sf in manifest_lib.read_manifest(given)]
        return given.resolve(), listed, []
    if not given.is_dir():
        raise DatasetError(
            f"data.root={cfg.root!r}: {given.absolute()} is neither a directory nor a {manifest_lib.SUFFIX} "
            f"manifest. Fix: {_DEMO_FIX}."
        )
    root = given.resolve()
    entries = sorted(given.iterdir(), key=lambda p: p.name)
    sample_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not sample_dirs:
        raise DatasetError(
            f"data.root={cfg.root!r}: {root} holds no sample folders "
            f"(<root>/<sample>/{{{','.join(SAMPLE_FILES)}}}). Fix: {_DEMO_FIX}."
        )
    names = {p.name for p in sample_dirs}
    extras = [p.name for p in entries if p.name not in names]
    for sample_dir in sample_dirs:
        try:
            extras += [
                f"{sample_dir.name}/{p.name}"
                for p in sorted(sample_dir.iterdir())
                if p.name not in SAMPLE_FILES + TEXT_FILES
            ]
        except OSError:
            pass  # an unreadable folder already shows as missing files
    listed = [_Listed(d.name, str(d), SampleFiles.in_folder(d), d) for d in sample_dirs]
    return root, listed, extras


def validate_dataset(cfg: DataConfig, cache_dir: Path | None = None) -> DatasetReport:
    """Check every sample of cfg.root and report each one's problems (never raises for a sample).

    data.root is a folder of sample folders (`<root>/<sample>/{in.mp4,in.wav,out.wav}`) or a .jsonl
    manifest (`manifest.read_manifest`: one sample per line, files anywhere); both are checked,
    cached and fingerprinted the same way. Probes run on cfg.workers threads (0 = one per CPU core).
    A sample whose files have the same size, mtime and inode (or, with data.fingerprint=content, the
    same sha256) as in the validation cache is not decoded again; the duration and silence rules are
    re-applied to its cached facts. The cache lives in `cache_dir` when given, else in
    data.validation_cache; it is never written into the dataset, and a cache that cannot be written
    costs only a warning.

    Raises:
        DatasetError: the root does not exist, is neither a directory nor a manifest, holds no sample,
            or the manifest has bad lines (all listed).
    """
    root, listed, extras = _list_samples(cfg)
    # A manifest names files anywhere (that is what it is for): every link target counts as inside.
    link_root = root if listed[0].folder is not None else Path(root.anchor)
    cache_path = _cache_file(cfg, root, cache_dir)
    cached = _read_cache(cache_path, root)

    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(listed)))
    # Threads, not processes: hashing, PyAV and libsndfile work outside the GIL, and threads start
    # free. Stat-only keys are cheaper than handing work to a thread, so they are taken in line.
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        keyed = (
            list(pool.map(lambda x: _sample_key(x.sample, link_root, x.folder, cfg), listed))
            if cfg.fingerprint == "content"
            else [_sample_key(x.sample, link_root, x.folder, cfg) for x in listed]
        )
        probes: dict[str, dict[str, Any]] = {}
        for x, (_, _, _, key) in zip(listed, keyed):
            entry = cached.get(x.name)
            if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("probe"), dict):
                probes[x.name] = entry["probe"]
        reused = set(probes)
        misses = [(x, k[0]) for x, k in zip(listed, keyed) if x.name not in reused]
        for (x, _), probe in zip(misses, pool.map(lambda m: _probe(m[1]), misses)):
            probes[x.name] = probe

        samples = []
        for x, (present, problems, _, _) in zip(listed, keyed):
            try:
                samples.append(_sample_report(x.name, x.where, x.sample, problems, probes[x.name], cfg))
            except (ValueError, KeyError, TypeError):  # a damaged cache entry: probe the sample again
                reused.discard(x.name)
                probes[x.name] = _probe(present)
                samples.append(_sample_report(x.name, x.where, x.sample, problems, probes[x.name], cfg))

    warnings = []
    if extras:
        warnings.append(f"ignored {len(extras)} extra entries in {root}: {_summarise(extras)}")
    cropped = [s.name for s in samples if s.ok and s.warnings]
    if cropped:
        key = "data.max_seconds" if cfg.max_seconds is not None else "data.audio_seconds"
        warnings.append(
            f"{len(cropped)} samples are longer than {key}={cfg.limit_seconds:g} s and will be cropped to it: "
            f"{_summarise(cropped)}"
        )
    if cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                cache_path,
                {
                    "format": PROBE_FORMAT,
                    "root": str(root),
                    "samples": {x.name: {"key": k[3], "probe": probes[x.name]} for x, k in zip(listed, keyed)},
                },
                indent=None,
            )
        except OSError as exc:
            warnings.append(
                f"the validation cache {cache_path} cannot be written ({_error_text(exc)}): the next validation "
                "probes every sample again; set data.validation_cache to a writable directory, or null"
            )
    return DatasetReport(
        root=str(root),
        samples=samples,
        warnings=warnings,
        fingerprint=_fingerprint(cfg.fingerprint, [(x.name, k[2]) for x, k in zip(listed, keyed)]),
        fingerprint_mode=cfg.fingerprint,
        on_invalid=cfg.on_invalid,
        reused=[x.name for x in listed if x.name in reused],
        cache_path=str(cache_path) if cache_path is not None else None,
    )


def select_samples(report: DatasetReport, on_invalid: str) -> list[SampleReport]:
    """The samples to train on, according to data.on_invalid ('fail' or 'skip').

    Raises:
        DatasetError: on 'fail', any sample is invalid (all are listed); on 'skip', none is valid.
        ConfigError: on_invalid is neither 'fail' nor 'skip'.
    """
    if on_invalid not in ("fail", "skip"):
        raise ConfigError(f"data.on_invalid={on_invalid!r} must be 'fail' or 'skip'")
    bad = report.invalid
    listing = bullet_list([f"{s.name}: {'; '.join(s.problems)}" for s in bad])
    if on_invalid == "fail" and bad:
        raise DatasetError(
            f"data: {len(bad)} of {len(report.samples)} samples in {report.root} are invalid:\n{listing}\n"
            "Fix the files or set data.on_invalid=skip"
        )
    good = report.valid
    if not good:
        raise DatasetError(
            f"data: none of the {len(report.samples)} samples in {report.root} is valid:\n{listing}\n"
            f"Fix the files, or {_DEMO_FIX}."
        )
    return good
