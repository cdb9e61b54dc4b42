"""Probing one media file: what PyAV and soundfile find in an in.mp4 / in.wav / out.wav, with the MP4 and
RIFF walkers that tell a truncated file from a corrupt one."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf

from vss_core.data.reports import FLOOR_DBFS, MAX_FLOAT_PEAK, MIN_FBANK_SECONDS, AudioInfo, VideoInfo, _error_text

# --- probing one file -----------------------------------------------------------------------------


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
