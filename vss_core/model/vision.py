"""LongCat-Flash-Omni vision side: the LongCat-ViT encoder, its projector, frame preprocessing.

vss's own implementation of what the official repository (github.com/meituan-longcat/LongCat-Flash-Omni)
runs, written so the published checkpoint files load by their real key names:

    vision/config.json          -> `VisionConfig.from_json`  (keys of `LongCatVisionConfig.__init__`)
    vision/vision_model.pt      -> `LongCatVisionModel`      (state dict of the official `LongCatVisionModel`)
    vision/vision_projector.pt  -> `VisionProjector`         (state dict of the official `VisionProjector`)

Data flow of one sample (official `data/data_processor.py` + `longcat_omni_demo.py`):

    frames (RGB uint8) --preprocess_frames--> pixel_values [N_patches, 3*2*14*14], grid_shapes [(1, h, w)]
        --LongCatVisionModel--> [N_patches, hidden] --VisionProjector--> [sum(h*w/2), llm_hidden]
        --(only if the post-pooling ratio > 1) v_post_squeeze--> [sum(rh*rw), llm_hidden]

A "unit" is one still image (tiled twice along time) or one pair of consecutive video frames
(`video_vit`): the Conv3d patch embedding with temporal stride 2 turns each unit into a t=1 grid,
and the unit fills h*w/2 `<|image_pad|>` positions of the LLM sequence.

Numerics. The official module computes RMSNorm and the rotary rotation in exactly float32; vss computes
them in float32 or wider (float64 stays float64), identical for bf16/fp16/fp32 weights. The official demo
calls `.bfloat16()` on the whole adaptor, which also casts the non-persistent rotary `inv_freq` buffer,
so its rotary angles are computed in bfloat16; vss always computes them in at least float32 (the math
the module defines when it is not cast). Attention is the same non-causal softmax attention per unit as
the official varlen flash kernel (`cu_seqlens`), computed with `scaled_dot_product_attention` over
batches of equal-length units.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.checkpoint import checkpoint

from vss_core.errors import ModelError, bullet_list

GridShape = tuple[int, int, int]

# Global (non vision/config.json) settings of the official demo (`longcat_omni_demo.init_global_config`)
# that the vision preprocessing and post-pooling read.
DEMO_VIDEO_VIT = True  # frames are encoded in pairs (DataProcessor loads the config with video_vit=True)
DEMO_V_POST_SQUEEZE = True  # post-pooling enabled (DataProcessor: v_post_squeeze=True)
DEMO_MAX_VISION_LENGTH = 28672
DEMO_FIX_POOLING_TIMES = -1  # omni_video_fix_post_pooling_times
DEMO_FIX_POOLING_TOKENS = -1  # omni_video_fix_post_pooling_tokens

# Sizes of the real encoder: tech report (arXiv 2511.00279) Table 1, "LongCat-ViT": patch 14, 2D-RoPE,
# hidden 1280, intermediate 5184, 32 layers, 16 heads, 637M parameters (= UniViTAR-0.6B). The Hub's
# vision/config.json is the authority; these are only used for reporting sizes.
REAL_VISION_SIZES: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5184,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
}
# LongCat-Flash LLM hidden size: the projector's output (`proj_output_dim = text_embedding.embedding_dim`).
LONGCAT_FLASH_HIDDEN = 6144

TINY_VISION_CONFIG: dict[str, Any] = {
    "resolution_mode": "native",
    "patch_size": 14,
    "temporal_patch_size": 2,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 96,
    "qkv_bias": True,
    "qk_normalization": True,
    "patch_embedding_bias": True,
    "layer_norm_eps": 1e-6,
    "rope_theta": 10000,
    "spatial_merge_size": 1,
    "norm_type": "RMSNorm",
    "hidden_act": "SwiGLU",
    "pe_type": "rope2d",
    "min_tokens": 4,
    "max_tokens": 64,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "adaptor_dim": 64,
    "resize_factor": 2,
    "relarge_ratio": 1,
    "min_tokens_video": 4,
    "max_tokens_video": 256,
}


# --- config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    """vision/config.json: the keys and defaults of the official `LongCatVisionConfig.__init__`
    (encoders/vision_adaptor.py), plus the keys the official code reads as attributes without a default
    (`resize_factor`, `relarge_ratio`, `video_vit`, `*_tokens_video*`: encoders/utils.py
    `LongCatImageTransform.__init__`, data/utils.py `calculate_token_num_after_post_pooling`), which
    are None here when the file lacks them.
    """

    resolution_mode: str = "native"
    init_method: str = "xavier"
    num_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    image_size: int = 1792
    patch_dropout: float = 0.0
    attention_dropout: float = 0.0
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    initializer_range: float = 1e-10
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    hidden_size: int = 1024
    intermediate_size: int = 4224
    patch_embedding_bias: bool = True
    qk_normalization: bool = True
    qkv_bias: bool = False
    initializer_factor: float = 0.1
    use_pre_norm: bool = False
    pe_type: str = "rope2d"
    rope_theta: float = 10000
    spatial_merge_size: int = 1
    norm_type: str = "RMSNorm"
    hidden_act: str = "SwiGLU"
    use_flash_attn: bool = True
    layer_norm_eps: float = 1e-6
    min_tokens: int = 576
    max_tokens: int = 16384
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    v_post_squeeze: bool = False
    adaptor_dim: int = 7168
    # read by the official code as attributes, no default there
    resize_factor: int | None = None
    relarge_ratio: float | None = None
    video_vit: bool | None = None
    min_tokens_video: int | None = None
    max_tokens_video: int | None = None
    min_tokens_video_vit: int | None = None
    max_tokens_video_vit: int | None = None
    # not config keys: other keys of the file (written back by to_json) and where it was read from
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = field(default="vision/config.json", compare=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: str | Path) -> VisionConfig:
        """Build from the parsed vision/config.json; absent keys take the official defaults.

        Raises ModelError (naming the file and each bad key) for wrong types and for values vss cannot
        run: hidden_act other than SwiGLU, norm_type other than RMSNorm, pe_type other than rope2d,
        resolution_mode other than native, relarge_ratio other than 1, a head size not divisible by 4
        (2-D rotary), num_channels / temporal_patch_size other than 3 / 2. use_flash_attn is accepted
        whatever its value (vss uses torch's attention).
        """
        src = str(path)
        if not isinstance(raw, dict):
            raise ModelError(f"{src}: must be a JSON object, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls) if f.name not in ("extra", "source")}
        problems: list[str] = []
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name not in known:
                continue
            checked = _check_type(name, value, known[name].type)
            if checked is None and not (value is None and _optional(known[name].type)):
                problems.append(f"key '{name}' = {value!r} has the wrong type (expected {known[name].type})")
            else:
                values[name] = checked
        extra = {k: v for k, v in raw.items() if k not in known}
        if not problems:
            cfg = cls(**values, extra=extra, source=src)
            problems = cfg._unsupported()
        if problems:
            raise ModelError(f"{src}: vision config not usable (fix these keys):\n{bullet_list(problems)}")
        return cfg

    def _unsupported(self) -> list[str]:
        out: list[str] = []

        def bad(key: str, why: str) -> None:
            out.append(f"key '{key}' = {getattr(self, key)!r}: {why}")

        if self.hidden_act != "SwiGLU":
            bad("hidden_act", "only 'SwiGLU' exists in LongCat-ViT (the official layer asserts it)")
        if self.norm_type != "RMSNorm":
            bad("norm_type", "only 'RMSNorm' exists in LongCat-ViT")
        if self.pe_type != "rope2d":
            bad("pe_type", "only 'rope2d' exists in LongCat-ViT (the official encoder asserts it)")
        if self.resolution_mode != "native":
            bad("resolution_mode", "vss implements the 'native' resolution path only")
        if self.relarge_ratio is not None and self.relarge_ratio != 1:
            bad("relarge_ratio", "must be 1 (the official transform asserts it)")
        if self.num_channels != 3:
            bad("num_channels", "must be 3 (the official patch embedding is built with 3 input channels)")
        if self.temporal_patch_size != 2:
            bad("temporal_patch_size", "must be 2 (frames are encoded in pairs)")
        sizes = ("patch_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
        for key in sizes + ("spatial_merge_size", "min_tokens", "max_tokens", "adaptor_dim"):
            if getattr(self, key) <= 0:
                bad(key, "must be positive")
        if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads:
            bad("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
        elif self.num_attention_heads > 0 and (self.hidden_size // self.num_attention_heads) % 4:
            bad("hidden_size", "hidden_size / num_attention_heads must be divisible by 4 (2-D rotary)")
        for key in ("image_mean", "image_std"):
            if len(getattr(self, key)) != 3:
                bad(key, "must list 3 values (R, G, B)")
        if any(s == 0 for s in self.image_std):
            bad("image_std", "must not contain 0")
        if self.resize_factor is not None and self.resize_factor <= 0:
            bad("resize_factor", "must be positive")
        return out

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_inner_size(self) -> int:
        """SwiGLU inner width, as the official `SwiGLU`: int(intermediate_size * 2 / 3)."""
        return int(self.intermediate_size * 2 / 3)

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: 3 * temporal_patch_size * patch_size**2 (1176)."""
        return self.num_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    def to_json(self) -> dict[str, Any]:
        """The config as vision/config.json holds it (official key names; optional keys only when set)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("extra", "source"):
                continue
            value = getattr(self, f.name)
            if value is None and _optional(f.type):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.update(self.extra)
        return out

    def require(self, key: str) -> Any:
        """Value of a key the official code reads without a default; ModelError naming it if absent."""
        value = getattr(self, key)
        if value is None:
            raise ModelError(
                f"{self.source}: key '{key}' is missing; the official preprocessing reads it from "
                "vision/config.json (re-download the checkpoint's vision/config.json)"
            )
        return value


def _optional(annotation: Any) -> bool:
    return isinstance(annotation, str) and annotation.endswith("| None")


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """The value converted to the field's type, or None if it has the wrong type."""
    kind = str(annotation).replace(" | None", "")
    if value is None:
        return None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == "float":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind.startswith("tuple"):
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return tuple(float(v) for v in value)
        return None
    raise AssertionError(f"unhandled field type {annotation} of {name}")


# --- encoder --------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs (the official code uses exactly float32)."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """RMSNorm as the official `RMSNorm` (encoders/vision_adaptor.py): variance in float32 (or wider),
    normalised value cast back to the input dtype, then scaled by the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(_compute_dtype(x.dtype))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [N, heads, head_dim] by angles freqs [N, head_dim/2], as the official
    `apply_rotary_pos_emb_vision`: the angles are repeated twice along the head dim (cat(f, f)) and
    paired with rotate_half, computed in float32 (or wider) and cast back to x's dtype."""
    dtype = _compute_dtype(x.dtype)
    angles = torch.cat((freqs, freqs), dim=-1).to(dtype).unsqueeze(1)
    xf = x.to(dtype)
    return (xf * angles.cos() + _rotate_half(xf) * angles.sin()).to(x.dtype)


def rotary_position_ids(grid_shapes: Sequence[GridShape], spatial_merge_size: int) -> torch.Tensor:
    """(row, col) of every token [N, 2], as the official `VisionRotaryEmbedding2D.forward`.

    Tokens are numbered block by block: spatial_merge_size x spatial_merge_size blocks in row-major
    order, row-major inside a block, the whole grid repeated t times. With spatial_merge_size 1 (the
    official default) this is plain row-major order, the order of the patches `flatten_patches` (the
    official collate, which hard-codes merge size 1) produces.
    """
    s, out = spatial_merge_size, []
    for t, h, w in grid_shapes:
        rows = torch.arange(h).view(h // s, s, 1, 1).expand(h // s, s, w // s, s)
        cols = torch.arange(w).view(1, 1, w // s, s).expand(h // s, s, w // s, s)
        rows, cols = rows.permute(0, 2, 1, 3).reshape(-1), cols.permute(0, 2, 1, 3).reshape(-1)
        out.append(torch.stack((rows, cols), dim=-1).repeat(t, 1))
    return torch.cat(out, dim=0)


class VisionRotaryEmbedding2D(nn.Module):
    """2-D rotary angles, as the official `VisionRotaryEmbedding2D` (built with dim = head_dim // 2):
    inv_freq has head_dim/4 entries; a token at (row, col) gets [row * inv_freq, col * inv_freq].

    `inv_freq` is a non-persistent buffer (not in the state dict), as in the official module, kept for
    parity only: forward recomputes it in float32 from theta, so neither a dtype cast of the module
    (the official demo's `.bfloat16()`) nor meta-device construction + `to_empty` can change the angles.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.theta = dim, theta
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def _inv_freq(self, device: torch.device | None) -> torch.Tensor:
        exponent = torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim
        return 1.0 / (self.theta**exponent)

    def forward(
        self, grid_shapes: Sequence[GridShape], spatial_merge_size: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """Angles [N, head_dim/2] in `_compute_dtype(dtype)` on `device`."""
        cdtype = _compute_dtype(dtype)
        inv_freq = self._inv_freq(device).to(cdtype)  # float32 values, as the official buffer holds
        size = max(max(g) for g in grid_shapes)  # the official table spans max(t, h, w) positions
        table = torch.outer(torch.arange(size, dtype=cdtype, device=device), inv_freq)
        return table[rotary_position_ids(grid_shapes, spatial_merge_size).to(device)].flatten(1)


def _segments(grid_shapes: Sequence[GridShape]) -> list[tuple[int, int, int]]:
    """(start, count, length) runs of consecutive units of equal token count t*h*w."""
    lengths = [t * h * w for t, h, w in grid_shapes]
    runs, start = [], 0
    for length, group in itertools.groupby(lengths):
        count = len(list(group))
        runs.append((start, count, length))
        start += count * length
    return runs


class Attention(nn.Module):
    """Official `Attention`: fused qkv (bias = qkv_bias), 2-D rotary on q and k, then q/k RMSNorm over
    the full width (all heads), non-causal softmax attention within each unit, output projection."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.qk_normalization = cfg.qk_normalization
        if cfg.qk_normalization:
            self.q_norm = RMSNorm(self.embed_dim, eps=cfg.layer_norm_eps)
            self.k_norm = RMSNorm(self.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, runs: list[tuple[int, int, int]]) -> torch.Tensor:
        n = x.shape[0]
        # "(three h d)": q | k | v, each heads x head_dim
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = apply_rotary(q, freqs), apply_rotary(k, freqs)
        if self.qk_normalization:
            q = self.q_norm(q.reshape(n, self.embed_dim)).view(n, self.num_heads, self.head_dim)
            k = self.k_norm(k.reshape(n, self.embed_dim)).view(n, self.num_heads, self.head_dim)
        v = v.to(q.dtype)
        out = []
        for start, count, length in runs:  # one batch of equal-length units per run
            rows = slice(start, start + count * length)
            shape = (count, length, self.num_heads, self.head_dim)
            qs, ks, vs = (t[rows].view(shape).transpose(1, 2) for t in (q, k, v))
            ctx = F.scaled_dot_product_attention(qs, ks, vs)  # [units, heads, length, head_dim]
            out.append(ctx.transpose(1, 2).reshape(count * length, self.embed_dim))
        return self.proj(torch.cat(out, dim=0) if len(out) > 1 else out[0])


class SwiGLU(nn.Module):
    """Official `SwiGLU`: fc2(norm(silu(fc1(x)) * fc3(x))), inner width int(intermediate_size*2/3)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        inner = cfg.mlp_inner_size
        self.fc1 = nn.Linear(cfg.hidden_size, inner)
        self.fc2 = nn.Linear(inner, cfg.hidden_size)
        self.fc3 = nn.Linear(cfg.hidden_size, inner)
        self.norm = RMSNorm(inner, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1(x)) * self.fc3(x)))


class LongCatVisionEncoderLayer(nn.Module):
    """Official `LongCatVisionEncoderLayer`: pre-norm residual blocks scaled by layer scale ls1/ls2."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.ls1 = nn.Parameter(cfg.initializer_factor * torch.ones(cfg.hidden_size))
        self.ls2 = nn.Parameter(cfg.initializer_factor * torch.ones(cfg.hidden_size))
        self.attn = Attention(cfg)
        self.norm1 = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.norm2 = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, runs: list[tuple[int, int, int]]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), freqs, runs) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class LongCatVisionEmbeddings(nn.Module):
    """Official `LongCatVisionEmbeddings`: Conv3d with kernel = stride = [2, 14, 14] (one output per
    patch). Applied as the equal matmul over the flattened (c, t, ph, pw) patch vector."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.kernel_size = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.patch_embedding = nn.Conv3d(
            3, cfg.hidden_size, kernel_size=self.kernel_size, stride=self.kernel_size, bias=cfg.patch_embedding_bias
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        return F.linear(pixel_values.to(weight.dtype), weight.flatten(1), self.patch_embedding.bias)


class LongCatVisionEncoder(nn.Module):
    """Official `LongCatVisionEncoder`: `layers` and the (parameter-free) `rotary_pos_emb`."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.spatial_merge_size = cfg.spatial_merge_size
        self.layers = nn.ModuleList(LongCatVisionEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.rotary_pos_emb = VisionRotaryEmbedding2D(cfg.head_dim // 2, theta=cfg.rope_theta)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, grid_shapes: Sequence[GridShape]) -> torch.Tensor:
        freqs = self.rotary_pos_emb(grid_shapes, self.spatial_merge_size, x.dtype, x.device)
        runs = _segments(grid_shapes)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, freqs, runs, use_reentrant=False)
            else:
                x = layer(x, freqs, runs)
        return x


class LongCatVisionModel(nn.Module):
    """LongCat-ViT; state-dict keys are those of the official `LongCatVisionModel`
    (encoders/vision_adaptor.py), i.e. of vision/vision_model.pt."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = LongCatVisionEmbeddings(cfg)
        self.encoder = LongCatVisionEncoder(cfg)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each layer in backward (training only)."""
        self.encoder.gradient_checkpointing = enabled

    def forward(self, pixel_values: torch.Tensor, grid_shapes: Sequence[GridShape]) -> torch.Tensor:
        """pixel_values [N_patches, 3*2*14*14] (patch order of `flatten_patches`), grid_shapes one
        (t, h, w) per unit in the same order -> [N_patches, hidden]."""
        grid_shapes = _as_grids(grid_shapes)
        cfg = self.config
        if pixel_values.ndim != 2 or pixel_values.shape[1] != cfg.patch_dim:
            raise ValueError(f"pixel_values must be [N_patches, {cfg.patch_dim}], got {list(pixel_values.shape)}")
        total = sum(t * h * w for t, h, w in grid_shapes)
        if total != pixel_values.shape[0]:
            raise ValueError(f"grid_shapes cover {total} patches but pixel_values has {pixel_values.shape[0]}")
        s = cfg.spatial_merge_size
        for t, h, w in grid_shapes:
            if w % 2 or h % s or w % s or min(t, h, w) <= 0:
                raise ValueError(f"grid (t, h, w)={(t, h, w)}: w must be even and h, w divisible by {s}")
        return self.encoder(self.embeddings(pixel_values), grid_shapes)


class VisionProjector(nn.Module):
    """Official `VisionProjector`: concatenates each 2 horizontally adjacent encoder tokens
    (h x w -> h x w/2 x 2*hidden), then LayerNorm, Linear, GELU, Linear, GELU (`p0.0`..`p0.4`) and the
    output Linear `proj`. Built as in `LongCatOmniVisionAdaptor`: encoder_dim = 2 * hidden_size,
    adaptor_dim = config.adaptor_dim, proj_output_dim = the LLM hidden size."""

    def __init__(self, encoder_dim: int, adaptor_dim: int, proj_output_dim: int) -> None:
        super().__init__()
        self.encoder_dim = encoder_dim
        self.p0 = nn.Sequential(
            nn.LayerNorm(encoder_dim),
            nn.Linear(encoder_dim, adaptor_dim),
            nn.GELU(),
            nn.Linear(adaptor_dim, adaptor_dim),
            nn.GELU(),
        )
        self.proj = nn.Linear(adaptor_dim, proj_output_dim)

    def forward(self, hidden: torch.Tensor, grid_shapes: Sequence[GridShape]) -> torch.Tensor:
        """hidden [N, encoder_dim/2] in row-major (h, w) order per unit -> [sum(h*w/2), proj_output_dim]."""
        grid_shapes = _as_grids(grid_shapes)
        for t, h, w in grid_shapes:
            if t != 1 or w % 2:
                raise ValueError(f"projector needs t == 1 and an even w per unit, got (t, h, w)={(t, h, w)}")
        total = sum(h * w for _, h, w in grid_shapes)
        if hidden.ndim != 2 or hidden.shape[0] != total or 2 * hidden.shape[1] != self.encoder_dim:
            raise ValueError(
                f"hidden must be [{total}, {self.encoder_dim // 2}] for these grid_shapes, got {list(hidden.shape)}"
            )
        # every unit has an even number of tokens and pairs never straddle rows (w even), so pairing
        # the whole sequence equals the official per-unit reshape(h, w/2, 2*dim)
        return self.proj(self.p0(hidden.reshape(total // 2, self.encoder_dim)))


def build_projector(cfg: VisionConfig, llm_hidden: int) -> VisionProjector:
    """The projector as `LongCatOmniVisionAdaptor` builds it (longcat_omni_demo.py passes
    proj_output_dim = text_embedding.embedding_dim, the LLM hidden size)."""
    return VisionProjector(2 * cfg.hidden_size, cfg.adaptor_dim, llm_hidden)


def _as_grids(grid_shapes: Sequence[Sequence[int]] | torch.Tensor) -> list[GridShape]:
    if isinstance(grid_shapes, torch.Tensor):
        grid_shapes = grid_shapes.tolist()
    grids = [(int(g[0]), int(g[1]), int(g[2])) for g in grid_shapes]
    if not grids:
        raise ValueError("grid_shapes is empty")
    return grids


def count_parameters(cfg: VisionConfig, llm_hidden: int = LONGCAT_FLASH_HIDDEN) -> dict[str, int]:
    """Parameter counts of encoder and projector, built on the meta device (no memory)."""
    with torch.device("meta"):
        encoder, projector = LongCatVisionModel(cfg), build_projector(cfg, llm_hidden)
    n_enc = sum(p.numel() for p in encoder.parameters())
    n_proj = sum(p.numel() for p in projector.parameters())
    return {"vision_model": n_enc, "vision_projector": n_proj, "total": n_enc + n_proj}


# --- preprocessing (official encoders/utils.py LongCatImageTransform, data/utils.py) ----------------


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, patch_size: int = 14
) -> tuple[int, int]:
    """Target (height, width), as the official `LongCatImageTransform.smart_resize`.

    Both sides rounded to multiples of `factor` (Python's round: half to even); if the area exceeds
    max_pixels both shrink by sqrt(area/max) and floor, if under min_pixels both grow and ceil; a side
    smaller than factor is first scaled up with the aspect ratio; finally height is floored to a multiple
    of patch_size (14) and width of 2*patch_size (28, the projector pairs 2 columns).
    """
    if height < factor or width < factor:
        if height < factor:
            width, height = int(factor / height * width) + 1, factor
        if width < factor:
            height, width = int(factor / width * height) + 1, factor
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    if h_bar < factor:  # extreme aspect ratio
        h_bar, w_bar = factor, max_pixels // factor
    if w_bar < factor:
        h_bar, w_bar = max_pixels // factor, factor
    return h_bar // patch_size * patch_size, w_bar // (2 * patch_size) * (2 * patch_size)


def resize_factor(cfg: VisionConfig) -> int:
    """patch_size * spatial_merge_size * resize_factor, as `LongCatImageTransform.__init__` derives it."""
    return cfg.patch_size * cfg.spatial_merge_size * int(cfg.require("resize_factor"))


def pixel_budget(
    cfg: VisionConfig, num_frames: int, *, is_video: bool, video_vit: bool = DEMO_VIDEO_VIT
) -> tuple[int, int]:
    """(min_pixels, max_pixels) per frame, as `LongCatImageTransform.__call__` (native mode).

    One frame: min_tokens/max_tokens patches. Several frames of a video with video_vit: the
    `*_tokens_video_vit` budget (default min_tokens/max_tokens) with max split over the num_frames/2
    pairs; several frames otherwise: max split over num_frames. max never exceeds max_tokens patches.
    """
    p2 = cfg.patch_size * cfg.patch_size
    if num_frames == 1:
        return cfg.min_tokens * p2, cfg.max_tokens * p2
    min_vit = (cfg.min_tokens_video_vit if cfg.min_tokens_video_vit is not None else cfg.min_tokens) * p2
    max_vit = (cfg.max_tokens_video_vit if cfg.max_tokens_video_vit is not None else cfg.max_tokens) * p2
    split = num_frames // 2 if (video_vit and is_video) else num_frames
    return min_vit, min(max_vit // split, cfg.max_tokens * p2)


def _to_uint8_rgb(frame: Any) -> np.ndarray:
    """HxWx3 uint8 RGB from a PIL image, or a numpy array / tensor (uint8, or float in [0, 1])."""
    if isinstance(frame, Image.Image):
        if frame.mode != "RGB":  # official convert_to_rgb: composite transparency over white
            rgba = frame.convert("RGBA")
            frame = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255)), rgba).convert("RGB")
        return np.asarray(frame)
    arr = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"a frame must be H x W x 3 (RGB), got shape {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"a frame must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """BICUBIC resize to (h, w) with PIL, as the official transform (`resize` with reducing_gap=None)
    -> uint8 [3, h, w]. Rescaling and normalising come after (`normalize_patches`)."""
    h, w = size
    img = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(img.resize((w, h), resample=Image.Resampling.BICUBIC, reducing_gap=None)).transpose(2, 0, 1)


def normalize_patches(
    patches: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    patch_size: int = 14,
    temporal_patch_size: int = 2,
) -> torch.Tensor:
    """uint8 patches [N, c*t*ph*pw] -> float32 pixel_values, as the official transform's `rescale`
    (x * 1/255 to float32) and `normalize` ((x - mean) / std in float32) per channel.

    Element by element the same float operations as normalising the resized image before patching,
    so the result is bit-identical: prepared samples keep their frames as uint8 (4x smaller on disk
    and in flight) and are normalised when read.
    """
    if patches.dtype != torch.uint8:
        raise ValueError(f"patches must be uint8, got {patches.dtype}")
    per_channel = temporal_patch_size * patch_size * patch_size
    scaled = (patches.numpy() * (1 / 255)).astype(np.float32)
    mean = np.repeat(np.asarray(image_mean, dtype=np.float32), per_channel)
    std = np.repeat(np.asarray(image_std, dtype=np.float32), per_channel)
    return torch.from_numpy((scaled - mean) / std)


def flatten_patches(
    unit: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2
) -> tuple[torch.Tensor, GridShape]:
    """One unit [T, C, H, W] -> (patches [T/2 * H/14 * W/14, C*2*14*14], (t, h, w)), as the official
    `unified_collate_fn_for_vlm` (data/utils.py), which hard-codes spatial_merge_size 1: patches in
    row-major (t, row, col) order, each patch flattened as (c, t, ph, pw), the layout the Conv3d
    weight [out, c, t, kh, kw] reads."""
    t, c, height, width = unit.shape
    gt, gh, gw = t // temporal_patch_size, height // patch_size, width // patch_size
    x = unit.reshape(gt, temporal_patch_size, c, gh, patch_size, gw, patch_size)
    x = x.permute(0, 3, 5, 2, 1, 4, 6)  # gt, gh, gw, c, tp, ph, pw
    return x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size).contiguous(), (gt, gh, gw)


def image_pad_count(grid: GridShape) -> int:
    """`<|image_pad|>` positions one unit fills: h*w/2, as the official `get_ar_token_num`."""
    _, h, w = grid
    return int(0.5 * w * h)


def preprocess_frames(
    frames: Sequence[Any],
    cfg: VisionConfig,
    is_video: bool = True,
    *,
    video_vit: bool = DEMO_VIDEO_VIT,
    v_post_squeeze: bool = DEMO_V_POST_SQUEEZE,
    normalize: bool = True,
) -> tuple[torch.Tensor, list[GridShape], list[int]]:
    """Frames of one image/video item -> (pixel_values [N_patches, 1176] float32, grid_shapes, pads);
    with normalize=False the patches stay uint8 (resized, not yet rescaled: `normalize_patches`).

    Follows the official `LongCatImageTransform.__call__` (native mode) with the demo's settings
    (video_vit=True, v_post_squeeze=True), then `get_image_token_num` and `unified_collate_fn_for_vlm`:
    each frame is resized (PIL BICUBIC) to `smart_resize` of its own size with the `pixel_budget`,
    normalised with image_mean/std; a video (is_video, several frames) is encoded in consecutive pairs
    stacked [2, c, h, w], a still image (or any single frame, or several images) is tiled twice.
    `pads` is the image-pad count of each unit (h*w/2).

    Frames: PIL images, or H x W x 3 RGB numpy arrays / tensors, uint8 or float in [0, 1]; float frames
    are quantised to uint8 first (round(x*255)), exact for frames decoded from 8-bit video (the official
    pipeline always works on 8-bit PIL images).
    """
    if not frames:
        raise ValueError("no frames")
    rgb = [_to_uint8_rgb(f) for f in frames]
    n = len(rgb)
    pair = video_vit and is_video and n > 1
    if pair and n % 2:
        raise ValueError(
            f"a video is encoded in frame pairs: got {n} frames (the official loader repeats the last one)"
        )
    factor = resize_factor(cfg)
    min_px, max_px = pixel_budget(cfg, n, is_video=is_video, video_vit=video_vit)
    ranges = [(min_px, max_px)] * n
    if n > 1 and not v_post_squeeze:  # the official budget split across frames of different sizes
        areas = [math.prod(smart_resize(a.shape[0], a.shape[1], factor, min_px, max_px, cfg.patch_size)) for a in rgb]
        if sum(areas) / max_px > 1:
            ranges = [(min_px * a // sum(areas), max_px * a // sum(areas)) for a in areas]
    cap = cfg.max_tokens * cfg.patch_size * cfg.patch_size
    images = []
    for arr, (lo, hi) in zip(rgb, ranges):
        size = smart_resize(arr.shape[0], arr.shape[1], factor, lo, min(hi, cap), cfg.patch_size)
        images.append(_resize(arr, size))
    if pair:
        units = []
        for i in range(0, n, 2):
            if images[i].shape != images[i + 1].shape:
                raise ValueError(
                    f"frames {i} and {i + 1} resize to different sizes {images[i].shape[1:]} / "
                    f"{images[i + 1].shape[1:]}; the frames of a video must have one size"
                )
            units.append(np.stack(images[i : i + 2]))
    else:
        units = [np.tile(img, (cfg.temporal_patch_size, 1, 1, 1)) for img in images]
    patches, grids = [], []
    for unit in units:
        p, g = flatten_patches(torch.from_numpy(unit), cfg.patch_size, cfg.temporal_patch_size)
        patches.append(p)
        grids.append(g)
    pixels = torch.cat(patches, dim=0)
    if normalize:
        pixels = normalize_patches(pixels, cfg.image_mean, cfg.image_std, cfg.patch_size, cfg.temporal_patch_size)
    return pixels, grids, [image_pad_count(g) for g in grids]


# --- post-pooling (official v_post_squeeze) -------------------------------------------------------


def post_pooling_ratio(
    token_nums: Sequence[int],
    cfg: VisionConfig,
    *,
    max_vision_length: int = DEMO_MAX_VISION_LENGTH,
    fix_pooling_times: float = DEMO_FIX_POOLING_TIMES,
    fix_pooling_tokens: int = DEMO_FIX_POOLING_TOKENS,
) -> float:
    """Compression ratio of a sample's vision tokens, as `DataProcessor._precess_global_vision_info`
    (data/data_processor.py) with v_post_squeeze on. token_nums: the pad count of every unit of the
    whole sample (still images included: the official code pools them with the same ratio).

    With the demo's settings (fix_* = -1) the ratio is max(1, sum / max_tokens_video), raised to
    ceil(sum / max_vision_length, 1 decimal) if sum / ratio still exceeds max_vision_length (28672).
    Post-pooling therefore triggers exactly when the sample holds more than max_tokens_video
    (vision/config.json) or more than max_vision_length vision tokens.
    """
    total = sum(token_nums)
    max_tokens_video = int(cfg.require("max_tokens_video"))
    if fix_pooling_times > 0:
        ratio = float(fix_pooling_times)
    elif fix_pooling_tokens > 0:
        ratio = max(round(token_nums[0] / fix_pooling_tokens, 1), float(total) / max_tokens_video)
    else:
        ratio = max(1.0, float(total) / max_tokens_video)
    compressed = total / ratio if ratio > 1 else total
    if compressed > max_vision_length:
        ratio = math.ceil(total / max_vision_length * 10) / 10
    return ratio


def post_pooled_shapes(
    token_nums: Sequence[int], grid_shapes: Sequence[GridShape], ratio: float, cfg: VisionConfig
) -> tuple[list[tuple[int, int]], list[int]]:
    """(target token grid (rows, cols) after the projector, target token count) per unit, as
    `calculate_token_num_after_post_pooling` (data/utils.py, after_adapter=False). A ratio <= 1 keeps
    every unit as it is. Otherwise each unit's (h, w/2) token grid is smart_resized (factor 2) into at
    most min(tokens / ratio, max_tokens) and at least min_tokens_video tokens."""
    grids = _as_grids(grid_shapes)
    if ratio <= 1.0:
        return [(h, w // 2) for _, h, w in grids], list(token_nums)
    p = cfg.patch_size
    lo = int(cfg.require("min_tokens_video"))
    shapes, tokens = [], []
    for num, (_, h, w) in zip(token_nums, grids):
        hi = min(int(num / ratio), cfg.max_tokens)
        rh, rw = smart_resize(h * p, (w // 2) * p, 2 * p, lo * p * p, hi * p * p, p)
        shapes.append((rh // p, rw // p))
        tokens.append((rh // p) * (rw // p))
    return shapes, tokens


def pool_2d(features: torch.Tensor, grid: GridShape, target: tuple[int, int]) -> torch.Tensor:
    """One unit's projected tokens [t*h*(w/2), D] bilinearly resized to target (rows, cols), as the
    official `get_2d_pool` (encoders/utils.py; align_corners=False, no antialias)."""
    t, h, w = grid
    cols = w // 2
    if (h, cols) == tuple(target):
        return features
    x = features.view(t, h, cols, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(target), mode="bilinear")
    return x.permute(0, 2, 3, 1).reshape(-1, features.shape[-1])


def v_post_squeeze(
    embedding: torch.Tensor, grid_shapes: Sequence[GridShape], target_shapes: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Projected tokens of all units [sum(h*w/2), D] -> each unit pooled to its target (rows, cols)
    from `post_pooled_shapes`, as the official `v_post_squeeze_image_embedding`."""
    grids = _as_grids(grid_shapes)
    sizes = [image_pad_count(g) for g in grids]
    if embedding.ndim != 2 or embedding.shape[0] != sum(sizes):
        raise ValueError(f"embedding must have {sum(sizes)} rows for these grid_shapes, got {list(embedding.shape)}")
    parts = embedding.split(sizes)
    return torch.cat([pool_2d(x, g, tuple(s)) for x, g, s in zip(parts, grids, target_shapes)], dim=0)
