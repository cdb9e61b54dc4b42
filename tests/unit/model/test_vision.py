"""vss_core.model.vision against the official LongCat-Flash-Omni vision code.

The references below are re-written here from the official sources (meituan-longcat/LongCat-Flash-Omni:
encoders/vision_adaptor.py, encoders/utils.py, data/utils.py) with plain tensor ops; they use nothing
of vss's module code except to read its weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vss_core.errors import ModelError
from vss_core.model import vision as V

CFG_PATH = Path("ckpt/vision/config.json")


def tiny_cfg(**overrides) -> V.VisionConfig:
    return V.VisionConfig.from_json({**V.TINY_VISION_CONFIG, **overrides}, CFG_PATH)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random float64 weights; norm weights around 1, layer scales of order 1."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "p0.0.weight")):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(("ls1", "ls2")):
                p.copy_(0.5 * noise)
            elif p.ndim > 1:  # weights: unit-variance outputs
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:  # biases
                p.copy_(0.1 * noise)


# --- independent re-computation of the official math ------------------------------------------------


def ref_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def ref_positions(t: int, h: int, w: int, s: int) -> list[tuple[int, int]]:
    """Official VisionRotaryEmbedding2D order: s x s blocks row-major, row-major inside, repeated t times."""
    one = [(bi * s + i, bj * s + j) for bi in range(h // s) for bj in range(w // s) for i in range(s) for j in range(s)]
    return one * t


def ref_rotary(x: torch.Tensor, pos: list[tuple[int, int]], head_dim: int, theta: float) -> torch.Tensor:
    """x [L, heads, head_dim]: official apply_rotary_pos_emb_vision with VisionRotaryEmbedding2D(head_dim//2)."""
    dim = head_dim // 2
    inv = (1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))).double()  # fp32 buffer
    out = torch.empty_like(x)
    half = head_dim // 2
    for i, (r, c) in enumerate(pos):
        ang = torch.cat([r * inv, c * inv])  # [head_dim/2]: row freqs then col freqs
        full = torch.cat([ang, ang])  # cos.repeat(1, 1, 2)
        xi = x[i]
        rot = torch.cat([-xi[:, half:], xi[:, :half]], dim=-1)
        out[i] = xi * torch.cos(full) + rot * torch.sin(full)
    return out


def ref_encoder(sd: dict[str, torch.Tensor], cfg: dict, pixel_values: torch.Tensor, grids: list) -> torch.Tensor:
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps, s = d // heads, cfg["layer_norm_eps"], cfg["spatial_merge_size"]
    w_pe = sd["embeddings.patch_embedding.weight"]
    b_pe = sd["embeddings.patch_embedding.bias"]
    x_all = F.conv3d(pixel_values.view(-1, 3, 2, 14, 14), w_pe, b_pe, stride=(2, 14, 14))
    x_all = x_all.view(-1, d)
    outs, start = [], 0
    for t, h, w in grids:  # one unit at a time: attention never crosses units
        n = t * h * w
        x = x_all[start : start + n]
        start += n
        pos = ref_positions(t, h, w, s)
        for li in range(cfg["num_hidden_layers"]):
            p = lambda k: sd[f"encoder.layers.{li}.{k}"]  # noqa: E731
            hsa = ref_rms(x, p("norm1.weight"), eps)
            qkv = hsa @ p("attn.qkv.weight").T + p("attn.qkv.bias")
            q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            q = ref_rotary(q.reshape(n, heads, hd), pos, hd, cfg["rope_theta"]).reshape(n, d)
            k = ref_rotary(k.reshape(n, heads, hd), pos, hd, cfg["rope_theta"]).reshape(n, d)
            q, k = ref_rms(q, p("attn.q_norm.weight"), eps), ref_rms(k, p("attn.k_norm.weight"), eps)
            ctx = torch.empty(n, d, dtype=x.dtype)
            for hh in range(heads):
                sl = slice(hh * hd, (hh + 1) * hd)
                scores = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
                probs = torch.exp(scores - scores.max(-1, keepdim=True).values)
                probs = probs / probs.sum(-1, keepdim=True)
                ctx[:, sl] = probs @ v[:, sl]
            x = x + (ctx @ p("attn.proj.weight").T + p("attn.proj.bias")) * p("ls1")
            hm = ref_rms(x, p("norm2.weight"), eps)
            a = hm @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
            g = a * torch.sigmoid(a) * (hm @ p("mlp.fc3.weight").T + p("mlp.fc3.bias"))
            x = x + (ref_rms(g, p("mlp.norm.weight"), eps) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")) * p("ls2")
        outs.append(x)
    return torch.cat(outs)


def ref_projector(sd: dict[str, torch.Tensor], hidden: torch.Tensor, grids: list) -> torch.Tensor:
    def gelu(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    outs, start = [], 0
    for _, h, w in grids:
        x = hidden[start : start + h * w].reshape(h, w // 2, -1).reshape(h * w // 2, -1)
        start += h * w
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        x = (x - mu) / torch.sqrt(var + 1e-5) * sd["p0.0.weight"] + sd["p0.0.bias"]
        x = gelu(x @ sd["p0.1.weight"].T + sd["p0.1.bias"])
        x = gelu(x @ sd["p0.3.weight"].T + sd["p0.3.bias"])
        outs.append(x @ sd["proj.weight"].T + sd["proj.bias"])
    return torch.cat(outs)


# --- 1. conformance ------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", [1, 2])
def test_encoder_and_projector_match_the_official_math(merge: int) -> None:
    cfg = tiny_cfg(spatial_merge_size=merge)
    enc, proj = V.LongCatVisionModel(cfg), V.build_projector(cfg, 24)
    randomize(enc, 0)
    randomize(proj, 1)
    # different shapes; two of them of equal length (24 tokens) side by side, batched together by vss
    grids = [(1, 4, 6), (1, 6, 4), (1, 2, 4)]
    n = sum(t * h * w for t, h, w in grids)
    pixels = torch.randn(n, cfg.patch_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        hidden = enc(pixels, grids)
        out = proj(hidden, grids)
    sd_e = {k: v for k, v in enc.state_dict().items()}
    sd_p = {k: v for k, v in proj.state_dict().items()}
    ref_h = ref_encoder(sd_e, V.TINY_VISION_CONFIG | {"spatial_merge_size": merge}, pixels, grids)
    torch.testing.assert_close(hidden, ref_h, atol=1e-10, rtol=0)
    torch.testing.assert_close(out, ref_projector(sd_p, ref_h, grids), atol=1e-10, rtol=0)
    assert out.shape == (sum(h * w // 2 for _, h, w in grids), 24)


def test_encoder_units_do_not_attend_to_each_other_and_t_repeats_positions() -> None:
    cfg = tiny_cfg()
    enc = V.LongCatVisionModel(cfg)
    randomize(enc, 3)
    grids = [(2, 2, 4), (1, 4, 2)]
    pixels = torch.randn(24, cfg.patch_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        both = enc(pixels, grids)
        alone = enc(pixels[16:], grids[1:])
    torch.testing.assert_close(both[16:], alone, atol=1e-12, rtol=0)
    ref = ref_encoder(enc.state_dict(), V.TINY_VISION_CONFIG, pixels, grids)
    torch.testing.assert_close(both, ref, atol=1e-10, rtol=0)


def test_bf16_model_keeps_rotary_angles_in_fp32() -> None:
    cfg = tiny_cfg()
    enc = V.LongCatVisionModel(cfg).to(torch.bfloat16)
    assert enc.encoder.rotary_pos_emb.inv_freq.dtype == torch.bfloat16  # what module.to() does
    cpu = torch.device("cpu")
    freqs = enc.encoder.rotary_pos_emb([(1, 4, 6)], 1, torch.bfloat16, cpu)
    assert freqs.dtype == torch.float32
    fp32 = V.LongCatVisionModel(cfg).encoder.rotary_pos_emb([(1, 4, 6)], 1, torch.float32, cpu)
    torch.testing.assert_close(freqs, fp32, atol=0, rtol=0)
    pixels = torch.randn(24, cfg.patch_dim)
    assert enc(pixels, [(1, 4, 6)]).dtype == torch.bfloat16


# --- 2. key names ----------------------------------------------------------------------------------------


def official_encoder_keys(layers: int, qkv_bias: bool) -> set[str]:
    keys = {"embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias"}
    for i in range(layers):
        pre = f"encoder.layers.{i}."
        keys |= {pre + k for k in ("ls1", "ls2", "norm1.weight", "norm2.weight", "mlp.norm.weight")}
        keys |= {pre + k for k in ("attn.qkv.weight", "attn.proj.weight", "attn.proj.bias")}
        keys |= {pre + k for k in ("attn.q_norm.weight", "attn.k_norm.weight")}
        keys |= {pre + f"mlp.{fc}.{w}" for fc in ("fc1", "fc2", "fc3") for w in ("weight", "bias")}
        if qkv_bias:
            keys.add(pre + "attn.qkv.bias")
    return keys


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_state_dict_keys_are_the_official_ones(qkv_bias: bool) -> None:
    cfg = tiny_cfg(qkv_bias=qkv_bias)
    enc = V.LongCatVisionModel(cfg)
    assert set(enc.state_dict()) == official_encoder_keys(2, qkv_bias)
    assert "encoder.rotary_pos_emb.inv_freq" in dict(enc.named_buffers())  # present, but not persistent
    d, inner = cfg.hidden_size, int(cfg.intermediate_size * 2 / 3)
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert shapes["embeddings.patch_embedding.weight"] == (d, 3, 2, 14, 14)
    assert shapes["encoder.layers.0.attn.qkv.weight"] == (3 * d, d)
    assert shapes["encoder.layers.0.mlp.fc1.weight"] == (inner, d)
    assert shapes["encoder.layers.0.mlp.fc2.weight"] == (d, inner)
    assert shapes["encoder.layers.0.mlp.norm.weight"] == (inner,)
    proj = V.build_projector(cfg, 48)
    assert set(proj.state_dict()) == {f"{m}.{w}" for m in ("p0.0", "p0.1", "p0.3", "proj") for w in ("weight", "bias")}
    assert tuple(proj.state_dict()["p0.1.weight"].shape) == (cfg.adaptor_dim, 2 * d)
    assert tuple(proj.state_dict()["proj.weight"].shape) == (48, cfg.adaptor_dim)


def test_meta_built_model_loads_and_runs(tmp_path: Path) -> None:
    """Built on meta, materialised with to_empty, filled from the .pt file: same outputs."""
    cfg = tiny_cfg()
    src = V.LongCatVisionModel(cfg)
    torch.save(src.state_dict(), tmp_path / "vision_model.pt")
    with torch.device("meta"):
        enc = V.LongCatVisionModel(cfg)
    enc = enc.to_empty(device="cpu")
    enc.load_state_dict(torch.load(tmp_path / "vision_model.pt"), strict=True)
    pixels = torch.randn(24, cfg.patch_dim)
    with torch.no_grad():
        torch.testing.assert_close(enc(pixels, [(1, 4, 6)]), src(pixels, [(1, 4, 6)]), atol=0, rtol=0)


def test_official_pt_files_load_strictly(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    src_e, src_p = V.LongCatVisionModel(cfg), V.build_projector(cfg, 48)
    torch.save(src_e.state_dict(), tmp_path / "vision_model.pt")
    torch.save(src_p.state_dict(), tmp_path / "vision_projector.pt")
    enc, proj = V.LongCatVisionModel(cfg), V.build_projector(cfg, 48)
    enc.load_state_dict(torch.load(tmp_path / "vision_model.pt"), strict=True)
    proj.load_state_dict(torch.load(tmp_path / "vision_projector.pt"), strict=True)


def test_real_size_parameter_count_matches_the_tech_report() -> None:
    counts = V.count_parameters(V.VisionConfig(**V.REAL_VISION_SIZES), V.LONGCAT_FLASH_HIDDEN)
    assert round(counts["vision_model"] / 1e6) == 637  # tech report Table 1 / UniViTAR-0.6B
    assert counts["vision_model"] == 636_554_496
    assert counts["vision_projector"] == 113_796_096  # adaptor_dim 7168 (official default), LLM 6144


# --- 3. preprocessing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((480, 640, 28, 576 * 196, 16384 * 196), (476, 644)),  # in range: round to 28 (17, 23)
        ((1080, 1920, 28, 576 * 196, 16384 * 196 // 8), (448, 840)),  # over max: shrink, floor (16, 30)
        ((20, 100, 28, 576 * 196, 16384 * 196), (168, 756)),  # short side < 28 first, then under min: ceil
        ((70, 126, 28, 0, 10**9), (56, 112)),  # 2.5 and 4.5 round half to even (Python round)
        ((480, 630, 14, 0, 10**9), (476, 616)),  # width floored to a multiple of 28
        ((10, 3000, 28, 576 * 196, 401408), (28, 8400)),
        ((28, 20000, 28, 0, 401408), (28, 14336)),  # extreme aspect: h 0 -> (factor, max // factor)
    ],
)
def test_smart_resize_hand_worked(args: tuple, expected: tuple[int, int]) -> None:
    assert V.smart_resize(*args) == expected


def test_pixel_budget_follows_the_official_rules() -> None:
    cfg = V.VisionConfig.from_json({"resize_factor": 2}, CFG_PATH)
    p2 = 196
    assert V.pixel_budget(cfg, 1, is_video=True) == (576 * p2, 16384 * p2)
    assert V.pixel_budget(cfg, 16, is_video=True) == (576 * p2, 16384 * p2 // 8)  # split over 8 pairs
    assert V.pixel_budget(cfg, 16, is_video=False) == (576 * p2, 16384 * p2 // 16)
    big = V.VisionConfig.from_json({"max_tokens_video_vit": 65536, "min_tokens_video_vit": 4}, CFG_PATH)
    assert V.pixel_budget(big, 2, is_video=True) == (4 * p2, 16384 * p2)  # capped at max_tokens
    assert V.resize_factor(cfg) == 28


def official_collate(unit: torch.Tensor) -> torch.Tensor:
    """data/utils.py unified_collate_fn_for_vlm for one unit (c=3, t=2, patch 14, merge size 1)."""
    t, c, h, w = unit.shape
    gt, gh, gw, m = t // 2, h // 14, w // 14, 1
    x = unit.reshape(gt, 2, c, gh // m, m, 14, gw // m, m, 14).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * 2 * 14 * 14)


def official_frame(arr: np.ndarray, size: tuple[int, int], cfg: V.VisionConfig) -> np.ndarray:
    h, w = size
    img = np.array(Image.fromarray(arr).resize((w, h), resample=Image.Resampling.BICUBIC, reducing_gap=None))
    img = (img * (1 / 255)).astype(np.float32)
    mean, std = np.array(cfg.image_mean, dtype=np.float32), np.array(cfg.image_std, dtype=np.float32)
    return ((img - mean) / std).transpose(2, 0, 1)


def test_video_frames_pair_up_in_the_official_patch_order() -> None:
    cfg = tiny_cfg()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(4)]
    pixels, grids, pads = V.preprocess_frames(frames, cfg, is_video=True)
    # factor 14*1*2 = 28; budget max 64*196 // 2 pairs = 6272 px; round(60/28)=2, round(90/28)=3
    assert grids == [(1, 4, 6), (1, 4, 6)]
    assert pads == [12, 12]  # h*w/2 per pair
    units = [torch.from_numpy(np.stack([official_frame(f, (56, 84), cfg) for f in frames[i : i + 2]])) for i in (0, 2)]
    expected = torch.cat([official_collate(u) for u in units])
    assert pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, expected, atol=0, rtol=0)
    # and by hand: patch (r, c) of pair 0 is frames 0/1 at rows r*14.., cols c*14.., as (c, t, ph, pw)
    r, c = 2, 5
    crop = units[0][:, :, r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14].permute(1, 0, 2, 3).reshape(-1)
    torch.testing.assert_close(pixels[r * 6 + c], crop, atol=0, rtol=0)


def test_still_image_is_tiled_and_float_frames_match_uint8() -> None:
    cfg = tiny_cfg()
    arr = np.random.default_rng(1).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    pixels, grids, pads = V.preprocess_frames([arr], cfg, is_video=False)
    assert grids == [(1, 4, 4)] and pads == [8]
    per_patch = pixels.view(16, 3, 2, 14 * 14)
    torch.testing.assert_close(per_patch[:, :, 0], per_patch[:, :, 1], atol=0, rtol=0)
    same, _, _ = V.preprocess_frames([torch.from_numpy(arr).float() / 255], cfg, is_video=False)
    torch.testing.assert_close(same, pixels, atol=0, rtol=0)
    # a 1-frame "video" is a single unit too (official is_single)
    assert V.preprocess_frames([arr], cfg, is_video=True)[1] == [(1, 4, 4)]
    with pytest.raises(ValueError, match="pairs"):
        V.preprocess_frames([arr] * 3, cfg, is_video=True)


def test_end_to_end_pad_count_equals_projector_rows() -> None:
    cfg = tiny_cfg()
    frames = [np.full((56, 112, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    pixels, grids, pads = V.preprocess_frames(frames, cfg)
    enc, proj = V.LongCatVisionModel(cfg), V.build_projector(cfg, 16)
    with torch.no_grad():
        out = proj(enc(pixels, grids), grids)
    assert out.shape == (sum(pads), 16)


def test_preprocessing_needs_resize_factor() -> None:
    raw = {k: v for k, v in V.TINY_VISION_CONFIG.items() if k != "resize_factor"}
    cfg = V.VisionConfig.from_json(raw, CFG_PATH)
    with pytest.raises(ModelError, match=r"ckpt/vision/config\.json.*'resize_factor'"):
        V.preprocess_frames([np.zeros((56, 56, 3), np.uint8)], cfg)


# --- post-pooling ---------------------------------------------------------------------------------------


def test_post_pooling_ratio_and_shapes() -> None:
    cfg = tiny_cfg(max_tokens_video=64, min_tokens_video=4)
    tokens, grids = [32] * 4, [(1, 8, 8)] * 4
    assert V.post_pooling_ratio([16, 16], cfg) == 1.0  # <= max_tokens_video: nothing to do
    ratio = V.post_pooling_ratio(tokens, cfg)
    assert ratio == 2.0  # 128 / 64
    assert V.post_pooling_ratio(tokens, cfg, max_vision_length=50) == 2.6  # ceil(128 / 50 * 10) / 10
    shapes, nums = V.post_pooled_shapes(tokens, grids, ratio, cfg)
    # smart_resize(8*14, 4*14, 28, 4*196, 16*196) = (56, 28) -> 4 x 2 tokens
    assert shapes == [(4, 2)] * 4 and nums == [8] * 4
    assert V.post_pooled_shapes(tokens, grids, 1.0, cfg) == ([(8, 4)] * 4, tokens)
    emb = torch.randn(128, 5, dtype=torch.float64)
    pooled = V.v_post_squeeze(emb, grids, shapes)
    # bilinear, align_corners=False, exact 2x downsample = mean of each 2x2 block
    expected = torch.cat(
        [F.avg_pool2d(e.view(8, 4, 5).permute(2, 0, 1), 2).permute(1, 2, 0).reshape(8, 5) for e in emb.split(32)]
    )
    torch.testing.assert_close(pooled, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(V.v_post_squeeze(emb, grids, [(8, 4)] * 4), emb)


# --- 4. config ----------------------------------------------------------------------------------------------


def test_missing_keys_take_the_official_defaults() -> None:
    cfg = V.VisionConfig.from_json({}, CFG_PATH)
    sizes = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
    assert sizes == (1024, 24, 16, 4224)
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size) == (14, 2, 1)
    assert (cfg.min_tokens, cfg.max_tokens, cfg.adaptor_dim) == (576, 16384, 7168)
    assert (cfg.qkv_bias, cfg.qk_normalization, cfg.patch_embedding_bias) == (False, True, True)
    assert (cfg.layer_norm_eps, cfg.rope_theta, cfg.initializer_factor) == (1e-6, 10000, 0.1)
    assert cfg.image_mean == (0.485, 0.456, 0.406) and cfg.image_std == (0.229, 0.224, 0.225)
    kinds = (cfg.hidden_act, cfg.norm_type, cfg.pe_type, cfg.resolution_mode)
    assert kinds == ("SwiGLU", "RMSNorm", "rope2d", "native")
    assert cfg.resize_factor is None and cfg.max_tokens_video is None
    assert cfg.source == str(CFG_PATH)


def test_to_json_round_trips_with_official_names() -> None:
    raw = {**V.TINY_VISION_CONFIG, "model_type": "longcat_vision", "use_flash_attn": False}
    cfg = V.VisionConfig.from_json(raw, CFG_PATH)
    out = cfg.to_json()
    assert out["model_type"] == "longcat_vision" and out["use_flash_attn"] is False
    assert all(out[k] == v for k, v in raw.items())
    assert "extra" not in out and "source" not in out
    assert V.VisionConfig.from_json(out, CFG_PATH) == cfg
    assert "max_tokens_video_vit" not in out  # optional keys only when set


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hidden_act", "gelu"),
        ("norm_type", "LayerNorm"),
        ("pe_type", "learnable"),
        ("resolution_mode", "224"),
        ("relarge_ratio", 2),
        ("hidden_size", "1024"),
        ("qkv_bias", 1),
        ("num_attention_heads", 3),
    ],
)
def test_unsupported_values_raise_model_error_naming_file_and_key(key: str, value: object) -> None:
    with pytest.raises(ModelError) as err:
        V.VisionConfig.from_json({**V.TINY_VISION_CONFIG, key: value}, CFG_PATH)
    msg = str(err.value)
    assert str(CFG_PATH) in msg and (f"'{key}'" in msg or "'hidden_size'" in msg)
