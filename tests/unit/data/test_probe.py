"""vss_core.data.probe: one media file as PyAV and soundfile see it, and the MP4 / RIFF walkers that tell a
truncated file from a corrupt one (the messages validation reports)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import DEMO_VIDEO
from vss_core import demo
from vss_core.data import probe


@pytest.fixture
def sample(tmp_path):
    (d,) = demo.write_demo_dataset(tmp_path / "train", samples=1, seconds=2.0)
    return d


def test_a_good_video_and_wav_are_described_without_problems(sample):
    video, problems = probe._probe_video(sample / "in.mp4")
    assert problems == []
    assert video.model_dump() == DEMO_VIDEO
    audio, problems = probe._probe_wav(sample / "in.wav", "in.wav")
    assert problems == [] and (audio.sample_rate, audio.channels, audio.duration_s) == (16000, 1, 2.0)
    assert probe._riff_truncation(sample / "in.wav", "in.wav") is None
    assert probe._mp4_truncation(sample / "in.mp4") is None


def test_the_rms_level_is_computed_over_the_whole_file(tmp_path):
    wave = np.full((16000, 2), 0.5, dtype=np.float32)  # RMS 0.5: -6.02 dBFS
    sf.write(tmp_path / "a.wav", wave, 16000, subtype="FLOAT")
    audio, problems = probe._probe_wav(tmp_path / "a.wav", "out.wav")
    assert problems == [] and audio.channels == 2 and audio.rms_dbfs == round(20 * np.log10(0.5), 2)
    sf.write(tmp_path / "zero.wav", np.zeros(1600, dtype=np.float32), 16000)
    assert probe._probe_wav(tmp_path / "zero.wav", "out.wav")[0].rms_dbfs == -120.0  # the floor, not -inf


def test_a_cut_wav_is_named_truncated_with_the_share_it_holds(sample, tmp_path):
    raw = (sample / "in.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: 44 + 16000])  # the header says 64000 bytes of audio
    declared = int.from_bytes(raw[40:44], "little")
    assert probe._riff_truncation(cut, "in.wav") == (
        f"in.wav is truncated: its header declares {declared} bytes of audio but the file holds 16000 (25%)"
    )
    info, problems = probe._probe_wav(cut, "in.wav")
    assert problems[0].startswith("in.wav is truncated") and info.duration_s == 0.5
    (tmp_path / "text.wav").write_text("not a RIFF file at all")
    assert probe._riff_truncation(tmp_path / "text.wav", "in.wav") is None  # nothing to compare
    info, problems = probe._probe_wav(tmp_path / "text.wav", "in.wav")
    assert info is None and problems[0].startswith("in.wav cannot be decoded as audio (")


def test_non_finite_short_and_overloud_wavs_are_named(tmp_path):
    wave = np.full(16000, 0.1, dtype=np.float32)
    wave[5:8] = [np.nan, np.inf, -np.inf]
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    assert probe._probe_wav(tmp_path / "nan.wav", "out.wav")[1] == ["out.wav contains 3 NaN/Inf samples"]
    sf.write(tmp_path / "short.wav", np.full(320, 0.1, dtype=np.float32), 16000)  # 20 ms
    assert probe._probe_wav(tmp_path / "short.wav", "in.wav")[1] == [
        "in.wav is 20.0 ms long; needs at least 25 ms (one fbank window)"
    ]
    assert probe._probe_wav(tmp_path / "short.wav", "out.wav")[1] == []  # the rule is the input's
    sf.write(tmp_path / "loud.wav", np.full(1600, 20.0, dtype=np.float32), 16000, subtype="FLOAT")
    (problem,) = probe._probe_wav(tmp_path / "loud.wav", "in.wav")[1]
    assert problem.startswith("in.wav (FLOAT samples) peaks at 20, where full scale is 1.0")


def test_an_mp4_cut_off_or_without_an_index_is_named(sample, tmp_path):
    raw = (sample / "in.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(raw[: len(raw) // 2])
    message = probe._mp4_truncation(cut)
    assert message.startswith("in.mp4 is truncated: its '") and "the file ends after" in message
    # the boxes walked whole but no moov among them: a writer that never finished
    ftyp_len = int.from_bytes(raw[:4], "big")
    (tmp_path / "nomoov.mp4").write_bytes(raw[:ftyp_len])
    assert probe._mp4_truncation(tmp_path / "nomoov.mp4") == (
        "in.mp4 is truncated or unfinished: it has no index (moov box); the writer did not finish it"
    )
    (tmp_path / "tiny.mp4").write_bytes(raw[:ftyp_len] + (4).to_bytes(4, "big") + b"free")
    assert probe._mp4_truncation(tmp_path / "tiny.mp4") == (
        f"in.mp4 is corrupt: box 'free' at byte {ftyp_len} declares 4 bytes"
    )
    (tmp_path / "other.bin").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(100))  # not MP4: not this walker's
    assert probe._mp4_truncation(tmp_path / "other.bin") is None
    _, problems = probe._probe_video(cut)
    assert any("in.mp4 is truncated" in p for p in problems)
