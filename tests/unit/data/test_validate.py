"""vss_core.data: validation reports every bad sample; preparation writes exact tensors and caches."""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import data_config
from vss_core import codec, data, demo
from vss_core.data import prepare as data_prepare
from vss_core.data import validate as data_validate
from vss_core.errors import DatasetError, ModelError

SIZE = 56


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=3, seconds=2.0)
    return root


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    # a private copy: some tests edit its files
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def codec_dir(tiny_codec_dir):
    return tiny_codec_dir


def _audio_frames(seconds: float) -> int:
    """<|audio_pad|> count of the official rule: (L - 400) // 160 + 1 fbank frames, spliced 8 to 1."""
    frames = (int(seconds * 16000) - 400) // 160 + 1
    return (frames + 7) // 8


def _faststart_copy(src, dst):
    """Remux an mp4 with its index (moov) first, as streaming-friendly files are: such a file still
    opens when its tail is cut off, so only decoding to the end can tell it is truncated."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = ostream
                out.mux(packet)


def _problems(report):
    return {s.name: " ".join(s.problems) for s in report.samples}


# --- validation -----------------------------------------------------------------------------------


def test_good_dataset_validates(dataset):
    report = data.validate_dataset(data_config(dataset))
    assert [s.name for s in report.samples] == ["01", "02", "03"]
    assert all(s.ok for s in report.samples) and report.invalid == [] and len(report.valid) == 3
    assert report.warnings == []
    s = report.samples[0]
    assert s.video.model_dump() == {
        "frames": 20,
        "fps": 10.0,
        "width": 96,
        "height": 80,
        "duration_s": 2.0,
        "codec": "h264",
    }
    audio = s.in_audio.model_dump()
    assert audio.pop("rms_dbfs") == pytest.approx(-20, abs=6)  # the demo speech peaks at -6 dBFS
    assert audio == {"sample_rate": 16000, "channels": 1, "duration_s": 2.0}
    assert s.out_audio.duration_s == 2.0 and s.out_audio.rms_dbfs > -40
    assert len(report.fingerprint) == 64 and report.fingerprint_mode == "stat"
    assert report.skipped == [] and report.reused == []
    # The cache is kept out of the dataset: nothing new appears under the root.
    assert report.cache_path and not report.cache_path.startswith(str(dataset))
    assert sorted(p.name for p in dataset.iterdir()) == ["01", "02", "03"]
    table = report.table()
    assert "| 02 | yes | 20 | 10 | 96x80 | 2.00 | 2.00 |  |" in table
    assert "3 of 3 samples valid" in table


def test_every_bad_sample_is_named_with_its_reason(tmp_path):
    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=13, seconds=2.0)
    outside = tmp_path / "elsewhere"
    demo.write_demo_dataset(outside, samples=1, seconds=2.0)

    (root / "01" / "out.wav").unlink()
    (root / "02" / "in.wav").write_bytes(b"")
    mp4 = (root / "03" / "in.mp4").read_bytes()
    (root / "03" / "in.mp4").write_bytes(mp4[: len(mp4) // 2])  # index at the end: cut off with the tail
    (root / "04" / "in.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    nan_wave = np.full(16000, 0.1, dtype=np.float32)
    nan_wave[100:110] = np.nan
    sf.write(root / "05" / "out.wav", nan_wave, 16000, subtype="FLOAT")
    shutil.copy(root / "06" / "in.wav", root / "06" / "in.mp4")
    (root / "07" / "in.wav").unlink()
    (root / "07" / "in.wav").symlink_to(outside / "01" / "in.wav")
    _faststart_copy(root / "08" / "in.mp4", tmp_path / "fast.mp4")
    fast = (tmp_path / "fast.mp4").read_bytes()
    (root / "08" / "in.mp4").write_bytes(fast[: int(len(fast) * 0.6)])  # index first: opens, ends early
    wav = (root / "09" / "in.wav").read_bytes()
    (root / "09" / "in.wav").write_bytes(wav[: len(wav) // 2])
    sf.write(root / "10" / "out.wav", np.zeros(32000, dtype=np.float32), 16000, subtype="PCM_16")
    shutil.rmtree(root / "11")
    (root / "11").symlink_to(outside / "01", target_is_directory=True)
    (root / "12" / "out.wav").rename(root / "12" / "target.wav")
    (root / "12" / "out.wav").symlink_to("target.wav")  # a link that stays inside the root is fine

    report = data.validate_dataset(data_config(root))
    problems = _problems(report)
    assert "out.wav is missing" in problems["01"]
    assert "in.wav is empty" in problems["02"]
    assert "in.mp4 is truncated: its 'mdat' box declares" in problems["03"]
    assert "in.mp4 cannot be opened" in problems["04"]
    assert "out.wav contains 10 NaN/Inf samples" in problems["05"]
    assert "in.mp4 has no video stream" in problems["06"] and "audio" in problems["06"]
    assert "in.wav is a link to" in problems["07"] and "outside the dataset root" in problems["07"]
    assert "in.mp4 is truncated" in problems["08"]
    assert "in.wav is truncated" in problems["09"] and "50%" in problems["09"]
    assert "out.wav is silent" in problems["10"] and "data.require_non_silent=false" in problems["10"]
    assert "sample folder is a link to" in problems["11"] and "outside the dataset root" in problems["11"]
    assert problems["12"] == "" and problems["13"] == ""
    bad = ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11"]
    assert [s.name for s in report.invalid] == bad
    assert "**no**" in report.table()
    # Each sample's problems are its own: one reason each, not a cascade.
    assert all(len(report.samples[i].problems) == 1 for i in range(11))

    with pytest.raises(DatasetError) as err:
        data.select_samples(report, "fail")
    msg = str(err.value)
    for name in bad:
        assert f"  - {name}: " in msg
    assert "  - 12" not in msg and "  - 13" not in msg
    assert msg.endswith("Fix the files or set data.on_invalid=skip")

    assert [s.name for s in data.select_samples(report, "skip")] == ["12", "13"]


def test_skip_lists_the_skipped_samples_in_the_report(dataset):
    (dataset / "02" / "out.wav").unlink()
    fail = data.validate_dataset(data_config(dataset))
    assert fail.on_invalid == "fail" and fail.skipped == []
    assert "data.on_invalid=fail stops the run" in fail.table()
    report = data.validate_dataset(data_config(dataset, on_invalid="skip"))
    assert report.skipped == ["02"]
    assert report.table().startswith("2 of 3 samples valid") and "skipped (data.on_invalid=skip): 02" in report.table()
    assert json.loads(report.model_dump_json())["skipped"] == ["02"]
    assert [s.name for s in data.select_samples(report, "skip")] == ["01", "03"]


def test_too_long_is_an_error_or_a_warning_and_a_crop(dataset, model_dir, codec_dir, tmp_path):
    # The clips are 2 s; the limit is data.max_seconds, else data.audio_seconds.
    strict = data.validate_dataset(data_config(dataset, max_seconds=1.5, on_too_long="error"))
    assert strict.valid == []
    for text in _problems(strict).values():
        assert "too long for data.max_seconds=1.5" in text and "in.wav 2.00 s" in text and "in.mp4 2.00 s" in text
        assert "data.on_too_long=crop" in text

    cfg = data_config(dataset, max_seconds=1.5)  # on_too_long=crop is the default
    report = data.validate_dataset(cfg)
    assert len(report.valid) == 3
    assert all("only the first 1.5 s is used" in s.warnings[0] for s in report.samples)
    assert len(report.warnings) == 1
    assert "3 samples are longer than data.max_seconds=1.5 s and will be cropped" in report.warnings[0]
    assert "warning: longer than data.max_seconds=1.5" in report.table()
    data.prepare_dataset(report.samples[:1], cfg, model_dir, codec_dir, tmp_path / "prep")
    (item,) = data.load_prepared(tmp_path / "prep")
    # 1.5 s: 148 fbank frames, spliced 8 to 1 -> 19 feature frames; codec: ceil(24000/960) = 25.
    assert item["audio_features"].shape == (_audio_frames(1.5), 1200) == (19, 1200)
    assert item["codes"].shape == (25, 4)

    by_audio_seconds = data.validate_dataset(data_config(dataset, audio_seconds=1.0))
    assert "data.audio_seconds=1" in by_audio_seconds.warnings[0]
    assert data.validate_dataset(data_config(dataset, max_seconds=2.5, on_too_long="error")).invalid == []


def test_min_seconds_and_silence_rules(dataset):
    short = data.validate_dataset(data_config(dataset, min_seconds=2.5))
    assert all("in.wav is 2.00 s, shorter than data.min_seconds=2.5" in t for t in _problems(short).values())
    sf.write(dataset / "01" / "in.wav", np.full(32000, 1e-4, dtype=np.float32), 16000, subtype="FLOAT")  # -80 dBFS
    assert "in.wav is silent (RMS -80.0 dBFS" in _problems(data.validate_dataset(data_config(dataset)))["01"]
    assert data.validate_dataset(data_config(dataset, require_non_silent=False)).invalid == []
    assert data.validate_dataset(data_config(dataset, silence_dbfs=-90)).invalid == []


def test_skip_with_no_valid_sample_raises(dataset):
    for d in dataset.iterdir():
        (d / "in.wav").unlink()
    report = data.validate_dataset(data_config(dataset))
    with pytest.raises(DatasetError, match="none of the 3 samples"):
        data.select_samples(report, "skip")


def test_extra_files_give_one_warning(dataset):
    (dataset / "README.txt").write_text("notes")
    (dataset / "01" / "notes.txt").write_text("x")
    (dataset / "02" / "in.srt").write_text("x")
    report = data.validate_dataset(data_config(dataset))
    assert all(s.ok for s in report.samples)
    assert len(report.warnings) == 1
    w = report.warnings[0]
    assert "3 extra" in w and "README.txt" in w and "01/notes.txt" in w and "02/in.srt" in w


def test_missing_file_or_empty_root_raises(tmp_path):
    for root in (tmp_path / "nope", tmp_path / "empty", tmp_path / "afile"):
        if root.name == "empty":
            root.mkdir()
            (root / "stray.txt").write_text("x")
        elif root.name == "afile":
            root.write_text("x")
        with pytest.raises(DatasetError, match="vss demo-data") as err:
            data.validate_dataset(data_config(root))
        assert "data.root=" in str(err.value)


def test_fingerprint_tracks_the_files(dataset):
    first = data.validate_dataset(data_config(dataset)).fingerprint
    assert data.validate_dataset(data_config(dataset)).fingerprint == first
    wav = dataset / "02" / "out.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert data.validate_dataset(data_config(dataset)).fingerprint != first


# --- preparation ----------------------------------------------------------------------------------


def test_prepare_writes_exact_tensors(dataset, model_dir, codec_dir, tmp_path):
    from vss_core import model, sequence
    from vss_core.model import audio, vision

    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    prepared = data.prepare_dataset(samples, cfg, model_dir, codec_dir, tmp_path / "prep")
    assert prepared.samples == ["01", "02", "03"]
    assert prepared.files == [str(tmp_path / "prep" / f"{n}.pt") for n in prepared.samples]
    assert prepared.skipped == [] and prepared.reused == []
    assert (tmp_path / "prep" / "manifest.json").is_file()
    items = data.load_prepared(tmp_path / "prep")
    assert len(items) == 3
    configs = model.CheckpointConfigs(model_dir)
    for item in items:
        assert set(item) == {"pixel_values", "grid_shapes", "audio_features", "codes", *sequence.SEQUENCE_KEYS}
        # 8 frames -> 4 frame pairs, each (1, h, w) patches of 2 x 3 x 14 x 14
        assert item["grid_shapes"].shape == (4, 3) and (item["grid_shapes"][:, 0] == 1).all()
        assert item["pixel_values"].shape == (int(item["grid_shapes"].prod(1).sum()), 1176)
        # 2 s of audio: official features, 1200-d at 80 ms; codec: ceil(32000/960) = 34 frames of 4 codes.
        assert item["audio_features"].shape == (_audio_frames(2.0), 1200)
        assert item["codes"].shape == (34, 4) and item["codes"].dtype == torch.int64
        assert torch.isfinite(item["audio_features"]).all() and torch.isfinite(item["pixel_values"]).all()
        # the sequence holds one <|image_pad|> per projected vision token and one <|audio_pad|> per frame
        ids = configs.special_ids
        assert int((item["input_ids"] == ids.image_pad).sum()) == int(item["grid_shapes"].prod(1).sum()) // 2
        assert int((item["input_ids"] == ids.audio_pad).sum()) == item["audio_features"].shape[0]
        assert int((item["codec_labels"][:, 0] == 2).sum()) == 1  # one segment: one codec EOS target
    # The codes are the codec's ids of out.wav; the features the official features of in.wav.
    wave, _ = sf.read(dataset / "01" / "out.wav", dtype="float32")
    assert torch.equal(items[0]["codes"], codec.load_encoder(codec_dir).encode(torch.from_numpy(wave)))
    wave_in, _ = sf.read(dataset / "01" / "in.wav", dtype="float32")
    feats, mask = audio.FeatureExtractor.from_dir(model_dir / "audio")(
        torch.from_numpy(wave_in)[None], torch.tensor([len(wave_in)])
    )
    assert torch.equal(items[0]["audio_features"], feats[0][mask[0]])
    # 8 frames at 2 fps do not fit in a 2 s clip: they are spread over it, so the frames move.
    n = int(item["grid_shapes"][0].prod())
    assert not torch.equal(items[0]["pixel_values"][:n], items[0]["pixel_values"][-n:])
    assert vision.VisionConfig.from_json(vision.TINY_VISION_CONFIG, "x").patch_dim == 1176


def test_audio_is_cropped_and_frames_follow_fps(dataset, model_dir, codec_dir, tmp_path):
    cfg = data_config(dataset, audio_seconds=1.0, video_frames=2, video_fps=1.0)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples[:1], cfg, model_dir, codec_dir, tmp_path / "prep")
    (item,) = data.load_prepared(tmp_path / "prep")
    assert item["audio_features"].shape == (13, 1200)  # the official 13 pads for 1 s
    assert item["codes"].shape == (17, 4)
    assert item["grid_shapes"].shape == (1, 3)  # one frame pair


def test_prepare_reuses_the_cache_and_redoes_on_change(dataset, model_dir, codec_dir, tmp_path):
    out = tmp_path / "prep"
    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    first = data.prepare_dataset(samples, cfg, model_dir, codec_dir, out)
    mtimes = {f: os.stat(f).st_mtime_ns for f in first.files}

    again = data.prepare_dataset(samples, cfg, model_dir, codec_dir, out)
    assert again.reused == ["01", "02", "03"]
    assert again.settings_key == first.settings_key
    assert {f: os.stat(f).st_mtime_ns for f in again.files} == mtimes

    # A run that stopped before writing the manifest resumes from the keys inside the files.
    (out / "manifest.json").unlink()
    resumed = data.prepare_dataset(samples, cfg, model_dir, codec_dir, out)
    assert resumed.reused == ["01", "02", "03"]
    assert {f: os.stat(f).st_mtime_ns for f in resumed.files} == mtimes

    # A changed sample file redoes that sample only.
    wav = dataset / "02" / "in.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    touched = data.prepare_dataset(samples, cfg, model_dir, codec_dir, out)
    assert touched.reused == ["01", "03"]

    # A changed setting redoes everything.
    changed = data_config(dataset, video_frames=4)
    redone = data.prepare_dataset(samples, changed, model_dir, codec_dir, out)
    assert redone.reused == [] and redone.settings_key != first.settings_key
    assert all(os.stat(f).st_mtime_ns != mtimes[f] for f in redone.files)
    assert data.load_prepared(out)[0]["grid_shapes"].shape == (2, 3)

    # So does a changed model preprocessing config.
    from vss_core.model import audio

    audio.write_kaldi_cmvn(model_dir / "audio" / "global_cmvn", mean=[1.0] * 80, var=[2.0] * 80, count=10.0)
    assert data.prepare_dataset(samples, changed, model_dir, codec_dir, out).reused == []


def test_worker_processes_give_the_same_result(dataset, model_dir, codec_dir, tmp_path, monkeypatch):
    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples, cfg, model_dir, codec_dir, tmp_path / "one")
    # This process prepares nothing: every sample is prepared by a spawned worker.
    real = data_prepare._run_jobs
    monkeypatch.setattr(data_prepare, "_run_jobs", lambda jobs, workers, failures: real(jobs, 3, failures, share=False))
    data.prepare_dataset(samples, data_config(dataset, workers=2), model_dir, codec_dir, tmp_path / "two")
    for a, b in zip(data.load_prepared(tmp_path / "one"), data.load_prepared(tmp_path / "two"), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k])


def test_a_small_dataset_waits_for_no_worker_to_start(dataset, model_dir, codec_dir, tmp_path, monkeypatch):
    # Workers start in seconds; three tiny samples take less: this process prepares them all and
    # returns without waiting for a worker.
    cfg = data_config(dataset, workers=2)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    done_by = []
    real = data_prepare._prepare_one
    monkeypatch.setattr(data_prepare, "_prepare_one", lambda job: done_by.append(os.getpid()) or real(job))
    data.prepare_dataset(samples, cfg, model_dir, codec_dir, tmp_path / "p")
    assert done_by == [os.getpid()] * 3


def test_invalid_samples_are_skipped_not_prepared(dataset, model_dir, codec_dir, tmp_path):
    (dataset / "02" / "out.wav").unlink()
    cfg = data_config(dataset, on_invalid="skip")
    report = data.validate_dataset(cfg)
    prepared = data.prepare_dataset(report.samples, cfg, model_dir, codec_dir, tmp_path / "prep")
    assert prepared.samples == ["01", "03"] and prepared.skipped == ["02"]


def test_incomplete_model_dir_names_every_problem(dataset, model_dir, codec_dir, tmp_path):
    (model_dir / "vision" / "config.json").unlink()
    (model_dir / "audio_codec" / "config.yaml").unlink()
    cfg = data_config(dataset, sample_rate=22050)
    samples = data.validate_dataset(cfg).samples
    with pytest.raises(ModelError) as err:
        data.prepare_dataset(samples, cfg, model_dir, codec_dir, tmp_path / "prep")
    msg = str(err.value)
    assert str(model_dir / "vision" / "config.json") in msg
    assert str(model_dir / "audio_codec" / "config.yaml") in msg
    assert "data.sample_rate=16000" in msg


def test_load_prepared_without_manifest_raises(tmp_path):
    with pytest.raises(DatasetError, match="manifest.json does not exist"):
        data.load_prepared(tmp_path)


# --- the validation cache and the fingerprint -----------------------------------------------------


def _count_probes(monkeypatch):
    """Count real probes (decoding a sample's files); the probe itself still runs."""
    calls = []
    real = data_validate._probe

    def counting(present):
        calls.append(sorted(present))
        return real(present)

    monkeypatch.setattr(data_validate, "_probe", counting)
    return calls


def test_unchanged_samples_are_not_probed_again(dataset, monkeypatch):
    calls = _count_probes(monkeypatch)
    cfg = data_config(dataset)
    first = data.validate_dataset(cfg)
    assert len(calls) == 3 and first.reused == []

    again = data.validate_dataset(cfg)
    assert len(calls) == 3, "an unchanged dataset was decoded again"
    assert again.reused == ["01", "02", "03"]
    assert again.model_dump(exclude={"reused"}) == first.model_dump(exclude={"reused"})

    # The rules are applied to the cached facts: a new limit needs no decoding.
    strict = data.validate_dataset(data_config(dataset, max_seconds=1.0, on_too_long="error"))
    assert len(calls) == 3 and len(strict.invalid) == 3

    # A changed file is probed again, and only its sample.
    wav = dataset / "02" / "out.wav"
    sf.write(wav, np.zeros(32000, dtype=np.float32), 16000, subtype="PCM_16")
    changed = data.validate_dataset(cfg)
    assert len(calls) == 4 and changed.reused == ["01", "03"]
    assert "out.wav is silent" in _problems(changed)["02"]

    # A damaged cache file only costs a full probe.
    Path(changed.cache_path).write_text("{not json")
    assert data.validate_dataset(cfg).reused == [] and len(calls) == 7

    # No cache: every validation probes.
    data.validate_dataset(data_config(dataset, validation_cache=None))
    assert len(calls) == 10


def test_unwritable_cache_is_a_warning_not_an_error(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    report = data.validate_dataset(data_config(dataset, validation_cache=str(blocker / "cache")))
    assert len(report.valid) == 3
    assert (
        len(report.warnings) == 1
        and "validation cache" in report.warnings[0]
        and "cannot be written" in report.warnings[0]
    )


def test_content_fingerprint_sees_what_stat_cannot(dataset, monkeypatch):
    calls = _count_probes(monkeypatch)
    stat_fp = data.validate_dataset(data_config(dataset)).fingerprint
    content = data.validate_dataset(data_config(dataset, fingerprint="content"))
    assert content.fingerprint_mode == "content" and content.fingerprint != stat_fp
    assert data.validate_dataset(data_config(dataset, fingerprint="content")).reused == ["01", "02", "03"]
    probes = len(calls)

    # Same size, same mtime, same inode, different bytes: only content hashes notice.
    wav = dataset / "03" / "in.wav"
    st = wav.stat()
    raw = bytearray(wav.read_bytes())
    raw[-2000:] = bytes(2000)
    with open(wav, "r+b") as f:
        f.write(raw)
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.validate_dataset(data_config(dataset)).fingerprint == stat_fp
    changed = data.validate_dataset(data_config(dataset, fingerprint="content"))
    assert changed.fingerprint != content.fingerprint
    assert changed.reused == ["01", "02"] and len(calls) == probes + 1


# --- preparation reads only what it needs, and converts what differs -------------------------------


def _all_frames_at(path, times, size):
    """The baseline: decode every frame, then pick the one shown at each time (as _read_frames does)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    picked = []
    for t in times:
        later = [f for f in frames if f.time >= t - 0.05 / 2]
        picked.append(data_prepare._frame_to_array(later[0] if later else frames[-1]))
    return picked, len(frames)


def test_frames_are_reached_by_seeking_not_by_decoding_everything(tmp_path):
    (d,) = demo.write_demo_dataset(tmp_path / "long", samples=1, seconds=20.0, fps=20)  # 400 frames, GOP 20
    for times in ([0.0, 5.0, 10.0, 15.0], [2.0, 2.5, 3.0, 3.5], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]):
        frames, decoded = data_prepare._read_frames(d / "in.mp4", times)
        expected, total = _all_frames_at(d / "in.mp4", times, SIZE)
        assert len(frames) == len(expected) and all(np.array_equal(a, b) for a, b in zip(frames, expected))
        assert total == 400
        # At most one GOP (20 frames) per wanted frame, and never past the last one.
        assert decoded <= 20 * len(times) and decoded <= 80


def test_frame_plan_decodes_from_the_keyframe_before_each_wanted_frame_only():
    # Decode order of two GOPs with B-frames (pts in frames, time base 1/10 s): I0 P3 B1 B2 P6 B4 B5 | I7 P9 B8
    packets = [(0, True), (3, False), (1, False), (2, False), (6, False), (4, False), (5, False)]
    packets += [(7, True), (9, False), (8, False)]
    tb = Fraction(1, 10)
    chosen, needed = data_prepare._frame_plan(packets, [0.15, 0.75, 5.0], tb)
    assert chosen == [2, 8, 9]  # the first frame at or past each threshold; past the end, the last
    # B2 needs I0 P3 B1 (its refs come before it in decode order); B8 and P9 need I7 only, not GOP 1
    assert needed == [0, 1, 2, 3, 7, 8, 9]


@pytest.mark.parametrize(
    "options",
    [
        {"video_codec": "libx264", "fps": 30, "size": (320, 180)},  # B-frames: skipped unless wanted
        {"video_codec": "mpeg4", "fps": 25, "size": (160, 120)},
        {"video_codec": "libvpx-vp9", "fps": 24, "size": (160, 128)},
    ],
)
def test_frames_read_by_plan_equal_decoding_every_frame(tmp_path, options):
    (d,) = demo.write_demo_dataset(tmp_path / "v", samples=1, seconds=6.0, **options)
    rate = options["fps"]
    # sorted runs of close and far timestamps, jumps over GOPs, B-frame times, and past the end
    for times in ([0.0, 0.5, 1.0, 1.5], [0.1, 2.07, 4.9, 5.5], [1.0 / rate * k for k in (3, 5, 7, 40, 41)], [3.0, 9.0]):
        frames, decoded = data_prepare._read_frames(d / "in.mp4", times)
        with av.open(str(d / "in.mp4")) as c:
            every = list(c.decode(video=0))
        expected = []
        for t in times:
            later = [f for f in every if f.time >= t - 0.5 / rate]
            expected.append(data_prepare._frame_to_array(later[0] if later else every[-1]))
        assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True)), (options, times)
        assert decoded <= len(every)
        # the fallback for streams without timestamps picks the same frames
        linear, _ = data_prepare._read_frames_linear(d / "in.mp4", [t - 0.5 / rate for t in times])
        assert all(np.array_equal(a, b) for a, b in zip(linear, expected, strict=True)), (options, times)


def test_b_frames_that_are_not_wanted_are_not_decoded(tmp_path):
    (d,) = demo.write_demo_dataset(tmp_path / "b", samples=1, seconds=4.0, fps=30, size=(320, 180))  # GOP 30
    times = [0.0, 0.5, 1.0, 1.5]  # 45 frames span them, all within decode-on distance
    _, decoded = data_prepare._read_frames(d / "in.mp4", times)
    assert decoded < 45  # the non-reference B-frames in between were skipped by the decoder


def test_other_rates_channels_codecs_and_sizes_are_converted(tmp_path, model_dir, codec_dir):
    reference = tmp_path / "ref"
    demo.write_demo_dataset(reference, samples=1, seconds=2.0, seed=3)
    variants = {
        "mpeg4": {"video_codec": "mpeg4", "size": (64, 48), "in_rate": 44100, "in_channels": 2},
        "vp9": {"video_codec": "libvpx-vp9", "size": (160, 128), "fps": 25, "in_rate": 22050},
    }
    ref_cfg = data_config(reference)
    data.prepare_dataset(data.validate_dataset(ref_cfg).samples, ref_cfg, model_dir, codec_dir, tmp_path / "prep-ref")
    (ref,) = data.load_prepared(tmp_path / "prep-ref")
    for name, kwargs in variants.items():
        root = tmp_path / name
        demo.write_demo_dataset(root, samples=1, seconds=2.0, seed=3, **kwargs)
        cfg = data_config(root)
        report = data.validate_dataset(cfg)
        assert report.invalid == [], report.table()
        (s,) = report.samples
        assert s.video.codec == {"mpeg4": "mpeg4", "vp9": "vp9"}[name]
        assert (s.video.width, s.video.height) == kwargs["size"]
        assert (s.in_audio.sample_rate, s.in_audio.channels) == (kwargs["in_rate"], kwargs.get("in_channels", 1))
        data.prepare_dataset(report.samples, cfg, model_dir, codec_dir, tmp_path / f"prep-{name}")
        (item,) = data.load_prepared(tmp_path / f"prep-{name}")
        assert item["audio_features"].shape == ref["audio_features"].shape == (_audio_frames(2.0), 1200)
        assert torch.equal(item["codes"], ref["codes"])  # out.wav is the same 16 kHz mono file
        # The same speech, converted: close to the reference, not equal. (Frames of other sizes
        # resize to other native-resolution grids, so their patches are not comparable one to one.)
        corr = torch.corrcoef(torch.stack([item["audio_features"].flatten(), ref["audio_features"].flatten()]))[0, 1]
        assert corr > 0.95


# --- the command line -----------------------------------------------------------------------------


def test_vss_validate_json_prints_the_full_report_and_exits_by_policy(dataset, tmp_path, capsys):
    from deployments import cli

    cache = f"data.validation_cache={tmp_path / 'cli-cache'}"
    assert cli.main(["validate", str(dataset), cache, "--json"]) == 0
    out = capsys.readouterr().out
    report = data.DatasetReport.model_validate_json(out)
    assert [s.name for s in report.samples] == ["01", "02", "03"] and report.samples[0].video.codec == "h264"

    (dataset / "02" / "in.wav").write_bytes(b"")
    assert cli.main(["validate", str(dataset), cache, "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["samples"][1]["problems"] == ["in.wav is empty (0 bytes)"]
    assert "02: in.wav is empty" in captured.err
    assert cli.main(["validate", str(dataset), cache, "data.on_invalid=skip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == ["02"]
    for d in ("01", "03"):
        (dataset / d / "in.wav").write_bytes(b"")
    assert cli.main(["validate", str(dataset), cache, "data.on_invalid=skip", "--json"]) == 1
    capsys.readouterr()
    assert cli.main(["validate", str(tmp_path / "nowhere"), cache, "--json"]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the optional texts ---------------------------------------------------------------------------


def test_text_files_are_validated(dataset):
    (dataset / "01" / "out.txt").write_bytes(b"caf\xe9 latin-1")
    (dataset / "02" / "out.txt").write_text("   \n")
    (dataset / "03" / "out.txt").write_text("word " * 200 + "</pause> more <|audio_pad|>")
    (dataset / "03" / "in.txt").write_text("What is shown?")
    report = data.validate_dataset(data_config(dataset))
    by = {s.name: s for s in report.samples}
    assert by["01"].problems == ["out.txt is not UTF-8 text (byte 3); save it as UTF-8"]
    assert not by["02"].problems and "out.txt is empty" in by["02"].warnings[0]
    text = " ".join(by["03"].problems)
    assert "contains </pause>" in text and "<|audio_pad|>" in text
    assert "far longer than out.wav allows" in text and "2.00 s of speech" in text
    # The texts are part of the data: changing one changes the fingerprint.
    before = report.fingerprint
    (dataset / "02" / "out.txt").write_text("The red shape moves.\n")
    assert data.validate_dataset(data_config(dataset)).fingerprint != before


def test_transcript_trains_the_text_stream_and_no_transcript_trains_speech_only(
    dataset, model_dir, codec_dir, tmp_path
):
    from vss_core import model, sequence

    (dataset / "02" / "out.txt").unlink()
    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples, cfg, model_dir, codec_dir, tmp_path / "prep")
    with_text, without, _ = data.load_prepared(tmp_path / "prep")
    ids = model.CheckpointConfigs(model_dir).special_ids
    tok = sequence.load_tokenizer(model_dir)
    # the text targets are the transcript's tokens then EOS, in order
    expected = sequence.encode_text(tok, (dataset / "01" / "out.txt").read_text().strip()) + [ids.text_eos]
    assert with_text["text_labels"][with_text["text_labels"] != -100].tolist() == expected
    assert (without["text_labels"] == -100).all()
    for item in (with_text, without):  # speech targets either way: every frame, then codec EOS
        sem = item["codec_labels"][:, 0]
        assert sem[sem != -100].tolist() == (item["codes"][:, 0] + 32).tolist() + [2]


def test_a_transcript_too_long_for_its_audio_fails_preparation_naming_the_sample(
    dataset, model_dir, codec_dir, tmp_path
):
    # 70 characters of rare letters: within the rough check (4 per position) but more tokens than positions
    (dataset / "02" / "out.txt").write_text("Qzx9 " * 14)
    cfg = data_config(dataset, audio_seconds=1.0)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    with pytest.raises(DatasetError) as err:
        data.prepare_dataset(samples, cfg, model_dir, codec_dir, tmp_path / "prep")
    assert "02:" in str(err.value) and "positions" in str(err.value)


# --- bad input at the edges (issue 13 item 5) -----------------------------------------------------


def _write_vfr_mp4(path, size=64):
    """A valid variable-frame-rate mp4: frames 40 ms apart for 1 s, then the last one held for 0.96 s
    (as a screen recording or a phone clip holds a still frame)."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"bf": "0"}
        stream.codec_context.time_base = Fraction(1, 1000)
        packets = []
        for i in range(27):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i * 9, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * 40, Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode()
        packets[-1].duration = int(0.96 / float(packets[-1].time_base))
        for packet in packets:
            container.mux(packet)


def test_a_symlink_loop_is_a_problem_of_its_sample_not_a_crash(dataset):
    (dataset / "01" / "out.wav").unlink()
    (dataset / "01" / "out.wav").symlink_to("out.wav")  # a link to itself
    (dataset / "02" / "in.wav").unlink()
    (dataset / "02" / "in.wav").symlink_to("b.wav")
    (dataset / "02" / "b.wav").symlink_to("in.wav")  # two links to each other
    (dataset / "04").symlink_to("04", target_is_directory=True)  # a sample folder that loops

    report = data.validate_dataset(data_config(dataset))
    problems = _problems(report)
    assert "out.wav is a link that leads nowhere (a symlink loop)" in problems["01"]
    assert "in.wav is a link that leads nowhere (a symlink loop)" in problems["02"]
    assert problems["03"] == ""
    assert "04" not in problems and "04" in report.warnings[0]  # not a folder: ignored with a warning


def test_a_valid_variable_frame_rate_video_is_accepted_and_prepared(dataset, model_dir, codec_dir, tmp_path):
    _write_vfr_mp4(dataset / "01" / "in.mp4")
    report = data.validate_dataset(data_config(dataset))
    sample = report.samples[0]
    assert sample.problems == [], sample.problems
    assert sample.video.duration_s == pytest.approx(2.0) and sample.video.frames == 27
    # ...while a cut-off constant-rate file is still caught (test_every_bad_sample_is_named_with_its_reason)
    prepared = data.prepare_dataset([sample], data_config(dataset, workers=1), model_dir, codec_dir, tmp_path / "prep")
    assert torch.isfinite(data.load_prepared(prepared.dir)[0]["pixel_values"]).all()


def test_a_float_wav_far_beyond_full_scale_is_rejected_before_it_makes_nan_features(dataset):
    wave, rate = sf.read(dataset / "01" / "in.wav", dtype="float32")
    sf.write(dataset / "01" / "in.wav", wave * 1e30, rate, subtype="FLOAT")
    sf.write(
        dataset / "02" / "out.wav",
        np.clip(sf.read(dataset / "02" / "out.wav", dtype="float32")[0] * 1.5, -1.5, 1.5),
        16000,
        subtype="FLOAT",
    )  # a little over full scale (clipped mastering): accepted
    problems = _problems(data.validate_dataset(data_config(dataset)))
    assert "in.wav (FLOAT samples) peaks at" in problems["01"] and "Normalise it to [-1, 1]" in problems["01"]
    assert problems["02"] == "" and problems["03"] == ""
