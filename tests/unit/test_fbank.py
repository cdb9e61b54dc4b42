"""vss_core.fbank: the official batched Kaldi-style log-mel filterbank shared by both LongCat audio front
ends, against torchaudio's Kaldi fbank (povey window, no DC removal) and the official length rules."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.compliance.kaldi as ta_kaldi

from vss_core import fbank

CFG = fbank.FbankConfig(
    dither=0.0,
    frame_length=25.0,
    frame_shift=10.0,
    preemphasis=0.97,
    freq=16000,
    high_freq=-200.0,
    low_freq=20.0,
    num_mel_bins=80,
)


def _waves(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = torch.arange(n) / 16000
        out[i, :n] = 0.3 * torch.sin(2 * math.pi * (220 + 90 * i) * t) + 0.05 * torch.randn(n, generator=gen)
    return out * 32768.0, torch.tensor(lengths)


def _kaldi(wave: torch.Tensor, cfg: fbank.FbankConfig) -> torch.Tensor:
    return ta_kaldi.fbank(
        wave[None],
        num_mel_bins=cfg.num_mel_bins,
        frame_length=cfg.frame_length,
        frame_shift=cfg.frame_shift,
        dither=0.0,
        preemphasis_coefficient=cfg.preemphasis,
        low_freq=cfg.low_freq,
        high_freq=cfg.high_freq,
        sample_frequency=cfg.freq,
        window_type="povey",
        remove_dc_offset=False,
        round_to_power_of_two=True,
        snip_edges=True,
        use_energy=False,
    )


def test_sizes_follow_the_official_rules():
    assert [fbank.next_power_of_2(x) for x in (0, 1, 2, 3, 400, 512, 513)] == [1, 1, 2, 4, 512, 512, 1024]
    assert (CFG.window_size, CFG.window_shift, CFG.padded_window_size) == (400, 160, 512)
    assert CFG.resolved_high_freq == 7800.0  # negative: counted down from Nyquist
    assert fbank.FbankConfig(**(CFG.to_dict() | {"high_freq": 0.0})).resolved_high_freq == 0.0  # 0 is 0 Hz
    assert CFG.feature_dim == 80 and "padded_num_mel_bins" not in CFG.to_dict()
    padded = fbank.FbankConfig(**CFG.to_dict(), padded_num_mel_bins=96)
    assert padded.feature_dim == 96 and padded.to_dict()["padded_num_mel_bins"] == 96
    assert fbank.FbankConfig(**padded.to_dict()) == padded


def test_window_and_mel_banks_are_kaldis():
    n = torch.arange(400, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * n / 399)
    torch.testing.assert_close(fbank.povey_window(CFG).double(), hann.pow(0.85), rtol=0, atol=1e-6)
    banks = fbank.mel_banks(CFG)
    assert banks.shape == (257, 80) and banks.dtype == torch.float32
    assert (banks[-1] == 0).all()  # the Nyquist row
    ref, _ = ta_kaldi.get_mel_banks(80, 512, 16000.0, 20.0, -200.0, 100.0, -500.0, 1.0)  # [80, 256]
    torch.testing.assert_close(banks[:-1].t().double(), ref.double(), rtol=0, atol=1e-4)


def test_compute_fbank_equals_kaldi_item_by_item_and_counts_frames():
    wave, lengths = _waves([16000, 9000, 401])
    window, banks = fbank.povey_window(CFG), fbank.mel_banks(CFG)
    feats, frames = fbank.compute_fbank(wave, lengths, CFG, window, banks)
    assert feats.shape == (3, 98, 80) and feats.dtype == torch.float32
    assert frames.tolist() == [98, 54, 1]  # trunc((L - 400) / 160) + 1
    for i, n in enumerate(lengths.tolist()):
        ref = _kaldi(wave[i, :n], CFG)
        assert ref.shape[0] == frames[i]
        torch.testing.assert_close(feats[i, : frames[i]], ref, rtol=0, atol=2e-3)


def test_padded_bins_are_zero_columns_and_a_short_wave_gives_no_frame():
    padded = fbank.FbankConfig(**CFG.to_dict(), padded_num_mel_bins=96)
    wave, lengths = _waves([4000])
    window, banks = fbank.povey_window(CFG), fbank.mel_banks(CFG)
    plain, _ = fbank.compute_fbank(wave, lengths, CFG, window, banks)
    wide, _ = fbank.compute_fbank(wave, lengths, padded, window, banks)
    assert wide.shape == (1, 23, 96) and (wide[..., 80:] == 0).all()
    torch.testing.assert_close(wide[..., :80], plain)
    empty, none = fbank.compute_fbank(wave[:, :399], torch.tensor([399]), padded, window, banks)
    assert empty.shape == (1, 0, 96) and none.tolist() == [0]


def test_silence_is_floored_at_float32_eps_not_minus_infinity():
    feats, _ = fbank.compute_fbank(
        torch.zeros(1, 800), torch.tensor([800]), CFG, fbank.povey_window(CFG), fbank.mel_banks(CFG)
    )
    assert torch.allclose(feats, torch.full_like(feats, math.log(fbank.FLOAT32_EPS)))


@pytest.mark.parametrize(
    ("length", "official", "whole"),
    [(400, 1, 1), (559, 1, 1), (560, 2, 2), (300, 1, 0), (241, 1, 0), (240, 0, 0), (239, 0, 0), (0, -1, 0)],
)
def test_length_rules_official_truncation_and_whole_frames_only(length, official, whole):
    # official: trunc((L - 400) / 160) + 1 (truncates towards zero); whole frames: floor(...) + 1, at least 0
    lengths = torch.tensor([length])
    assert fbank.fbank_lengths(lengths, CFG).tolist() == [official]
    assert fbank.fbank_lengths(lengths, CFG, whole_frames_only=True).tolist() == [whole]


def test_dither_adds_noise_from_the_given_generator():
    noisy = fbank.FbankConfig(**(CFG.to_dict() | {"dither": 1.0}))
    wave, lengths = _waves([2000])
    window, banks = fbank.povey_window(CFG), fbank.mel_banks(CFG)
    a, b, c = (
        fbank.compute_fbank(wave, lengths, noisy, window, banks, generator=torch.Generator().manual_seed(s))[0]
        for s in (1, 1, 2)
    )
    clean, _ = fbank.compute_fbank(wave, lengths, CFG, window, banks)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
