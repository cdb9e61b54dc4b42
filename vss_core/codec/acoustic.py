"""LongCat-Audio-Codec's acoustic encoder: 16 kHz waveform -> 3 acoustic codes per 60 ms frame.

vss's own implementation of the acoustic path of the official
`networks/semantic_codec/LongCatAudioCodec_model.py: LongCatAudioCodecEncoder`
(`preprocess`, `get_acoustic_codes`, `get_acoustic_codes_with_lengths`), built from the DAC-style
blocks of `networks/modules/model.py` (`ResidualUnit`, `EncoderBlock`, `Encoder`) and
`networks/modules/layers.py` (`Snake1d`), quantized by `vss_core.codec.quantizer`. The semantic
tokenizer that the official encoder (and its checkpoint, under `semantic_tokenizer.`) also holds is
`vss_core.codec.semantic`'s business; this module owns the keys under `CHECKPOINT_PREFIXES`.

Shapes for the released codec (configs/LongCatAudioCodec_encoder.yaml): channels 64 -> 128 -> 256
-> 512 -> 1024 through strides [4, 5, 6, 8] (hop 960 samples = 60 ms at 16 kHz), latent 1024,
3 quantizer stages of two 90-entry codebooks of dim 8, codes a*90+b in [0, 8100).

The module also holds what the decoder module shares: `Snake1d`, `ResidualUnit`, the yaml-section
reader that collects every problem, and the checked state-dict loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vss_core.codec.quantizer import GroupResidualVectorQuantize, Quantized, WNConv1d
from vss_core.errors import ModelError, bullet_list

SAMPLE_RATE = 16000
"""The acoustic encoder's (and the LLM's) input rate; the official `preprocess` resamples to it."""
HOP_SAMPLES = 960
"""Samples per frame at 16 kHz (60 ms, 16.67 frames/s): the product of the encoder strides."""
MAX_SECONDS = 30.0
"""Official README, Limitations: input audio must be split into segments of at most 30 s."""
MAX_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)

OFFICIAL_ENCODER_YAML: dict[str, Any] = {
    "input_sample_rate": 16000,
    "codec_dimension": 1024,
    "codec_codebook_size": 90,
    "codec_enc_ratios": [4, 5, 6, 8],
    "encoder_dim": 64,
    "codec_codebook_search_dim": 8,
    "codec_codebooks": 3,
    "semantic_tokenizer_type": "LongCatAudioCodec_semantic_tokenizer",
    "semantic_token_nums": 8192,
    "semantic_dim": 1280,
    "ckpt_path": "ckpts/LongCatAudioCodec_encoder.pt",
}
"""`codec_config` of the official configs/LongCatAudioCodec_encoder.yaml (GitHub repo, not the Hub)."""

TINY_ENCODER_YAML: dict[str, Any] = {
    "input_sample_rate": 16000,
    "codec_dimension": 16,
    "codec_codebook_size": 5,
    "codec_enc_ratios": [4, 5, 6, 8],
    "encoder_dim": 4,
    "codec_codebook_search_dim": 4,
    "codec_codebooks": 3,
    "semantic_token_nums": 64,
    "semantic_dim": 8,
}
"""Tiny sizes for tests: same strides (hop 960 at 16 kHz), K = 5 so codes lie in [0, 25)."""

CHECKPOINT_PREFIXES: tuple[str, ...] = ("encoder.", "acoustic_quantizer.")
"""Key prefixes of LongCatAudioCodec_encoder.pt that belong to the acoustic encoder."""


# -- yaml sections ---------------------------------------------------------------------------------

_Check = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive_int(v: Any) -> str | None:
    """None if `v` is a positive integer, else what is wrong."""
    return None if _is_int(v) and v > 0 else f"must be a positive integer (got {v!r})"


def positive_int_list(v: Any) -> str | None:
    """None if `v` is a non-empty list of positive integers, else what is wrong."""
    if isinstance(v, (list, tuple)) and v and all(_is_int(x) and x > 0 for x in v):
        return None
    return f"must be a non-empty list of positive integers (got {v!r})"


def positive_int_or_list(v: Any) -> str | None:
    """None if `v` is a positive integer or a non-empty list of them."""
    if positive_int(v) is None or positive_int_list(v) is None:
        return None
    return f"must be a positive integer or a list of positive integers (got {v!r})"


def string(v: Any) -> str | None:
    """None if `v` is a non-empty string."""
    return None if isinstance(v, str) and v else f"must be a non-empty string (got {v!r})"


def read_section(
    raw: Any,
    where: str,
    required: Mapping[str, _Check],
    optional: Mapping[str, _Check],
    official: Mapping[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """Check one official yaml `codec_config` section; returns (known values, problems).

    `raw` is the section itself; a whole document `{"codec_config": {...}}` is accepted too.
    Problems name the key as it is written in the file (`codec_config.<key>`); the caller adds its
    own cross-key checks and raises one `ModelError` naming `where` for all of them.
    """
    if isinstance(raw, Mapping) and set(raw) == {"codec_config"}:
        raw = raw["codec_config"]
    if not isinstance(raw, Mapping):
        raise ModelError(
            f"codec config {where}: codec_config must be a mapping of keys to values (got {type(raw).__name__}); "
            "see the official configs/*.yaml of LongCat-Audio-Codec"
        )
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, check in {**required, **optional}.items():
        if key not in raw:
            if key in required:
                problems.append(f"codec_config.{key}: missing (the official value is {official.get(key)!r})")
            continue
        error = check(raw[key])
        if error:
            problems.append(f"codec_config.{key}: {error}")
        else:
            value = raw[key]
            values[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    for key in raw:
        if key not in required and key not in optional:
            known = ", ".join(list(required) + list(optional))
            problems.append(f"codec_config.{key}: unknown key (known keys: {known})")
    return values, problems


def raise_problems(where: str, what: str, problems: list[str]) -> None:
    """Raise one `ModelError` listing every problem of the config at `where`, if there are any."""
    if problems:
        raise ModelError(f"codec config {where} is not a valid {what} config:\n{bullet_list(problems)}")


def to_plain(value: Any) -> Any:
    """Tuples back to lists for yaml."""
    return list(value) if isinstance(value, tuple) else value


# -- checkpoints -----------------------------------------------------------------------------------


def quantizer_problems(values: Mapping[str, Any]) -> list[str]:
    """The quantizer's own rules over a `codec_config` section (encoder and decoder configs share them)."""
    problems = []
    dim = values.get("codec_dimension")
    if dim is not None and dim % 2:
        problems.append(f"codec_config.codec_dimension: {dim} must be even (each codebook maps to half of it)")
    search = values.get("codec_codebook_search_dim")
    n = values.get("codec_codebooks")
    if isinstance(search, tuple) and n is not None and len(search) != n:
        problems.append(f"codec_config.codec_codebook_search_dim: lists {len(search)} sizes for codec_codebooks={n}")
    return problems


def section_to_yaml(config: Any, keys: Mapping[str, Any]) -> dict[str, Any]:
    """A config's `codec_config` section in the official key order, unset optionals left out."""
    return {key: to_plain(getattr(config, key)) for key in keys if getattr(config, key) is not None}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict saved in an official `.pt` file (tensors only, loaded on the CPU).

    Raises:
        ModelError: the file is missing, unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"codec checkpoint {path} does not exist; download it from the Hub repo "
            "meituan-longcat/LongCat-Audio-Codec (ckpts/) or fix the path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, RuntimeError)
        raise ModelError(f"codec checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"codec checkpoint {path} is not a state dict (a mapping of parameter names to tensors)")
    return dict(state)


def _show(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    where: str,
    prefixes: tuple[str, ...] | None,
) -> list[str]:
    """Load the keys of `state_dict` that belong to `module`, after checking them all.

    With `prefixes`, the keys starting with one of them are the module's and every other key is left
    alone and returned (sorted); without, every key is the module's. Missing keys, stray keys (the
    module's but unknown to it) and shape mismatches are collected and raised together.

    Raises:
        ModelError: naming `where` and every offending key.
    """
    expected = module.state_dict()
    own = {k: v for k, v in state_dict.items() if prefixes is None or k.startswith(prefixes)}
    others = sorted(k for k in state_dict if k not in own)
    missing = sorted(set(expected) - set(own))
    stray = sorted(set(own) - set(expected))
    shapes = [
        f"{k}: expected shape {tuple(expected[k].shape)}, checkpoint has {tuple(v.shape)}"
        for k, v in sorted(own.items())
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_show(missing)}")
    if stray:
        problems.append(f"{len(stray)} stray key(s) this module does not have: {_show(stray)}")
    problems += shapes
    if problems:
        raise ModelError(
            f"codec checkpoint {where} does not match vss's {type(module).__name__} for this config "
            f"(wrong file or wrong config?):\n{bullet_list(problems)}"
        )
    module.load_state_dict(own, strict=True)
    return others


# -- building blocks (networks/modules/{layers,model}.py) --------------------------------------------


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake activation as `layers.py: snake` defines it: x + 1/(alpha + 1e-9) * sin(alpha * x)^2."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class Snake1d(nn.Module):
    """Snake with a learned per-channel `alpha` [1, C, 1]; follows `layers.py: Snake1d`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        return snake(x, self.alpha)


def length_mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, 1, T] mask in x's dtype: 1 for t < lengths[b]; follows `model.py: get_mask_by_size`."""
    t = torch.arange(x.shape[-1], device=lengths.device)
    return (t[None, :] < lengths[:, None]).to(dtype=x.dtype, device=x.device).unsqueeze(1)


class ResidualUnit(nn.Module):
    """Snake -> conv k7 (dilated, same length) -> Snake -> conv k1, plus the input.

    Follows `model.py: ResidualUnit` (submodule `block`: 0 Snake1d, 1 WNConv1d, 2 Snake1d, 3 WNConv1d),
    including its masking when frame lengths are given (`forward(x, batch_sizes)`): the input and
    every intermediate are zeroed past each item's length.
    """

    def __init__(self, dim: int, dilation: int = 1) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]; with `lengths` [B], positions t >= lengths[b] are masked as officially."""
        mask = None if lengths is None else length_mask(x, lengths)
        y = x
        for item in self.block:
            y = item(y if mask is None else y * mask)
        if mask is not None:
            x, y = x * mask, y * mask
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return x + y


def downsampled_lengths(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """The official length rule of one encoder block (`EncoderBlock.forward_with_lens`).

    Even stride: lengths // stride; odd stride: (lengths + 1) // stride.
    """
    return lengths // stride if stride % 2 == 0 else (lengths + 1) // stride


class EncoderBlock(nn.Module):
    """Three residual units at dim/2, Snake, strided conv to dim; follows `model.py: EncoderBlock`.

    Submodule `block`: 0-2 ResidualUnit (dilations 1, 3, 9), 3 Snake1d, 4 WNConv1d(kernel 2*stride,
    padding ceil(stride/2)).
    """

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, dilation=1),
            ResidualUnit(dim // 2, dilation=3),
            ResidualUnit(dim // 2, dilation=9),
            Snake1d(dim // 2),
            WNConv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, dim/2, T] -> ([B, dim, T/stride], downsampled lengths or None)."""
        if lengths is None:
            return self.block(x), None
        mask = length_mask(x, lengths)
        for item in self.block:
            x = x * mask
            x = item(x, lengths) if isinstance(item, ResidualUnit) else item(x)
        lengths = downsampled_lengths(lengths, self.stride)
        return x * length_mask(x, lengths), lengths


class ConvEncoder(nn.Module):
    """The DAC-style convolutional encoder; follows `model.py: Encoder` (`forward`, `forward_with_lens`).

    Submodule `block`: 0 WNConv1d(1, d, 7), 1..n EncoderBlock (channels doubling per stride),
    n+1 Snake1d, n+2 WNConv1d(d * 2**n, latent, 3).
    """

    def __init__(self, d_model: int, strides: Sequence[int], d_latent: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride=stride))
        layers += [Snake1d(d_model), WNConv1d(d_model, d_latent, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, 1, L] -> ([B, latent, L / hop], frame lengths or None).

        Without `lengths` this is the official `Encoder.forward`; with them, `forward_with_lens`:
        the activations are zeroed past each sample's length before every layer and the lengths
        follow `downsampled_lengths` through the strides.
        """
        for item in self.block:
            if lengths is not None:
                x = x * length_mask(x, lengths)
            if isinstance(item, EncoderBlock):
                x, lengths = item(x, lengths)
            else:
                x = item(x)
        return (x, None) if lengths is None else (x * length_mask(x, lengths), lengths)


# -- the acoustic encoder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AcousticEncoderConfig:
    """The official encoder yaml's `codec_config`, keys as written there (configs/LongCatAudioCodec_encoder.yaml).

    The acoustic encoder uses the first seven fields; the semantic ones and `ckpt_path` are kept
    (optional) so that `to_yaml()` gives the section back.
    """

    input_sample_rate: int
    codec_dimension: int
    codec_codebook_size: int
    codec_enc_ratios: tuple[int, ...]
    encoder_dim: int
    codec_codebook_search_dim: int | tuple[int, ...]
    codec_codebooks: int
    semantic_tokenizer_type: str | None = None
    semantic_token_nums: int | None = None
    semantic_dim: int | None = None
    ckpt_path: str | None = None

    _REQUIRED = {
        "input_sample_rate": positive_int,
        "codec_dimension": positive_int,
        "codec_codebook_size": positive_int,
        "codec_enc_ratios": positive_int_list,
        "encoder_dim": positive_int,
        "codec_codebook_search_dim": positive_int_or_list,
        "codec_codebooks": positive_int,
    }
    _OPTIONAL = {
        "semantic_tokenizer_type": string,
        "semantic_token_nums": positive_int,
        "semantic_dim": positive_int,
        "ckpt_path": string,
    }

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any], where: str) -> AcousticEncoderConfig:
        """Read and check an official `codec_config` section; `where` names its file in errors.

        Raises:
            ModelError: listing every problem, each with its key (`codec_config.<key>`) and `where`.
        """
        values, problems = read_section(raw, where, cls._REQUIRED, cls._OPTIONAL, OFFICIAL_ENCODER_YAML)
        rate = values.get("input_sample_rate")
        if rate is not None and rate != SAMPLE_RATE:
            problems.append(
                f"codec_config.input_sample_rate: {rate} is not supported; the acoustic encoder runs at "
                f"{SAMPLE_RATE} Hz (resample the audio instead)"
            )
        ratios = values.get("codec_enc_ratios")
        if ratios is not None and math.prod(ratios) != HOP_SAMPLES:
            problems.append(
                f"codec_config.codec_enc_ratios: {list(ratios)} multiply to {math.prod(ratios)}, but frames are "
                f"{HOP_SAMPLES} samples (60 ms at 16 kHz); the official value is [4, 5, 6, 8]"
            )
        problems += quantizer_problems(values)
        raise_problems(where, "LongCat-Audio-Codec encoder", problems)
        return cls(**values)

    def to_yaml(self) -> dict[str, Any]:
        """The `codec_config` section (plain lists and scalars, official key order; unset optionals left out)."""
        return section_to_yaml(self, OFFICIAL_ENCODER_YAML)

    @classmethod
    def official(cls) -> AcousticEncoderConfig:
        """The released encoder (configs/LongCatAudioCodec_encoder.yaml)."""
        return cls.from_yaml(OFFICIAL_ENCODER_YAML, "OFFICIAL_ENCODER_YAML")

    @classmethod
    def tiny(cls) -> AcousticEncoderConfig:
        """Tiny sizes for tests (`TINY_ENCODER_YAML`)."""
        return cls.from_yaml(TINY_ENCODER_YAML, "TINY_ENCODER_YAML")

    @property
    def hop_length(self) -> int:
        """Samples per frame (960)."""
        return math.prod(self.codec_enc_ratios)


class AcousticEncoder(nn.Module):
    """The acoustic path of `LongCatAudioCodecEncoder`: waveform -> latent -> 3 codes a*K+b per frame.

    Submodules (official names, so the official checkpoint's keys load as they are):
    `encoder` (`ConvEncoder`) and `acoustic_quantizer` (`GroupResidualVectorQuantize`).
    """

    CHECKPOINT_PREFIXES = CHECKPOINT_PREFIXES

    def __init__(self, config: AcousticEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.hop_length = config.hop_length
        self.sample_rate = config.input_sample_rate
        self.encoder = ConvEncoder(config.encoder_dim, config.codec_enc_ratios, config.codec_dimension)
        self.acoustic_quantizer = GroupResidualVectorQuantize(
            input_dim=config.codec_dimension,
            n_codebooks=config.codec_codebooks,
            codebook_size=config.codec_codebook_size,
            codebook_dim=config.codec_codebook_search_dim,
        )

    @property
    def codebook_size(self) -> int:
        """K: entries per sub-codebook (90); the LLM sees codes in [0, K*K)."""
        return self.config.codec_codebook_size

    def preprocess(self, wave: torch.Tensor) -> torch.Tensor:
        """Right-pad [B, L] with zeros to a multiple of the hop; follows `LongCatAudioCodecEncoder.preprocess`.

        Resampling is the caller's: the input must already be 16 kHz.
        """
        pad = math.ceil(wave.shape[-1] / self.hop_length) * self.hop_length - wave.shape[-1]
        return nn.functional.pad(wave, (0, pad))

    def code_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of valid codes for `lengths` samples: the official rule through every stride."""
        for stride in self.config.codec_enc_ratios:
            lengths = downsampled_lengths(lengths, stride)
        return lengths

    def encode_latents(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] 16 kHz waveform -> (latent [B, D, F] before quantization, frame lengths [B]).

        Pads to a multiple of the hop (F = ceil(L / 960)). Without `lengths` the whole padded
        signal is encoded as by the official `forward` (all F frames valid); with `lengths` [B]
        (valid samples per row) it is the official `get_acoustic_codes_with_lengths` path: masked
        layers and frame lengths by the official rule (which can be below ceil(length / 960)).
        """
        wave, lengths = self._check_input(wave, lengths)
        x = self.preprocess(wave).unsqueeze(1)
        z, frame_lengths = self.encoder(x, lengths)
        if frame_lengths is None:
            frame_lengths = torch.full((z.shape[0],), z.shape[-1], dtype=torch.int64, device=z.device)
        return z, frame_lengths.to(torch.int64)

    def quantize(self, z: torch.Tensor, n_codebooks: int | None = None) -> Quantized:
        """The official eval-mode quantizer on a latent [B, D, F] (codes in the official [B, N, F] layout)."""
        return self.acoustic_quantizer.encode(z, n_codebooks)

    @torch.no_grad()
    def encode(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None, n_codebooks: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] 16 kHz float waveform (at most 30 s per row) -> (codes [B, F, N] int64, code_lengths [B]).

        F = ceil(L / 960); N = `n_codebooks` (default: all, 3 for the released codec); each code is
        a*K+b in [0, K*K) as the LLM sees it. `lengths` [B] are the valid samples of each row
        (see `encode_latents`); codes past `code_lengths` are padding.
        """
        z, frame_lengths = self.encode_latents(wave, lengths)
        codes = self.quantize(z, n_codebooks).codes
        return codes.transpose(1, 2).contiguous(), frame_lengths

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None, n_codebooks: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as `encode`."""
        return self.encode(wave, lengths, n_codebooks)

    def _check_input(
        self, wave: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if wave.dim() != 2 or wave.shape[-1] == 0:
            raise ValueError(f"expected a waveform [B, L] with L > 0 at 16 kHz, got shape {tuple(wave.shape)}")
        if not wave.dtype.is_floating_point:
            raise ValueError(f"expected a float waveform in [-1, 1], got dtype {wave.dtype}")
        wave = wave.to(self.encoder.block[0].weight_v.dtype)
        if lengths is None:
            longest = wave.shape[-1]
        else:
            lengths = torch.as_tensor(lengths, device=wave.device).to(torch.int64)
            if lengths.shape != (wave.shape[0],):
                raise ValueError(f"lengths must have shape [{wave.shape[0]}], got {tuple(lengths.shape)}")
            if int(lengths.min()) < 1 or int(lengths.max()) > wave.shape[-1]:
                raise ValueError(
                    f"lengths must lie in [1, {wave.shape[-1]}] (the waveform's samples), got {lengths.tolist()}"
                )
            longest = int(lengths.max())
        if longest > MAX_SAMPLES:
            raise ValueError(
                f"audio of {longest / SAMPLE_RATE:.2f} s is longer than LongCat-Audio-Codec's {MAX_SECONDS:.0f} s "
                "limit; split it into segments of at most 30 s"
            )
        return wave, lengths

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor], where: str) -> list[str]:
        """Load the acoustic keys (`CHECKPOINT_PREFIXES`) of an official encoder state dict.

        Unlike the official loader (`model_loader.py: load_encoder`, strict=False), every missing
        or stray key under these prefixes and every shape mismatch is an error. Keys outside the
        prefixes (the semantic tokenizer's `semantic_tokenizer.*`) are left alone and returned.

        Raises:
            ModelError: naming `where` and each offending key.
        """
        return load_checked(self, state_dict, where, self.CHECKPOINT_PREFIXES)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: AcousticEncoderConfig | None = None
    ) -> tuple[AcousticEncoder, list[str]]:
        """Build (official config by default), load LongCatAudioCodec_encoder.pt, eval mode.

        Returns the encoder and the checkpoint keys it left to others (the semantic tokenizer's).
        """
        module = cls(config or AcousticEncoderConfig.official())
        others = module.load_official_state_dict(read_checkpoint(path), str(path))
        return module.eval(), others
