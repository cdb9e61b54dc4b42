"""vss_core.data: validation reports every bad sample; preparation writes exact tensors and caches."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from vss_core import codec, data, demo
from vss_core.config import DataConfig
from vss_core.errors import DatasetError, ModelError

SIZE = 56


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=3, seconds=2.0)
    return root


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "vision").mkdir(parents=True)
    (d / "audio").mkdir()
    (d / "vision" / "config.json").write_text(
        json.dumps(
            {
                "image_size": SIZE,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
            }
        )
    )
    (d / "audio" / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "num_mel_bins": 80}))
    (d / "audio" / "global_cmvn").write_text(json.dumps({"mean": [0.0] * 80, "istd": [1.0] * 80}))
    codec.write_tiny_codec_config(d)
    return d


def _cfg(root, **kw):
    base = {"root": str(root), "video_frames": 8, "video_fps": 2.0, "audio_seconds": 10.0, "workers": 1}
    return DataConfig(**(base | kw))


# --- validation -----------------------------------------------------------------------------------


def test_good_dataset_validates(dataset):
    report = data.validate_dataset(_cfg(dataset))
    assert [s.name for s in report.samples] == ["01", "02", "03"]
    assert all(s.ok for s in report.samples) and report.invalid == [] and len(report.valid) == 3
    assert report.warnings == []
    s = report.samples[0]
    assert s.video.model_dump() == {
        "frames": 20, "fps": 10.0, "width": 96, "height": 80, "duration_s": 2.0, "codec": "h264"
    }
    assert s.in_audio.model_dump() == {"sample_rate": 16000, "channels": 1, "duration_s": 2.0}
    assert s.out_audio.duration_s == 2.0
    assert len(report.fingerprint) == 64
    table = report.table()
    assert "| 02 | yes | 20 | 10 | 96x80 | 2.00 | 2.00 |  |" in table
    assert "3 of 3 samples valid" in table


def test_every_bad_sample_is_named_with_its_reason(tmp_path):
    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=7, seconds=1.0)
    (root / "01" / "out.wav").unlink()
    (root / "02" / "in.wav").write_bytes(b"")
    mp4 = (root / "03" / "in.mp4").read_bytes()
    (root / "03" / "in.mp4").write_bytes(mp4[: len(mp4) // 2])
    (root / "04" / "in.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    nan_wave = np.zeros(16000, dtype=np.float32)
    nan_wave[100:110] = np.nan
    sf.write(root / "05" / "out.wav", nan_wave, 16000, subtype="FLOAT")
    shutil.copy(root / "06" / "in.wav", root / "06" / "in.mp4")

    report = data.validate_dataset(_cfg(root))
    problems = {s.name: " ".join(s.problems) for s in report.samples}
    assert "out.wav is missing" in problems["01"]
    assert "in.wav is empty" in problems["02"]
    assert "in.mp4 cannot be opened" in problems["03"]
    assert "in.mp4 cannot be opened" in problems["04"]
    assert "out.wav contains 10 NaN/Inf samples" in problems["05"]
    assert "in.mp4 has no video stream" in problems["06"] and "audio" in problems["06"]
    assert problems["07"] == ""
    assert [s.name for s in report.invalid] == ["01", "02", "03", "04", "05", "06"]
    assert "**no**" in report.table()

    with pytest.raises(DatasetError) as err:
        data.select_samples(report, "fail")
    msg = str(err.value)
    for name in ["01", "02", "03", "04", "05", "06"]:
        assert f"  - {name}: " in msg
    assert "  - 07" not in msg
    assert msg.endswith("Fix the files or set data.on_invalid=skip")

    assert [s.name for s in data.select_samples(report, "skip")] == ["07"]


def test_skip_with_no_valid_sample_raises(dataset):
    for d in dataset.iterdir():
        (d / "in.wav").unlink()
    report = data.validate_dataset(_cfg(dataset))
    with pytest.raises(DatasetError, match="none of the 3 samples"):
        data.select_samples(report, "skip")


def test_extra_files_give_one_warning(dataset):
    (dataset / "README.txt").write_text("notes")
    (dataset / "01" / "notes.txt").write_text("x")
    (dataset / "02" / "in.srt").write_text("x")
    report = data.validate_dataset(_cfg(dataset))
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
            data.validate_dataset(_cfg(root))
        assert "data.root=" in str(err.value)


def test_fingerprint_tracks_the_files(dataset):
    first = data.validate_dataset(_cfg(dataset)).fingerprint
    assert data.validate_dataset(_cfg(dataset)).fingerprint == first
    wav = dataset / "02" / "out.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert data.validate_dataset(_cfg(dataset)).fingerprint != first


# --- preparation ----------------------------------------------------------------------------------


def test_prepare_writes_exact_tensors(dataset, model_dir, tmp_path):
    cfg = _cfg(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    prepared = data.prepare_dataset(samples, cfg, model_dir, tmp_path / "prep")
    assert prepared.samples == ["01", "02", "03"]
    assert prepared.files == [str(tmp_path / "prep" / f"{n}.pt") for n in prepared.samples]
    assert prepared.skipped == [] and prepared.reused == []
    assert (tmp_path / "prep" / "manifest.json").is_file()
    items = data.load_prepared(tmp_path / "prep")
    assert len(items) == 3
    for item in items:
        assert set(item) == {"frames", "fbank", "codes"}
        assert item["frames"].shape == (8, 3, SIZE, SIZE) and item["frames"].dtype == torch.float32
        # 2 s of audio: kaldi fbank, 25 ms windows every 10 ms -> 198 frames; codec: ceil(32000/960) = 34.
        assert item["fbank"].shape == (198, 80) and item["fbank"].dtype == torch.float32
        assert item["codes"].shape == (34, 4) and item["codes"].dtype == torch.int64
        assert item["frames"].min() >= -1.0 and item["frames"].max() <= 1.0  # (x - 0.5) / 0.5
        assert torch.isfinite(item["fbank"]).all()
    # The codes are the codec's tokens of out.wav.
    wave, _ = sf.read(dataset / "01" / "out.wav", dtype="float32")
    assert torch.equal(items[0]["codes"], codec.TinyCodec().encode(torch.from_numpy(wave)))
    # 8 frames at 2 fps do not fit in a 2 s clip: they are spread over it, so the frames move.
    assert not torch.equal(items[0]["frames"][0], items[0]["frames"][-1])


def test_audio_is_cropped_and_frames_follow_fps(dataset, model_dir, tmp_path):
    cfg = _cfg(dataset, audio_seconds=1.0, video_frames=2, video_fps=1.0)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples[:1], cfg, model_dir, tmp_path / "prep")
    (item,) = data.load_prepared(tmp_path / "prep")
    assert item["fbank"].shape == (98, 80)
    assert item["codes"].shape == (17, 4)
    assert item["frames"].shape == (2, 3, SIZE, SIZE)


def test_prepare_reuses_the_cache_and_redoes_on_change(dataset, model_dir, tmp_path):
    out = tmp_path / "prep"
    cfg = _cfg(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    first = data.prepare_dataset(samples, cfg, model_dir, out)
    mtimes = {f: os.stat(f).st_mtime_ns for f in first.files}

    again = data.prepare_dataset(samples, cfg, model_dir, out)
    assert again.reused == ["01", "02", "03"]
    assert again.settings_key == first.settings_key
    assert {f: os.stat(f).st_mtime_ns for f in again.files} == mtimes

    # A run that stopped before writing the manifest resumes from the keys inside the files.
    (out / "manifest.json").unlink()
    resumed = data.prepare_dataset(samples, cfg, model_dir, out)
    assert resumed.reused == ["01", "02", "03"]
    assert {f: os.stat(f).st_mtime_ns for f in resumed.files} == mtimes

    # A changed sample file redoes that sample only.
    wav = dataset / "02" / "in.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    touched = data.prepare_dataset(samples, cfg, model_dir, out)
    assert touched.reused == ["01", "03"]

    # A changed setting redoes everything.
    changed = _cfg(dataset, video_frames=4)
    redone = data.prepare_dataset(samples, changed, model_dir, out)
    assert redone.reused == [] and redone.settings_key != first.settings_key
    assert all(os.stat(f).st_mtime_ns != mtimes[f] for f in redone.files)
    assert data.load_prepared(out)[0]["frames"].shape == (4, 3, SIZE, SIZE)

    # So does a changed model preprocessing config.
    (model_dir / "audio" / "global_cmvn").write_text(json.dumps({"mean": [1.0] * 80, "istd": [1.0] * 80}))
    assert data.prepare_dataset(samples, changed, model_dir, out).reused == []


def test_worker_processes_give_the_same_result(dataset, model_dir, tmp_path):
    cfg = _cfg(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples, cfg, model_dir, tmp_path / "one")
    data.prepare_dataset(samples, _cfg(dataset, workers=2), model_dir, tmp_path / "two")
    for a, b in zip(data.load_prepared(tmp_path / "one"), data.load_prepared(tmp_path / "two")):
        for k in a:
            assert torch.equal(a[k], b[k])


def test_invalid_samples_are_skipped_not_prepared(dataset, model_dir, tmp_path):
    (dataset / "02" / "out.wav").unlink()
    cfg = _cfg(dataset, on_invalid="skip")
    report = data.validate_dataset(cfg)
    prepared = data.prepare_dataset(report.samples, cfg, model_dir, tmp_path / "prep")
    assert prepared.samples == ["01", "03"] and prepared.skipped == ["02"]


def test_incomplete_model_dir_names_every_problem(dataset, model_dir, tmp_path):
    (model_dir / "vision" / "config.json").unlink()
    (model_dir / "audio_codec" / "config.yaml").unlink()
    cfg = _cfg(dataset, sample_rate=22050)
    samples = data.validate_dataset(cfg).samples
    with pytest.raises(ModelError) as err:
        data.prepare_dataset(samples, cfg, model_dir, tmp_path / "prep")
    msg = str(err.value)
    assert str(model_dir / "vision" / "config.json") in msg
    assert str(model_dir / "audio_codec" / "config.yaml") in msg
    assert "data.sample_rate=16000" in msg


def test_load_prepared_without_manifest_raises(tmp_path):
    with pytest.raises(DatasetError, match="manifest.json does not exist"):
        data.load_prepared(tmp_path)
