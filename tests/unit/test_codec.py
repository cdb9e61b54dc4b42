"""vss_core.codec: TinyCodec has LongCat-Audio-Codec's interface; load_codec picks it or says why not."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from vss_core import codec
from vss_core.errors import ModelError


def _speechlike(seconds=2.0, f0=150.0, seed=0):
    t = torch.arange(int(seconds * 16000)) / 16000
    env = torch.sin(math.pi * 3 * t).abs()
    wave = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6)) * env
    wave = wave + 0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))
    return (0.5 * wave / wave.abs().max()).float()


def test_interface_matches_the_real_codec():
    c = codec.TinyCodec()
    assert isinstance(c, codec.SpeechCodec)
    assert c.sample_rate == 16000
    assert c.frame_rate == pytest.approx(16.6667, rel=1e-4)
    assert c.codebook_sizes == (64, 16, 16, 16)


@pytest.mark.parametrize("samples", [1, 959, 960, 961, 32000])
def test_encode_shape_dtype_and_range(samples):
    c = codec.TinyCodec()
    codes = c.encode(_speechlike(seconds=samples / 16000 + 1e-9)[:samples])
    assert codes.shape == (math.ceil(samples / 960), 4)
    assert codes.dtype == torch.int64
    for i, size in enumerate(c.codebook_sizes):
        assert 0 <= codes[:, i].min() and codes[:, i].max() < size


def test_encode_is_deterministic_and_informative():
    wave = _speechlike()
    a, b = codec.TinyCodec().encode(wave), codec.TinyCodec().encode(wave.clone())
    assert torch.equal(a, b)
    other = codec.TinyCodec().encode(_speechlike(f0=260.0))
    assert not torch.equal(a, other)
    assert len(set(a[:, 0].tolist())) > 1, "semantic codes should vary over syllables"
    silence = codec.TinyCodec().encode(torch.zeros(4800))
    assert silence[:, 1].eq(0).all()
    assert codec.TinyCodec(seed=1).codebook.ne(codec.TinyCodec(seed=0).codebook).any()


def test_decode_is_a_real_waveform_that_re_encodes_close():
    c = codec.TinyCodec()
    codes = c.encode(_speechlike())
    wave = c.decode(codes)
    assert wave.shape == (codes.shape[0] * 960,)
    assert torch.isfinite(wave).all() and wave.abs().max() <= 1.0
    again = c.encode(wave)
    assert torch.equal(again[:, 1], codes[:, 1])  # loudness survives
    assert again[:, 0].eq(codes[:, 0]).float().mean() > 0.8  # semantic mostly survives


def test_load_codec_from_the_tiny_config(tmp_path):
    path = codec.write_tiny_codec_config(tmp_path)
    assert path == tmp_path / "audio_codec" / "config.yaml"
    assert yaml.safe_load(path.read_text()) == {
        "type": "vss-tiny",
        "sample_rate": 16000,
        "hop_samples": 960,
        "codebook_sizes": [64, 16, 16, 16],
        "seed": 0,
    }
    loaded = codec.load_codec(tmp_path)
    assert isinstance(loaded, codec.TinyCodec)
    wave = _speechlike()
    assert torch.equal(loaded.encode(wave), codec.TinyCodec().encode(wave))


def test_missing_codec_config_names_the_path(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path / "audio_codec" / "config.yaml")):
        codec.load_codec(tmp_path)


def test_real_longcat_codec_is_refused_clearly(tmp_path):
    path = tmp_path / "audio_codec" / "config.yaml"
    path.parent.mkdir()
    path.write_text("sample_rate: 16000\nsemantic_codebook_size: 8192\nacoustic_codebook_size: 90\n")
    with pytest.raises(ModelError, match="LongCat-Audio-Codec") as err:
        codec.load_codec(tmp_path)
    assert str(path) in str(err.value)


def test_invalid_tiny_config_lists_every_problem(tmp_path):
    path = tmp_path / "audio_codec" / "config.yaml"
    path.parent.mkdir()
    path.write_text("type: vss-tiny\nsample_rate: 16000\ncodebook_sizes: [64, 16]\n")
    with pytest.raises(ModelError) as err:
        codec.load_codec(tmp_path)
    msg = str(err.value)
    assert "hop_samples" in msg and "seed" in msg and "codebook_sizes" in msg
