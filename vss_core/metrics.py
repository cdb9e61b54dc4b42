"""Scores of a generated answer against the sample's target, each saying how it is computed (`METHODS`).

- word error rate: `jiwer.wer` on normalised text (lower case, punctuation removed, spaces collapsed);
- mel-cepstral distance: 24 mel-cepstral coefficients c1..c24 (c0, the energy, left out) of both
  waveforms at the codec's 16 kHz (25 ms windows, 10 ms hop, 80 mel bands, natural log of the amplitude, orthonormal DCT-II),
  aligned by dynamic time warping on the Euclidean distance, then the usual
  MCD = 10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2) averaged over the aligned path, in dB.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

METHODS = {
    "loss": "cross-entropy of the held-out sample's answer under teacher forcing, weighted as in training "
    "(text x training.text_loss_weight + the 4 codebooks x training.codebook_loss_weights)",
    "eos_rate": "share of generations that end with the codec EOS after the text end, before the length cap "
    "(eval.max_seconds, default data.audio_seconds)",
    "text_wer": "word error rate of the generated text stream against out.txt (jiwer.wer on lower-cased text "
    "without punctuation); samples without out.txt are left out",
    "mcd": "mel-cepstral distance in dB between the decoded answer and out.wav: c1..c24 of a log-amplitude mel (80 bands, "
    "25 ms / 10 ms) DCT, aligned by DTW; lower is closer",
    "asr_wer": "word error rate of eval.asr_model's transcript of the decoded answer against out.txt",
    "speaker_similarity": "not computed: no speaker-embedding model that ships its weights inside a pip package "
    "is installable here",
}

MCD_COEFFS = 24


def normalise_text(text: str) -> str:
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(text.split())


def word_error_rate(hypothesis: str, reference: str) -> float | None:
    """jiwer's WER of the normalised texts; None when the reference has no words."""
    import jiwer

    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        return None
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


def mel_cepstrum(wave: np.ndarray, sample_rate: int = 16000, coeffs: int = MCD_COEFFS) -> np.ndarray:
    """[frames, coeffs]: c1..c_coeffs of the log-amplitude mel spectrum (orthonormal DCT-II), c0 dropped."""
    import torchaudio

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    n_fft, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    if x.numel() < n_fft:
        return np.zeros((0, coeffs), dtype=np.float64)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate, n_fft=n_fft, hop_length=hop, n_mels=80, center=False, power=2.0
    )(x)
    logmel = 0.5 * torch.log(mel.clamp(min=1e-10)).T.double()  # [frames, 80]: log amplitude, as a cepstrum is
    n = logmel.shape[1]
    k = torch.arange(n, dtype=torch.float64)
    dct = torch.cos(math.pi / n * (k[None, :] + 0.5) * k[:, None]) * math.sqrt(2.0 / n)
    dct[0] /= math.sqrt(2.0)
    return (logmel @ dct.T)[:, 1 : coeffs + 1].numpy()


def dtw_path(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """The minimum-cost monotonic alignment of the rows of a and b (Euclidean frame distance)."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row, prev = acc[i], acc[i - 1]
        for j in range(1, m + 1):
            row[j] = cost[i - 1, j - 1] + min(prev[j], prev[j - 1], row[j - 1])
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return path[::-1]


def mel_cepstral_distance(generated: np.ndarray, target: np.ndarray, sample_rate: int = 16000) -> float | None:
    """MCD in dB between two waveforms after DTW alignment; None when either is shorter than one window."""
    a, b = mel_cepstrum(generated, sample_rate), mel_cepstrum(target, sample_rate)
    if not len(a) or not len(b):
        return None
    rows, cols = zip(*dtw_path(a, b))
    per_frame = np.sqrt(2.0 * ((a[list(rows)] - b[list(cols)]) ** 2).sum(-1))
    return float(10.0 / math.log(10.0) * per_frame.mean())
