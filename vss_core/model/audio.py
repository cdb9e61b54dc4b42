"""LongCat-Flash-Omni audio input: feature extraction, the DFSMN audio encoder and the projector.

vss's own implementation of the official audio input path (meituan-longcat/LongCat-Flash-Omni):

    waveform in [-1, 1] at 16 kHz
      x 32768 -> Fbank -> Delta -> Cmvn -> Splice          `FeatureExtractor`  (data/audio_feature.py)
      -> features [B, T, input_size], mask [B, T]
      -> `LongCatAudioEncoder` (DFSMN)                                        (encoders/audio_adaptor.py)
      -> `AudioProjector` (Linear-GELU-Linear to the LLM hidden size)
      -> one LLM input embedding per valid frame (80 ms), one per `<|audio_pad|>` token

The checkpoint files it reads, all under `<model>/audio/`:

    config.json                 `LongCatAudioConfig` keys                 -> `AudioConfig.from_json`
    preprocessor_config.json    FeatureProcessor sections fbank/delta/cmvn/splice
                                                                         -> `PreprocessorConfig.from_json`
    global_cmvn                 Kaldi stats matrix 2 x (D+1)             -> `read_kaldi_cmvn`
    audio_encoder.pt            state dict of `LongCatAudioEncoder` (no prefix)
    audio_projector.pt          state dict of `AudioProjector` (keys `0.*`, `2.*`, no prefix)

The official `preprocessor_config.json` is not published with the source, so vss never hard-codes
its values: they are read from the checkpoint at load time (`FeatureExtractor.from_dir`).
`TINY_PREPROCESSOR_CONFIG` is vss's reconstruction (80 mel bins, 25/10 ms, 15-frame splice with
stride 8: 80 x 15 = 1200 = the encoder's official `input_size`, 80 ms per frame), used by the tiny
checkpoint and the tests.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kaldiio
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vss_core.configfile import read_mapping
from vss_core.errors import ModelError, bullet_list
from vss_core.fbank import FbankConfig, compute_fbank, mel_banks, povey_window

AUDIO_DIR = "audio"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
CMVN_FILE = "global_cmvn"
ENCODER_FILE = "audio_encoder.pt"
PROJECTOR_FILE = "audio_projector.pt"

# data/audio_feature.py FeatureProcessor.__call__: the [-1, 1] waveform is scaled to int16 range.
WAVE_SCALE = 32768.0
# data/audio_feature.py Fbank.__init__: frequencies official Fbank accepts (it asserts).
SAMPLE_RATES = (8000, 16000)
ACTIVATIONS = ("relu6", "relu2", "relu")

TINY_AUDIO_CONFIG: dict[str, Any] = {
    "input_size": 1200,
    "hidden_size": 64,
    "proj_size": 32,
    "vocab_size": 16,
    "nlayer": 3,
    "ndnn": 2,
    "num_right_layers": 1,
    "left_order": 10,
    "right_order": 1,
    "left_stride": 1,
    "right_stride": 1,
    "activation": "relu6",
    "dropout": 0.1,
    "layer_drop": 0.0,
    "gradient_checkpointing": False,
}

TINY_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "fbank": {
        "dither": 0.0,
        "frame_length": 25,
        "frame_shift": 10,
        "preemphasis": 0.97,
        "freq": 16000,
        "high_freq": 8000,
        "low_freq": 20,
        "num_mel_bins": 80,
    },
    "delta": {"delta_order": 0, "window_size": 2},
    "cmvn": {"global_cmvn": CMVN_FILE},
    "splice": {"left": 7, "right": 7, "stride": 8, "random_start": False, "seed": 0},
}


# --------------------------------------------------------------------------------------------
# Reading JSON values: collect every problem, raise once.
# --------------------------------------------------------------------------------------------

_MISSING = object()


class _Fields:
    """Typed reads from one JSON object; problems are appended (naming file and key), not raised."""

    def __init__(self, raw: dict[str, Any], path: Path | str, section: str, problems: list[str]):
        self.raw = raw
        self.path = path
        self.section = section
        self.problems = problems

    def key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def problem(self, name: str, value: Any, why: str) -> None:
        self.problems.append(f"{self.path}: key '{self.key(name)}' = {value!r}: {why}")

    def _get(self, name: str, default: Any) -> Any:
        if name in self.raw:
            return self.raw[name]
        if default is _MISSING:
            self.problems.append(f"{self.path}: key '{self.key(name)}' is missing; add it")
        return default

    def int(self, name: str, default: Any = _MISSING, minimum: int | None = None) -> int:
        value = self._get(name, default)
        if value is _MISSING:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, value, "must be an integer")
            return 0
        if minimum is not None and value < minimum:
            self.problem(name, value, f"must be >= {minimum}")
        return value

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float:
        value = self._get(name, default)
        if value is _MISSING:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.problem(name, value, "must be a finite number")
            return 0.0
        if positive and value <= 0:
            self.problem(name, value, "must be > 0")
        if minimum is not None and value < minimum:
            self.problem(name, value, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            self.problem(name, value, f"must be <= {maximum}")
        return value

    def bool(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default)
        if value is _MISSING:
            return False
        if not isinstance(value, bool):
            self.problem(name, value, "must be true or false")
            return False
        return value

    def section_of(self, name: str, required: bool = True) -> dict[str, Any] | None:
        value = self.raw.get(name, _MISSING)
        if value is _MISSING:
            if required:
                self.problems.append(f"{self.path}: key '{self.key(name)}' is missing; add the section")
            return None
        if not isinstance(value, dict):
            self.problem(name, value, "must be a JSON object")
            return None
        return value


def _require_object(raw: Any, path: Path | str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: must hold a JSON object, got {type(raw).__name__}")
    return raw


def _read_json_file(path: Path) -> dict[str, Any]:
    """The JSON object of one of the checkpoint's audio config files.

    Raises:
        ModelError: the file is missing, not JSON, or not an object.
    """
    problems: list[str] = []
    raw = read_mapping(path, problems, what="the checkpoint must contain it")
    if raw is None:
        raise ModelError(problems[0])
    return raw


# --------------------------------------------------------------------------------------------
# config.json: LongCatAudioConfig
# --------------------------------------------------------------------------------------------

_AUDIO_KEYS = (
    "input_size",
    "hidden_size",
    "proj_size",
    "vocab_size",
    "nlayer",
    "ndnn",
    "num_right_layers",
    "left_order",
    "right_order",
    "left_stride",
    "right_stride",
    "activation",
    "dropout",
    "layer_drop",
    "gradient_checkpointing",
)


@dataclass(frozen=True)
class AudioConfig:
    """`<model>/audio/config.json`: the official `LongCatAudioConfig` (encoders/audio_adaptor.py).

    Defaults are the official ones. `right_stride` is read and kept but, as in the official model,
    unused: the right context uses the left stride as the conv dilation too; likewise
    `gradient_checkpointing` is kept but never read by the official forward. Other keys (for
    example Hugging Face `PretrainedConfig` bookkeeping) are kept verbatim in `extra`.
    """

    input_size: int = 1200
    hidden_size: int = 6144
    proj_size: int = 1536
    vocab_size: int = 5252
    nlayer: int = 22
    ndnn: int = 2
    num_right_layers: int = 6
    left_order: int = 10
    right_order: int = 1
    left_stride: int = 1
    right_stride: int = 1
    activation: str = "relu6"
    dropout: float = 0.1
    layer_drop: float = 0.0
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dim(self) -> int:
        """Width of the encoder output (official `output_embedding_dim`)."""
        return self.proj_size if self.ndnn == 0 else self.hidden_size

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: Path | str) -> AudioConfig:
        """Validate the official keys, with the official defaults for absent ones.

        Raises:
            ModelError: one error listing every problem, each naming `path` and the key.
        """
        raw = _require_object(raw, path)
        problems: list[str] = []
        f = _Fields(raw, path, "", problems)
        d = cls()
        values: dict[str, Any] = {
            "input_size": f.int("input_size", d.input_size, minimum=1),
            "hidden_size": f.int("hidden_size", d.hidden_size, minimum=1),
            "proj_size": f.int("proj_size", d.proj_size, minimum=1),
            "vocab_size": f.int("vocab_size", d.vocab_size, minimum=1),
            "nlayer": f.int("nlayer", d.nlayer, minimum=0),
            "ndnn": f.int("ndnn", d.ndnn, minimum=0),
            "num_right_layers": f.int("num_right_layers", d.num_right_layers, minimum=0),
            "left_order": f.int("left_order", d.left_order, minimum=0),
            "right_order": f.int("right_order", d.right_order, minimum=0),
            "left_stride": f.int("left_stride", d.left_stride, minimum=1),
            "right_stride": f.int("right_stride", d.right_stride, minimum=1),
            "dropout": f.number("dropout", d.dropout, minimum=0.0, maximum=1.0),
            "layer_drop": f.number("layer_drop", d.layer_drop),
            "gradient_checkpointing": f.bool("gradient_checkpointing", d.gradient_checkpointing),
        }
        activation = raw.get("activation", d.activation)
        if activation not in ACTIVATIONS:
            f.problem("activation", activation, f"vss runs {', '.join(ACTIVATIONS)}; use one of them")
        values["activation"] = activation
        if values["layer_drop"] != 0.0:
            f.problem("layer_drop", values["layer_drop"], "the official encoder asserts 0.0; set it to 0.0")
        if values["num_right_layers"] > values["nlayer"]:
            f.problem("num_right_layers", values["num_right_layers"], f"must be <= nlayer ({values['nlayer']})")
        if problems:
            raise ModelError("audio encoder config is invalid:\n" + bullet_list(problems))
        extra = {k: copy.deepcopy(v) for k, v in raw.items() if k not in _AUDIO_KEYS}
        return cls(**values, extra=extra)

    @classmethod
    def from_file(cls, path: Path) -> AudioConfig:
        """Read and validate `<model>/audio/config.json`.

        Raises:
            ModelError: the file is missing, not JSON, or invalid.
        """
        return cls.from_json(_read_json_file(path), path)

    def to_json(self) -> dict[str, Any]:
        """The official keys (and any kept extras), ready for `json.dump`."""
        out = copy.deepcopy(self.extra)
        out.update({k: getattr(self, k) for k in _AUDIO_KEYS})
        return out


# --------------------------------------------------------------------------------------------
# preprocessor_config.json: the FeatureProcessor sections
# --------------------------------------------------------------------------------------------


# Section `fbank` is `vss_core.fbank.FbankConfig` (official `Fbank.__init__`, data/audio_feature.py),
# validated by `_read_fbank` below.


@dataclass(frozen=True)
class DeltaConfig:
    """Section `delta` (official `Delta`): `delta_order` deltas over +-`window_size` frames."""

    delta_order: int
    window_size: int


@dataclass(frozen=True)
class SpliceConfig:
    """Section `splice` (official `Splice`): stack `left`+1+`right` frames, keep every `stride`-th."""

    left: int
    right: int
    stride: int
    random_start: bool
    seed: int | None

    @property
    def context(self) -> int:
        """Frames stacked per output frame."""
        return self.left + self.right + 1


@dataclass(frozen=True)
class PreprocessorConfig:
    """`<model>/audio/preprocessor_config.json`, as the official FeatureProcessor reads it.

    `cmvn.global_cmvn` is kept but not used: the official DataProcessor (data/data_processor.py)
    overwrites it with `global_cmvn` beside the JSON file, and so does `FeatureExtractor.from_dir`.
    The official FeatureProcessor treats `splice` as optional, but the official pad counter
    (`AudioFrameLengthCalculator`, data/audio_data.py) reads `splice.stride`, so vss requires it.
    """

    fbank: FbankConfig
    delta: DeltaConfig
    splice: SpliceConfig
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sample_rate(self) -> int:
        return self.fbank.freq

    @property
    def cmvn_dim(self) -> int:
        """Width the cmvn stats must have: log-mel x (delta_order + 1)."""
        return self.fbank.feature_dim * (self.delta.delta_order + 1)

    @property
    def feature_dim(self) -> int:
        """Width of the final features: the encoder's `input_size` must equal it."""
        return self.cmvn_dim * self.splice.context

    @property
    def frame_seconds(self) -> float:
        """Duration of one output frame (one audio token): hop x splice stride."""
        return self.fbank.window_shift * self.splice.stride / self.fbank.freq

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: Path | str) -> PreprocessorConfig:
        """Validate the keys the official FeatureProcessor reads, collecting every problem.

        Raises:
            ModelError: one error listing every problem, each naming `path` and the key.
        """
        raw = _require_object(raw, path)
        problems: list[str] = []
        top = _Fields(raw, path, "", problems)
        fb = top.section_of("fbank")
        de = top.section_of("delta")
        top.section_of("cmvn")
        sp = top.section_of("splice")
        fbank = _read_fbank(_Fields(fb, path, "fbank", problems)) if fb is not None else None
        delta = _read_delta(_Fields(de, path, "delta", problems)) if de is not None else None
        splice = _read_splice(_Fields(sp, path, "splice", problems)) if sp is not None else None
        if problems or fbank is None or delta is None or splice is None:
            raise ModelError("audio preprocessor config is invalid:\n" + bullet_list(problems))
        return cls(fbank=fbank, delta=delta, splice=splice, raw=copy.deepcopy(raw))

    @classmethod
    def from_file(cls, path: Path) -> PreprocessorConfig:
        """Read and validate `<model>/audio/preprocessor_config.json`.

        Raises:
            ModelError: the file is missing, not JSON, or invalid.
        """
        return cls.from_json(_read_json_file(path), path)

    def to_json(self) -> dict[str, Any]:
        """The original JSON object with the validated values written back."""
        out = copy.deepcopy(self.raw)
        out.setdefault("fbank", {}).update(self.fbank.to_dict())
        out.setdefault("delta", {}).update(
            {"delta_order": self.delta.delta_order, "window_size": self.delta.window_size}
        )
        out.setdefault("cmvn", {}).setdefault("global_cmvn", CMVN_FILE)
        out.setdefault("splice", {}).update(
            {k: getattr(self.splice, k) for k in ("left", "right", "stride", "random_start", "seed")}
        )
        return out


def _read_fbank(f: _Fields) -> FbankConfig:
    dither = f.number("dither", minimum=0.0)
    frame_length = f.number("frame_length", positive=True)
    frame_shift = f.number("frame_shift", positive=True)
    preemphasis = f.number("preemphasis", minimum=0.0, maximum=1.0)
    freq = f.int("freq")
    if "freq" in f.raw and freq not in SAMPLE_RATES:
        f.problem("freq", freq, f"the official Fbank accepts only {SAMPLE_RATES}")
    high_freq = f.number("high_freq")
    low_freq = f.number("low_freq", minimum=0.0)
    num_mel_bins = f.int("num_mel_bins", minimum=1)
    padded = f.raw.get("padded_num_mel_bins")
    if padded is not None:
        padded = f.int("padded_num_mel_bins", minimum=num_mel_bins)
    cfg = FbankConfig(
        dither=dither,
        frame_length=frame_length,
        frame_shift=frame_shift,
        preemphasis=preemphasis,
        freq=freq,
        high_freq=high_freq,
        low_freq=low_freq,
        num_mel_bins=num_mel_bins,
        padded_num_mel_bins=padded,
    )
    if freq in SAMPLE_RATES:
        nyquist = freq / 2
        if "high_freq" in f.raw and high_freq == 0:
            f.problem(
                "high_freq",
                high_freq,
                "the official Fbank reads 0 as 0 Hz (not Kaldi's 'Nyquist'); "
                f"write {nyquist:g} or a negative offset from Nyquist",
            )
        elif not low_freq < cfg.resolved_high_freq <= nyquist:
            f.problem(
                "high_freq",
                high_freq,
                f"gives an upper edge of {cfg.resolved_high_freq:g} Hz; it must lie in "
                f"(low_freq={low_freq:g}, Nyquist={nyquist:g}]",
            )
        if frame_length > 0 and cfg.window_size < 1:
            f.problem("frame_length", frame_length, "gives a window of 0 samples")
        if frame_shift > 0 and cfg.window_shift < 1:
            f.problem("frame_shift", frame_shift, "gives a hop of 0 samples")
    return cfg


def _read_delta(f: _Fields) -> DeltaConfig:
    return DeltaConfig(delta_order=f.int("delta_order", minimum=0), window_size=f.int("window_size", minimum=1))


def _read_splice(f: _Fields) -> SpliceConfig:
    left = f.int("left", minimum=0)
    right = f.int("right", minimum=0)
    stride = f.int("stride", minimum=1)
    random_start = f.bool("random_start")
    seed = f.raw.get("seed", _MISSING)  # official Splice reads it unconditionally
    if seed is _MISSING:
        f.problems.append(f"{f.path}: key '{f.key('seed')}' is missing; add it")
        seed = None
    elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        f.problem("seed", seed, "must be an integer or null")
        seed = None
    if random_start and stride >= 1 and left < stride - 1:
        f.problem(
            "left",
            left,
            f"with random_start the official Splice shifts left by up to stride-1 ({stride - 1}) "
            "frames and fails when left is smaller; raise left or set random_start false",
        )
    return SpliceConfig(left=left, right=right, stride=stride, random_start=random_start, seed=seed)


def audio_token_count(num_samples: int, preproc_cfg: PreprocessorConfig) -> int:
    """Number of `<|audio_pad|>` tokens (= valid encoder frames) for a waveform of `num_samples`.

    Official rule: `AudioFrameLengthCalculator.__call__` (data/audio_data.py), built with
    `downsample_rate=1` by `AudioSftDataConverter` (data/converters/audio_converter.py), which
    writes that many `<|audio_pad|>` between `<|audio|>` and `<|/audio|>`:
    frames = (L - W) // H + 1, then ceil(frames / splice stride). It equals the count of True in the
    FeatureProcessor mask, which is what the adaptor's `audio_embs[audio_mask]` returns. Audio
    shorter than one window gives 0 (the official formula can go negative there; a negative repeat
    count of the pad token is also an empty list).
    """
    fb = preproc_cfg.fbank
    frames = (int(num_samples) - fb.window_size) // fb.window_shift + 1
    stride = preproc_cfg.splice.stride
    return max(0, (frames + stride - 1) // stride)


# --------------------------------------------------------------------------------------------
# global_cmvn: Kaldi stats matrix
# --------------------------------------------------------------------------------------------


def read_kaldi_cmvn(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a Kaldi cmvn stats matrix into float32 `(mean, scale)`, each [D].

    Follows official `Cmvn.__init__`, `calculate_mean_var` and `calculate_mean_var_postprocess`
    (data/audio_feature.py): stats = kaldiio.load_mat(path), 2 x (D+1), count = stats[0][-1];
    mean = stats[0][:-1] / count, var = stats[1][:-1] / count - mean^2 (in the file's precision),
    then in float32: scale = 1 / max(eps, sqrt(var)).

    Raises:
        ModelError: the file is missing, not a Kaldi matrix, mis-shaped, or has count <= 0 or a
            negative variance (the official code would produce NaN features).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: missing; the checkpoint must contain the Kaldi cmvn stats here")
    try:
        stats = np.asarray(kaldiio.load_mat(str(path)))
    except Exception as e:  # kaldiio raises assorted errors on a malformed file
        raise ModelError(f"{path}: not a Kaldi matrix kaldiio can read ({type(e).__name__}: {e})") from e
    if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2:
        raise ModelError(f"{path}: cmvn stats must be a 2 x (D+1) matrix, got shape {tuple(stats.shape)}")
    count = stats[0][-1]
    if not count > 0:
        raise ModelError(f"{path}: cmvn frame count (row 0, last column) = {count!r}; it must be > 0")
    mean = stats[0][:-1] / count
    var = stats[1][:-1] / count - mean * mean
    bad = np.flatnonzero(~(var >= 0))
    if bad.size:
        raise ModelError(
            f"{path}: cmvn variance is negative or NaN in dims {bad[:10].tolist()}"
            f"{' ...' if bad.size > 10 else ''}; the stats are corrupt"
        )
    mean32 = torch.from_numpy(np.ascontiguousarray(mean)).float()
    var32 = torch.from_numpy(np.ascontiguousarray(var)).float()
    eps = torch.tensor(torch.finfo(torch.float32).eps)
    scale = 1.0 / torch.maximum(eps, torch.sqrt(var32))
    return mean32, scale


def write_kaldi_cmvn(path: Path | str, mean: Any, var: Any, count: float) -> Path:
    """Write cmvn stats as a binary Kaldi double matrix (kaldiio.save_mat) the official reader reads.

    Row 0 = sum of features (mean * count) then the count; row 1 = sum of squares
    ((var + mean^2) * count) then 0, as Kaldi's compute-cmvn-stats writes them.

    Raises:
        ValueError: mean and var differ in shape, var is negative, or count is not > 0.
    """
    mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
    var_a = np.asarray(var, dtype=np.float64).reshape(-1)
    if mean_a.shape != var_a.shape or mean_a.size == 0:
        raise ValueError(f"mean {mean_a.shape} and var {var_a.shape} must be the same non-empty size")
    if (var_a < 0).any():
        raise ValueError("var must be >= 0")
    if not count > 0:
        raise ValueError(f"count must be > 0, got {count!r}")
    dim = mean_a.size
    stats = np.zeros((2, dim + 1), dtype=np.float64)
    stats[0, :dim] = mean_a * count
    stats[0, dim] = count
    stats[1, :dim] = (var_a + mean_a * mean_a) * count
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kaldiio.save_mat(str(path), stats)
    return path


# --------------------------------------------------------------------------------------------
# Feature extraction: official FeatureProcessor (inference, no SpecAugment)
# --------------------------------------------------------------------------------------------


def delta_kernels(delta_order: int, window_size: int) -> list[torch.Tensor]:
    """Kernel of each delta order 1..delta_order (length 2*i*window_size + 1), float32.

    Official `Delta.__init__`: base = arange(-n, n+1) / (n(n+1)(2n+1)/3), order i = order i-1
    convolved with base (Kaldi's DeltaFeatures scales).
    """
    n = window_size
    base = np.arange(-n, n + 1) / (n * (n + 1) * (2 * n + 1) / 3)
    kernels, cur = [], np.asarray([1.0])
    for _ in range(delta_order):
        cur = np.convolve(cur, base)
        kernels.append(torch.from_numpy(cur).float())
    return kernels


def _same_padding(feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Frames at t >= len repeat frame len-1 (official `convert_to_same_padding`)."""
    B, T, _ = feats.shape
    last = (lens.to(feats.device) - 1).clamp(min=0).unsqueeze(1)
    idx = torch.minimum(torch.arange(T, device=feats.device).unsqueeze(0), last)
    return torch.gather(feats, 1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))


class FeatureExtractor(nn.Module):
    """The official `FeatureProcessor` (data/audio_feature.py) at inference: no SpecAugment.

    waveform x 32768 -> `Fbank` -> `Delta` -> `Cmvn` -> `Splice`. Computed in float32 with autocast
    off and no grad, as the official modules do. Batch-invariant: frames beyond a waveform's
    length are replaced by its last valid frame before delta and splice ("same padding"), so each
    row equals the same waveform processed alone.

    Randomness follows the config exactly as the official code does (the official DataProcessor
    builds FeatureProcessor with training=False, which turns off SpecAugment only): `fbank.dither`
    > 0 adds Gaussian noise per frame (from `generator`, or torch's global RNG like the official
    code), and `splice.random_start` shifts the splice by a draw from a `random.Random(seed)` owned
    by this extractor, one draw per non-empty call.

    Buffers are non-persistent: they come from the config and `global_cmvn`, not from a state dict.
    """

    def __init__(self, preproc_cfg: PreprocessorConfig, cmvn_path: Path | str):
        """
        Raises:
            ModelError: `cmvn_path` is unreadable or its width differs from
                `preproc_cfg.cmvn_dim` (log-mel bins x (delta_order + 1)).
        """
        super().__init__()
        self.cfg = preproc_cfg
        mean, scale = read_kaldi_cmvn(cmvn_path)
        if mean.numel() != preproc_cfg.cmvn_dim:
            raise ModelError(
                f"{cmvn_path}: cmvn stats have {mean.numel()} dims but the preprocessor config gives "
                f"{preproc_cfg.cmvn_dim} (fbank bins {preproc_cfg.fbank.feature_dim} x (delta_order "
                f"{preproc_cfg.delta.delta_order} + 1)); the two files do not belong together"
            )
        fb = preproc_cfg.fbank
        self.register_buffer("window", povey_window(fb), persistent=False)
        self.register_buffer("mel_banks", mel_banks(fb), persistent=False)
        self.register_buffer("cmvn_mean", mean, persistent=False)
        self.register_buffer("cmvn_scale", scale, persistent=False)
        for i, k in enumerate(delta_kernels(preproc_cfg.delta.delta_order, preproc_cfg.delta.window_size), 1):
            self.register_buffer(f"delta_kernel_{i}", k, persistent=False)
        self._splice_rng = random.Random(preproc_cfg.splice.seed)

    @classmethod
    def from_dir(cls, audio_dir: Path) -> FeatureExtractor:
        """Build from `<model>/audio/`: preprocessor_config.json and global_cmvn beside it.

        Raises:
            ModelError: a file is missing or invalid.
        """
        audio_dir = Path(audio_dir)
        return cls(PreprocessorConfig.from_file(audio_dir / PREPROCESSOR_FILE), audio_dir / CMVN_FILE)

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms [B, L] in [-1, 1] at `sample_rate`, lengths [B] (valid samples per row)
        -> features [B, T, feature_dim] float32, mask [B, T] bool (True = valid frame).

        Raises:
            ValueError: wrong shapes or lengths outside [0, L].
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [B, L], got {tuple(waveforms.shape)}")
        lengths = torch.as_tensor(lengths, device=waveforms.device).long()
        if lengths.shape != waveforms.shape[:1]:
            raise ValueError(f"lengths must be [B]={waveforms.shape[0]}, got {tuple(lengths.shape)}")
        if lengths.numel() and (lengths.min() < 0 or lengths.max() > waveforms.shape[1]):
            raise ValueError(f"lengths must lie in [0, {waveforms.shape[1]}], got {lengths.tolist()}")
        with torch.no_grad(), torch.autocast(device_type=waveforms.device.type, enabled=False):
            feats, lens = self._fbank(waveforms.float() * WAVE_SCALE, lengths, generator)
            feats, lens = self._delta(feats, lens)
            feats = (feats - self.cmvn_mean) * self.cmvn_scale
            feats, lens = self._splice(feats, lens)
        T = feats.shape[1]
        mask = torch.arange(T, device=feats.device).unsqueeze(0) < lens.unsqueeze(1)
        return feats, mask

    def _fbank(
        self, wave: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Official `Fbank.forward` (`vss_core.fbank.compute_fbank`, shared with the codec's semantic
        tokenizer); frame counts only whole frames, never negative (`whole_frames_only`)."""
        return compute_fbank(
            wave, lengths, self.cfg.fbank, self.window, self.mel_banks, generator=generator, whole_frames_only=True
        )

    def _delta(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Official `Delta.forward`: [x, d1 x, ..., dk x] along features; order i applies its
        composed kernel to the same-padded features, edge-replicated by i * window_size frames."""
        order, n = self.cfg.delta.delta_order, self.cfg.delta.window_size
        B, T, D = feats.shape
        if order == 0:
            return feats, lens
        if T == 0:
            return feats.new_zeros(B, 0, D * (order + 1)), lens
        feats = _same_padding(feats, lens)
        rows = feats.transpose(1, 2).reshape(B * D, 1, T)
        parts = [feats]
        for i in range(1, order + 1):
            kernel = getattr(self, f"delta_kernel_{i}").view(1, 1, -1)
            padded = F.pad(rows, (i * n, i * n), mode="replicate")
            parts.append(F.conv1d(padded, kernel).reshape(B, D, T).transpose(1, 2))
        return torch.cat(parts, dim=-1), lens

    def _splice(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Official `Splice.forward`: output frame j stacks same-padded frames
        j*stride - left .. j*stride + right (edges replicated); T_out = ceil(T / stride)."""
        sp = self.cfg.splice
        B, T, D = feats.shape
        if sp.left == 0 and sp.right == 0 and sp.stride == 1:
            return feats, lens
        if T == 0:
            return feats.new_zeros(B, 0, D * sp.context), lens
        left = sp.left
        if sp.random_start:
            left -= self._splice_rng.randint(0, sp.stride - 1)
        right = sp.context - 1 - left
        feats = _same_padding(feats, lens)
        padded = torch.cat([feats[:, :1].expand(B, left, D), feats, feats[:, -1:].expand(B, right, D)], dim=1)
        t_out = (T + sp.stride - 1) // sp.stride
        idx = torch.arange(t_out, device=feats.device).unsqueeze(1) * sp.stride + torch.arange(
            sp.context, device=feats.device
        )
        out = padded[:, idx].reshape(B, t_out, sp.context * D)
        return out, torch.div(lens + sp.stride - 1, sp.stride, rounding_mode="floor")


# --------------------------------------------------------------------------------------------
# Encoder and projector: encoders/audio_adaptor.py
# --------------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    """Official `LongCatAudioEncoder.__init__` activations (not in place here: same values)."""
    if name == "relu6":
        return nn.ReLU6()
    if name == "relu2":
        return nn.Hardtanh(min_val=0.0, max_val=2.0)
    return nn.ReLU()


class LongCatAudioEncoderLayer(nn.Module):
    """One DFSMN block (official `LongCatAudioEncoderLayer`).

    memory = depthwise Conv1d (no bias) over LayerNorm(x), kernel left+right+1 with dilation d,
    zero padded by left*d before and right*d after; h = dropout(memory) + x; out = ffn(h) + h with
    ffn = LayerNorm, Linear(proj -> hidden), activation, Linear(hidden -> proj).
    Keys: memory_ln.{weight,bias}, memory.weight, ffn.0.{weight,bias}, ffn.1.{weight,bias},
    ffn.3.{weight,bias}.
    """

    def __init__(
        self,
        proj_size: int,
        hidden_size: int,
        left_order: int,
        right_order: int,
        dilation: int,
        activation: str,
        dropout: float,
    ):
        super().__init__()
        self.memory_ln = nn.LayerNorm(proj_size)
        self.memory = nn.Conv1d(
            proj_size,
            proj_size,
            kernel_size=left_order + right_order + 1,
            dilation=dilation,
            groups=proj_size,
            bias=False,
        )
        self.ffn = nn.Sequential(
            nn.LayerNorm(proj_size),
            nn.Linear(proj_size, hidden_size),
            _activation(activation),
            nn.Linear(hidden_size, proj_size),
        )
        self.dropout = nn.Dropout(dropout)
        self.left_pad = left_order * dilation
        self.right_pad = right_order * dilation

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, proj]; `keep` [B, T, 1] (1 = valid) zeroes the memory input at padded frames."""
        memory_in = self.memory_ln(x)
        if keep is not None:
            memory_in = memory_in * keep
        memory_in = F.pad(memory_in.transpose(1, 2), (self.left_pad, self.right_pad))
        h = self.dropout(self.memory(memory_in).transpose(1, 2)) + x
        return self.ffn(h) + h


class LongCatAudioEncoder(nn.Module):
    """The official DFSMN audio encoder (`LongCatAudioEncoder`, encoders/audio_adaptor.py).

    ffn (Linear input -> hidden, activation, Linear hidden -> proj, no bias) -> `nlayer` DFSMN
    blocks (right context only in the last `num_right_layers`; dilation = left_stride) -> dnn
    (`ndnn` x [Linear, activation]) -> + 0 * sum(output(h)). The CTC `output` head changes no
    value; it is kept in the graph, as the official forward does, so its parameters take part in
    backward. The state dict is exactly the official one (`audio_encoder.pt`, no prefix).
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.ffn = nn.Sequential(
            nn.Linear(cfg.input_size, cfg.hidden_size),
            _activation(cfg.activation),
            nn.Linear(cfg.hidden_size, cfg.proj_size, bias=False),
        )
        first_right = cfg.nlayer - cfg.num_right_layers
        self.fsmn_layers = nn.ModuleList(
            LongCatAudioEncoderLayer(
                cfg.proj_size,
                cfg.hidden_size,
                cfg.left_order,
                cfg.right_order if i >= first_right else 0,
                cfg.left_stride,
                cfg.activation,
                cfg.dropout,
            )
            for i in range(cfg.nlayer)
        )
        dnn: list[nn.Module] = []
        width = cfg.proj_size
        for _ in range(cfg.ndnn):
            dnn += [nn.Linear(width, cfg.hidden_size), _activation(cfg.activation)]
            width = cfg.hidden_size
        self.dnn = nn.Sequential(*dnn)
        self.output = nn.Linear(cfg.output_dim, cfg.vocab_size)

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        official_batching: bool = False,
    ) -> torch.Tensor:
        """features [B, T, input_size], mask [B, T] (True = valid) -> hidden [B, T, output_dim].

        As the official forward: features are cast to the parameters' dtype (the official adaptor
        casts them to its bf16), and hidden states are multiplied by the mask before every block
        and before the dnn.

        Padding: in the official forward a padded frame enters the memory conv as
        LayerNorm(0) = the LayerNorm bias, and the last `right_order * left_stride` valid frames
        of a shorter sequence see it through the right context, so their output depends on the
        batch. By default vss also zeroes the memory input at padded frames: every valid output
        then equals the official forward of that sequence alone (what the official code computes
        for a conversation with one audio). `official_batching=True` leaves that out and
        reproduces the official forward on a padded batch (several audios in one conversation).
        """
        dtype = self.ffn[0].weight.dtype
        features = features.to(dtype)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        keep = mask.unsqueeze(-1).to(dtype)
        memory_keep = None if official_batching else keep
        h = self.ffn(features)
        for layer in self.fsmn_layers:
            h = layer(h * keep, memory_keep)
        h = self.dnn(h * keep)
        return h + 0.0 * self.output(h).sum()


class AudioProjector(nn.Sequential):
    """Official `audio_projector` (`LongCatOmniAudioAdaptor`): Linear(encoder out -> LLM hidden),
    GELU (erf), Linear(LLM hidden -> LLM hidden). Keys `0.*` and `2.*` (`audio_projector.pt`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


def count_parameters(cfg: AudioConfig, llm_hidden_size: int) -> dict[str, int]:
    """Parameters of the encoder and of the projector to `llm_hidden_size`, built on the meta device."""
    with torch.device("meta"):
        encoder = LongCatAudioEncoder(cfg)
        projector = AudioProjector(cfg.output_dim, llm_hidden_size)
    return {
        "audio_encoder": sum(p.numel() for p in encoder.parameters()),
        "audio_projector": sum(p.numel() for p in projector.parameters()),
    }
