"""A small generated dataset in the user's format, for the CPU demo and the tests.

`write_demo_dataset(root, samples)` writes `root/<01..N>/{in.mp4,in.wav,out.wav}`:

- in.mp4: a real H.264 (libx264, yuv420p) clip, 96x80 at 10 fps, coloured shapes moving across a
  background; colours, sizes and paths differ per sample. `video_codec`, `size` and `fps` change
  that (e.g. mpeg4 or libvpx-vp9, to exercise conversion).
- in.wav: 16 kHz mono int16 "speech": harmonic tones with a gliding pitch, shaped into syllables,
  with a little noise. `in_rate` and `in_channels` change its rate and channel count.
- out.wav: the target, a deterministic function of in.wav and the video: the same syllables played
  backwards in time, at a pitch raised by a ratio read from the colour of the video's first shape.
  A model can learn the mapping; nothing about it is random beyond the seed.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from vss_core.errors import DatasetError

SAMPLE_RATE = 16_000
WIDTH, HEIGHT, FPS = 96, 80, 10
# The PyAV wheels bundle an FFmpeg built with libx264; fall back to what else might encode H.264.
H264_ENCODERS = ("libx264", "libopenh264", "h264")


@dataclass(frozen=True)
class _Shape:
    kind: str  # "rect" or "disc"
    colour: tuple[int, int, int]
    size: float
    x0: float
    y0: float
    vx: float
    vy: float


def h264_encoder() -> str:
    """The name of an H.264 encoder the bundled FFmpeg has.

    Raises:
        DatasetError: PyAV's FFmpeg has no H.264 encoder.
    """
    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - PyAV raises different types across versions for unknown codecs
            continue
        return name
    raise DatasetError(
        f"PyAV {av.__version__}'s FFmpeg has none of the H.264 encoders {', '.join(H264_ENCODERS)}; "
        "install the PyAV wheel from PyPI (`pip install av`), which bundles libx264."
    )


def write_demo_dataset(
    root: Path,
    samples: int,
    seed: int = 0,
    seconds: float = 3.0,
    overwrite: bool = False,
    *,
    video_codec: str | None = None,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    fps: int = FPS,
    in_rate: int = SAMPLE_RATE,
    in_channels: int = 1,
    transcripts: bool = True,
    grain: int = 0,
) -> list[Path]:
    """Write a generated dataset of `samples` samples under `root` and return the sample folders.

    Each sample also gets `out.txt`, a short transcript of its answer (the model speaks text and
    speech together), unless `transcripts=False` (the three-file samples of the source documents).
    The defaults write what DESIGN.md's model wants as is (H.264 96x80 at 10 fps, 16 kHz mono);
    the keyword arguments write other codecs, resolutions, rates and channel counts, which vss
    must convert rather than reject. out.wav is always 16 kHz mono. `grain` > 0 adds fresh noise of up
    to +-grain levels to every pixel of every frame, as a camera's sensor does: flat synthetic frames
    compress to a fraction of a real clip's bitrate and decode unrealistically fast (the data bench
    uses it to get a camera-like bitrate).

    Each sample is written to a temporary folder inside `root` and renamed into place, so a crash
    never leaves a half-written sample. With `overwrite=True`, sample folders of the same names are
    replaced; anything else already in `root` is left alone.

    Raises:
        DatasetError: samples < 1, seconds not positive, or `root` is a non-empty directory
            (or a file) and overwrite is False.
    """
    root = Path(root)
    problems = []
    if samples < 1:
        problems.append(f"samples={samples}: need at least 1")
    if not seconds > 0 or not math.isfinite(seconds):
        problems.append(f"seconds={seconds}: must be a positive number of seconds")
    if size[0] < 16 or size[1] < 16 or size[0] % 2 or size[1] % 2:
        problems.append(f"size={size}: width and height must be even and at least 16 (yuv420p)")
    if not 1 <= fps <= 120:
        problems.append(f"fps={fps}: must be 1..120")
    if not 0 <= grain <= 64:
        problems.append(f"grain={grain}: must be 0..64 levels")
    if not 8000 <= in_rate <= 192_000 or not 1 <= in_channels <= 8:
        problems.append(f"in_rate={in_rate}, in_channels={in_channels}: need 8000..192000 Hz and 1..8 channels")
    if root.exists() and not root.is_dir():
        problems.append(f"{root} exists and is not a directory: choose another path")
    elif root.is_dir() and any(root.iterdir()) and not overwrite:
        problems.append(
            f"{root} is not empty: choose an empty or new directory, or pass overwrite=True "
            "(`vss demo-data DIR --overwrite`) to replace the demo samples in it"
        )
    if problems:
        raise DatasetError("cannot write the demo dataset:\n" + "\n".join(f"  - {p}" for p in problems))

    encoder = video_codec or h264_encoder()
    root.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(samples)))
    written = []
    for index in range(samples):
        name = f"{index + 1:0{width}d}"
        rng = np.random.default_rng([seed, index])
        shapes = _random_shapes(rng)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the sample folder should read like any other
            _write_video(tmp / "in.mp4", shapes, seconds, rng, encoder, size, fps, grain)
            speech_in, speech_out = _speech_pair(rng, seconds, shapes[0].colour)
            sf.write(tmp / "in.wav", _convert(speech_in, in_rate, in_channels), in_rate, subtype="PCM_16")
            sf.write(tmp / "out.wav", speech_out, SAMPLE_RATE, subtype="PCM_16")
            if transcripts:
                (tmp / "out.txt").write_text(_transcript(shapes, rng) + "\n", encoding="utf-8")
            final = root / name
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(final)
    return written


_COLOUR_WORDS = {0: "red", 1: "green", 2: "blue"}


def _transcript(shapes: list[_Shape], rng: np.random.Generator) -> str:
    """A short answer naming what the video shows (its main shape's dominant colour)."""
    colour = _COLOUR_WORDS[int(np.argmax(shapes[0].colour))]
    verb = ["moves", "bounces", "turns"][int(rng.integers(3))]
    return f"The {colour} shape {verb}."


# --- video ------------------------------------------------------------------------------------


def _random_shapes(rng: np.random.Generator) -> list[_Shape]:
    shapes = []
    for i in range(int(rng.integers(2, 4))):
        shapes.append(
            _Shape(
                kind="rect" if i % 2 == 0 else "disc",
                colour=tuple(int(c) for c in rng.integers(40, 256, size=3)),
                size=float(rng.uniform(10, 24)),
                x0=float(rng.uniform(0, WIDTH)),
                y0=float(rng.uniform(0, HEIGHT)),
                vx=float(rng.uniform(-30, 30)),
                vy=float(rng.uniform(-25, 25)),
            )
        )
    return shapes


def _bounce(p: float, limit: float) -> float:
    """Position after moving freely, reflected at 0 and limit (a shape bouncing off the edges)."""
    period = 2 * limit
    p = p % period
    return period - p if p > limit else p


def _render(
    shapes: list[_Shape], background: np.ndarray, t: float, size: tuple[int, int] = (WIDTH, HEIGHT)
) -> np.ndarray:
    width, height = size
    scale = min(width / WIDTH, height / HEIGHT)  # shapes are laid out for 96x80 and scaled with the frame
    img = np.broadcast_to(background, (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width]
    for s in shapes:
        cx = _bounce(s.x0 + s.vx * t, WIDTH) * (width / WIDTH)
        cy = _bounce(s.y0 + s.vy * t, HEIGHT) * (height / HEIGHT)
        half = s.size * scale / 2
        if s.kind == "rect":
            mask = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
        img[mask] = s.colour
    return img


def _write_video(
    path: Path,
    shapes: list[_Shape],
    seconds: float,
    rng: np.random.Generator,
    encoder: str,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    fps: int = FPS,
    grain: int = 0,
) -> None:
    background = rng.integers(0, 60, size=3).astype(np.uint8)
    # drawn from rng only with grain, so the default samples stay what they were
    noise = np.random.default_rng(int(rng.integers(2**62))) if grain else None
    n_frames = max(1, round(seconds * fps))
    # The container follows the file name (in.mp4 -> MP4); MP4 holds H.264, MPEG-4 part 2 and VP9 alike.
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        # One keyframe a second keeps seeking cheap; libx264's default GOP is 250 frames.
        stream.codec_context.gop_size = fps
        # One encoder thread: libx264's frame threading makes the bitstream vary run to run.
        stream.codec_context.thread_count = 1
        for i in range(n_frames):
            img = _render(shapes, background, i / fps, size)
            if noise is not None:
                jitter = noise.integers(-grain, grain + 1, size=img.shape, dtype=np.int16)
                img = np.clip(img.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --- audio ------------------------------------------------------------------------------------


def _convert(wave: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """The 16 kHz mono wave at another rate (linear interpolation) and channel count (quieter copies)."""
    if rate != SAMPLE_RATE:
        n = max(1, round(len(wave) * rate / SAMPLE_RATE))
        wave = np.interp(np.arange(n) * SAMPLE_RATE / rate, np.arange(len(wave)), wave).astype(np.float32)
    if channels == 1:
        return wave
    return np.stack([wave * (1.0 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def _syllable_envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """Syllable-like loudness: raised-cosine bumps of 120-350 ms separated by 30-150 ms of quiet."""
    env = np.zeros(n, dtype=np.float64)
    pos = int(rng.uniform(0.02, 0.1) * SAMPLE_RATE)
    while pos < n:
        length = int(rng.uniform(0.12, 0.35) * SAMPLE_RATE)
        bump = np.sin(np.linspace(0, np.pi, length)) ** 2 * rng.uniform(0.5, 1.0)
        end = min(n, pos + length)
        env[pos:end] = bump[: end - pos]
        pos = end + int(rng.uniform(0.03, 0.15) * SAMPLE_RATE)
    return env


def _harmonic_voice(f0: np.ndarray, env: np.ndarray, noise: np.ndarray) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = np.zeros_like(f0)
    for k in range(1, 9):
        # Harmonics above ~4 kHz are dropped, and a soft "formant" bump near 700 Hz is emphasised.
        fk = k * f0
        weight = (1.0 / k) * (1.0 + np.exp(-(((fk - 700.0) / 300.0) ** 2))) * (fk < 4000)
        voice += weight * np.sin(k * phase)
    wave = env * voice + 0.01 * noise
    return 0.5 * wave / max(1e-9, float(np.max(np.abs(wave))))


def _speech_pair(
    rng: np.random.Generator, seconds: float, colour: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    env = _syllable_envelope(rng, n)
    base = rng.uniform(100, 220)
    f0 = base * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 2 * np.pi)))
    f0 = f0 * (1 + 0.1 * np.linspace(-1, 1, n) * rng.choice([-1, 1]))  # a slow overall glide
    speech_in = _harmonic_voice(f0, env, rng.standard_normal(n))
    # The target: the same syllables reversed in time, pitch raised by a ratio the video decides.
    ratio = 1.2 + 0.4 * colour[0] / 255.0
    speech_out = _harmonic_voice(f0[::-1] * ratio, env[::-1], rng.standard_normal(n))
    return speech_in.astype(np.float32), speech_out.astype(np.float32)
