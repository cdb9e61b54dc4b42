"""LongCat-Audio-Codec's grouped residual vector quantizer and the weight-norm convolutions it uses.

vss's own implementation of the official `networks/quantizers/auto_grvq.py` (inference path) and of
the weight-norm convolutions of `networks/modules/layers.py` (`WNConv1d`, `WNConvTranspose1d`), which
the acoustic encoder (`vss_core.codec.acoustic`) and the decoder (`vss_core.codec.decoder`) share.

Weight norm: the official modules wrap plain convolutions in the legacy `torch.nn.utils.weight_norm`
(dim 0), so their checkpoints hold `bias`, `weight_g` and `weight_v` per convolution, with
`weight = weight_g * weight_v / ||weight_v||` where the norm runs over every dimension but 0
(for a transposed convolution dim 0 is the *input* channel). `WNConv1d` / `WNConvTranspose1d` below
hold exactly those three parameters (same names, shapes and order) and compute the weight with the
same kernel the legacy hook calls (`torch._weight_norm`), without the deprecated hook machinery.

Quantizer: `GroupResidualVectorQuantize` holds `n_codebooks` stages (3 in the released codec).
Each stage (`GroupVectorQuantize`) projects the current residual [B, D, T] twice with 1x1 convs to
`codebook_dim` (8), finds in each of its two codebooks (`codebook_a`, `codebook_b`, K = 90 entries)
the entry of highest cosine similarity (encodings and codebook L2-normalised), maps the two raw
(un-normalised) entries back with `out_proj_a` / `out_proj_b` to D/2 channels each and concatenates
them (a first, then b) into the stage's output, which is subtracted from the residual for the next
stage. The two sub-codes make one code per stage and frame: `code = a * K + b`, in [0, K*K)
(8100 for the released codec); that integer is what LongCat-Flash-Omni's LLM reads and writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class _WeightNormed(nn.Module):
    """A convolution under legacy weight norm (dim 0): parameters `bias`, `weight_g`, `weight_v`, in
    the order the legacy hook leaves them, and the effective weight g * v / ||v|| (norm over all dims
    but 0)."""

    def __init__(self, bias: int, v_shape: tuple[int, int, int], fan_in: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(bias))
        self.weight_g = nn.Parameter(torch.empty(v_shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(*v_shape))
        self._fan_in = fan_in
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The torch convolution's default init for v and bias; g = ||v|| so the weight starts equal to v."""
        _init_weight_norm(self.weight_v, self.weight_g, self.bias, fan_in=self._fan_in)

    @property
    def weight(self) -> torch.Tensor:
        """The effective convolution weight g * v / ||v||."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)


class WNConv1d(_WeightNormed):
    """`nn.Conv1d` under legacy weight norm (dim 0).

    Follows `networks/modules/layers.py: WNConv1d` (= `weight_norm(nn.Conv1d(...))`); the state dict
    is the official one: `weight_g` [out, 1, 1], `weight_v` [out, in, kernel], `bias` [out].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        super().__init__(out_channels, (out_channels, in_channels, kernel_size), fan_in=in_channels * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, T] -> [B, out, T']."""
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )


class WNConvTranspose1d(_WeightNormed):
    """`nn.ConvTranspose1d` under legacy weight norm (dim 0).

    Follows `networks/modules/layers.py: WNConvTranspose1d`. A transposed convolution's weight is
    [in, out, kernel], so the official dim-0 weight norm gives `weight_g` [in, 1, 1] (one gain per
    *input* channel); `bias` is [out].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
    ) -> None:
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        super().__init__(out_channels, (in_channels, out_channels, kernel_size), fan_in=out_channels * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, T] -> [B, out, (T - 1) * stride - 2 * padding + kernel + output_padding]."""
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, output_padding={self.output_padding}"
        )


def _init_weight_norm(v: nn.Parameter, g: nn.Parameter, bias: nn.Parameter, fan_in: int) -> None:
    if v.is_meta:  # no values to set (shape-only builds, e.g. counting parameters)
        return
    with torch.no_grad():
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)
        g.copy_(torch.norm_except_dim(v, 2, 0))


class Quantized(NamedTuple):
    """What `GroupResidualVectorQuantize.encode` returns (official layout, channels before time)."""

    z_q: torch.Tensor
    """[B, D, T] quantized latent: the sum of the stages' outputs."""
    codes: torch.Tensor
    """[B, N, T] int64 code per stage and frame, `a * K + b` in [0, K*K)."""
    latents: torch.Tensor
    """[B, N * 2 * codebook_dim, T] the projected (pre-search) latents of each stage, a then b."""


class GroupVectorQuantize(nn.Module):
    """One stage: two codebooks searched in parallel; follows `auto_grvq.py: AutoGroupVectorQuantize`.

    Submodules (official names): `in_proj_a`, `out_proj_a`, `in_proj_b`, `out_proj_b` (1x1
    `WNConv1d`: D -> codebook_dim and codebook_dim -> D/2), `codebook_a`, `codebook_b`
    (`nn.Embedding(K, codebook_dim)`). The official `frame_residual_vq` option is off in every
    released model and not implemented here.
    """

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        if input_dim % 2:
            raise ValueError(f"input_dim={input_dim} must be even: each codebook maps back to input_dim/2 channels")
        self.input_dim = input_dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.in_proj_a = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj_a = WNConv1d(codebook_dim, input_dim // 2, kernel_size=1)
        self.in_proj_b = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj_b = WNConv1d(codebook_dim, input_dim // 2, kernel_size=1)
        self.codebook_a = nn.Embedding(codebook_size, codebook_dim)
        self.codebook_b = nn.Embedding(codebook_size, codebook_dim)

    @staticmethod
    def nearest(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """[B, d, T] latents, [K, d] codebook -> [B, T] index of the nearest entry after L2 normalisation.

        Follows `AutoGroupVectorQuantize.decode_latents`: both sides L2-normalised, squared Euclidean
        distance written out the same way, first index of the largest negated distance.
        """
        batch = latents.shape[0]
        enc = F.normalize(latents.transpose(1, 2).reshape(-1, latents.shape[1]))
        cb = F.normalize(codebook)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ cb.t() + cb.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(dim=1).indices.reshape(batch, -1)

    @staticmethod
    def lookup(indices: torch.Tensor, codebook: nn.Embedding) -> torch.Tensor:
        """[B, T] indices -> [B, d, T] raw (un-normalised) codebook entries (official `decode_code`)."""
        return F.embedding(indices, codebook.weight).transpose(1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, D, T] residual -> (z_q [B, D, T], codes [B, T] = a*K + b, latents [B, 2*codebook_dim, T])."""
        z_a = self.in_proj_a(z)
        z_b = self.in_proj_b(z)
        idx_a = self.nearest(z_a, self.codebook_a.weight)
        idx_b = self.nearest(z_b, self.codebook_b.weight)
        q_a = self.lookup(idx_a, self.codebook_a)
        q_b = self.lookup(idx_b, self.codebook_b)
        # Straight-through form as in the official forward (numerically the official values bit for bit).
        q_a = z_a + (q_a - z_a).detach()
        q_b = z_b + (q_b - z_b).detach()
        z_q = torch.cat((self.out_proj_a(q_a), self.out_proj_b(q_b)), dim=1)
        codes = idx_a * self.codebook_size + idx_b
        return z_q, codes, torch.cat((z_a, z_b), dim=1)

    def split(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes `a * K + b` -> (a, b), as `AutoGroupResidualVectorQuantize.from_codes` splits them."""
        a = torch.div(codes, self.codebook_size, rounding_mode="floor")
        return a, codes - a * self.codebook_size

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, T] codes -> [B, D, T] this stage's output (out_proj of the raw entries, a then b)."""
        a, b = self.split(codes)
        return torch.cat(
            (self.out_proj_a(self.lookup(a, self.codebook_a)), self.out_proj_b(self.lookup(b, self.codebook_b))),
            dim=1,
        )


class GroupResidualVectorQuantize(nn.Module):
    """Residual stack of `GroupVectorQuantize`; follows `auto_grvq.py: AutoGroupResidualVectorQuantize`.

    State-dict keys: `quantizers.{i}.{in_proj_a,out_proj_a,in_proj_b,out_proj_b}.{bias,weight_g,weight_v}`
    and `quantizers.{i}.{codebook_a,codebook_b}.weight`. Only the inference path is implemented
    (the official training-time quantizer dropout and the VQ losses are not): `encode` is the official
    eval-mode `forward`, `decode` is `from_codes`.
    """

    def __init__(
        self,
        input_dim: int,
        n_codebooks: int,
        codebook_size: int,
        codebook_dim: int | Sequence[int],
    ) -> None:
        super().__init__()
        dims = [codebook_dim] * n_codebooks if isinstance(codebook_dim, int) else list(codebook_dim)
        if len(dims) != n_codebooks:
            raise ValueError(f"codebook_dim lists {len(dims)} sizes for {n_codebooks} codebooks")
        self.input_dim = input_dim
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.quantizers = nn.ModuleList(GroupVectorQuantize(input_dim, codebook_size, d) for d in dims)

    @property
    def vocab_size(self) -> int:
        """Number of distinct codes per stage: K * K (8100 for the released codec)."""
        return self.codebook_size * self.codebook_size

    def _check_n(self, n: int) -> None:
        if not 0 < n <= self.n_codebooks:
            raise ValueError(f"n_codebooks={n} is out of range: this quantizer has 1..{self.n_codebooks} codebooks")

    def encode(self, z: torch.Tensor, n_codebooks: int | None = None) -> Quantized:
        """[B, D, T] latent -> `Quantized` using the first `n_codebooks` stages (all by default)."""
        n = self.n_codebooks if n_codebooks is None else int(n_codebooks)
        self._check_n(n)
        if z.dim() != 3 or z.shape[1] != self.input_dim:
            raise ValueError(f"expected a latent [B, {self.input_dim}, T], got shape {tuple(z.shape)}")
        z_q = torch.zeros_like(z)
        residual = z
        codes, latents = [], []
        for quantizer in list(self.quantizers)[:n]:
            z_q_i, codes_i, latents_i = quantizer(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(codes_i)
            latents.append(latents_i)
        return Quantized(z_q, torch.stack(codes, dim=1), torch.cat(latents, dim=1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, N, T] int codes in [0, K*K) of the first N stages -> [B, D, T] quantized latent."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, N, T], got shape {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        self._check_n(codes.shape[1])
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ValueError(
                f"codes must lie in [0, {self.vocab_size}) (= K*K with K={self.codebook_size}), "
                f"got values in [{int(codes.min())}, {int(codes.max())}]"
            )
        codes = codes.long()
        z_q = None
        for i in range(codes.shape[1]):
            part = self.quantizers[i].decode(codes[:, i, :])
            z_q = part if z_q is None else z_q + part
        return z_q
