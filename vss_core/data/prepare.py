"""Preparation: each sample turned into the tensors the model eats (frames, audio features, codec ids, the
official sequence), one .pt per sample plus a manifest, keyed by every setting that shapes them; and
reading them back."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio

from vss_core import codec as codec_lib
from vss_core import model as model_lib
from vss_core import sequence
from vss_core.atomic import write_atomic, write_json_atomic
from vss_core.config import DataConfig
from vss_core.data.dataset import SHAPE_KEYS, shapes_of
from vss_core.data.reports import (
    _DEMO_FIX,
    MANIFEST,
    PREPARE_FORMAT,
    SAMPLE_FILES,
    TEXT_FILES,
    PreparedDataset,
    SampleFiles,
    SampleReport,
    VideoInfo,
    _error_text,
    _sha256_json,
)
from vss_core.data.validate import _locate, _probe
from vss_core.errors import DatasetError, ModelError, bullet_list
from vss_core.lifetime import die_with_parent
from vss_core.stamps import size_mtime

# --- preparation ----------------------------------------------------------------------------------


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


def _file_stamps(paths: list[Path]) -> str:
    """(name, size, mtime) of each file, as text: a cheap key that changes whenever a file is rewritten
    (hashing a real tokenizer.json per sample cost more than preparing the sample's audio)."""
    return ";".join("{}:{}:{}".format(p.name, *size_mtime(p)) for p in paths)


def _preparer(model_dir: Path, codec_dir: Path | None) -> _Preparer:
    """The preparer of these directories, reused within a process while their files are unchanged
    (keyed by each file's size and mtime, so an edited config or cmvn is never served from memory)."""
    codec_key = None if codec_dir is None else codec_lib.encoder_fingerprint(codec_dir)
    key = (
        str(model_dir),
        None if codec_dir is None else str(codec_dir),
        _file_stamps(_preprocessing_files(Path(model_dir))),
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


def _frame_plan(
    packets: list[tuple[int, bool]], thresholds: list[float], time_base: Any
) -> tuple[list[int], list[int]]:
    """Which frame each timestamp shows, and which packets must be decoded to get those frames.

    packets: (pts, is_keyframe) in decode order. A frame is shown at a timestamp when it is the first
    whose own time (pts x time_base) reaches the threshold (the timestamp less half a frame); past the
    end, the last frame. Returns the pts chosen per threshold and the indices (decode order) of the
    packets to decode: for each chosen frame, everything from the keyframe before it up to it, since a
    frame only refers to packets before it in decode order.
    """
    by_time = sorted(pts for pts, _ in packets)
    chosen = []
    for threshold in thresholds:
        later = next((pts for pts in by_time if float(pts * time_base) >= threshold), None)
        chosen.append(by_time[-1] if later is None else later)
    index = {pts: i for i, (pts, _) in enumerate(packets)}
    needed: set[int] = set()
    for pts in set(chosen):
        end = index[pts]
        begin = next((i for i in range(end, -1, -1) if packets[i][1]), 0)
        needed.update(range(begin, end + 1))
    return chosen, sorted(needed)


def _read_frames(path: Path, times: list[float]) -> tuple[list[np.ndarray], int]:
    """The frame shown at each timestamp, and how many frames were decoded to get them.

    The packets are read first (no decoding) up to the last frame that can be wanted; then only the
    packets from the keyframe before each wanted frame up to it are decoded (`_frame_plan`), and among
    those the decoder skips the frames no other frame refers to (`skip_frame=NONREF`, e.g. most
    B-frames) unless one is wanted. A jump between keyframes drains and flushes the decoder, as a
    seek would. Every frame returned is bit-identical to the one decoding the whole clip gives
    (tests/unit/test_data.py and bench/bench_data.py compare them).
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        half = 0.5 / rate if rate else 1e-3
        thresholds = [start + t - half for t in times]
        packets: list[av.Packet] = []
        last_threshold, reaching = max(thresholds), None  # reaching: earliest pts known to reach it
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.pts is None or tb is None:
                return _read_frames_linear(path, thresholds)  # no timestamps to plan by
            # Every later packet has pts >= dts >= this dts: no later packet can be a wanted frame.
            if reaching is not None and packet.dts is not None and packet.dts >= reaching:
                break
            packets.append(packet)
            if float(packet.pts * tb) >= last_threshold and (reaching is None or packet.pts < reaching):
                reaching = packet.pts
        if not packets:
            raise DatasetError(f"{path}: no video frame could be decoded")
        chosen, needed = _frame_plan([(q.pts, q.is_keyframe) for q in packets], thresholds, tb)
        wanted = set(chosen)
        codec = stream.codec_context  # slice threads only (PyAV's default): skip_frame applies per packet
        got: dict[int, av.VideoFrame] = {}
        decoded = 0

        def take(frames: list[av.VideoFrame]) -> None:
            nonlocal decoded
            decoded += len(frames)
            got.update((f.pts, f) for f in frames if f.pts in wanted)

        previous = None
        for i in needed:
            if previous is not None and i != previous + 1:  # a jump to the next keyframe
                take(codec.decode(None))
                codec.flush_buffers()
            codec.skip_frame = "DEFAULT" if packets[i].pts in wanted else "NONREF"
            take(codec.decode(packets[i]))
            previous = i
        codec.skip_frame = "DEFAULT"
        take(codec.decode(None))
    missing = [t for t, pts in zip(times, chosen) if pts not in got]
    if missing:
        raise DatasetError(
            f"{path}: the frames at {', '.join(f'{t:g} s' for t in missing)} could not be decoded; "
            "the video is damaged: re-encode it (e.g. ffmpeg -i in.mp4 -c:v libx264 fixed.mp4)"
        )
    return [_frame_to_array(got[pts]) for pts in chosen], decoded


def _read_frames_linear(path: Path, thresholds: list[float]) -> tuple[list[np.ndarray], int]:
    """The fallback for streams without timestamps: decode from the start, stopping after the last
    wanted frame; a frame is shown once its time reaches a threshold (frames without a time are
    counted on at the stream's rate)."""
    out: list[np.ndarray | None] = [None] * len(thresholds)
    pending = sorted(range(len(thresholds)), key=thresholds.__getitem__)
    decoded, last = 0, None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        step = 1 / float(stream.average_rate or stream.guessed_rate or 25)
        for frame in container.decode(stream):
            decoded += 1
            last = frame
            t = float(frame.time) if frame.time is not None else (decoded - 1) * step
            while pending and t >= thresholds[pending[0]]:
                out[pending.pop(0)] = _frame_to_array(frame)
            if not pending:
                break
        if last is None:
            raise DatasetError(f"{path}: no video frame could be decoded")
        for i in pending:  # past the end: the last frame
            out[i] = _frame_to_array(last)
    return out, decoded  # type: ignore[return-value]


def _read_mono(path: Path, rate: int, seconds: float) -> torch.Tensor:
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(dim=1)
    if file_rate != rate:
        # Crop first (with margin) so a long file is not resampled whole.
        wave = wave[: math.ceil(seconds * file_rate) + 1]
        wave = torchaudio.functional.resample(wave, file_rate, rate)
    return wave[: int(seconds * rate)].contiguous()


def read_target(sample: SampleFiles | Path, rate: int, cfg: DataConfig) -> tuple[torch.Tensor, str | None]:
    """A sample's target as training saw it: out.wav mono at `rate`, cropped to data.crop_seconds, and
    its transcript out.txt (None when absent). For the evaluate stage. `sample`: a sample's parts
    (`SampleReport` is one), or a sample folder."""
    sample = sample if isinstance(sample, SampleFiles) else SampleFiles.in_folder(sample)
    return _read_mono(_part(sample, "out.wav"), rate, cfg.crop_seconds), sample.text("out.txt")


def _part(sample: SampleFiles, role: str) -> Path:
    path = sample.file(role)
    if path is None:
        raise DatasetError(f"the sample has no {role}")
    return path


def _video_duration(video: VideoInfo | None, crop_seconds: float) -> float:
    """The span frames are sampled from: the clip, or its first crop_seconds (0: unknown)."""
    duration = video.duration_s if video else 0.0
    if duration <= 0 and video and video.fps > 0:
        duration = video.frames / video.fps
    return min(duration, crop_seconds) if duration > 0 else 0.0


def _prepare_inputs(
    sample: SampleFiles, s: dict[str, Any], duration_s: float, prep: _Preparer, normalize: bool = True
) -> dict[str, Any]:
    """The model inputs of one sample's in.mp4 / in.wav (and optional in.txt / system.txt).

    Frames: the official native-resolution vision preprocessing (`vision.preprocess_frames`: frame
    pairs, smart resize within the pixel budget, normalised patches; normalize=False: uint8 patches,
    as a prepared file stores them). Speech: the official features
    (`audio.FeatureExtractor`: x32768, fbank, delta, Kaldi cmvn, splice); one `<|audio_pad|>` per
    valid feature frame.
    """
    from vss_core.model import vision as vision_lib

    times = _frame_times(s["video_frames"], s["video_fps"], duration_s)
    frames, _ = _read_frames(_part(sample, "in.mp4"), times)
    pixel_values, grids, pads = vision_lib.preprocess_frames(frames, prep.vision, is_video=True, normalize=normalize)
    wave = _read_mono(_part(sample, "in.wav"), s["sample_rate"], s["crop_seconds"])
    feats, mask = prep.features(wave[None], torch.tensor([wave.shape[0]]))
    features = feats[0, : int(mask[0].sum())]
    return {
        "pixel_values": pixel_values.contiguous(),
        "grid_shapes": torch.tensor(grids, dtype=torch.int64).reshape(-1, 3),
        "audio_features": features.contiguous(),
        # each frame pair is timed by its first frame (official data/utils.py refix_frame_index)
        "frame_pairs": [(times[2 * k], n) for k, n in enumerate(pads)],
        "system": sample.text("system.txt"),
        "instruction": sample.text("in.txt"),
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
    sample = SampleFiles.model_validate(job["sample"])
    prep = _preparer(Path(job["model_dir"]), Path(job["codec_dir"]))
    inputs = _prepare_inputs(sample, s, job["duration_s"], prep, normalize=False)
    for key in ("pixel_values", "audio_features"):
        if not torch.isfinite(inputs[key]).all():  # never write a file that would train on NaN
            raise DatasetError(
                f"{key} of {job['where']} are not finite (NaN/Inf); check in.mp4 and in.wav decode to sane values"
            )
    target = _read_mono(_part(sample, "out.wav"), prep.codec.sample_rate, s["crop_seconds"])
    codes = prep.codec.encode(target).to(torch.int64)
    seq = _sequence(prep, inputs, codes, sample.text("out.txt"))
    item = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)} | seq | {"codes": codes.contiguous()}
    # frames stay uint8 (4x smaller); the file carries how to normalise them (dataset.decode_item)
    norm = {
        "pixel_mean": torch.tensor(prep.vision.image_mean, dtype=torch.float32),
        "pixel_std": torch.tensor(prep.vision.image_std, dtype=torch.float32),
    }
    out = Path(job["out"])
    write_atomic(out, lambda tmp: torch.save({**item, **norm, "key": job["key"]}, tmp))
    return job["name"], job["key"], shapes_of(item) | {"bytes": out.stat().st_size}


def prepare_inputs(sample: Path | SampleFiles, cfg: DataConfig, model_dir: Path) -> dict[str, Any]:
    """One sample's prompt, prepared exactly as `prepare_dataset` prepares a sample (for inference).

    `sample`: a sample folder, or a sample's parts (a `SampleReport` of a folder or a manifest line).
    Only in.mp4 and in.wav (and the optional in.txt / system.txt) are read; out.wav is neither needed
    nor read. Returns the official prompt up to `VOICE ASSISTANT:` (`sequence.SEQUENCE_KEYS`) with
    `pixel_values`, `grid_shapes` and `audio_features`, as in a prepared sample file.

    Raises:
        DatasetError: the sample folder is missing, or its in.mp4 / in.wav is missing or unreadable
            (all problems listed).
        ModelError: the checkpoint's vision/audio preprocessing config is missing or invalid.
    """
    folder = None if isinstance(sample, SampleFiles) else Path(sample)
    if folder is not None and not folder.is_dir():
        raise DatasetError(
            f"sample {folder}: not a directory; point at one sample folder holding in.mp4 and in.wav "
            f"(e.g. data/train/01). To get one, {_DEMO_FIX}"
        )
    parts = SampleFiles.in_folder(folder) if folder is not None else sample
    where = str(folder) if folder is not None else str(parts.file("in.mp4"))
    # No dataset root here: the sample may live anywhere, so every link target counts as inside.
    anchor = Path(Path(where).resolve().anchor)
    present, problems, _ = _locate(parts, anchor, folder, roles=("in.mp4", "in.wav"))
    probe = _probe(present)
    problems += probe["problems"]
    if problems:
        raise DatasetError(
            f"sample {where} cannot be used:\n{bullet_list(problems)}\n"
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
    inputs = _prepare_inputs(parts, settings, _video_duration(video, cfg.crop_seconds), prep)
    seq = _sequence(prep, inputs, None, None)
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)} | seq


def _worker_init(parent_pid: int) -> None:
    # A worker dies with the process that started the pool, even a SIGKILLed one: a spawn worker holds
    # the pool's queue itself, so it would otherwise wait on it forever (seen: workers alive an hour on).
    die_with_parent(parent_pid, pdeathsig=False)
    # Each worker prepares one sample at a time; N workers x N torch threads would oversubscribe the cores.
    torch.set_num_threads(1)


def _cached(path: Path, entry: dict[str, Any] | None, key: str) -> dict[str, int] | None:
    """The shapes (and size) of a cached sample file whose key matches, or None if it must be (re)done."""
    if not path.is_file():
        return None
    if entry is not None and entry.get("key") == key:
        try:
            if int(entry["bytes"]) == path.stat().st_size:
                return {k: int(entry[k]) for k in (*SHAPE_KEYS, "bytes")}
        except (KeyError, TypeError, ValueError, OSError):
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
        return shapes_of(item) | {"bytes": path.stat().st_size}
    except (KeyError, AttributeError, IndexError, OSError):
        return None


def _file_stats(sample: SampleFiles) -> list[tuple[str, Any, Any]]:
    """(role, size, mtime_ns) of each sample file, following links, and the inline texts: what a
    prepared file is keyed on."""
    stats: list[tuple[str, Any, Any]] = []
    for fname in SAMPLE_FILES + TEXT_FILES:
        digest = sample.text_digest(fname)
        path = sample.file(fname)
        if digest is not None:
            stats.append((fname, "text", digest))
        else:
            stats.append((fname, *(size_mtime(path) if path is not None else (-1, -1))))
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


def _ready() -> bool:
    """A no-op a pool worker answers once it has started (imported torch and vss)."""
    return True


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_jobs(
    jobs: list[dict[str, Any]], workers: int, failures: list[str], *, share: bool = True
) -> dict[str, tuple[str, dict[str, int]]]:
    """Prepare the jobs on `workers` processes: this one and workers - 1 pool workers.

    A spawned worker takes seconds to start (importing torch and transformers: ~5 s here), as long
    as preparing a few dozen samples. So this process prepares from the back of the list from the
    start, and a worker is handed a job (from the front) only once it has answered it is up: a small
    dataset is done before any worker could help and waits for none of them (their start is left to
    finish on its own), a large one is shared by all. Each failure is appended to `failures`.
    share=False: this process prepares nothing (the tests' way to make the workers do it all).
    """
    results: dict[str, tuple[str, dict[str, int]]] = {}

    def record(job: dict[str, Any], run) -> None:
        try:
            name, key, shapes = run()
            results[name] = (key, shapes)
        except Exception as exc:  # noqa: BLE001 - collected and raised once by the caller
            failures.append(f"{job['name']}: {_error_text(exc)}")

    def here(job: dict[str, Any]) -> None:
        record(job, lambda: _prepare_one(job))

    if workers <= 1:
        for job in jobs:
            here(job)
        return results
    pending = collections.deque(jobs)
    # spawn, not fork: the caller may hold threads (Prefect, torch's pools) that fork does not copy safely.
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers - 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    hellos = {pool.submit(_ready) for _ in range(workers - 1)}
    in_flight: dict[concurrent.futures.Future, dict[str, Any]] = {}
    up = 0

    def collect(timeout: float | None) -> None:
        nonlocal up
        done, _ = concurrent.futures.wait([*hellos, *in_flight], timeout=timeout, return_when="FIRST_COMPLETED")
        for fut in done:
            if fut in hellos:
                hellos.discard(fut)
                up += fut.exception() is None
            else:
                record(in_flight.pop(fut), fut.result)
        while pending and len(in_flight) < up:  # one job per worker that is up
            try:
                fut = pool.submit(_prepare_one, pending[0])
            except concurrent.futures.process.BrokenProcessPool:  # a worker died: the rest is done here
                up = 0
                break
            in_flight[fut] = pending.popleft()

    try:
        with _torch_threads(1):  # one core here, as in each worker
            while pending and share:
                here(pending.pop())
                collect(timeout=0)
            while in_flight or pending:
                if not in_flight and not hellos and not up:  # no worker can help (the pool broke)
                    while pending:
                        here(pending.pop())
                    break
                collect(timeout=None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


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
        key = _sha256_json({"files": _file_stats(s), "settings": settings_key})
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
                "sample": s.parts().model_dump(),
                "where": s.path,
                "duration_s": duration,
                "settings": settings,
                "model_dir": str(model_dir),
                "codec_dir": str(codec_dir),
                "out": str(out),
                "key": key,
            }
        )

    workers = min(cfg.workers or os.cpu_count() or 1, len(jobs))
    failures: list[str] = []
    results.update(_run_jobs(jobs, workers, failures))
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
