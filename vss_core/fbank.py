"""The batched Kaldi-style log-mel filterbank of both LongCat audio front ends, vss's own code.

Both official repos carry the same `Fbank` module (an nn.Module "modified from
torchaudio/compliance/kaldi.py": batched, filters precomputed, unused options removed):

- meituan-longcat/LongCat-Flash-Omni `data/audio_feature.py` `Fbank`: the audio input features
  (`vss_core.model.audio.FeatureExtractor`).
- meituan-longcat/LongCat-Audio-Codec `semantic_tokenizer_general/feature_extractor.py` `Fbank`: the
  semantic tokenizer's features (`vss_core.codec.semantic.Fbank`).

The two are the same math, line for line: the config keys (dither, frame_length, frame_shift,
preemphasis, freq, high_freq, low_freq, num_mel_bins, optional padded_num_mel_bins), the sizes
`int(freq * ms / 1000)` and `next_power_of_2`, the window hann(periodic=False)^0.85, the mel filters
on 1127 ln(1 + f/700) with a negative high_freq counted down from Nyquist, framing by `as_strided`,
optional Gaussian dither, per-frame preemphasis with the first sample replicated, zero padding to the
FFT size, |rfft|^2, `log(max(x @ mel_banks, float32 eps))`, zero columns up to padded_num_mel_bins,
and the frame count trunc((L - window) / hop) + 1; input shorter than one window gives no frame and
zero lengths. The only difference: the Omni forward runs under `torch.cuda.amp.autocast(enabled=False)`
and the codec's does not, which is the caller's business (vss's Omni extractor turns autocast off
around its whole pipeline).

This module owns the config, its derived sizes, the window and filter builders and the computation
(`compute_fbank`). It registers no buffers: each caller keeps its own nn.Module and its own buffer
layout (persistent `fbank.{window, mel_banks, eps}` in the codec checkpoint, non-persistent in Omni)
and passes the tensors in. Deliberate vss choices, the same for both callers: an empty result has the
padded width (`feature_dim`; the official code gives `num_mel_bins` there), and framing uses `unfold`
(the same frames as the official `as_strided`). One per-caller choice is a parameter:
`whole_frames_only` (the Omni extractor's frame count, see `fbank_lengths`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
"""The floor under the mel energies before the log (official `Fbank.eps`)."""

# Kaldi's mel scale, official MEL_SCALE_FACTOR and FREQ_SCALE_FACTOR (Omni data/audio_feature.py).
MEL_FACTOR = 1127.0
MEL_BREAK_HZ = 700.0


def next_power_of_2(x: int) -> int:
    """Official `next_power_of_2`: the FFT size for a window of `x` samples."""
    return 1 if x == 0 else 2 ** (x - 1).bit_length()


@dataclass(frozen=True)
class FbankConfig:
    """The official `Fbank` config (`conf` of `Fbank.__init__`): times in ms, frequencies in Hz.

    Omni reads it from section `fbank` of `preprocessor_config.json`, the codec from `feature.fbank` of
    `semantic_tokenizer.infer.yaml`; each caller validates it with its own messages (file and key).
    """

    dither: float
    frame_length: float
    frame_shift: float
    preemphasis: float
    freq: int
    high_freq: float
    low_freq: float
    num_mel_bins: int
    padded_num_mel_bins: int | None = None

    @property
    def window_size(self) -> int:
        """Samples per analysis window: official `int(freq * frame_length / 1000)` (`Fbank.window_size`)."""
        return int(self.freq * self.frame_length / 1000)

    @property
    def window_shift(self) -> int:
        """Samples between windows: official `int(freq * frame_shift / 1000)` (`Fbank.window_shift`)."""
        return int(self.freq * self.frame_shift / 1000)

    @property
    def padded_window_size(self) -> int:
        """FFT size: the window zero-padded to the next power of two (`Fbank.padded_window_size`)."""
        return next_power_of_2(self.window_size)

    @property
    def resolved_high_freq(self) -> float:
        """Upper mel edge in Hz: a negative `high_freq` counts down from Nyquist, anything else is in Hz
        (so 0 means 0 Hz, not Kaldi's "Nyquist")."""
        return self.high_freq + self.freq / 2 if self.high_freq < 0 else self.high_freq

    @property
    def feature_dim(self) -> int:
        """Width of one frame: `padded_num_mel_bins` (zero columns appended) or `num_mel_bins`."""
        return self.padded_num_mel_bins if self.padded_num_mel_bins is not None else self.num_mel_bins

    def to_dict(self) -> dict[str, float | int]:
        """The official `conf` keys, `padded_num_mel_bins` only when set (as the official `in conf` test reads it)."""
        out: dict[str, float | int] = {
            "dither": self.dither,
            "frame_length": self.frame_length,
            "frame_shift": self.frame_shift,
            "preemphasis": self.preemphasis,
            "freq": self.freq,
            "high_freq": self.high_freq,
            "low_freq": self.low_freq,
            "num_mel_bins": self.num_mel_bins,
        }
        if self.padded_num_mel_bins is not None:
            out["padded_num_mel_bins"] = self.padded_num_mel_bins
        return out


def povey_window(cfg: FbankConfig) -> torch.Tensor:
    """The official window: symmetric Hann to the power 0.85 (Kaldi's "povey"), float32 [window_size]."""
    return torch.hann_window(cfg.window_size, periodic=False, dtype=torch.float32).pow(0.85)


def _mel(freq: float) -> float:
    return MEL_FACTOR * math.log(1.0 + freq / MEL_BREAK_HZ)


def mel_banks(cfg: FbankConfig) -> torch.Tensor:
    """Triangular mel filters [padded_window_size // 2 + 1, num_mel_bins], float32, Nyquist row zero.

    Official `Fbank.__init__`: num_mel_bins triangles evenly spaced in mel between low_freq and the
    resolved high_freq, evaluated at the FFT bin frequencies k * freq / padded_window_size for
    k < padded_window_size / 2. Computed in float32 in the official order of operations, so the filters
    are the official ones bit for bit (a float64 build differs by ~1e-5).
    """
    f32 = torch.float32
    lo = _mel(float(cfg.low_freq))
    hi = _mel(float(cfg.resolved_high_freq))
    step = (hi - lo) / (cfg.num_mel_bins + 1)
    b = torch.arange(cfg.num_mel_bins, dtype=f32).unsqueeze(1)
    left, center, right = lo + b * step, lo + (b + 1.0) * step, lo + (b + 2.0) * step
    hz = (cfg.freq / cfg.padded_window_size) * torch.arange(cfg.padded_window_size // 2, dtype=f32)
    m = (MEL_FACTOR * (1.0 + hz / MEL_BREAK_HZ).log()).unsqueeze(0)
    up = (m - left) / (center - left)
    down = (right - m) / (right - center)
    tri = torch.maximum(torch.zeros(1, dtype=f32), torch.minimum(up, down))
    return F.pad(tri, (0, 1)).t().contiguous()


def fbank_lengths(sample_lengths: torch.Tensor, cfg: FbankConfig, *, whole_frames_only: bool = False) -> torch.Tensor:
    """Frames per waveform of `sample_lengths` valid samples.

    Default, the official rule of both `Fbank.forward`s: trunc((L - window) / hop) + 1. It truncates
    towards zero, so window - hop < L < window counts one frame although it runs into the padding, and
    shorter lengths can count 0 or less.
    `whole_frames_only=True` (vss's Omni extractor): floor((L - window) / hop) + 1, at least 0: only
    frames wholly inside the valid samples; the same as the official rule for every L >= window.
    """
    W, H = cfg.window_size, cfg.window_shift
    if whole_frames_only:
        return (torch.div(sample_lengths - W, H, rounding_mode="floor") + 1).clamp(min=0)
    return torch.div(sample_lengths - W, H, rounding_mode="trunc") + 1


def compute_fbank(
    wave: torch.Tensor,
    lengths: torch.Tensor,
    cfg: FbankConfig,
    window: torch.Tensor,
    banks: torch.Tensor,
    eps: torch.Tensor | float = FLOAT32_EPS,
    *,
    generator: torch.Generator | None = None,
    whole_frames_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official `Fbank.forward`: [B, L] int16-range samples, [B] valid lengths
    -> ([B, T, feature_dim] log mel energies in `wave`'s dtype, [B] frames by `fbank_lengths`).

    T = 1 + (L - window) // hop from the padded length L. Frames without DC removal; dither > 0 adds
    Gaussian noise per sample (from `generator`, or torch's global RNG as the official code); per-frame
    preemphasis (x[0] replicated before the frame); `window`; zero pad to the FFT size; |rfft|^2;
    `banks`; log(max(., eps)); zero columns up to `feature_dim`. `window`, `banks` and `eps` are the
    caller's buffers (`povey_window`, `mel_banks`, `FLOAT32_EPS`, or values loaded from a checkpoint),
    cast to `wave`'s dtype. A wave shorter than one window gives T = 0 and zero lengths.
    """
    W, H = cfg.window_size, cfg.window_shift
    B, L = wave.shape
    if L < W:
        return wave.new_zeros(B, 0, cfg.feature_dim), torch.zeros_like(lengths)
    frames = wave.unfold(1, W, H)  # [B, 1 + (L - W) // H, W]
    if cfg.dither != 0.0:
        noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
        frames = frames + noise * cfg.dither
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-pad by one sample
    frames = (frames - cfg.preemphasis * previous) * window.to(frames.dtype)
    power = torch.fft.rfft(frames, n=cfg.padded_window_size).abs().pow(2)
    floor = torch.as_tensor(eps, dtype=power.dtype, device=power.device)
    energy = torch.maximum(power @ banks.to(power.dtype), floor).log()
    if cfg.feature_dim > cfg.num_mel_bins:
        energy = F.pad(energy, (0, cfg.feature_dim - cfg.num_mel_bins))
    return energy, fbank_lengths(lengths, cfg, whole_frames_only=whole_frames_only)
