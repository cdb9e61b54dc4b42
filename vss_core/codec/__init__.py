"""Speech codec: waveform <-> 4 codebooks per 60 ms frame (1 semantic + 3 acoustic).

The model speaks in LongCat-Audio-Codec tokens (16 kHz, 16.67 Hz, 1 semantic codebook of 8192 and
3 acoustic codebooks of 90). vss cannot run that codec yet, so the tiny model and the tests use
`TinyCodec`, the project's own small deterministic codec with the same interface: 16 kHz, hop 960
samples, 4 codes per frame, column 0 semantic. `load_codec(model_dir)` picks the codec a checkpoint
names in `audio_codec/config.yaml`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import yaml

from vss_core.errors import ModelError, bullet_list

CODEC_CONFIG = Path("audio_codec") / "config.yaml"
TINY_TYPE = "vss-tiny"
TINY_CONFIG = {
    "type": TINY_TYPE,
    "sample_rate": 16000,
    "hop_samples": 960,
    "codebook_sizes": [64, 16, 16, 16],
    "seed": 0,
}


@runtime_checkable
class SpeechCodec(Protocol):
    """What vss needs from a speech codec."""

    sample_rate: int
    frame_rate: float
    codebook_sizes: tuple[int, int, int, int]

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """[samples] float32 in [-1, 1] at sample_rate -> int64 [frames, 4] (column 0 semantic)."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 [frames, 4] -> float32 [frames * hop] waveform at sample_rate."""
        ...


class TinyCodec:
    """A small, deterministic, real codec with LongCat-Audio-Codec's interface.

    Each 960-sample frame (60 ms at 16 kHz) becomes 4 codes:
      0. semantic: the nearest entry (cosine) of a fixed, seeded codebook of normalised log
         band-energy vectors (16 bands of the frame's spectrum);
      1. loudness: frame RMS in dB, quantised over [-80, 0] dBFS;
      2. brightness: spectral centroid, quantised over [0, sample_rate/2];
      3. noisiness: spectral flatness, quantised over [0, 1].
    Decoding shapes white noise (seeded by the codes) with the codebook entry's band gains and scales
    it to the coded loudness: crude, but a real waveform with the coded envelope and spectrum.
    """

    bands = 16
    min_db = -80.0

    def __init__(
        self,
        sample_rate: int = 16000,
        hop_samples: int = 960,
        codebook_sizes: tuple[int, int, int, int] = (64, 16, 16, 16),
        seed: int = 0,
    ) -> None:
        problems = []
        if sample_rate <= 0:
            problems.append(f"sample_rate={sample_rate} must be positive")
        if hop_samples < 2 * self.bands:
            problems.append(f"hop_samples={hop_samples} must be at least {2 * self.bands}")
        if len(codebook_sizes) != 4 or any(int(s) < 2 for s in codebook_sizes):
            problems.append(f"codebook_sizes={list(codebook_sizes)} must be 4 sizes, each at least 2")
        if problems:
            raise ModelError(f"invalid TinyCodec settings:\n{bullet_list(problems)}")
        self.sample_rate = int(sample_rate)
        self.hop = int(hop_samples)
        self.frame_rate = self.sample_rate / self.hop
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        self.seed = int(seed)
        n_bins = self.hop // 2 + 1
        # Bands spaced evenly on a mel-like (log) scale above 60 Hz; bin 0 (DC) is left out.
        hz = torch.linspace(0, self.sample_rate / 2, n_bins)
        edges = torch.logspace(math.log10(60.0), math.log10(self.sample_rate / 2), self.bands + 1)
        band = torch.bucketize(hz, edges[1:-1])  # 0..bands-1 for every bin
        band[hz < 1.0] = -1
        self._band_of_bin = band
        self._band_matrix = torch.zeros(n_bins, self.bands)
        valid = band >= 0
        self._band_matrix[valid.nonzero().squeeze(1), band[valid]] = 1.0
        self._band_matrix /= self._band_matrix.sum(0).clamp(min=1.0)
        self._hz = hz
        gen = torch.Generator().manual_seed(self.seed)
        # Smooth random spectral shapes (cumulative sums of noise), normalised like the features.
        raw = torch.cumsum(torch.randn(self.codebook_sizes[0], self.bands, generator=gen), dim=1)
        self.codebook = self._normalise(raw)
        self._window = torch.hann_window(self.hop, periodic=True)

    # -- features --------------------------------------------------------------------------------

    @staticmethod
    def _normalise(v: torch.Tensor) -> torch.Tensor:
        v = v - v.mean(dim=-1, keepdim=True)
        return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-6)

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 1:
            raise ValueError(f"TinyCodec.encode wants a 1-D waveform [samples], got shape {tuple(wave.shape)}")
        n_frames = max(1, math.ceil(wave.numel() / self.hop))
        padded = torch.zeros(n_frames * self.hop, dtype=torch.float32)
        padded[: wave.numel()] = wave.to(torch.float32)
        return padded.view(n_frames, self.hop)

    @staticmethod
    def _quantise(x: torch.Tensor, low: float, high: float, size: int) -> torch.Tensor:
        q = torch.floor((x - low) / (high - low) * size)
        return q.clamp(0, size - 1).to(torch.int64)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """[samples] float32 in [-1, 1] at 16 kHz -> int64 [ceil(samples / 960), 4]."""
        frames = self._frames(torch.nan_to_num(wave.detach().cpu().float()).clamp(-1.0, 1.0))
        power = torch.fft.rfft(frames * self._window, dim=-1).abs().pow(2)  # [F, bins]
        band_energy = power @ self._band_matrix  # [F, bands]
        log_bands = torch.log(band_energy + 1e-10)
        semantic = (self._normalise(log_bands) @ self.codebook.T).argmax(dim=-1)
        rms = frames.pow(2).mean(dim=-1).sqrt()
        loud_db = 20 * torch.log10(rms + 1e-10)
        total = power.sum(dim=-1).clamp(min=1e-12)
        centroid = (power * self._hz).sum(dim=-1) / total
        spec = power[:, 1:] + 1e-12
        flatness = torch.exp(torch.log(spec).mean(dim=-1)) / spec.mean(dim=-1)
        silent = rms < 10 ** (self.min_db / 20)
        centroid = torch.where(silent, torch.zeros_like(centroid), centroid)
        flatness = torch.where(silent, torch.zeros_like(flatness), flatness)
        codes = torch.stack(
            [
                semantic,
                self._quantise(loud_db, self.min_db, 0.0, self.codebook_sizes[1]),
                self._quantise(centroid, 0.0, self.sample_rate / 2, self.codebook_sizes[2]),
                self._quantise(flatness, 0.0, 1.0, self.codebook_sizes[3]),
            ],
            dim=-1,
        )
        return codes.to(torch.int64)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 [frames, 4] -> float32 [frames * 960] waveform in [-1, 1]."""
        if codes.dim() != 2 or codes.shape[1] != 4:
            raise ValueError(f"TinyCodec.decode wants codes of shape [frames, 4], got {tuple(codes.shape)}")
        codes = codes.to(torch.int64).cpu()
        sizes = torch.tensor(self.codebook_sizes)
        codes = torch.minimum(codes.clamp(min=0), sizes - 1)
        n = codes.shape[0]
        gen = torch.Generator().manual_seed(self.seed + 1)
        noise = torch.randn(n, self.hop, generator=gen)
        spectrum = torch.fft.rfft(noise, dim=-1)
        # Codebook entries are unit-norm log shapes; scale them back to a few nats of dynamic range.
        band_gain = torch.exp(1.5 * self.codebook[codes[:, 0]] * math.sqrt(self.bands) / 2)  # [F, bands]
        bin_gain = torch.zeros(n, self._band_of_bin.numel())
        valid = self._band_of_bin >= 0
        bin_gain[:, valid] = band_gain[:, self._band_of_bin[valid]]
        frames = torch.fft.irfft(spectrum * bin_gain, n=self.hop, dim=-1)
        loud_db = self.min_db + (codes[:, 1].float() + 0.5) * (-self.min_db / self.codebook_sizes[1])
        target_rms = 10 ** (loud_db / 20)
        target_rms = torch.where(codes[:, 1] == 0, torch.zeros_like(target_rms), target_rms)
        frames = frames / frames.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp(min=1e-9) * target_rms[:, None]
        # Short linear fades at frame edges avoid clicks between frames of different loudness.
        fade = min(64, self.hop // 4)
        ramp = torch.linspace(0.0, 1.0, fade)
        frames[:, :fade] *= ramp
        frames[:, -fade:] *= ramp.flip(0)
        return frames.reshape(-1).clamp(-1.0, 1.0)


def write_tiny_codec_config(model_dir: Path) -> Path:
    """Write `model_dir/audio_codec/config.yaml` selecting TinyCodec; returns the file."""
    path = Path(model_dir) / CODEC_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(TINY_CONFIG, sort_keys=False))
    return path


def load_codec(model_dir: Path) -> SpeechCodec:
    """The speech codec a checkpoint names in `model_dir/audio_codec/config.yaml`.

    Raises:
        ModelError: the file is missing or unreadable, names a codec vss cannot run (the real
            LongCat-Audio-Codec), or has invalid TinyCodec settings.
    """
    path = Path(model_dir) / CODEC_CONFIG
    if not path.is_file():
        raise ModelError(
            f"codec config {path} does not exist: the checkpoint at {model_dir} lacks audio_codec/config.yaml. "
            "Check model.source points at a complete LongCat-Flash-Omni checkpoint (or the tiny one vss writes)."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"codec config {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != TINY_TYPE:
        raise ModelError(
            f"codec config {path} does not describe vss's tiny codec (type: {TINY_TYPE}); it looks like the "
            "real LongCat-Audio-Codec, which vss cannot run yet. Train with a checkpoint whose "
            f"audio_codec/config.yaml has type: {TINY_TYPE}, or prepare codec tokens with LongCat-Audio-Codec yourself."
        )
    problems = []
    for key in ("sample_rate", "hop_samples", "codebook_sizes", "seed"):
        if key not in raw:
            problems.append(f"{key}: missing (expected e.g. {key}: {TINY_CONFIG[key]})")
    sizes = raw.get("codebook_sizes")
    if sizes is not None and (not isinstance(sizes, list) or len(sizes) != 4 or not all(isinstance(s, int) for s in sizes)):
        problems.append(f"codebook_sizes: must be a list of 4 integers (got {sizes!r})")
    for key in ("sample_rate", "hop_samples", "seed"):
        if key in raw and not isinstance(raw[key], int):
            problems.append(f"{key}: must be an integer (got {raw[key]!r})")
    if problems:
        raise ModelError(f"codec config {path} is invalid:\n{bullet_list(problems)}")
    try:
        return TinyCodec(raw["sample_rate"], raw["hop_samples"], tuple(raw["codebook_sizes"]), raw["seed"])
    except ModelError as exc:
        raise ModelError(f"codec config {path}: {exc}") from None
