"""Dataset validation and preparation.

The user's contract: `<root>/<sample>/{in.mp4, in.wav, out.wav}`.

- `validate_dataset(cfg)` checks every sample and reports every problem of every sample; it never
  raises for a bad sample. Each file must be a regular, non-empty file inside the root (a symlink
  leading outside is refused). The video is opened with PyAV, its first frame decoded and its last
  second decoded after a seek (a truncated file stops short of its declared duration); each WAV is
  decoded whole (rate, channels, duration, RMS level, non-finite samples) and its RIFF header
  compared with the file's size. Durations are checked against data.min_seconds/max_seconds and,
  where asked, the levels against data.silence_dbfs. What a probe found is cached per sample, keyed
  by the files' size/mtime/inode (or content hashes), so re-validating an unchanged dataset only
  stats its files.
- `select_samples(report, on_invalid)` turns that report into the samples to train on, or one error
  listing every bad sample.
- `prepare_dataset(...)` turns each sample into the tensors the model eats (frames sampled by seeking,
  resized, normalised; CMVN-normalised fbank; codec tokens of the target speech), one `.pt` file per
  sample plus a manifest, cached by a key over the sample's files and every setting that shapes them.
- `load_prepared(dir)` reads them back (weights_only).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio
from pydantic import BaseModel, Field, computed_field

from vss_core import codec as codec_lib
from vss_core import model as model_lib
from vss_core import sequence
from vss_core.atomic import write_atomic, write_json_atomic
from vss_core.config import DataConfig
from vss_core.errors import ConfigError, DatasetError, ModelError, bullet_list

SAMPLE_FILES = ("in.mp4", "in.wav", "out.wav")
# Optional texts: the transcript of out.wav, an instruction, a system prompt (UTF-8).
TEXT_FILES = ("out.txt", "in.txt", "system.txt")
MANIFEST = "manifest.json"
# Bump when the content of prepared files changes, so old caches are not reused.
PREPARE_FORMAT = 4
# Bump when what a probe reads or reports changes, so old validation caches are not reused.
PROBE_FORMAT = 2
MIN_FBANK_SECONDS = 0.025  # one 25 ms fbank window
# A file this much longer than the limit is "too long"; container durations are rounded to a frame.
DURATION_TOLERANCE_S = 0.05
FLOOR_DBFS = -120.0  # the level reported for digital silence (JSON has no -inf)
# A float WAV's full scale is 1.0. Far above it, the features overflow: the official front end scales
# samples by 32768 and squares them in float32 (1e20 x 32768 squared is inf), and the fbank turns NaN.
# 16 (+24 dBFS) is far beyond any clipping a real recording shows, and far below any overflow.
MAX_FLOAT_PEAK = 16.0
_DEMO_FIX = "generate a demo dataset with `vss demo-data DIR`, or point data.root at a directory of sample folders"


# --- reports --------------------------------------------------------------------------------------


class VideoInfo(BaseModel):
    frames: int = Field(description="Frames the container declares (or duration x fps when it declares none).")
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str


class AudioInfo(BaseModel):
    sample_rate: int
    channels: int
    duration_s: float
    rms_dbfs: float = Field(FLOOR_DBFS, description="RMS level of the whole file over all channels (dBFS).")


class SampleReport(BaseModel):
    name: str
    path: str
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="Not fatal, e.g. a file cropped to data.max_seconds.")
    video: VideoInfo | None = None
    in_audio: AudioInfo | None = None
    out_audio: AudioInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class DatasetReport(BaseModel):
    root: str
    samples: list[SampleReport]
    warnings: list[str] = Field(default_factory=list)
    fingerprint: str
    fingerprint_mode: Literal["stat", "content"] = "stat"
    on_invalid: Literal["fail", "skip"] = Field("fail", description="The data.on_invalid policy validated under.")
    reused: list[str] = Field(default_factory=list, description="Samples whose probe came from the validation cache.")
    cache_path: str | None = Field(None, description="The validation cache file used, if any.")

    @property
    def valid(self) -> list[SampleReport]:
        return [s for s in self.samples if s.ok]

    @property
    def invalid(self) -> list[SampleReport]:
        return [s for s in self.samples if not s.ok]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def skipped(self) -> list[str]:
        """Invalid samples left out of training under data.on_invalid=skip (empty under 'fail')."""
        return [s.name for s in self.invalid] if self.on_invalid == "skip" else []

    def table(self) -> str:
        """A markdown table of the samples, one row each, for a person to read at a glance."""
        rows = [
            "| sample | ok | video frames | fps | resolution | in.wav s | out.wav s | problems |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in self.samples:
            v = s.video
            cells = [
                s.name,
                "yes" if s.ok else "**no**",
                str(v.frames) if v else "-",
                f"{v.fps:g}" if v else "-",
                f"{v.width}x{v.height}" if v else "-",
                f"{s.in_audio.duration_s:.2f}" if s.in_audio else "-",
                f"{s.out_audio.duration_s:.2f}" if s.out_audio else "-",
                "; ".join([*s.problems, *(f"warning: {w}" for w in s.warnings)]),
            ]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        summary = f"{len(self.valid)} of {len(self.samples)} samples valid in {self.root}"
        if self.skipped:
            summary += f"; skipped (data.on_invalid=skip): {_summarise(self.skipped, 20)}"
        elif self.invalid:
            summary += "; data.on_invalid=fail stops the run until they are fixed"
        lines = [summary, "", *rows]
        if self.warnings:
            lines += ["", *(f"warning: {w}" for w in self.warnings)]
        return "\n".join(lines)


class PreparedDataset(BaseModel):
    dir: str = Field(description="Directory holding one <sample>.pt per sample and manifest.json.")
    samples: list[str] = Field(description="Prepared sample names, in order.")
    files: list[str] = Field(description="The .pt file of each prepared sample, in the order of samples.")
    settings_key: str = Field(description="sha256 of the preparation settings and the model's preprocessing config.")
    skipped: list[str] = Field(default_factory=list, description="Samples given that were invalid, not prepared.")
    reused: list[str] = Field(default_factory=list, description="Samples whose cached .pt was reused.")


# --- probing one file -----------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _mp4_truncation(path: Path) -> str | None:
    """Walk an MP4/MOV file's top-level boxes: one that runs past the end of the file, or no index
    (moov) at all, means the file was cut off or never finished. Other containers: None.

    FFmpeg reports such a file only as "Invalid data found", which does not tell the user why.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return None
        pos, seen = 0, []
        while pos + 8 <= size:
            f.seek(pos)
            box_len, box_type = struct.unpack(">I4s", f.read(8))
            if box_len == 1:
                extended = f.read(8)
                if len(extended) < 8:
                    break
                (box_len,) = struct.unpack(">Q", extended)
            elif box_len == 0:
                box_len = size - pos  # "to the end of the file"
            name = box_type.decode("latin-1")
            seen.append(name)
            if box_len < 8:
                return f"in.mp4 is corrupt: box '{name}' at byte {pos} declares {box_len} bytes"
            if pos + box_len > size:
                return (
                    f"in.mp4 is truncated: its '{name}' box declares {box_len} bytes from byte {pos} but the file "
                    f"ends after {size - pos}"
                )
            pos += box_len
    if "moov" not in seen:
        return "in.mp4 is truncated or unfinished: it has no index (moov box); the writer did not finish it"
    return None


def _probe_video(path: Path) -> tuple[VideoInfo | None, list[str]]:
    """Open in.mp4 with PyAV: read the stream's facts, decode its first frame, then seek to its last
    second and decode to the end, so a file cut short of its declared duration is caught cheaply."""
    try:
        boxes = _mp4_truncation(path)
    except (OSError, struct.error):
        boxes = None  # not readable as boxes: FFmpeg has the last word
    info, problems = _probe_video_stream(path)
    if boxes and not any("truncated" in p for p in problems):
        problems = [boxes, *(p for p in problems if "cannot be opened" not in p)]
    return info, problems


def _probe_video_stream(path: Path) -> tuple[VideoInfo | None, list[str]]:
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to open is a property of the file, reported
        return None, [f"in.mp4 cannot be opened as a video ({_error_text(exc)})"]
    try:
        with container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                return None, [
                    f"in.mp4 has no video stream (format {container.format.name}, streams: {', '.join(kinds)})"
                ]
            stream = container.streams.video[0]
            tb = stream.time_base
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and tb is not None:
                duration = float(stream.duration * tb)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            frames = int(stream.frames or 0)
            if frames <= 0 and fps > 0 and duration > 0:
                frames = round(duration * fps)
            try:
                first = next(container.decode(stream), None)
            except Exception as exc:  # noqa: BLE001
                return None, [f"in.mp4 video does not decode ({_error_text(exc)})"]
            if first is None:
                return None, ["in.mp4 video stream has no decodable frame"]
            info = VideoInfo(
                frames=frames,
                fps=fps,
                width=int(first.width),
                height=int(first.height),
                duration_s=duration,
                codec=stream.codec_context.name,
            )
            if duration <= 0 and fps <= 0:
                return info, ["in.mp4 has neither a duration nor a frame rate: cannot place frames in time"]
            if duration > 0 and tb is not None:
                problem = _check_video_end(container, stream, first, duration, fps)
                if problem:
                    return info, [problem]
            return info, []
    except Exception as exc:  # noqa: BLE001
        return None, [f"in.mp4 cannot be read ({_error_text(exc)})"]


def _check_video_end(container: Any, stream: Any, first: Any, duration: float, fps: float) -> str | None:
    """Seek to the last second and decode to the end: the last frame must be near the declared end."""
    tb = stream.time_base
    start = float(first.time) if first.time is not None else 0.0
    frame_s = 1.0 / fps if fps > 0 else 0.1
    expected_last = start + duration - frame_s  # the last frame starts one frame before the end
    if expected_last <= start + frame_s:
        return None  # a one- or two-frame clip: the first frame decoding is the whole check
    seek_to = max(start, expected_last - 1.0)
    container.seek(int(seek_to / tb), stream=stream, backward=True, any_frame=False)
    last_t = last_end = None
    try:
        for frame in container.decode(stream):
            if frame.time is not None:
                last_t = float(frame.time)
                # A variable-frame-rate clip may hold its last frame far longer than the average frame
                # (a screen recording, a phone clip): its end is its own duration, not 1/fps.
                own = float(frame.duration * tb) if frame.duration else 0.0
                last_end = last_t + (own if own > 0 else frame_s)
    except Exception as exc:  # noqa: BLE001
        reached = f"; frames decode up to {last_t:.2f} s" if last_t is not None else ""
        return (
            f"in.mp4 is truncated or corrupt: decoding its last second (from {seek_to:.2f} s of a declared "
            f"{duration:.2f} s) fails ({_error_text(exc)}){reached}"
        )
    if last_t is None:
        return f"in.mp4 is truncated: no frame decodes after {seek_to:.2f} s of a declared {duration:.2f} s"
    if last_end is not None and last_end < start + duration - frame_s - max(2 * frame_s, 0.1):
        return (
            f"in.mp4 is truncated: the container declares {duration:.2f} s but frames decode only up to "
            f"{last_end - start:.2f} s"
        )
    return None


def _riff_truncation(path: Path, label: str) -> str | None:
    """Compare a RIFF/WAVE file's declared data size with the bytes the file holds.

    libsndfile quietly reads what is there, so a cut-off WAV would otherwise pass as a shorter one.
    Not a RIFF WAVE file (soundfile reads other formats), or a streamed header (size 0 or 0xFFFFFFFF):
    nothing to compare, None.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_len = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_len in (0, 0xFFFFFFFF):
                    return None
                held = size - pos - 8
                if held < chunk_len:
                    return (
                        f"{label} is truncated: its header declares {chunk_len} bytes of audio "
                        f"but the file holds {held} ({held / chunk_len:.0%})"
                    )
                return None
            pos += 8 + chunk_len + (chunk_len & 1)
    return None


def _probe_wav(path: Path, label: str) -> tuple[AudioInfo | None, list[str]]:
    """Decode a WAV whole with soundfile: rate, channels, duration, RMS level, every sample finite."""
    problems = []
    try:
        truncated = _riff_truncation(path, label)
    except OSError as exc:
        return None, [f"{label} cannot be read ({_error_text(exc)})"]
    if truncated:
        problems.append(truncated)
    frames, sumsq, bad, peak = 0, 0.0, 0, 0.0
    try:
        with sf.SoundFile(str(path)) as f:
            rate, channels, declared, subtype = f.samplerate, f.channels, f.frames, f.subtype
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                frames += block.shape[0]
                finite = np.isfinite(block)
                if not finite.all():
                    bad += int((~finite).sum())
                    block = np.where(finite, block, 0.0)
                sumsq += float(np.square(block, dtype=np.float64).sum())
                if block.size:
                    peak = max(peak, float(np.abs(block).max()))
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError/RuntimeError/TypeError
        return None, [f"{label} cannot be decoded as audio ({_error_text(exc)})"]
    if frames < declared and not truncated:
        problems.append(f"{label} is truncated: {frames} of its declared {declared} frames decode")
    rms = math.sqrt(sumsq / (frames * channels)) if frames else 0.0
    dbfs = max(FLOOR_DBFS, 20 * math.log10(rms)) if rms > 0 else FLOOR_DBFS
    info = AudioInfo(sample_rate=int(rate), channels=int(channels), duration_s=frames / rate, rms_dbfs=round(dbfs, 2))
    if frames == 0:
        problems.append(f"{label} has no audio samples")
    elif label == "in.wav" and info.duration_s < MIN_FBANK_SECONDS:
        problems.append(f"{label} is {info.duration_s * 1000:.1f} ms long; needs at least 25 ms (one fbank window)")
    if bad:
        problems.append(f"{label} contains {bad} NaN/Inf samples")
    if peak > MAX_FLOAT_PEAK:
        problems.append(
            f"{label} ({subtype} samples) peaks at {peak:.3g}, where full scale is 1.0: its features would "
            f"overflow to NaN. Normalise it to [-1, 1] (e.g. divide by its peak) and save it again"
        )
    return info, problems


# --- validating one sample ------------------------------------------------------------------------


def _link_error(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "a symlink loop"
    return _error_text(exc)


def _inside(path: Path, root: Path) -> bool:
    return path == root or str(path).startswith(str(root).rstrip(os.sep) + os.sep)


def _locate(
    sample_dir: Path, root: Path, files: tuple[str, ...] = SAMPLE_FILES
) -> tuple[dict[str, Path], list[str], list[tuple[str, Any]]]:
    """Stat-level checks of one sample: which files can be probed, the problems, and the stat key rows.

    Links are followed only when they stay inside `root` (resolved); a plain file in a plain folder
    under the root is inside by construction, so only links cost a path resolution.
    """
    present: dict[str, Path] = {}
    problems: list[str] = []
    rows: list[tuple[str, Any]] = []
    if sample_dir.is_symlink():
        try:
            real_dir = sample_dir.resolve()
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
    for fname in files:
        f = sample_dir / fname
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            problems.append(f"{fname} is missing")
            rows.append((fname, "missing"))
            continue
        except OSError as exc:
            problems.append(f"{fname} cannot be read ({_error_text(exc)})")
            rows.append((fname, "unreadable"))
            continue
        real = f
        if stat.S_ISLNK(st.st_mode):
            try:
                real = f.resolve()
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
                problems.append(f"{fname} is a link that leads nowhere ({_link_error(exc)}); replace it with the file")
                rows.append((fname, "broken link"))
                continue
            if not _inside(real, root):
                problems.append(
                    f"{fname} is a link to {real}, outside the dataset root {root}: "
                    "copy the file into the sample folder instead of linking it"
                )
                rows.append((fname, "outside"))
                continue
            try:
                st = real.stat()
            except OSError as exc:
                problems.append(f"{fname} is a link that leads nowhere ({_link_error(exc)})")
                rows.append((fname, "broken link"))
                continue
        rows.append((fname, st.st_size, st.st_mtime_ns, st.st_ino))
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{fname} is not a regular file")
        elif st.st_size == 0:
            problems.append(f"{fname} is empty (0 bytes)")
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


def _sample_key(sample_dir: Path, root: Path, cfg: DataConfig) -> tuple[dict[str, Path], list[str], list[Any], str]:
    """Stat-level checks of one sample and its cache key (with content hashes where asked)."""
    present, problems, rows = _locate(sample_dir, root)
    for fname in TEXT_FILES:  # the optional texts are training targets too: a change is a data change
        path = sample_dir / fname
        if path.is_file():
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


def _sample_report(sample_dir: Path, problems: list[str], probe: dict[str, Any], cfg: DataConfig) -> SampleReport:
    """A sample's report from its stat problems and its probe, with the configured rules applied.

    Raises:
        ValueError, KeyError, TypeError: the probe is malformed (a damaged cache entry).
    """
    report = SampleReport(name=sample_dir.name, path=str(sample_dir), problems=list(problems))
    report.problems += [str(p) for p in probe["problems"]]
    report.video = VideoInfo.model_validate(probe["video"]) if probe["video"] else None
    report.in_audio = AudioInfo.model_validate(probe["in_audio"]) if probe["in_audio"] else None
    report.out_audio = AudioInfo.model_validate(probe["out_audio"]) if probe["out_audio"] else None
    _apply_limits(report, cfg)
    _check_texts(report, sample_dir, cfg)
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


def _check_texts(report: SampleReport, sample_dir: Path, cfg: DataConfig) -> None:
    """The optional texts: UTF-8, no special strings of the model's template, a transcript that can
    fit in the answer (a segment of N codec frames has N + 1 text positions, `vss_core.sequence`)."""
    for fname in TEXT_FILES:
        path = sample_dir / fname
        if not path.is_file():
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            report.problems.append(f"{fname} is not UTF-8 text (byte {exc.start}); save it as UTF-8")
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


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --- the dataset ----------------------------------------------------------------------------------


def validate_dataset(cfg: DataConfig, cache_dir: Path | None = None) -> DatasetReport:
    """Check every sample under cfg.root and report each one's problems (never raises for a sample).

    Probes run on cfg.workers threads (0 = one per CPU core). A sample whose files have the same
    size, mtime and inode (or, with data.fingerprint=content, the same sha256) as in the validation
    cache is not decoded again; the duration and silence rules are re-applied to its cached facts.
    The cache lives in `cache_dir` when given, else in data.validation_cache; it is never written
    into the dataset, and a cache that cannot be written costs only a warning.

    Raises:
        DatasetError: the root does not exist, is not a directory, or holds no sample folders.
    """
    given = Path(cfg.root)
    if not given.exists():
        raise DatasetError(f"data.root={cfg.root!r}: {given.absolute()} does not exist. Fix: {_DEMO_FIX}.")
    if not given.is_dir():
        raise DatasetError(f"data.root={cfg.root!r}: {given.absolute()} is not a directory. Fix: {_DEMO_FIX}.")
    root = given.resolve()
    entries = sorted(given.iterdir(), key=lambda p: p.name)
    sample_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not sample_dirs:
        raise DatasetError(
            f"data.root={cfg.root!r}: {root} holds no sample folders "
            f"(<root>/<sample>/{{{','.join(SAMPLE_FILES)}}}). Fix: {_DEMO_FIX}."
        )
    cache_path = _cache_file(cfg, root, cache_dir)
    cached = _read_cache(cache_path, root)

    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(sample_dirs)))
    # Threads, not processes: hashing, PyAV and libsndfile work outside the GIL, and threads start
    # free. Stat-only keys are cheaper than handing work to a thread, so they are taken in line.
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        keyed = (
            list(pool.map(lambda d: _sample_key(d, root, cfg), sample_dirs))
            if cfg.fingerprint == "content"
            else [_sample_key(d, root, cfg) for d in sample_dirs]
        )
        probes: dict[str, dict[str, Any]] = {}
        for sample_dir, (_, _, _, key) in zip(sample_dirs, keyed):
            entry = cached.get(sample_dir.name)
            if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("probe"), dict):
                probes[sample_dir.name] = entry["probe"]
        reused = set(probes)
        misses = [(d, k[0]) for d, k in zip(sample_dirs, keyed) if d.name not in reused]
        for (sample_dir, _), probe in zip(misses, pool.map(lambda m: _probe(m[1]), misses)):
            probes[sample_dir.name] = probe

        samples = []
        for sample_dir, (present, problems, _, _) in zip(sample_dirs, keyed):
            try:
                samples.append(_sample_report(sample_dir, problems, probes[sample_dir.name], cfg))
            except (ValueError, KeyError, TypeError):  # a damaged cache entry: probe the sample again
                reused.discard(sample_dir.name)
                probes[sample_dir.name] = _probe(present)
                samples.append(_sample_report(sample_dir, problems, probes[sample_dir.name], cfg))

    sample_names = {p.name for p in sample_dirs}
    extras = [p.name for p in entries if p.name not in sample_names]
    for sample_dir in sample_dirs:
        try:
            extras += [
                f"{sample_dir.name}/{p.name}"
                for p in sorted(sample_dir.iterdir())
                if p.name not in SAMPLE_FILES + TEXT_FILES
            ]
        except OSError:
            pass  # an unreadable folder already shows as missing files
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
                    "samples": {d.name: {"key": k[3], "probe": probes[d.name]} for d, k in zip(sample_dirs, keyed)},
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
        fingerprint=_fingerprint(cfg.fingerprint, [(d.name, k[2]) for d, k in zip(sample_dirs, keyed)]),
        fingerprint_mode=cfg.fingerprint,
        on_invalid=cfg.on_invalid,
        reused=[d.name for d in sample_dirs if d.name in reused],
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


# --- preparation ----------------------------------------------------------------------------------


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path} is missing")
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{path} is not readable JSON ({_error_text(exc)})")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{path} must hold a JSON object")
        return None
    return raw


def _file_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of small files (configs, tokenizer): what preparation depends on."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()


def _model_preprocessing(model_dir: Path, codec_dir: Path, cfg: DataConfig) -> dict[str, Any]:
    """The preprocessing settings of the checkpoint, the codec and the data config: everything that
    shapes a prepared file (its cache key is a hash of these).

    Raises:
        ModelError: the checkpoint's or the codec's configs are missing or invalid (all problems).
    """
    problems: list[str] = []
    try:
        model_lib.CheckpointConfigs(model_dir)  # every config problem at once
    except ModelError as exc:
        problems.append(str(exc))
    try:
        codec_key = codec_lib.encoder_fingerprint(codec_dir)
    except ModelError as exc:
        problems.append(str(exc))
    from vss_core.model import audio as audio_lib

    try:  # read on its own so the rate is checked even when another config is broken
        rate = audio_lib.PreprocessorConfig.from_file(model_dir / model_lib.checkpoint.PREPROCESSOR_CONFIG).sample_rate
    except ModelError:
        rate = None  # already reported by CheckpointConfigs
    if rate is not None and rate != cfg.sample_rate:
        problems.append(
            f"{model_dir / model_lib.checkpoint.PREPROCESSOR_CONFIG}: the audio encoder wants "
            f"{rate} Hz but data.sample_rate={cfg.sample_rate}; set data.sample_rate={rate}"
        )
    if problems:
        raise ModelError(
            f"cannot prepare data for the checkpoint at {model_dir} with the codec at {codec_dir}:\n"
            f"{bullet_list(problems)}\nCheck model.source points at a complete LongCat-Flash-Omni checkpoint "
            "and model.codec_source at LongCat-Audio-Codec."
        )
    small = _preprocessing_files(model_dir)
    return {
        "format": PREPARE_FORMAT,
        "model_files": _file_digest(small),
        "codec": codec_key,
        "video_frames": cfg.video_frames,
        "video_fps": cfg.video_fps,
        "crop_seconds": cfg.crop_seconds,
        "sample_rate": cfg.sample_rate,
    }


class _Preparer:
    """What preparing a sample needs from the checkpoint and the codec, loaded once per process."""

    def __init__(self, model_dir: Path, codec_dir: Path | None) -> None:
        from vss_core.model import audio as audio_lib

        configs = model_lib.CheckpointConfigs(model_dir)
        self.vision = configs.vision
        self.features = audio_lib.FeatureExtractor.from_dir(Path(model_dir) / "audio")
        self.tokenizer, self.ids = configs.tokenizer, configs.special_ids
        self.codec = codec_lib.load_encoder(codec_dir) if codec_dir is not None else None


def _preprocessing_files(model_dir: Path) -> list[Path]:
    """The checkpoint's small files that shape a prepared sample (configs, cmvn, tokenizer)."""
    ck = model_lib.checkpoint
    small = [model_dir / ck.VISION_CONFIG, model_dir / ck.PREPROCESSOR_CONFIG, model_dir / ck.GLOBAL_CMVN]
    return small + sorted(p for p in model_dir.glob("*.json") if "token" in p.name)


_PREPARERS: dict[tuple[str, str | None, str, str | None], _Preparer] = {}


def _preparer(model_dir: Path, codec_dir: Path | None) -> _Preparer:
    """The preparer of these directories, reused within a process while their files are unchanged
    (keyed by the files' content, so an edited config or cmvn is never served from memory)."""
    codec_key = None if codec_dir is None else codec_lib.encoder_fingerprint(codec_dir)
    key = (
        str(model_dir),
        None if codec_dir is None else str(codec_dir),
        _file_digest(_preprocessing_files(Path(model_dir))),
        codec_key,
    )
    if key not in _PREPARERS:
        _PREPARERS.clear()  # one checkpoint at a time: drop what an older version of the files loaded
        _PREPARERS[key] = _Preparer(model_dir, codec_dir)
    return _PREPARERS[key]


def _frame_times(n: int, fps: float, duration: float) -> list[float]:
    """n timestamps at `fps`, or spread uniformly over the clip when it is too short for that."""
    if duration > 0 and (n - 1) / fps >= duration:
        return [duration * i / n for i in range(n)]
    return [i / fps for i in range(n)]


def _frame_to_array(frame: av.VideoFrame) -> np.ndarray:
    """The decoded frame as H x W x 3 uint8 RGB at its own resolution (the vision side resizes it)."""
    return frame.to_ndarray(format="rgb24")


def _read_frames(path: Path, times: list[float]) -> tuple[list[np.ndarray], int]:
    """The frame shown at each timestamp, and how many frames were decoded to get them.

    Seeks near each timestamp instead of decoding the whole clip, and stops after the last one:
    only the frames between a keyframe and a wanted frame are decoded.
    """
    seek_gap = 2.0  # seconds: closer targets are reached by decoding on, farther ones by seeking
    out: list[np.ndarray] = []
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        half = 0.5 / rate if rate else 1e-3
        frames_iter = None
        current, current_t, exhausted = None, -math.inf, False
        for ts in times:
            target = start + ts
            if frames_iter is None or (not exhausted and target - current_t > seek_gap):
                if tb is not None:
                    container.seek(int(target / tb), stream=stream, backward=True, any_frame=False)
                frames_iter = container.decode(stream)
                current, current_t, exhausted = None, -math.inf, False
            while current is None or current_t < target - half:
                nxt = None if exhausted else next(frames_iter, None)
                if nxt is None:
                    exhausted = True
                    break
                current = nxt
                decoded += 1
                current_t = float(nxt.time) if nxt.time is not None else current_t + (1 / rate if rate else 0.0)
            if current is not None:
                out.append(_frame_to_array(current))
            elif out:
                out.append(out[-1])  # past the end: repeat the last frame
    if not out:
        raise DatasetError(f"{path}: no video frame could be decoded")
    return out, decoded


def _read_mono(path: Path, rate: int, seconds: float) -> torch.Tensor:
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(dim=1)
    if file_rate != rate:
        # Crop first (with margin) so a long file is not resampled whole.
        wave = wave[: math.ceil(seconds * file_rate) + 1]
        wave = torchaudio.functional.resample(wave, file_rate, rate)
    return wave[: int(seconds * rate)].contiguous()


def read_target(sample_dir: Path, rate: int, cfg: DataConfig) -> tuple[torch.Tensor, str | None]:
    """A sample's target as training saw it: out.wav mono at `rate`, cropped to data.crop_seconds, and
    its transcript out.txt (None when absent). For the evaluate stage."""
    return _read_mono(Path(sample_dir) / "out.wav", rate, cfg.crop_seconds), _read_text(Path(sample_dir) / "out.txt")


def _video_duration(video: VideoInfo | None, crop_seconds: float) -> float:
    """The span frames are sampled from: the clip, or its first crop_seconds (0: unknown)."""
    duration = video.duration_s if video else 0.0
    if duration <= 0 and video and video.fps > 0:
        duration = video.frames / video.fps
    return min(duration, crop_seconds) if duration > 0 else 0.0


def _read_text(path: Path) -> str | None:
    """An optional text file of a sample (out.txt, in.txt, system.txt), stripped; None when absent."""
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip()


def _prepare_inputs(sample_dir: Path, s: dict[str, Any], duration_s: float, prep: _Preparer) -> dict[str, Any]:
    """The model inputs of one sample's in.mp4 / in.wav (and optional in.txt / system.txt).

    Frames: the official native-resolution vision preprocessing (`vision.preprocess_frames`: frame
    pairs, smart resize within the pixel budget, normalised patches). Speech: the official features
    (`audio.FeatureExtractor`: x32768, fbank, delta, Kaldi cmvn, splice); one `<|audio_pad|>` per
    valid feature frame.
    """
    from vss_core.model import vision as vision_lib

    times = _frame_times(s["video_frames"], s["video_fps"], duration_s)
    frames, _ = _read_frames(sample_dir / "in.mp4", times)
    pixel_values, grids, pads = vision_lib.preprocess_frames(frames, prep.vision, is_video=True)
    wave = _read_mono(sample_dir / "in.wav", s["sample_rate"], s["crop_seconds"])
    feats, mask = prep.features(wave[None], torch.tensor([wave.shape[0]]))
    features = feats[0, : int(mask[0].sum())]
    return {
        "pixel_values": pixel_values.contiguous(),
        "grid_shapes": torch.tensor(grids, dtype=torch.int64).reshape(-1, 3),
        "audio_features": features.contiguous(),
        # each frame pair is timed by its first frame (official data/utils.py refix_frame_index)
        "frame_pairs": [(times[2 * k], n) for k, n in enumerate(pads)],
        "system": _read_text(sample_dir / "system.txt"),
        "instruction": _read_text(sample_dir / "in.txt"),
    }


def _sequence(
    prep: _Preparer, inputs: dict[str, Any], codes: torch.Tensor | None, transcript: str | None
) -> dict[str, torch.Tensor]:
    return sequence.build_voice_chat_sample(
        prep.tokenizer,
        prep.ids,
        frame_pairs=inputs["frame_pairs"],
        n_audio_tokens=inputs["audio_features"].shape[0],
        codes=codes,
        transcript=transcript,
        system=inputs["system"],
        instruction=inputs["instruction"],
    )


def _prepare_one(job: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    """Prepare one sample into job['out'] atomically (in this process or a worker)."""
    s = job["settings"]
    sample_dir = Path(job["path"])
    prep = _preparer(Path(job["model_dir"]), Path(job["codec_dir"]))
    inputs = _prepare_inputs(sample_dir, s, job["duration_s"], prep)
    for key in ("pixel_values", "audio_features"):
        if not torch.isfinite(inputs[key]).all():  # never write a file that would train on NaN
            raise DatasetError(
                f"{key} of {sample_dir} are not finite (NaN/Inf); check in.mp4 and in.wav decode to sane values"
            )
    target = _read_mono(sample_dir / "out.wav", prep.codec.sample_rate, s["crop_seconds"])
    codes = prep.codec.encode(target).to(torch.int64)
    seq = _sequence(prep, inputs, codes, _read_text(sample_dir / "out.txt"))
    item = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)} | seq
    write_atomic(
        Path(job["out"]), lambda tmp: torch.save({**item, "codes": codes.contiguous(), "key": job["key"]}, tmp)
    )
    return job["name"], job["key"], _shapes_of(item | {"codes": codes})


SHAPE_KEYS = ("patches", "audio_frames", "audio_width", "code_frames", "tokens")


def _shapes_of(item: dict[str, torch.Tensor]) -> dict[str, int]:
    return {
        "patches": item["pixel_values"].shape[0],
        "audio_frames": item["audio_features"].shape[0],
        "audio_width": item["audio_features"].shape[1],
        "code_frames": item["codes"].shape[0],
        "tokens": item["input_ids"].shape[0],
    }


def prepare_inputs(sample_dir: Path, cfg: DataConfig, model_dir: Path) -> dict[str, Any]:
    """One sample's prompt, prepared exactly as `prepare_dataset` prepares a sample (for inference).

    Only in.mp4 and in.wav (and the optional in.txt / system.txt) are read; out.wav is neither needed
    nor read. Returns the official prompt up to `VOICE ASSISTANT:` (`sequence.SEQUENCE_KEYS`) with
    `pixel_values`, `grid_shapes` and `audio_features`, as in a prepared sample file.

    Raises:
        DatasetError: the sample folder is missing, or its in.mp4 / in.wav is missing or unreadable
            (all problems listed).
        ModelError: the checkpoint's vision/audio preprocessing config is missing or invalid.
    """
    sample_dir = Path(sample_dir)
    if not sample_dir.is_dir():
        raise DatasetError(
            f"sample {sample_dir}: not a directory; point at one sample folder holding in.mp4 and in.wav "
            f"(e.g. data/train/01). To get one, {_DEMO_FIX}"
        )
    # No dataset root here: the folder may live anywhere, so every link target counts as inside.
    present, problems, _ = _locate(sample_dir, Path(sample_dir.resolve().anchor), files=("in.mp4", "in.wav"))
    probe = _probe(present)
    problems += probe["problems"]
    if problems:
        raise DatasetError(
            f"sample {sample_dir} cannot be used:\n{bullet_list(problems)}\n"
            "Add or fix the files (a sample folder holds in.mp4 and in.wav)."
        )
    prep = _preparer(Path(model_dir), None)
    settings = {
        "video_frames": cfg.video_frames,
        "video_fps": cfg.video_fps,
        "crop_seconds": cfg.crop_seconds,
        "sample_rate": cfg.sample_rate,
    }
    video = VideoInfo.model_validate(probe["video"])
    inputs = _prepare_inputs(sample_dir, settings, _video_duration(video, cfg.crop_seconds), prep)
    seq = _sequence(prep, inputs, None, None)
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)} | seq


def _worker_init() -> None:
    # Each worker prepares one sample at a time; N workers x N torch threads would oversubscribe the cores.
    torch.set_num_threads(1)


def _cached(path: Path, entry: dict[str, Any] | None, key: str) -> dict[str, int] | None:
    """The shapes of a cached sample file whose key matches, or None if it must be (re)done."""
    if not path.is_file():
        return None
    if entry is not None and entry.get("key") == key:
        try:
            return {k: int(entry[k]) for k in SHAPE_KEYS}
        except (KeyError, TypeError, ValueError):
            pass
    if entry is not None:
        return None
    # No manifest entry (a run stopped before writing the manifest): the key inside the file decides.
    try:
        item = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - an unreadable cache file is simply redone
        return None
    if not isinstance(item, dict) or item.get("key") != key:
        return None
    try:
        return _shapes_of(item)
    except (KeyError, AttributeError, IndexError):
        return None


def _file_stats(sample_dir: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of each sample file, following links: what a prepared file is keyed on."""
    stats = []
    for fname in SAMPLE_FILES + TEXT_FILES:
        try:
            st = (sample_dir / fname).stat()
            stats.append((fname, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((fname, -1, -1))
    return stats


def prepared_key(model_dir: Path, codec_dir: Path, cfg: DataConfig) -> str:
    """The sha256 of everything that shapes a prepared file: the data settings (frames, fps, crop,
    rate), the checkpoint's preprocessing files (vision and audio configs, cmvn, tokenizer) and the
    codec encoder, by content, so a new revision of either counts. A prepared folder is named by it
    (`prepared_dir`) so two preparations with different settings never share one.

    Raises:
        ModelError: the checkpoint's or the codec's configs are missing or invalid (all problems).
    """
    return _sha256_json(_model_preprocessing(Path(model_dir), Path(codec_dir), cfg))


def prepared_dir(base: Path, fingerprint: str, model_dir: Path, codec_dir: Path, cfg: DataConfig) -> Path:
    """`base/<data fingerprint[:16]>-<prepared_key[:16]>`: the folder one dataset prepared one way lives in.

    Raises:
        ModelError: as `prepared_key`.
    """
    return Path(base) / f"{fingerprint[:16]}-{prepared_key(model_dir, codec_dir, cfg)[:16]}"


LOCK_FILE = ".prepare.lock"


@contextlib.contextmanager
def _prepare_lock(out_dir: Path, timeout_s: float | None):
    """Hold `out_dir/.prepare.lock` (flock) so two preparations of one folder never interleave.

    A second preparation waits for the first (then reuses what it wrote); with a timeout it gives up.

    Raises:
        DatasetError: the lock is still held after timeout_s (the holder is named).
    """
    path = out_dir / LOCK_FILE
    handle = open(path, "a+")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise DatasetError(
                        f"prepared data folder {out_dir} is being written by {holder} (lock {path}); waited "
                        f"{timeout_s:g} s. Wait for that preparation to finish and run again (it then reuses "
                        "its files), or stop it."
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_stale_temps(out_dir: Path) -> list[str]:
    """Delete `.NAME.tmp-PID[-...]` files whose writer is dead (a killed preparation leaves them)."""
    removed = []
    for tmp in out_dir.glob(".*.tmp-*"):
        pid_text = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


def prepare_dataset(
    samples: list[SampleReport],
    cfg: DataConfig,
    model_dir: Path,
    codec_dir: Path,
    out_dir: Path,
    lock_timeout_s: float | None = None,
) -> PreparedDataset:
    """Turn samples into model inputs: `out_dir/<sample>.pt` (frames, fbank, codes) and manifest.json.

    Frames are sampled at data.video_fps (data.video_frames of them) from the first
    seconds of the clip, reached by seeking; in.wav and out.wav are converted to 16 kHz
    mono and cropped to the same span (data.audio_seconds, or data.max_seconds if smaller).
    A sample whose file already exists with the same key (its files' size/mtime, the data settings
    and the checkpoint's preprocessing config) is reused. Invalid samples are skipped and named.
    Work is spread over cfg.workers processes (0 = one per CPU core).

    The folder is written under a file lock (`.prepare.lock`): a second preparation of the same
    folder waits for the first (lock_timeout_s: give up after that long; None: wait). Temporary
    files left by a killed preparation (their writer's pid is dead) are deleted first. A manifest
    made with other settings (`prepared_key`) is replaced, never merged: the folder holds one
    preparation only.

    Raises:
        ModelError: the checkpoint's vision/audio preprocessing config or codec config is missing or invalid.
            This includes data.sample_rate differing from the rate the audio encoder wants.
        DatasetError: no valid sample was given, a sample fails to prepare (all failures listed), or
            another preparation holds the folder past lock_timeout_s.
    """
    model_dir, codec_dir, out_dir = Path(model_dir), Path(codec_dir), Path(out_dir)
    settings = _model_preprocessing(model_dir, codec_dir, cfg)
    settings_key = _sha256_json(settings)
    good = [s for s in samples if s.ok]
    skipped = [s.name for s in samples if not s.ok]
    if not good:
        raise DatasetError(
            f"data: no valid sample to prepare (given {len(samples)}). Run validation first and fix the files."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with _prepare_lock(out_dir, lock_timeout_s):
        _remove_stale_temps(out_dir)
        return _prepare_locked(good, skipped, cfg, settings, settings_key, model_dir, codec_dir, out_dir)


def _prepare_locked(
    good: list[SampleReport],
    skipped: list[str],
    cfg: DataConfig,
    settings: dict[str, Any],
    settings_key: str,
    model_dir: Path,
    codec_dir: Path,
    out_dir: Path,
) -> PreparedDataset:
    manifest_path = out_dir / MANIFEST
    try:
        old = json.loads(manifest_path.read_text())
        old_entries = {e["name"]: e for e in old.get("samples", [])} if old.get("settings_key") == settings_key else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old_entries = {}
    if not old_entries:
        # No manifest of these settings: the manifest must not list files of other settings while this
        # preparation rewrites the folder (a crash midway leaves none rather than a mixed one).
        with contextlib.suppress(FileNotFoundError):
            manifest_path.unlink()

    jobs, reused, results = [], [], {}
    for s in good:
        key = _sha256_json({"files": _file_stats(Path(s.path)), "settings": settings_key})
        out = out_dir / f"{s.name}.pt"
        shapes = _cached(out, old_entries.get(s.name), key)
        if shapes is not None:
            reused.append(s.name)
            results[s.name] = (key, shapes)
            continue
        duration = _video_duration(s.video, cfg.crop_seconds)
        jobs.append(
            {
                "name": s.name,
                "path": s.path,
                "duration_s": duration,
                "settings": settings,
                "model_dir": str(model_dir),
                "codec_dir": str(codec_dir),
                "out": str(out),
                "key": key,
            }
        )

    failures = []
    workers = min(cfg.workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        for job in jobs:
            try:
                name, key, shapes = _prepare_one(job)
                results[name] = (key, shapes)
            except Exception as exc:  # noqa: BLE001 - collected and raised once below
                failures.append(f"{job['name']}: {_error_text(exc)}")
    elif jobs:
        # spawn, not fork: the caller may hold threads (Prefect, torch's pools) that fork does not copy safely.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_worker_init
        ) as pool:
            futures = {pool.submit(_prepare_one, job): job["name"] for job in jobs}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    name, key, shapes = fut.result()
                    results[name] = (key, shapes)
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{futures[fut]}: {_error_text(exc)}")
    if failures:
        raise DatasetError(
            f"data: {len(failures)} samples failed to prepare into {out_dir}:\n{bullet_list(sorted(failures))}\n"
            "Fix the files or remove those samples (data.on_invalid=skip only skips samples validation rejects)."
        )

    names = [s.name for s in good]
    entries = [{"name": n, "file": f"{n}.pt", "key": results[n][0], **results[n][1]} for n in names]
    write_json_atomic(
        manifest_path,
        {"format": PREPARE_FORMAT, "settings_key": settings_key, "samples": entries, "skipped": skipped},
    )
    return PreparedDataset(
        dir=str(out_dir),
        samples=names,
        files=[str(out_dir / f"{n}.pt") for n in names],
        settings_key=settings_key,
        skipped=skipped,
        reused=reused,
    )


def load_prepared(prepared_dir: Path, only: set[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """The prepared samples in manifest order (only those named in `only`, when given): dicts with
    frames, fbank and codes tensors.

    Every file is checked against itself and the manifest before anything is returned: every tensor
    present, pixel_values rows == the patches its grid_shapes describe, audio_features as wide as
    the manifest records (the same width for every sample), the sequence tensors of one length, and
    each shape as the manifest records it. A folder mixing files of different preparations fails here.

    Raises:
        DatasetError: the manifest or a sample file is missing, unreadable or inconsistent (all listed).
    """
    prepared_dir = Path(prepared_dir)
    manifest_path = prepared_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["samples"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "file" in e for e in entries):
            raise ValueError("'samples' must be a list of entries with a 'file'")
    except FileNotFoundError:
        raise DatasetError(
            f"{manifest_path} does not exist: prepare the dataset first (the prepare data stage)."
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{manifest_path} is unreadable ({_error_text(exc)}): prepare the dataset again.") from None
    widths = {int(e["audio_width"]) for e in entries if isinstance(e.get("audio_width"), int)}
    out, problems = [], []
    if manifest.get("format") != PREPARE_FORMAT:
        problems.append(f"{manifest_path} is of format {manifest.get('format')!r}, this vss reads {PREPARE_FORMAT}")
    if len(widths) > 1:
        problems.append(f"{manifest_path} records audio_features of different widths {sorted(widths)}")
    for entry in entries:
        if only is not None and str(entry.get("name")) not in only:
            continue
        path = prepared_dir / entry["file"]
        try:
            item = torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path} is unreadable ({_error_text(exc)})")
            continue
        if not isinstance(item, dict):
            problems.append(f"{path} holds a {type(item).__name__}, not a prepared sample")
            continue
        tensors = {k: v for k, v in item.items() if isinstance(v, torch.Tensor)}
        problems += [f"{path}: {p}" for p in _item_problems(tensors, entry, item.get("key"))]
        out.append(tensors)
    if problems:
        raise DatasetError(
            f"prepared data in {prepared_dir} is incomplete or inconsistent:\n{bullet_list(problems)}\n"
            f"Prepare the dataset again (delete {prepared_dir} and re-run; the prepare data stage rewrites it)."
        )
    return out


def _item_problems(item: dict[str, torch.Tensor], entry: dict[str, Any], key: Any) -> list[str]:
    """What is wrong with one loaded sample file, against itself and its manifest entry."""
    required = ("pixel_values", "grid_shapes", "audio_features", "codes", *sequence.SEQUENCE_KEYS)
    missing = [k for k in required if k not in item]
    if missing:
        return [f"lacks {', '.join(missing)}"]
    problems = []
    if entry.get("key") is not None and key != entry.get("key"):
        problems.append(
            f"was made with other inputs or settings (key {str(key)[:12]}, manifest {str(entry['key'])[:12]})"
        )
    grids = item["grid_shapes"]
    if grids.ndim != 2 or grids.shape[1] != 3:
        problems.append(f"grid_shapes has shape {tuple(grids.shape)}, not [frames, 3]")
    else:
        patches = int(grids.prod(dim=1).sum())
        if item["pixel_values"].shape[0] != patches:
            problems.append(f"pixel_values has {item['pixel_values'].shape[0]} rows but grid_shapes describe {patches}")
    feats = item["audio_features"]
    if feats.ndim != 2:
        problems.append(f"audio_features has shape {tuple(feats.shape)}, not [frames, width]")
    elif "audio_width" in entry and feats.shape[1] != int(entry["audio_width"]):
        problems.append(f"audio_features is {feats.shape[1]} wide, the manifest says {entry['audio_width']}")
    lengths = {k: item[k].shape[0] for k in sequence.SEQUENCE_KEYS}
    if len(set(lengths.values())) > 1:
        problems.append("sequence tensors differ in length (" + ", ".join(f"{k} {n}" for k, n in lengths.items()) + ")")
    try:
        shapes = _shapes_of(item)
    except (IndexError, RuntimeError):
        return problems
    differ = [f"{k} {shapes[k]} (manifest {entry[k]})" for k in SHAPE_KEYS if k in entry and shapes[k] != entry[k]]
    if differ:
        problems.append("does not match the manifest: " + ", ".join(differ))
    return problems


def prepared_names(prepared_dir: Path) -> list[str]:
    """The sample names of a prepared folder, in manifest order (the order `load_prepared` returns).

    Raises:
        DatasetError: the manifest is missing or unreadable.
    """
    path = Path(prepared_dir) / MANIFEST
    try:
        return [str(e["name"]) for e in json.loads(path.read_text())["samples"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is unreadable ({_error_text(exc)}): prepare the dataset again.") from None


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
