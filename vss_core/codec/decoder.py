"""LongCat-Audio-Codec's decoder: 1 semantic + 3 acoustic codes per 60 ms frame -> 16 or 24 kHz waveform.

vss's own implementation of the official
`networks/semantic_codec/LongCatAudioCodec_model.py: LongCatAudioCodecDecoder` (`forward`,
`output_rate`) with its waveform generator `networks/decoders/mem_decoders.py: MemDecoder`, the
LSTM memory layer `networks/modules/modules.py: GLSTM`, the upsampling blocks of
`networks/modules/model.py: DecoderBlock` (16 kHz) and `networks/modules/causal_model.py:
CausalDecoderBlock` / `ResidualUnit` (24 kHz), and the acoustic de-quantizer of
`vss_core.codec.quantizer`. Every key of the official decoder checkpoints
(LongCatAudioCodec_decoder_16k_4codebooks.pt, ..._24k_4codebooks.pt) is a key of `Decoder`.

Data flow (released sizes): semantic codes -> Embedding(8192, 1280); acoustic codes ->
3-stage de-quantizer -> 1024 channels; concatenated (semantic first) to 2304 channels ->
LSTM(2304) -> LayerNorm -> LSTM(2304) -> LayerNorm -> conv k7 to 1536 -> 4 upsampling blocks
(1536 -> 768 -> 384 -> 192 -> 96; strides [8, 6, 5, 4] = 960 at 16 kHz, [8, 6, 6, 5] = 1440 at
24 kHz) -> Snake -> conv k7 to 1 channel -> tanh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vss_core.codec.acoustic import (
    HOP_SAMPLES,
    SAMPLE_RATE,
    ResidualUnit,
    Snake1d,
    load_checked,
    positive_int,
    positive_int_list,
    positive_int_or_list,
    quantizer_problems,
    raise_problems,
    read_checkpoint,
    read_section,
    section_to_yaml,
    string,
)
from vss_core.codec.quantizer import GroupResidualVectorQuantize, WNConv1d, WNConvTranspose1d

OUTPUT_RATES = {"16k": 16000, "24k": 24000}
"""Output sample rate per official `decoder_type`."""

OFFICIAL_DECODER_16K_YAML: dict[str, Any] = {
    "codec_dimension": 1024,
    "codec_dec_ratios": [8, 6, 5, 4],
    "decoder_dim": 1536,
    "semantic_dim": 1280,
    "decoder_type": "16k",
    "ckpt_path": "ckpts/LongCatAudioCodec_decoder_16k_4codebooks.pt",
    "codec_codebook_size": 90,
    "codec_codebook_search_dim": 8,
    "codec_codebooks": 3,
    "semantic_token_nums": 8192,
}
"""`codec_config` of the official configs/LongCatAudioCodec_decoder_16k_4codebooks.yaml."""

OFFICIAL_DECODER_24K_YAML: dict[str, Any] = {
    **OFFICIAL_DECODER_16K_YAML,
    "codec_dec_ratios": [8, 6, 6, 5],
    "decoder_type": "24k",
    "ckpt_path": "ckpts/LongCatAudioCodec_decoder_24k_4codebooks.pt",
}
"""`codec_config` of the official configs/LongCatAudioCodec_decoder_24k_4codebooks.yaml."""

TINY_DECODER_16K_YAML: dict[str, Any] = {
    "codec_dimension": 16,
    "codec_dec_ratios": [8, 6, 5, 4],
    "decoder_dim": 16,
    "semantic_dim": 8,
    "decoder_type": "16k",
    "codec_codebook_size": 5,
    "codec_codebook_search_dim": 4,
    "codec_codebooks": 3,
    "semantic_token_nums": 64,
}
"""Tiny 16 kHz decoder for tests (LSTM width 24, channels 16 -> 1); matches `TINY_ENCODER_YAML`."""

TINY_DECODER_24K_YAML: dict[str, Any] = {
    **TINY_DECODER_16K_YAML,
    "codec_dec_ratios": [8, 6, 6, 5],
    "decoder_type": "24k",
}
"""Tiny 24 kHz (causal upsampling) decoder for tests."""


@dataclass(frozen=True)
class DecoderConfig:
    """An official decoder yaml's `codec_config`, keys as written there (configs/LongCatAudioCodec_decoder_*.yaml)."""

    codec_dimension: int
    codec_dec_ratios: tuple[int, ...]
    decoder_dim: int
    semantic_dim: int
    decoder_type: str
    codec_codebook_size: int
    codec_codebook_search_dim: int | tuple[int, ...]
    codec_codebooks: int
    semantic_token_nums: int
    ckpt_path: str | None = None

    _REQUIRED = {
        "codec_dimension": positive_int,
        "codec_dec_ratios": positive_int_list,
        "decoder_dim": positive_int,
        "semantic_dim": positive_int,
        "decoder_type": string,
        "codec_codebook_size": positive_int,
        "codec_codebook_search_dim": positive_int_or_list,
        "codec_codebooks": positive_int,
        "semantic_token_nums": positive_int,
    }
    _OPTIONAL = {"ckpt_path": string}

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any], where: str) -> DecoderConfig:
        """Read and check an official `codec_config` section; `where` names its file in errors.

        Raises:
            ModelError: listing every problem, each with its key (`codec_config.<key>`) and `where`.
        """
        values, problems = read_section(raw, where, cls._REQUIRED, cls._OPTIONAL, OFFICIAL_DECODER_16K_YAML)
        kind = values.get("decoder_type")
        if kind is not None and kind not in OUTPUT_RATES:
            problems.append(f"codec_config.decoder_type: {kind!r} is not one of {sorted(OUTPUT_RATES)}")
            kind = None
        ratios = values.get("codec_dec_ratios")
        if ratios is not None and kind is not None:
            hop = HOP_SAMPLES * OUTPUT_RATES[kind] // SAMPLE_RATE
            if math.prod(ratios) != hop:
                official = [8, 6, 5, 4] if kind == "16k" else [8, 6, 6, 5]
                problems.append(
                    f"codec_config.codec_dec_ratios: {list(ratios)} multiply to {math.prod(ratios)}, but a 60 ms "
                    f"frame is {hop} samples at {OUTPUT_RATES[kind]} Hz (decoder_type {kind!r}); the official "
                    f"value is {official}"
                )
        width = values.get("decoder_dim")
        if ratios is not None and width is not None and width % 2 ** len(ratios):
            problems.append(
                f"codec_config.decoder_dim: {width} must be divisible by 2**{len(ratios)} "
                f"(channels halve in each of the {len(ratios)} upsampling blocks)"
            )
        problems += quantizer_problems(values)
        raise_problems(where, "LongCat-Audio-Codec decoder", problems)
        return cls(**values)

    def to_yaml(self) -> dict[str, Any]:
        """The `codec_config` section (plain lists and scalars, official key order; unset ckpt_path left out)."""
        return section_to_yaml(self, OFFICIAL_DECODER_16K_YAML)

    @classmethod
    def official(cls, decoder_type: str = "16k") -> DecoderConfig:
        """The released 4-codebook decoder for `decoder_type` '16k' or '24k'."""
        raw = {"16k": OFFICIAL_DECODER_16K_YAML, "24k": OFFICIAL_DECODER_24K_YAML}.get(decoder_type)
        if raw is None:
            raise ValueError(f"decoder_type must be one of {sorted(OUTPUT_RATES)}, got {decoder_type!r}")
        return cls.from_yaml(raw, f"OFFICIAL_DECODER_{decoder_type.upper()}_YAML")

    @classmethod
    def tiny(cls, decoder_type: str = "16k") -> DecoderConfig:
        """Tiny sizes for tests, '16k' or '24k'."""
        raw = {"16k": TINY_DECODER_16K_YAML, "24k": TINY_DECODER_24K_YAML}.get(decoder_type)
        if raw is None:
            raise ValueError(f"decoder_type must be one of {sorted(OUTPUT_RATES)}, got {decoder_type!r}")
        return cls.from_yaml(raw, f"TINY_DECODER_{decoder_type.upper()}_YAML")

    @property
    def output_rate(self) -> int:
        """16000 or 24000."""
        return OUTPUT_RATES[self.decoder_type]

    @property
    def hop_length(self) -> int:
        """Output samples per frame: the product of the upsampling strides (960 or 1440)."""
        return math.prod(self.codec_dec_ratios)


# -- building blocks ---------------------------------------------------------------------------------


class CausalResidualUnit(nn.Module):
    """Left-padded (causal) residual unit; follows `causal_model.py: ResidualUnit`.

    Submodule `block`: 0 Snake1d, 1 ZeroPad1d((6 * dilation, 0)), 2 WNConv1d(k7, dilated, no padding),
    3 Snake1d, 4 WNConv1d(k1).
    """

    def __init__(self, dim: int, dilation: int = 1) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            nn.ZeroPad1d((6 * dilation, 0)),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=0),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        y = self.block(x)
        crop = x.shape[-1] - y.shape[-1]
        return (x[..., crop:] if crop > 0 else x) + y


class DecoderBlock(nn.Module):
    """Snake, transposed conv upsampling by `stride`, three residual units (dilations 1, 3, 9).

    Non-causal (16 kHz) follows `model.py: DecoderBlock`: kernel 2*stride, padding ceil(stride/2),
    output_padding stride % 2, `ResidualUnit`. Causal (24 kHz) follows `causal_model.py:
    CausalDecoderBlock`: kernel = stride, no padding, `CausalResidualUnit`. Submodule `block`:
    0 Snake1d, 1 WNConvTranspose1d, 2-4 residual units. Either way T frames become T * stride.
    """

    def __init__(self, input_dim: int, output_dim: int, stride: int, causal: bool) -> None:
        super().__init__()
        if causal:
            up = WNConvTranspose1d(input_dim, output_dim, kernel_size=stride, stride=stride)
            unit: type[nn.Module] = CausalResidualUnit
        else:
            up = WNConvTranspose1d(
                input_dim,
                output_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
                output_padding=stride % 2,
            )
            unit = ResidualUnit
        self.block = nn.Sequential(
            Snake1d(input_dim), up, unit(output_dim, 1), unit(output_dim, 3), unit(output_dim, 9)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, T] -> [B, out, T * stride]."""
        return self.block(x)


class MemoryLSTM(nn.Module):
    """Two LSTMs, each followed by LayerNorm, over time; follows `modules.py: GLSTM` with groups=1.

    Keys: `lstm_list1.0.*`, `lstm_list2.0.*` (`nn.LSTM`: weight_ih_l0, weight_hh_l0, bias_ih_l0,
    bias_hh_l0), `ln1.*`, `ln2.*`. No residual connection (as officially). The official grouped
    variant (groups > 1) is unused by every released decoder and not implemented.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.lstm_list1 = nn.ModuleList([nn.LSTM(hidden_size, hidden_size, 1, batch_first=True)])
        self.lstm_list2 = nn.ModuleList([nn.LSTM(hidden_size, hidden_size, 1, batch_first=True)])
        self.ln1 = nn.LayerNorm(hidden_size)
        self.ln2 = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        h = x.transpose(1, 2)
        h = self.ln1(self.lstm_list1[0](h)[0])
        h = self.ln2(self.lstm_list2[0](h)[0])
        return h.transpose(1, 2)


class MemDecoder(nn.Module):
    """The waveform generator; follows `mem_decoders.py: MemDecoder` (groups=1, lookahead 3, one LSTM layer).

    Submodules: `mem_layers` (one `MemoryLSTM`) and `model`: 0 WNConv1d(in, channels, k7, padding 3),
    1..n `DecoderBlock`, then Snake1d, [causal: ZeroPad1d((6, 0))], WNConv1d(-> 1, k7, padding 3 or 0), Tanh.
    """

    def __init__(self, input_channel: int, channels: int, rates: Sequence[int], causal: bool) -> None:
        super().__init__()
        self.mem_layers = nn.ModuleList([MemoryLSTM(input_channel)])
        layers: list[nn.Module] = [WNConv1d(input_channel, channels, kernel_size=7, padding=3)]
        out = channels
        for i, stride in enumerate(rates):
            out = channels // 2 ** (i + 1)
            layers.append(DecoderBlock(channels // 2**i, out, stride, causal))
        layers.append(Snake1d(out))
        if causal:
            layers += [nn.ZeroPad1d((6, 0)), WNConv1d(out, 1, kernel_size=7, padding=0)]
        else:
            layers.append(WNConv1d(out, 1, kernel_size=7, padding=3))
        layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, input_channel, F] -> [B, 1, F * prod(rates)] in [-1, 1]."""
        for layer in self.mem_layers:
            x = layer(x)
        return self.model(x)


class SemanticDequantizer(nn.Module):
    """Semantic code -> embedding; follows `LongCatAudioCodec_model.py: SingleTokenDequantizer`.

    Key: `dequant.weight` [semantic_token_nums, semantic_dim].
    """

    def __init__(self, n_vocabulary: int, dim: int) -> None:
        super().__init__()
        self.dequant = nn.Embedding(n_vocabulary, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, F, dim]."""
        return self.dequant(codes)


# -- the decoder -------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """`LongCatAudioCodecDecoder`: semantic [B, F] + acoustic [B, F, N] codes -> waveform.

    Submodules (official names; every official key, loaded strictly): `decoder` (`MemDecoder`),
    `acoustic_quantizer` (`GroupResidualVectorQuantize`; its in_proj weights are in the checkpoint
    but unused when decoding), `semantic_dequantizer` (`SemanticDequantizer`).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.output_rate = config.output_rate
        self.hop_length = config.hop_length
        self.decoder = MemDecoder(
            config.codec_dimension + config.semantic_dim,
            config.decoder_dim,
            config.codec_dec_ratios,
            causal=config.decoder_type == "24k",
        )
        self.acoustic_quantizer = GroupResidualVectorQuantize(
            input_dim=config.codec_dimension,
            n_codebooks=config.codec_codebooks,
            codebook_size=config.codec_codebook_size,
            codebook_dim=config.codec_codebook_search_dim,
        )
        self.semantic_dequantizer = SemanticDequantizer(config.semantic_token_nums, config.semantic_dim)

    def latents(self, semantic: torch.Tensor, acoustic: torch.Tensor) -> torch.Tensor:
        """Codes -> the generator's input [B, semantic_dim + codec_dimension, F] (semantic channels first).

        As the official `forward`, semantic and acoustic frames are cut to the shorter of the two.
        """
        if semantic.dim() != 2 or semantic.dtype.is_floating_point:
            raise ValueError(f"semantic codes must be integers [B, F], got {semantic.dtype} {tuple(semantic.shape)}")
        if acoustic.dim() != 3 or acoustic.shape[0] != semantic.shape[0]:
            raise ValueError(
                f"acoustic codes must be [B, F, N] with B={semantic.shape[0]}, got shape {tuple(acoustic.shape)}"
            )
        vocab = self.config.semantic_token_nums
        if semantic.numel() and (int(semantic.min()) < 0 or int(semantic.max()) >= vocab):
            raise ValueError(
                f"semantic codes must lie in [0, {vocab}), got values in [{int(semantic.min())}, {int(semantic.max())}]"
            )
        sem = self.semantic_dequantizer(semantic.long()).transpose(1, 2)
        ac = self.acoustic_quantizer.decode(acoustic.transpose(1, 2))
        frames = min(sem.shape[-1], ac.shape[-1])
        return torch.cat((sem[..., :frames], ac[..., :frames]), dim=1)

    @torch.no_grad()
    def decode(self, semantic: torch.Tensor, acoustic: torch.Tensor) -> torch.Tensor:
        """semantic [B, F] int64 in [0, 8192), acoustic [B, F, N] int64 in [0, K*K) -> wave [B, F * hop_length].

        N may be 1..codec_codebooks (the first N acoustic stages). The wave is at `output_rate`
        (hop_length 960 at 16 kHz, 1440 at 24 kHz), in [-1, 1].
        """
        return self.decoder(self.latents(semantic, acoustic)).squeeze(1)

    def forward(self, semantic: torch.Tensor, acoustic: torch.Tensor) -> torch.Tensor:
        """Same as `decode`."""
        return self.decode(semantic, acoustic)

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
        """Load an official decoder state dict strictly (as `model_loader.py: load_decoder`).

        Raises:
            ModelError: naming `where` and every missing key, stray key and shape mismatch.
        """
        load_checked(self, state_dict, where, None)

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: DecoderConfig) -> Decoder:
        """Build for `config`, load the official decoder `.pt` at `path` strictly, eval mode."""
        module = cls(config)
        module.load_official_state_dict(read_checkpoint(path), str(path))
        return module.eval()
