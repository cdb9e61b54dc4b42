"""vss_core.data.validate: validation reports every problem of every sample with its reason, the
validation cache and the fingerprint, the optional texts, and bad input at the edges."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import DEMO_VIDEO, audio_frames, data_config
from vss_core import data, demo
from vss_core.data import validate as data_validate
from vss_core.errors import DatasetError


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
    assert s.video.model_dump() == DEMO_VIDEO
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


def test_too_long_is_an_error_or_a_warning_and_a_crop(dataset, model_dir, tiny_codec_dir, tmp_path):
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
    data.prepare_dataset(report.samples[:1], cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    (item,) = data.load_prepared(tmp_path / "prep")
    # 1.5 s: 148 fbank frames, spliced 8 to 1 -> 19 feature frames; codec: ceil(24000/960) = 25.
    assert item["audio_features"].shape == (audio_frames(1.5), 1200) == (19, 1200)
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


def test_a_valid_variable_frame_rate_video_is_accepted_and_prepared(dataset, model_dir, tiny_codec_dir, tmp_path):
    _write_vfr_mp4(dataset / "01" / "in.mp4")
    report = data.validate_dataset(data_config(dataset))
    sample = report.samples[0]
    assert sample.problems == [], sample.problems
    assert sample.video.duration_s == pytest.approx(2.0) and sample.video.frames == 27
    # ...while a cut-off constant-rate file is still caught (test_every_bad_sample_is_named_with_its_reason)
    prepared = data.prepare_dataset(
        [sample], data_config(dataset, workers=1), model_dir, tiny_codec_dir, tmp_path / "prep"
    )
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
