"""The eval metrics against independent re-computations: word error rate by hand, the mel-cepstral
distance against a direct formula on a known alignment, DTW on sequences with a known best path."""

import math

import numpy as np
import pytest

from vss_core import metrics


def test_word_error_rate_counts_edits_over_reference_words():
    # "the cat sat" -> "the bat sat down": 1 substitution + 1 insertion over 3 words
    assert metrics.word_error_rate("The bat sat, down!", "the cat sat") == pytest.approx(2 / 3)
    assert metrics.word_error_rate("", "two words") == 1.0
    assert metrics.word_error_rate("anything", "  ") is None


def test_dtw_finds_the_repeated_frame_path():
    a = np.array([[0.0], [1.0], [2.0]])
    b = np.array([[0.0], [1.0], [1.0], [2.0]])  # frame 1 of a held for two frames
    assert metrics.dtw_path(a, b) == [(0, 0), (1, 1), (1, 2), (2, 3)]


def _tone(freq, seconds=1.0, rate=16000, delay=0.0):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.concatenate([np.zeros(int(delay * rate)), wave])


def test_mcd_is_zero_for_the_same_wave_and_alignment_absorbs_a_delay():
    a = _tone(300) + 0.01 * np.random.default_rng(0).standard_normal(16000)
    assert metrics.mel_cepstral_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    other = _tone(900) + 0.01 * np.random.default_rng(1).standard_normal(16000)
    assert metrics.mel_cepstral_distance(a, other) > 5 * max(metrics.mel_cepstral_distance(a, np.roll(a, 80)), 1e-3)
    assert metrics.mel_cepstral_distance(a[:100], a) is None  # shorter than one window


def test_mcd_matches_the_formula_on_the_diagonal():
    """Two waves of equal length whose best path is the diagonal: MCD = 10/ln10 * mean sqrt(2 sum diff^2)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal(8000) * 0.1
    b = a * 0.5  # same shape, 6 dB down: only c0 would differ, and c0 is left out
    ca, cb = metrics.mel_cepstrum(a), metrics.mel_cepstrum(b)
    direct = 10 / math.log(10) * np.mean(np.sqrt(2 * ((ca - cb) ** 2).sum(-1)))
    assert metrics.mel_cepstral_distance(a, b) == pytest.approx(direct, abs=1e-6)
    assert direct < 1e-6  # scaling moves only c0


def test_every_metric_says_how_it_is_computed():
    for key in ("loss", "eos_rate", "text_wer", "mcd", "asr_wer", "speaker_similarity"):
        assert len(metrics.METHODS[key]) > 20
