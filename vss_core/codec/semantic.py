"""LongCat-Audio-Codec's semantic tokenizer, vss's own code: 16 kHz waveform -> one 8192-way code per 60 ms.

Follows `meituan-longcat/LongCat-Audio-Codec` (GitHub; the Hub repo of the same name ships only `ckpts/`):
- `semantic_tokenizer_general/feature_extractor.py`: `Fbank` (Kaldi-style log-mel filterbank, batched; the
  same math as LongCat-Flash-Omni's, computed by the shared `vss_core.fbank`),
  `Cmvn` (global mean / variance normalisation from a numpy file), `FeatureExtractor`.
- `semantic_tokenizer_general/encoder.py`: `Conv2dSubsampling`, `PositionalEncoding`,
  `TransformerPreLNEncoderLayer`, `TransformerEncoder`, `VGGTFEncoder` (built by `build_VGGtf_encoder`),
  `Kmeans` and `WavToLabel` (the whole tokenizer).
- `semantic_tokenizer_general/configs/LongCatAudioCodec_semantic_tokenizer.yaml` and
  `semantic_tokenizer.infer.yaml`: the settings (`OFFICIAL_SEMANTIC_CONFIG` holds their values).
- `networks/semantic_codec/LongCatAudioCodec_model.py`: `LongCatAudioCodecEncoder` keeps `WavToLabel` as
  `self.semantic_tokenizer`, so its keys in `ckpts/LongCatAudioCodec_encoder.pt` start with
  `CHECKPOINT_PREFIX`; `get_semantic_codes*` feed it `wave * 32767` (int16 range).
  `networks/semantic_codec/model_loader.py` loads that file with `strict=False`; vss instead names every
  missing, stray or mis-shaped key (`SemanticTokenizer.load_checkpoint_state`).

Pipeline (`SemanticTokenizer.forward`): wave x 32767 -> 80 log-mel energies every 10 ms (25 ms Povey
window, pre-emphasis 0.97) -> CMVN -> two causal Conv2d (3x3, 32 channels, ReLU) with time strides 2 and 3
-> Linear + LayerNorm to 1280 -> x sqrt(1280) + sinusoidal positions -> the first `select_layer` of 26
bidirectional pre-LN transformer layers (each ends with its own LayerNorm `norm3`) -> L2 normalisation ->
nearest column of `kmeans.codebook` [1280, 8192].

Frame rate: the fbank hop is 10 ms (160 samples); the convolutions keep every 2nd, then every 3rd frame,
so one code per 10 x 2 x 3 = 60 ms = 960 samples, 16000 / 960 = 16.67 Hz: the same hop as the acoustic
encoder (strides 4 x 5 x 6 x 8 = 960). For the 960·n samples `LongCatAudioCodecEncoder.preprocess` pads to,
the length rules give (960n - 400) // 160 + 1 = 6n - 2 fbank frames -> 3n - 1 -> n codes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vss_core.errors import ModelError, bullet_list
from vss_core.fbank import FLOAT32_EPS, FbankConfig, compute_fbank, fbank_lengths, mel_banks, povey_window

CHECKPOINT_PREFIX = "semantic_tokenizer."
"""Prefix of the semantic tokenizer's keys in `ckpts/LongCatAudioCodec_encoder.pt` (attribute name in
`LongCatAudioCodecEncoder.__init__`)."""

WAVE_SCALE = 32767.0
"""`LongCatAudioCodecEncoder.get_semantic_codes`: the tokenizer expects audio in the int16 range."""

CONFIG_DIR = "semantic_tokenizer_general/configs"
TOKENIZER_YAML = "LongCatAudioCodec_semantic_tokenizer.yaml"
INFER_YAML = "semantic_tokenizer.infer.yaml"
ENCODER_TYPE = "VGGtf_encoder"
CMVN_FILE = "ckpts/LongCatAudioCodec_encoder_cmvn.npy"
CONV_CHANNELS = 32
"""Output channels of every subsampling Conv2d (`Conv2dSubsampling`, fixed in the official code)."""

DERIVED_BUFFERS = (
    "feature_extractor.fbank.window",
    "feature_extractor.fbank.mel_banks",
    "feature_extractor.fbank.eps",
    "feature_extractor.cmvn.cmvn_mean",
    "feature_extractor.cmvn.cmvn_scale",
)
"""Persistent buffers the official module computes itself (from the yaml, or the CMVN file) before the
`strict=False` load: a checkpoint may carry them (then, as in the official load, its values win) or not
(then the computed ones stay). Every other key must be in the checkpoint."""

# -- configuration ------------------------------------------------------------------------------------


# `feature.fbank` is `vss_core.fbank.FbankConfig` (shared with LongCat-Flash-Omni's audio input), checked in
# `SemanticTokenizerConfig._problems`.


@dataclass(frozen=True)
class VGGTransformerConfig:
    """`encoder.VGGtf_encoder` of `semantic_tokenizer.infer.yaml` (read by `build_VGGtf_encoder`).

    `stride` is in the yaml but unused by the official code; `dropout` / `layer_drop` only matter for
    training and the tokenizer is frozen; `activation` is read but the official layer always uses GELU.
    """

    feat_dim: int
    delta_order: int
    left: int
    right: int
    stride: int
    subsampling: str
    num_conv_layers: int
    conv2d_stride: tuple[int, ...]
    d_model: int
    nhead: int
    num_encoder_layers: int
    dim_feedforward: int
    dropout: float
    layer_drop: float
    activation: str

    @property
    def input_size(self) -> int:
        """Input width the encoder expects: `(delta_order + 1) * (1 + left + right) * feat_dim`."""
        return (self.delta_order + 1) * (1 + self.left + self.right) * self.feat_dim


@dataclass(frozen=True)
class SemanticTokenizerConfig:
    """Both official yaml files of the semantic tokenizer, typed.

    The first four fields are `semantic_tokenizer_config` of `LongCatAudioCodec_semantic_tokenizer.yaml`
    (`model_config` there is the path of the second file); `fbank`, `cmvn_file` and `encoder` come from
    `semantic_tokenizer.infer.yaml` (`feature.fbank`, `feature.cmvn_file`, `encoder.VGGtf_encoder`).
    """

    select_layer: int
    codebook_dim: int
    codebook_size: int
    sample_rate: int
    fbank: FbankConfig
    encoder: VGGTransformerConfig
    cmvn_file: str = CMVN_FILE
    model_config: str = f"{CONFIG_DIR}/{INFER_YAML}"

    @property
    def hop_samples(self) -> int:
        """Samples per code: the fbank hop times every time stride (960 for the official config)."""
        return self.fbank.window_shift * math.prod(self.encoder.conv2d_stride)

    @property
    def frame_rate(self) -> float:
        """Codes per second (16.67 for the official config)."""
        return self.sample_rate / self.hop_samples

    @classmethod
    def from_yaml_dicts(cls, tokenizer_yaml: Any, infer_yaml: Any, where: str) -> SemanticTokenizerConfig:
        """Read the two official files' contents (as `yaml.safe_load` gives them).

        Args:
            tokenizer_yaml: `LongCatAudioCodec_semantic_tokenizer.yaml` (`semantic_tokenizer_config: {...}`).
            infer_yaml: `semantic_tokenizer.infer.yaml` (`feature: {...}`, `encoder: {...}`).
            where: the directory (or other origin) the files came from; every message names it.

        Raises:
            ModelError: listing every missing, mistyped or inconsistent value, each as file and key.
        """
        problems: list[str] = []
        tok = _YamlReader(f"{where}/{TOKENIZER_YAML}", problems)
        inf = _YamlReader(f"{where}/{INFER_YAML}", problems)

        top = tok.section(tokenizer_yaml, "semantic_tokenizer_config", root=True)
        select_layer = tok.get(top, "semantic_tokenizer_config", "select_layer", int)
        codebook_dim = tok.get(top, "semantic_tokenizer_config", "codebook_dim", int)
        codebook_size = tok.get(top, "semantic_tokenizer_config", "codebook_size", int)
        sample_rate = tok.get(top, "semantic_tokenizer_config", "sample_rate", int)
        model_config = tok.get(top, "semantic_tokenizer_config", "model_config", str, default=cls.model_config)

        feature = inf.section(infer_yaml, "feature", root=True)
        fb = inf.section(feature, "feature.fbank")
        fbank_values = {
            name: inf.get(fb, "feature.fbank", name, kind)
            for name, kind in (
                ("dither", float),
                ("frame_length", float),
                ("frame_shift", float),
                ("preemphasis", float),
                ("freq", int),
                ("high_freq", float),
                ("low_freq", float),
                ("num_mel_bins", int),
            )
        }
        fbank_values["padded_num_mel_bins"] = inf.get(fb, "feature.fbank", "padded_num_mel_bins", int, default=None)
        cmvn_file = inf.get(feature, "feature", "cmvn_file", str)

        enc_top = inf.section(infer_yaml, "encoder", root=True)
        enc_type = inf.get(enc_top, "encoder", "type", str)
        if enc_type is not None and enc_type != ENCODER_TYPE:
            problems.append(
                f"{inf.file}: encoder.type: {enc_type!r} is not supported (the official value is {ENCODER_TYPE})"
            )
        path = f"encoder.{ENCODER_TYPE}"
        enc = inf.section(enc_top, path)
        enc_values = {
            name: inf.get(enc, path, name, kind)
            for name, kind in (
                ("feat_dim", int),
                ("delta_order", int),
                ("left", int),
                ("right", int),
                ("stride", int),
                ("subsampling", str),
                ("num_conv_layers", int),
                ("d_model", int),
                ("nhead", int),
                ("num_encoder_layers", int),
                ("dim_feedforward", int),
                ("dropout", float),
                ("layer_drop", float),
                ("activation", str),
            )
        }
        enc_values["conv2d_stride"] = inf.strides(enc, path, "conv2d_stride")
        if problems:
            unique = list(dict.fromkeys(problems))  # a non-mapping file is met once per section
            raise ModelError(f"semantic tokenizer config is invalid:\n{bullet_list(unique)}\n{_FIX}")
        config = cls(
            select_layer=select_layer,
            codebook_dim=codebook_dim,
            codebook_size=codebook_size,
            sample_rate=sample_rate,
            fbank=FbankConfig(**fbank_values),
            encoder=VGGTransformerConfig(**enc_values),
            cmvn_file=cmvn_file,
            model_config=model_config,
        )
        config.check(where)
        return config

    def to_yaml_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The official layout back: (`LongCatAudioCodec_semantic_tokenizer.yaml`, `semantic_tokenizer.infer.yaml`).

        The infer file's top-level `feat_dim`, `left`, `right`, `stride`, `delta_order` are the yaml
        anchors the official file defines; the official code reads only the copies under `encoder`.
        """
        tokenizer = {
            "semantic_tokenizer_config": {
                "select_layer": self.select_layer,
                "codebook_dim": self.codebook_dim,
                "codebook_size": self.codebook_size,
                "sample_rate": self.sample_rate,
                "model_config": self.model_config,
            }
        }
        e = self.encoder
        infer = {
            "feat_dim": e.feat_dim,
            "left": e.left,
            "right": e.right,
            "stride": e.stride,
            "delta_order": e.delta_order,
            "feature": {"fbank": self.fbank.to_dict(), "cmvn_file": self.cmvn_file},
            "encoder": {
                "type": ENCODER_TYPE,
                ENCODER_TYPE: {
                    "feat_dim": e.feat_dim,
                    "delta_order": e.delta_order,
                    "left": e.left,
                    "right": e.right,
                    "stride": e.stride,
                    "subsampling": e.subsampling,
                    "num_conv_layers": e.num_conv_layers,
                    "conv2d_stride": ",".join(str(s) for s in e.conv2d_stride),
                    "d_model": e.d_model,
                    "nhead": e.nhead,
                    "num_encoder_layers": e.num_encoder_layers,
                    "dim_feedforward": e.dim_feedforward,
                    "dropout": e.dropout,
                    "layer_drop": e.layer_drop,
                    "activation": e.activation,
                },
            },
        }
        return tokenizer, infer

    def check(self, where: str = "SemanticTokenizerConfig") -> None:
        """Check the values fit together the way the official modules need them.

        Raises:
            ModelError: listing every problem as file and key.
        """
        problems = [f"{where}/{file}: {key}: {message}" for file, key, message in self._problems()]
        if problems:
            raise ModelError(f"semantic tokenizer config is invalid:\n{bullet_list(problems)}\n{_FIX}")

    def _problems(self) -> list[tuple[str, str, str]]:
        """(file, key, message) for every value the official modules could not use as given."""
        out: list[tuple[str, str, str]] = []
        top, fbk, enc = "semantic_tokenizer_config", "feature.fbank", f"encoder.{ENCODER_TYPE}"
        fb, e = self.fbank, self.encoder
        strides = ",".join(map(str, e.conv2d_stride))

        def tokenizer(key: str, message: str) -> None:
            out.append((TOKENIZER_YAML, f"{top}.{key}", message))

        def infer(key: str, message: str) -> None:
            out.append((INFER_YAML, key, message))

        if not 1 <= self.select_layer <= e.num_encoder_layers:
            tokenizer("select_layer", f"{self.select_layer} must be in 1..{e.num_encoder_layers} (num_encoder_layers)")
        if self.codebook_dim != e.d_model:
            tokenizer("codebook_dim", f"{self.codebook_dim} must equal d_model {e.d_model}")
        if self.codebook_size < 1:
            tokenizer("codebook_size", f"{self.codebook_size} must be at least 1")
        if self.sample_rate != fb.freq:
            tokenizer("sample_rate", f"{self.sample_rate} must equal feature.fbank.freq {fb.freq}")
        if fb.freq not in (8000, 16000):
            infer(f"{fbk}.freq", f"{fb.freq} must be 8000 or 16000 (Fbank supports only these)")
        if fb.dither < 0:
            infer(f"{fbk}.dither", f"{fb.dither} must not be negative")
        if not 0 <= fb.preemphasis <= 1:
            infer(f"{fbk}.preemphasis", f"{fb.preemphasis} must be in [0, 1]")
        if fb.window_size < 2:
            infer(
                f"{fbk}.frame_length", f"{fb.frame_length} ms gives a {fb.window_size}-sample window (need 2 or more)"
            )
        if fb.window_shift < 1:
            infer(f"{fbk}.frame_shift", f"{fb.frame_shift} ms gives a {fb.window_shift}-sample hop (need 1 or more)")
        if fb.low_freq < 0:
            infer(f"{fbk}.low_freq", f"{fb.low_freq} must not be negative")
        if not fb.low_freq < fb.resolved_high_freq <= fb.freq / 2:
            infer(
                f"{fbk}.high_freq",
                f"{fb.high_freq} gives {fb.resolved_high_freq} Hz: it must lie above low_freq {fb.low_freq} "
                f"and at most at Nyquist {fb.freq / 2}",
            )
        if fb.num_mel_bins < 1:
            infer(f"{fbk}.num_mel_bins", f"{fb.num_mel_bins} must be at least 1")
        if fb.padded_num_mel_bins is not None and fb.padded_num_mel_bins < fb.num_mel_bins:
            infer(
                f"{fbk}.padded_num_mel_bins",
                f"{fb.padded_num_mel_bins} must be at least num_mel_bins {fb.num_mel_bins}",
            )
        for name in ("delta_order", "left", "right"):
            if getattr(e, name) < 0:
                infer(f"{enc}.{name}", f"{getattr(e, name)} must not be negative")
        if e.input_size != fb.feature_dim:
            infer(
                f"{enc}.feat_dim",
                f"input size (delta_order + 1) * (1 + left + right) * feat_dim = {e.input_size} must equal "
                f"the fbank width {fb.feature_dim} (the feature extractor adds no deltas or context)",
            )
        if e.subsampling != "conv2d":
            infer(f"{enc}.subsampling", f"{e.subsampling!r} is not supported (the official value is conv2d)")
        if e.num_conv_layers < 1:
            infer(f"{enc}.num_conv_layers", f"{e.num_conv_layers} must be at least 1")
        elif len(e.conv2d_stride) != e.num_conv_layers:
            infer(f"{enc}.conv2d_stride", f"{strides} must list one stride per conv layer ({e.num_conv_layers})")
        if any(s < 1 for s in e.conv2d_stride):
            infer(f"{enc}.conv2d_stride", f"{strides}: every stride must be at least 1")
        if e.input_size - 2 * max(e.num_conv_layers, 0) < 1:
            infer(
                f"{enc}.feat_dim", f"{e.input_size} features leave nothing after {e.num_conv_layers} 3x3 convolutions"
            )
        for name in ("d_model", "nhead", "num_encoder_layers", "dim_feedforward"):
            if getattr(e, name) < 1:
                infer(f"{enc}.{name}", f"{getattr(e, name)} must be at least 1")
        if e.nhead >= 1 and e.d_model % e.nhead:
            infer(f"{enc}.nhead", f"{e.nhead} must divide d_model {e.d_model}")
        if e.d_model % 2:
            infer(f"{enc}.d_model", f"{e.d_model} must be even (sinusoidal positions come in sin/cos pairs)")
        for name in ("dropout", "layer_drop"):
            if not 0 <= getattr(e, name) < 1:
                infer(f"{enc}.{name}", f"{getattr(e, name)} must be in [0, 1)")
        if e.activation != "gelu":
            infer(f"{enc}.activation", f"{e.activation!r}: the official layer always uses GELU; write gelu")
        return out


_FIX = (
    "Use the official files from meituan-longcat/LongCat-Audio-Codec "
    f"({CONFIG_DIR}/{TOKENIZER_YAML} and {CONFIG_DIR}/{INFER_YAML}), or vss's OFFICIAL_SEMANTIC_CONFIG."
)


class _YamlReader:
    """Typed look-ups in one yaml file's contents that collect problems instead of raising."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems

    def section(self, parent: Any, path: str, root: bool = False) -> Mapping[str, Any] | None:
        """`parent[last part of path]` as a mapping; None (reported) if it is not one.

        With `root`, `parent` is the whole file; otherwise a section from here (None: already reported).
        """
        if root and not isinstance(parent, Mapping):
            self.problems.append(f"{self.file}: the file must hold a mapping (got {type(parent).__name__})")
            return None
        if parent is None:
            return None
        value = parent.get(path.rsplit(".", 1)[-1])
        if not isinstance(value, Mapping):
            what = "missing" if value is None else f"must be a mapping (got {value!r})"
            self.problems.append(f"{self.file}: {path}: {what}")
            return None
        return value

    def get(self, section: Mapping[str, Any] | None, path: str, key: str, kind: type, **optional: Any) -> Any:
        """`section[key]` checked to be `kind` (float accepts ints; bools are never numbers).

        Pass `default=` to make the key optional. A None section (already reported) gives the default.
        """
        if section is None:
            return optional.get("default")
        if key not in section:
            if "default" not in optional:
                self.problems.append(f"{self.file}: {path}.{key}: missing")
            return optional.get("default")
        value = section[key]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            wanted = {float: "a number", int: "an integer"}.get(kind, "a string")
            self.problems.append(f"{self.file}: {path}.{key}: {value!r} must be {wanted}")
            return None
        return value

    def strides(self, section: Mapping[str, Any] | None, path: str, key: str) -> tuple[int, ...] | None:
        """The official comma-separated stride string ("2,3"), parsed as `Conv2dSubsampling` does."""
        value = self.get(section, path, key, str)
        if value is None:
            return None
        try:
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            self.problems.append(
                f"{self.file}: {path}.{key}: {value!r} must be integers separated by commas (e.g. 2,3)"
            )
            return None


OFFICIAL_SEMANTIC_CONFIG = SemanticTokenizerConfig(
    select_layer=26,
    codebook_dim=1280,
    codebook_size=8192,
    sample_rate=16000,
    fbank=FbankConfig(
        dither=0.0,
        frame_length=25,
        frame_shift=10,
        preemphasis=0.97,
        freq=16000,
        high_freq=-200,
        low_freq=40,
        num_mel_bins=80,
    ),
    encoder=VGGTransformerConfig(
        feat_dim=80,
        delta_order=0,
        left=0,
        right=0,
        stride=1,
        subsampling="conv2d",
        num_conv_layers=2,
        conv2d_stride=(2, 3),
        d_model=1280,
        nhead=20,
        num_encoder_layers=26,
        dim_feedforward=5120,
        dropout=0.0,
        layer_drop=0.0,
        activation="gelu",
    ),
)
"""The values of the official yaml files (GitHub repo; the Hub repo ships only the weights)."""

TINY_SEMANTIC_CONFIG = replace(
    OFFICIAL_SEMANTIC_CONFIG,
    select_layer=2,
    codebook_dim=32,
    codebook_size=64,
    encoder=replace(OFFICIAL_SEMANTIC_CONFIG.encoder, d_model=32, nhead=2, num_encoder_layers=2, dim_feedforward=64),
)
"""Official features and layout with tiny sizes, for tests and vss's tiny codec."""


# -- CMVN file ----------------------------------------------------------------------------------------


def load_cmvn(path: Path | str, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a CMVN file as `Cmvn.__init__` does: returns float32 (mean, scale), scale = 1 / std.

    The file is a Kaldi-style accumulator saved with `np.save`, shape [2, D + 1]: row 0 holds the
    per-dimension sums and, last, the frame count; row 1 the sums of squares (last entry unused, 0 in
    Kaldi). mean = sums / count and var = squares / count - mean² are computed in the file's dtype, then
    scale = 1 / max(float32 eps, sqrt(var)) in float32 (`calculate_mean_var*`).

    Raises:
        ModelError: the file is missing or unreadable, its shape is not [2, dim + 1], the count is not
            positive, a value is not finite, or a variance is negative (the official code would give NaN).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"CMVN file {path} does not exist. Download {CMVN_FILE} from the Hub repo meituan-longcat/LongCat-Audio-Codec."
        )
    try:
        stats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"CMVN file {path} cannot be read as a .npy array: {exc}") from exc
    want = "[2, D + 1]" if dim is None else f"[2, {dim + 1}]"
    if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2 or (dim is not None and stats.shape[1] != dim + 1):
        raise ModelError(
            f"CMVN file {path} has shape {list(stats.shape)}; the official format is {want} (sums + count, squares + 0)"
        )
    if not np.issubdtype(stats.dtype, np.number):
        raise ModelError(f"CMVN file {path} holds {stats.dtype} values, not numbers")
    problems = []
    if not np.isfinite(stats).all():
        problems.append("it holds non-finite values")
    count = stats[0][-1]
    if not count > 0:
        problems.append(f"the frame count (row 0, last entry) is {count}, not positive")
    if problems:
        raise ModelError(f"CMVN file {path} is invalid:\n{bullet_list(problems)}")
    mean = stats[0][:-1] / count
    var = stats[1][:-1] / count - mean * mean
    negative = np.flatnonzero(var < 0)
    if negative.size:
        raise ModelError(
            f"CMVN file {path}: negative variance in dimensions {negative.tolist()[:10]}; the official Cmvn would normalise them to NaN"
        )
    mean_t = torch.from_numpy(np.ascontiguousarray(mean)).float()
    var_t = torch.from_numpy(np.ascontiguousarray(var)).float()
    scale_t = 1.0 / torch.clamp(torch.sqrt(var_t), min=FLOAT32_EPS)
    return mean_t, scale_t


def write_cmvn(
    path: Path | str, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray, count: float = 1000.0
) -> Path:
    """Write a CMVN file in the official format (see `load_cmvn`) that gives back `mean` and 1 / `std`.

    Args:
        path: the file to write (written as given, no `.npy` appended).
        mean: per-dimension mean, shape [D].
        std: per-dimension standard deviation, shape [D], positive.
        count: the frame count to store (the accumulators are mean * count and (std² + mean²) * count).

    Raises:
        ValueError: shapes differ, `std` is not positive or `count` is not positive.
    """
    mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
    std_a = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean_a.shape != std_a.shape:
        raise ValueError(f"write_cmvn: mean has {mean_a.size} dimensions but std has {std_a.size}")
    if not (std_a > 0).all() or not count > 0:
        raise ValueError("write_cmvn: std and count must be positive")
    stats = np.zeros((2, mean_a.size + 1), dtype=np.float64)
    stats[0, :-1] = mean_a * count
    stats[0, -1] = count
    stats[1, :-1] = (std_a * std_a + mean_a * mean_a) * count
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.save(f, stats, allow_pickle=False)
    return path


# -- features -----------------------------------------------------------------------------------------


class Fbank(nn.Module):
    """Batched Kaldi-style log-mel filterbank (`feature_extractor.Fbank`): no DC removal, Povey window.

    Input is the int16-range waveform; buffers `window`, `mel_banks` and `eps` are persistent, as in the
    official module (so they are in its state dict and may be in the checkpoint).
    """

    def __init__(self, config: FbankConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", povey_window(config))
        self.register_buffer("mel_banks", mel_banks(config))
        self.register_buffer("eps", torch.tensor(FLOAT32_EPS, dtype=torch.float32))

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] int16-range samples, [B] valid lengths -> ([B, T, feature_dim] log energies, [B] frames).

        `vss_core.fbank.compute_fbank` (shared with LongCat-Flash-Omni's audio input) on this module's
        buffers, with the official frame count (`fbank_lengths`).
        """
        return compute_fbank(wave, lengths, self.config, self.window, self.mel_banks, self.eps)


class Cmvn(nn.Module):
    """Global feature normalisation `(x - cmvn_mean) * cmvn_scale` (`feature_extractor.Cmvn`).

    Starts as the identity; fill it with `set_stats(*load_cmvn(path))` or from the checkpoint.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("cmvn_mean", torch.zeros(dim))
        self.register_buffer("cmvn_scale", torch.ones(dim))

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Copy `mean` and `scale` (= 1 / std), each [dim], into the buffers.

        Raises:
            ModelError: a shape is not [dim].
        """
        dim = self.cmvn_mean.shape[0]
        if tuple(mean.shape) != (dim,) or tuple(scale.shape) != (dim,):
            raise ModelError(
                f"CMVN statistics have shapes {list(mean.shape)} and {list(scale.shape)}; the features have {dim} dimensions"
            )
        self.cmvn_mean.copy_(mean)
        self.cmvn_scale.copy_(scale)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] -> normalised [B, T, D]; lengths unchanged."""
        if feats.shape[1] == 0:
            return feats, lengths
        return (feats - self.cmvn_mean.to(feats.dtype)) * self.cmvn_scale.to(feats.dtype), lengths


class FeatureExtractor(nn.Module):
    """Fbank then CMVN (`feature_extractor.FeatureExtractor`); keys `fbank.*`, `cmvn.*`."""

    def __init__(self, config: FbankConfig) -> None:
        super().__init__()
        self.fbank = Fbank(config)
        self.cmvn = Cmvn(config.feature_dim)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] int16-range samples -> ([B, T, D] normalised features, [B] frames)."""
        return self.cmvn(*self.fbank(wave, lengths))


# -- encoder ------------------------------------------------------------------------------------------


def subsampled_lengths(frame_lengths: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """Frames after the subsampling convolutions (`Conv2dSubsampling.forward`): (n - 1) // s + 1 per stride."""
    for s in strides:
        frame_lengths = torch.div(frame_lengths - 1, s, rounding_mode="floor") + 1
    return frame_lengths


def sinusoid_positions(length: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """[length, d_model] sin/cos position table of `PositionalEncoding._extend_pe` (built in float32 there too)."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model)
    )
    table = torch.zeros(length, d_model, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class Conv2dSubsampling(nn.Module):
    """Causal Conv2d stack + Linear + LayerNorm (`encoder.Conv2dSubsampling`).

    Each layer pads two zero frames in front (time only), then a 3x3 convolution with stride (s, 1) and
    ReLU: the frequency axis shrinks by 2 per layer, frame t depends on input frames up to s*t. The
    Sequential's child names carry slashes (`subsampling/conv0`) exactly as in the official state dict.
    """

    def __init__(self, input_size: int, d_model: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.strides = tuple(strides)
        layers: list[tuple[str, nn.Module]] = []
        for i, s in enumerate(self.strides):
            layers.append((f"subsampling/pad{i}", nn.ConstantPad2d((0, 0, 2, 0), 0.0)))
            layers.append((f"subsampling/conv{i}", nn.Conv2d(1 if i == 0 else CONV_CHANNELS, CONV_CHANNELS, 3, (s, 1))))
            layers.append((f"subsampling/relu{i}", nn.ReLU()))
        self.conv = nn.Sequential(OrderedDict(layers))
        self.affine = nn.Linear(CONV_CHANNELS * (input_size - 2 * len(self.strides)), d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] features -> ([B, T', d_model], [B] subsampled lengths)."""
        x = self.conv(feats.unsqueeze(1))  # [B, C, T', D']
        batch, channels, frames, width = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * width)  # channel-major, as the official view
        return self.norm(self.affine(x)), subsampled_lengths(lengths, self.strides)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with `nn.MultiheadAttention`'s parameter names and layout.

    `in_proj_weight` [3D, D] stacks the q, k, v projections (rows in that order); `out_proj` is a Linear.
    """

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """[B, T, D], key_valid [B, T] (True = a real frame) -> [B, T, D]."""
        batch, frames, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(width, dim=-1)
        q, k, v = (t.view(batch, frames, self.nhead, width // self.nhead).transpose(1, 2) for t in (q, k, v))
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, width))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer with a closing LayerNorm (`TransformerPreLNEncoderLayer`, final_norm=True).

    x + attn(norm1(x)), then + linear2(GELU(linear1(norm2(.)))), then norm3.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, nhead)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = nn.GELU()
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]."""
        x = x + self.self_attn(self.norm1(x), key_valid)
        x = x + self.linear2(self.activation(self.linear1(self.norm2(x))))
        return self.norm3(x)


class LayerStack(nn.Module):
    """The layers (`encoder.TransformerEncoder`, no closing norm); keys `layers.{i}.*`."""

    def __init__(self, config: VGGTransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.nhead, config.dim_feedforward) for _ in range(config.num_encoder_layers)
        )

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None, num_layers: int) -> torch.Tensor:
        """Run the first `num_layers` layers (`TransformerEncoder.forward` returns at layer `select_layer`)."""
        for layer in self.layers[:num_layers]:
            x = layer(x, key_valid)
        return x


class VGGTransformerEncoder(nn.Module):
    """Subsampling, scaled input + sinusoidal positions, transformer layers (`encoder.VGGTFEncoder.get_mid_emb`).

    The official module works time-first ([T, B, D]); this one batch-first, with the same results.
    """

    def __init__(self, config: VGGTransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.subsampling = Conv2dSubsampling(config.input_size, config.d_model, config.conv2d_stride)
        self.encoder = LayerStack(config)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] features -> ([B, T', d_model] output of layer `num_layers`, [B] lengths)."""
        x, lengths = self.subsampling(feats, lengths)
        d_model = self.config.d_model
        x = math.sqrt(d_model) * x + sinusoid_positions(x.shape[1], d_model, x.device).to(x.dtype)
        key_valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        # An item without a single valid frame would attend to nothing (NaN); let it see all frames instead.
        # Its outputs are padding either way.
        key_valid = key_valid | ~key_valid.any(dim=1, keepdim=True)
        return self.encoder(x, key_valid, num_layers), lengths


class KmeansQuantizer(nn.Module):
    """Nearest codebook column to the L2-normalised hidden state (`encoder.Kmeans`).

    Buffer `codebook` is [codebook_dim, codebook_size] (one entry per column) and persistent. Distances
    are |x|² + |c|² - 2 x·c with x normalised and c as stored; the first minimum wins.
    """

    def __init__(self, codebook_dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.empty(codebook_dim, codebook_size).normal_(0.0, codebook_size**-0.5))

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> int64 codes [...]."""
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        x = F.normalize(hidden.reshape(-1, hidden.shape[-1]).to(dtype), dim=-1)
        codebook = self.codebook.to(dtype)
        distance = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(0) - 2 * (x @ codebook)
        return distance.argmin(-1).reshape(hidden.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes [...] -> codebook entries [..., D]."""
        return self.codebook.t()[codes]


# -- the tokenizer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticLoadReport:
    """What `SemanticTokenizer.load_checkpoint_state` took from a checkpoint."""

    loaded: tuple[str, ...]
    """Checkpoint keys (with the prefix) copied into the module."""
    kept: tuple[str, ...]
    """Derived buffers (`DERIVED_BUFFERS`) the checkpoint lacks, kept as computed from config / CMVN file."""
    other_keys: int
    """Keys outside `CHECKPOINT_PREFIX` (the acoustic encoder's), not judged here."""


class SemanticTokenizer(nn.Module):
    """LongCat-Audio-Codec's semantic tokenizer (`encoder.WavToLabel` plus the x 32767 of
    `LongCatAudioCodecEncoder.get_semantic_codes_with_lengths`).

    State-dict keys are the official ones relative to `CHECKPOINT_PREFIX`: `feature_extractor.*`,
    `model.subsampling.*`, `model.encoder.layers.{i}.*`, `kmeans.codebook`. The official code runs it in
    float32 under no_grad; keep it in float32 (an argmax over 8192 entries is sensitive to rounding).
    """

    def __init__(self, config: SemanticTokenizerConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.feature_extractor = FeatureExtractor(config.fbank)
        self.model = VGGTransformerEncoder(config.encoder)
        self.kmeans = KmeansQuantizer(config.codebook_dim, config.codebook_size)

    # -- lengths and inputs

    def code_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Valid codes for waveforms of `sample_lengths` samples (n codes for 960·n samples)."""
        frames = fbank_lengths(torch.as_tensor(sample_lengths, dtype=torch.int64), self.config.fbank)
        return subsampled_lengths(frames, self.config.encoder.conv2d_stride)

    def _checked(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.dim() != 2 or not wave.is_floating_point():
            raise ValueError(
                f"SemanticTokenizer wants a float waveform [batch, samples], got {wave.dtype} {tuple(wave.shape)}"
            )
        lengths = torch.as_tensor(lengths, device=wave.device)
        if lengths.shape != (wave.shape[0],) or lengths.is_floating_point():
            raise ValueError(
                f"SemanticTokenizer wants integer lengths [{wave.shape[0]}], got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if wave.shape[0] and (lengths.min() < 0 or lengths.max() > wave.shape[1]):
            raise ValueError(
                f"SemanticTokenizer: lengths {lengths.tolist()} must lie in 0..{wave.shape[1]} (the padded length)"
            )
        return wave.to(torch.promote_types(wave.dtype, torch.float32)), lengths.to(torch.int64)

    # -- the pipeline

    @torch.no_grad()
    def features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave [B, L] in [-1, 1] at 16 kHz, lengths [B] -> ([B, T, 80] CMVN'd log-mel, [B] frames)."""
        wave, lengths = self._checked(wave, lengths)
        return self.feature_extractor(wave * WAVE_SCALE, lengths)

    @torch.no_grad()
    def encode_hidden(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave [B, L], lengths [B] -> ([B, F, d_model] output of layer `select_layer`, [B] code lengths).

        Positions at or past an item's length are padding and carry no meaning.
        """
        feats, frames = self.features(wave, lengths)
        if feats.shape[1] == 0:  # shorter than one window: no frame (the official code would fail here)
            return feats.new_zeros(feats.shape[0], 0, self.config.encoder.d_model), torch.zeros_like(frames)
        param = self.model.subsampling.affine.weight
        return self.model(feats.to(param.dtype), frames, self.config.select_layer)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave [B, L] float in [-1, 1] at 16 kHz, lengths [B] -> (codes [B, F] int64, code_lengths [B]).

        F follows from the padded length L; code_lengths from each item's length (n for 960·n samples).
        Codes at or past an item's length are padding.
        """
        hidden, code_lengths = self.encode_hidden(wave, lengths)
        return self.kmeans(hidden), code_lengths

    # -- weights

    @torch.no_grad()
    def load_cmvn_file(self, path: Path | str) -> None:
        """Fill the CMVN buffers from an official `.npy` file (what the official `Cmvn.__init__` reads).

        Raises:
            ModelError: see `load_cmvn`.
        """
        self.feature_extractor.cmvn.set_stats(*load_cmvn(path, self.config.fbank.feature_dim))

    @torch.no_grad()
    def load_checkpoint_state(self, state_dict: Mapping[str, Any], where: str) -> SemanticLoadReport:
        """Load this tokenizer's keys (under `CHECKPOINT_PREFIX`) from the official encoder state dict.

        Replaces the official `strict=False` load: every key under the prefix must be one of this module's,
        with its shape; every parameter and the codebook must be present. Derived buffers the checkpoint
        lacks keep their computed values (load the CMVN file first, as the official constructor does).

        Raises:
            ModelError: naming `where` and every missing, unexpected, non-tensor or mis-shaped key.
        """
        own = self.state_dict()
        ours = {k[len(CHECKPOINT_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(CHECKPOINT_PREFIX)}
        problems = []
        missing = [k for k in own if k not in ours and k not in DERIVED_BUFFERS]
        if missing:
            problems.append(f"missing {len(missing)} key(s): {_names(missing)}")
        unexpected = [k for k in ours if k not in own]
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} key(s): {_names(unexpected)}")
        for key, value in ours.items():
            if key not in own:
                continue
            if not isinstance(value, torch.Tensor):
                problems.append(f"{CHECKPOINT_PREFIX}{key}: not a tensor ({type(value).__name__})")
            elif value.shape != own[key].shape:
                problems.append(f"{CHECKPOINT_PREFIX}{key}: shape {list(value.shape)}, expected {list(own[key].shape)}")
        if problems:
            raise ModelError(
                f"{where}: the semantic tokenizer's weights do not match the official layout:\n{bullet_list(problems)}\n"
                "Use ckpts/LongCatAudioCodec_encoder.pt from meituan-longcat/LongCat-Audio-Codec with a config of the same sizes."
            )
        self.load_state_dict(ours, strict=False)
        return SemanticLoadReport(
            loaded=tuple(CHECKPOINT_PREFIX + k for k in ours),
            kept=tuple(CHECKPOINT_PREFIX + k for k in DERIVED_BUFFERS if k not in ours),
            other_keys=len(state_dict) - len(ours),
        )


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(CHECKPOINT_PREFIX + k for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def parameter_count(config: SemanticTokenizerConfig = OFFICIAL_SEMANTIC_CONFIG) -> int:
    """Trainable-shaped parameters (buffers such as the codebook excluded), counted on the meta device."""
    with torch.device("meta"):
        module = SemanticTokenizer(config)
    return sum(p.numel() for p in module.parameters())
