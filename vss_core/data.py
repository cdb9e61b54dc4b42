"""Dataset validation and preparation.

The user's contract: `<root>/<sample>/{in.mp4, in.wav, out.wav}`.

- `validate_dataset(cfg)` opens every file for real (PyAV decodes the first video frame, soundfile
  reads each WAV) and reports every problem of every sample; it never raises for a bad sample.
- `select_samples(report, on_invalid)` turns that report into the samples to train on, or one error
  listing every bad sample.
- `prepare_dataset(...)` turns each sample into the tensors the model eats (sampled, resized,
  normalised frames; CMVN-normalised fbank; codec tokens of the target speech), one `.pt` file per
  sample plus a manifest, cached by a key over the sample's files and every setting that shapes them.
- `load_prepared(dir)` reads them back (weights_only).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio
from pydantic import BaseModel, Field

from vss_core import codec as codec_lib
from vss_core.config import DataConfig
from vss_core.errors import ConfigError, DatasetError, ModelError, bullet_list

SAMPLE_FILES = ("in.mp4", "in.wav", "out.wav")
MANIFEST = "manifest.json"
# Bump when the content of prepared files changes, so old caches are not reused.
PREPARE_FORMAT = 1
MIN_FBANK_SECONDS = 0.025  # one 25 ms fbank window
_DEMO_FIX = "generate a demo dataset with `vss demo-data DIR`, or point data.root at a directory of sample folders"


# --- reports --------------------------------------------------------------------------------------


class VideoInfo(BaseModel):
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str


class AudioInfo(BaseModel):
    sample_rate: int
    channels: int
    duration_s: float


class SampleReport(BaseModel):
    name: str
    path: str
    problems: list[str] = Field(default_factory=list)
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

    @property
    def valid(self) -> list[SampleReport]:
        return [s for s in self.samples if s.ok]

    @property
    def invalid(self) -> list[SampleReport]:
        return [s for s in self.samples if not s.ok]

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
                "; ".join(s.problems) or "",
            ]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        summary = f"{len(self.valid)} of {len(self.samples)} samples valid in {self.root}"
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


# --- validation -----------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _probe_video(path: Path) -> tuple[VideoInfo | None, list[str]]:
    """Open in.mp4 with PyAV, decode its first frame and read its stream facts."""
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
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
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
            return info, []
    except Exception as exc:  # noqa: BLE001
        return None, [f"in.mp4 cannot be read ({_error_text(exc)})"]


def _probe_wav(path: Path, label: str) -> tuple[AudioInfo | None, list[str]]:
    """Read a WAV with soundfile: rate, channels, duration, and that every sample is finite."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError/RuntimeError/TypeError
        return None, [f"{label} cannot be read as audio ({_error_text(exc)})"]
    info = AudioInfo(sample_rate=int(rate), channels=int(data.shape[1]), duration_s=data.shape[0] / rate)
    problems = []
    if data.shape[0] == 0:
        problems.append(f"{label} has no audio samples")
    elif label == "in.wav" and info.duration_s < MIN_FBANK_SECONDS:
        problems.append(f"{label} is {info.duration_s * 1000:.1f} ms long; needs at least 25 ms (one fbank window)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        problems.append(f"{label} contains {bad} NaN/Inf samples")
    return info, problems


def _check_sample(sample_dir: Path) -> SampleReport:
    report = SampleReport(name=sample_dir.name, path=str(sample_dir))
    present = {}
    for fname in SAMPLE_FILES:
        f = sample_dir / fname
        if not f.exists():
            report.problems.append(f"{fname} is missing")
        elif not f.is_file():
            report.problems.append(f"{fname} is not a regular file")
        elif f.stat().st_size == 0:
            report.problems.append(f"{fname} is empty (0 bytes)")
        else:
            present[fname] = f
    if "in.mp4" in present:
        report.video, problems = _probe_video(present["in.mp4"])
        report.problems += problems
    if "in.wav" in present:
        report.in_audio, problems = _probe_wav(present["in.wav"], "in.wav")
        report.problems += problems
    if "out.wav" in present:
        report.out_audio, problems = _probe_wav(present["out.wav"], "out.wav")
        report.problems += problems
    return report


def _file_stats(sample_dir: Path, prefix: str) -> list[tuple[str, int, int]]:
    stats = []
    for fname in SAMPLE_FILES:
        f = sample_dir / fname
        try:
            st = f.stat()
            stats.append((f"{prefix}{fname}", st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((f"{prefix}{fname}", -1, -1))
    return stats


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def validate_dataset(cfg: DataConfig) -> DatasetReport:
    """Check every sample under cfg.root and report each one's problems (never raises for a sample).

    Raises:
        DatasetError: the root does not exist, is not a directory, or holds no sample folders.
    """
    root = Path(cfg.root)
    if not root.exists():
        raise DatasetError(f"data.root={cfg.root!r}: {root.resolve()} does not exist. Fix: {_DEMO_FIX}.")
    if not root.is_dir():
        raise DatasetError(f"data.root={cfg.root!r}: {root.resolve()} is not a directory. Fix: {_DEMO_FIX}.")
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    sample_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    extras = [p.name for p in entries if p not in sample_dirs]
    if not sample_dirs:
        raise DatasetError(
            f"data.root={cfg.root!r}: {root.resolve()} holds no sample folders "
            f"(<root>/<sample>/{{{','.join(SAMPLE_FILES)}}}). Fix: {_DEMO_FIX}."
        )
    samples = []
    stats: list[tuple[str, int, int]] = []
    for sample_dir in sample_dirs:
        samples.append(_check_sample(sample_dir))
        stats += _file_stats(sample_dir, f"{sample_dir.name}/")
        extras += [f"{sample_dir.name}/{p.name}" for p in sorted(sample_dir.iterdir()) if p.name not in SAMPLE_FILES]
    warnings = []
    if extras:
        warnings.append(f"ignored {len(extras)} extra entries in {root}: {_summarise(extras)}")
    return DatasetReport(root=str(root), samples=samples, warnings=warnings, fingerprint=_sha256_json(sorted(stats)))


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


def _model_preprocessing(model_dir: Path, cfg: DataConfig) -> dict[str, Any]:
    """The preprocessing settings of the checkpoint and the data config: everything that shapes a file."""
    problems: list[str] = []
    vision = _read_json(model_dir / "vision" / "config.json", problems) or {}
    audio = _read_json(model_dir / "audio" / "preprocessor_config.json", problems) or {}
    cmvn = _read_json(model_dir / "audio" / "global_cmvn", problems) or {}
    settings: dict[str, Any] = {"format": PREPARE_FORMAT}
    if vision:
        size, mean, std = vision.get("image_size"), vision.get("image_mean"), vision.get("image_std")
        if not isinstance(size, int) or size < 1:
            problems.append(f"{model_dir / 'vision' / 'config.json'}: image_size must be a positive integer (got {size!r})")
        for key, val in (("image_mean", mean), ("image_std", std)):
            if not (isinstance(val, list) and len(val) == 3 and all(isinstance(x, int | float) for x in val)):
                problems.append(f"{model_dir / 'vision' / 'config.json'}: {key} must be 3 numbers (got {val!r})")
        if isinstance(std, list) and any(isinstance(x, int | float) and x == 0 for x in std):
            problems.append(f"{model_dir / 'vision' / 'config.json'}: image_std must not contain 0")
        settings.update(image_size=size, image_mean=mean, image_std=std)
    if audio:
        rate, bins = audio.get("sampling_rate"), audio.get("num_mel_bins")
        where = model_dir / "audio" / "preprocessor_config.json"
        if not isinstance(rate, int) or rate <= 0:
            problems.append(f"{where}: sampling_rate must be a positive integer (got {rate!r})")
        elif rate != cfg.sample_rate:
            problems.append(
                f"{where}: the audio encoder wants {rate} Hz but data.sample_rate={cfg.sample_rate}; "
                f"set data.sample_rate={rate}"
            )
        if not isinstance(bins, int) or bins < 1:
            problems.append(f"{where}: num_mel_bins must be a positive integer (got {bins!r})")
        settings.update(fbank_rate=rate, num_mel_bins=bins)
        if cmvn:
            mean, istd = cmvn.get("mean"), cmvn.get("istd")
            for key, val in (("mean", mean), ("istd", istd)):
                if not (isinstance(val, list) and isinstance(bins, int) and len(val) == bins):
                    got = len(val) if isinstance(val, list) else repr(val)
                    problems.append(f"{model_dir / 'audio' / 'global_cmvn'}: {key} must be {bins} numbers (got {got})")
            settings.update(cmvn_mean=mean, cmvn_istd=istd)
    codec_path = model_dir / codec_lib.CODEC_CONFIG
    try:
        speech_codec = codec_lib.load_codec(model_dir)
        settings["codec"] = codec_path.read_text()
        settings["codec_rate"] = speech_codec.sample_rate
    except ModelError as exc:
        problems.append(str(exc))
    if problems:
        raise ModelError(
            f"cannot prepare data for the checkpoint at {model_dir}:\n{bullet_list(problems)}\n"
            "Check model.source points at a complete LongCat-Flash-Omni checkpoint (vision/, audio/, audio_codec/)."
        )
    settings.update(
        video_frames=cfg.video_frames,
        video_fps=cfg.video_fps,
        audio_seconds=cfg.audio_seconds,
        sample_rate=cfg.sample_rate,
    )
    return settings


def _frame_times(n: int, fps: float, duration: float) -> list[float]:
    """n timestamps at `fps`, or spread uniformly over the clip when it is too short for that."""
    if duration > 0 and (n - 1) / fps >= duration:
        return [duration * i / n for i in range(n)]
    return [i / fps for i in range(n)]


def _frame_to_tensor(frame: av.VideoFrame, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    rgb = frame.reformat(width=size, height=size, format="rgb24", interpolation="BILINEAR").to_ndarray()
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
    return (x - mean[:, None, None]) / std[:, None, None]


def _read_frames(path: Path, times: list[float], size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The frame shown at each timestamp: seek near each one instead of decoding the whole clip."""
    seek_gap = 2.0  # seconds: closer targets are reached by decoding on, farther ones by seeking
    out: list[torch.Tensor] = []
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
                current_t = float(nxt.time) if nxt.time is not None else current_t + (1 / rate if rate else 0.0)
            if current is not None:
                out.append(_frame_to_tensor(current, size, mean, std))
            elif out:
                out.append(out[-1])  # past the end: repeat the last frame
    if not out:
        raise DatasetError(f"{path}: no video frame could be decoded")
    return torch.stack(out)


def _read_mono(path: Path, rate: int, seconds: float) -> torch.Tensor:
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(dim=1)
    if file_rate != rate:
        # Crop first (with margin) so a long file is not resampled whole.
        wave = wave[: math.ceil(seconds * file_rate) + 1]
        wave = torchaudio.functional.resample(wave, file_rate, rate)
    return wave[: int(seconds * rate)].contiguous()


def _prepare_one(job: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    """Prepare one sample into job['out'] atomically (in this process or a worker)."""
    s = job["settings"]
    sample_dir = Path(job["path"])
    mean = torch.tensor(s["image_mean"], dtype=torch.float32)
    std = torch.tensor(s["image_std"], dtype=torch.float32)
    times = _frame_times(s["video_frames"], s["video_fps"], job["duration_s"])
    frames = _read_frames(sample_dir / "in.mp4", times, s["image_size"], mean, std)

    wave = _read_mono(sample_dir / "in.wav", s["sample_rate"], s["audio_seconds"])
    fbank = torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0) * 32768,
        num_mel_bins=s["num_mel_bins"],
        sample_frequency=s["fbank_rate"],
    )
    cmvn_mean = torch.tensor(s["cmvn_mean"], dtype=torch.float32)
    cmvn_istd = torch.tensor(s["cmvn_istd"], dtype=torch.float32)
    fbank = ((fbank - cmvn_mean) * cmvn_istd).to(torch.float32)

    speech_codec = codec_lib.load_codec(Path(job["model_dir"]))
    target = _read_mono(sample_dir / "out.wav", speech_codec.sample_rate, s["audio_seconds"])
    codes = speech_codec.encode(target).to(torch.int64)

    out = Path(job["out"])
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    torch.save({"frames": frames.contiguous(), "fbank": fbank.contiguous(), "codes": codes.contiguous(), "key": job["key"]}, tmp)
    os.replace(tmp, out)
    shapes = {"frames": frames.shape[0], "fbank_frames": fbank.shape[0], "code_frames": codes.shape[0]}
    return job["name"], job["key"], shapes


def _worker_init() -> None:
    # Each worker prepares one sample at a time; N workers x N torch threads would oversubscribe the cores.
    torch.set_num_threads(1)


def _cached(path: Path, entry: dict[str, Any] | None, key: str) -> dict[str, int] | None:
    """The shapes of a cached sample file whose key matches, or None if it must be (re)done."""
    if not path.is_file():
        return None
    if entry is not None and entry.get("key") == key:
        try:
            return {k: int(entry[k]) for k in ("frames", "fbank_frames", "code_frames")}
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
    return {"frames": item["frames"].shape[0], "fbank_frames": item["fbank"].shape[0], "code_frames": item["codes"].shape[0]}


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def prepare_dataset(samples: list[SampleReport], cfg: DataConfig, model_dir: Path, out_dir: Path) -> PreparedDataset:
    """Turn samples into model inputs: `out_dir/<sample>.pt` (frames, fbank, codes) and manifest.json.

    A sample whose file already exists with the same key (its files' size/mtime, the data settings
    and the checkpoint's preprocessing config) is reused. Invalid samples are skipped and named.
    Work is spread over cfg.workers processes (0 = one per CPU core).

    Raises:
        ModelError: the checkpoint's vision/audio preprocessing config or codec config is missing or invalid.
            This includes data.sample_rate differing from the rate the audio encoder wants.
        DatasetError: no valid sample was given, or a sample fails to prepare (all failures listed).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    settings = _model_preprocessing(model_dir, cfg)
    settings_key = _sha256_json(settings)
    good = [s for s in samples if s.ok]
    skipped = [s.name for s in samples if not s.ok]
    if not good:
        raise DatasetError(f"data: no valid sample to prepare (given {len(samples)}). Run validation first and fix the files.")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    try:
        old_entries = {e["name"]: e for e in json.loads(manifest_path.read_text()).get("samples", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old_entries = {}

    jobs, reused, results = [], [], {}
    for s in good:
        key = _sha256_json({"files": _file_stats(Path(s.path), ""), "settings": settings_key})
        out = out_dir / f"{s.name}.pt"
        shapes = _cached(out, old_entries.get(s.name), key)
        if shapes is not None:
            reused.append(s.name)
            results[s.name] = (key, shapes)
            continue
        duration = s.video.duration_s if s.video else 0.0
        if duration <= 0 and s.video and s.video.fps > 0:
            duration = s.video.frames / s.video.fps
        jobs.append(
            {
                "name": s.name,
                "path": s.path,
                "duration_s": duration,
                "settings": settings,
                "model_dir": str(model_dir),
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
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
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
    _write_json_atomic(
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


def load_prepared(prepared_dir: Path) -> list[dict[str, torch.Tensor]]:
    """The prepared samples in manifest order: dicts with frames, fbank and codes tensors.

    Raises:
        DatasetError: the manifest or a sample file is missing or unreadable.
    """
    prepared_dir = Path(prepared_dir)
    manifest_path = prepared_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["samples"]
    except FileNotFoundError:
        raise DatasetError(f"{manifest_path} does not exist: prepare the dataset first (the prepare data stage).") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{manifest_path} is unreadable ({_error_text(exc)}): prepare the dataset again.") from None
    out, problems = [], []
    for entry in entries:
        path = prepared_dir / entry["file"]
        try:
            item = torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path} is unreadable ({_error_text(exc)})")
            continue
        out.append({k: v for k, v in item.items() if isinstance(v, torch.Tensor)})
    if problems:
        raise DatasetError(f"prepared data in {prepared_dir} is incomplete:\n{bullet_list(problems)}\nPrepare the dataset again.")
    return out
