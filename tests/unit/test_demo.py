"""vss_core.demo: the generated dataset is real media, deterministic, and written safely."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from vss_core import demo
from vss_core.errors import DatasetError


def _frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _envelope(wave, hop=800):
    n = len(wave) // hop
    return np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1))


def test_writes_real_h264_and_16k_mono_wavs(tmp_path):
    dirs = demo.write_demo_dataset(tmp_path / "d", samples=3, seconds=2.0)
    assert [d.name for d in dirs] == ["01", "02", "03"]
    for d in dirs:
        assert sorted(p.name for p in d.iterdir()) == ["in.mp4", "in.wav", "out.txt", "out.wav"]
        assert (d / "out.txt").read_text().startswith("The ")
        with av.open(str(d / "in.mp4")) as c:
            v = c.streams.video[0]
            assert v.codec_context.name == "h264"
            assert (v.width, v.height) == (demo.WIDTH, demo.HEIGHT)
            assert v.codec_context.pix_fmt == "yuv420p"
        assert _frames(d / "in.mp4").shape == (20, demo.HEIGHT, demo.WIDTH, 3)
        for name in ("in.wav", "out.wav"):
            info = sf.info(str(d / name))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == 32000
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_deterministic_by_seed_and_samples_differ(tmp_path):
    a = demo.write_demo_dataset(tmp_path / "a", samples=2, seed=7, seconds=1.0)
    b = demo.write_demo_dataset(tmp_path / "b", samples=2, seed=7, seconds=1.0)
    c = demo.write_demo_dataset(tmp_path / "c", samples=2, seed=8, seconds=1.0)
    for x, y in zip(a, b):
        assert (x / "in.wav").read_bytes() == (y / "in.wav").read_bytes()
        assert (x / "out.wav").read_bytes() == (y / "out.wav").read_bytes()
        assert np.array_equal(_frames(x / "in.mp4"), _frames(y / "in.mp4"))
    assert (a[0] / "in.wav").read_bytes() != (a[1] / "in.wav").read_bytes()
    assert not np.array_equal(_frames(a[0] / "in.mp4"), _frames(a[1] / "in.mp4"))
    assert (a[0] / "in.wav").read_bytes() != (c[0] / "in.wav").read_bytes()


def test_out_wav_is_a_learnable_function_of_in_wav(tmp_path):
    (d,) = demo.write_demo_dataset(tmp_path / "d", samples=1, seconds=3.0)
    x, _ = sf.read(str(d / "in.wav"), dtype="float32")
    y, _ = sf.read(str(d / "out.wav"), dtype="float32")
    assert np.abs(x).max() > 0.1 and np.abs(y).max() > 0.1
    ex, ey = _envelope(x), _envelope(y)
    # out.wav's syllables are in.wav's reversed in time.
    assert np.corrcoef(ex[::-1], ey)[0, 1] > 0.9
    assert np.corrcoef(ex, ey)[0, 1] < 0.9


def test_refuses_non_empty_root_unless_overwrite(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty.*overwrite=True"):
        demo.write_demo_dataset(root, samples=1, seconds=0.5)
    demo.write_demo_dataset(root, samples=1, seconds=0.5, overwrite=True)
    demo.write_demo_dataset(root, samples=1, seconds=0.5, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["01", "keep.txt"]


@pytest.mark.parametrize("kwargs", [{"samples": 0}, {"samples": -3}, {"samples": 1, "seconds": 0}])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(DatasetError):
        demo.write_demo_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()
