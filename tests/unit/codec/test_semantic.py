"""vss_core.codec.semantic: LongCat-Audio-Codec's semantic tokenizer, checked against the official math.

The reference below is written from meituan-longcat/LongCat-Audio-Codec
(`semantic_tokenizer_general/feature_extractor.py`, `semantic_tokenizer_general/encoder.py`,
`networks/semantic_codec/LongCatAudioCodec_model.py`) with plain tensor ops, one waveform at a time.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from vss_core.codec import semantic
from vss_core.errors import ModelError

# The official files' text (semantic_tokenizer_general/configs/), anchors and all.
OFFICIAL_TOKENIZER_YAML = """
semantic_tokenizer_config:
    select_layer: 26
    codebook_dim: 1280
    codebook_size: 8192
    sample_rate : 16000
    model_config: semantic_tokenizer_general/configs/semantic_tokenizer.infer.yaml
"""
OFFICIAL_INFER_YAML = """
feat_dim: &feat_dim 80
left: &left 0
right: &right 0
stride: &stride 1
delta_order: &delta_order 0

feature:
    fbank:
        dither: 0.0
        frame_length: 25
        frame_shift: 10
        preemphasis: 0.97
        freq: 16000
        high_freq: -200
        low_freq: 40
        num_mel_bins: *feat_dim

    cmvn_file: "ckpts/LongCatAudioCodec_encoder_cmvn.npy"

encoder:
    type: VGGtf_encoder
    VGGtf_encoder:
        feat_dim: *feat_dim
        delta_order: *delta_order
        left: *left
        right: *right
        stride: *stride
        subsampling: conv2d
        num_conv_layers: 2
        conv2d_stride: 2,3

        d_model: 1280
        nhead: 20
        num_encoder_layers: 26
        dim_feedforward: 5120
        dropout: 0.0
        layer_drop: 0.0
        activation: gelu
"""

LAYER_KEYS = [
    "norm1.weight", "norm1.bias",
    "self_attn.in_proj_weight", "self_attn.in_proj_bias",
    "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "norm2.weight", "norm2.bias",
    "linear1.weight", "linear1.bias",
    "linear2.weight", "linear2.bias",
    "norm3.weight", "norm3.bias",
]  # fmt: skip


def official_keys(num_layers: int) -> list[str]:
    """WavToLabel's state-dict keys in registration order: feature_extractor, model, kmeans."""
    return [
        "feature_extractor.fbank.window",
        "feature_extractor.fbank.mel_banks",
        "feature_extractor.fbank.eps",
        "feature_extractor.cmvn.cmvn_mean",
        "feature_extractor.cmvn.cmvn_scale",
        "model.subsampling.conv.subsampling/conv0.weight",
        "model.subsampling.conv.subsampling/conv0.bias",
        "model.subsampling.conv.subsampling/conv1.weight",
        "model.subsampling.conv.subsampling/conv1.bias",
        "model.subsampling.affine.weight",
        "model.subsampling.affine.bias",
        "model.subsampling.norm.weight",
        "model.subsampling.norm.bias",
        *[f"model.encoder.layers.{i}.{k}" for i in range(num_layers) for k in LAYER_KEYS],
        "kmeans.codebook",
    ]


# -- helpers ------------------------------------------------------------------------------------------


def _speechlike(samples: int, seed: int) -> torch.Tensor:
    """Non-stationary test signal: 100 ms segments alternating voiced tones (random pitch) and noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / 16000
    segment = (t / 0.1).long()
    f0 = 80 + 300 * torch.rand(int(segment.max()) + 1, generator=g, dtype=torch.float64)
    voiced = sum(torch.sin(2 * math.pi * k * f0[segment] * t) / k for k in range(1, 8))
    noise = torch.randn(samples, generator=g, dtype=torch.float64)
    gain = 0.05 + torch.rand(int(segment.max()) + 1, generator=g, dtype=torch.float64)
    wave = torch.where(segment % 3 == 2, noise, voiced) * gain[segment]
    return 0.8 * wave / wave.abs().max()


def _random_tokenizer(tmp_path, config=semantic.TINY_SEMANTIC_CONFIG, seed=0) -> semantic.SemanticTokenizer:
    """Tiny tokenizer in float64 with every parameter, the codebook and the CMVN stats random."""
    torch.manual_seed(seed)
    tok = semantic.SemanticTokenizer(config)
    dim = config.fbank.feature_dim
    path = semantic.write_cmvn(tmp_path / "cmvn.npy", 16 + 2 * torch.randn(dim), 2 + torch.rand(dim), count=5000.0)
    tok.load_cmvn_file(path)
    with torch.no_grad():
        for p in tok.parameters():
            p.add_(0.2 * torch.randn_like(p))
    tok = tok.double().eval()
    # Centroids spread around where normalised hidden states lie (as trained k-means ones would), so the
    # nearest-entry search has real choices to make.
    hidden, _ = tok.encode_hidden(_speechlike(8000, seed=99)[None], torch.tensor([8000]))
    unit = F.normalize(hidden[0], dim=-1)
    centre, spread = unit.mean(0), unit.std(0)
    noise = torch.randn(config.codebook_size, config.codebook_dim, dtype=torch.float64)
    with torch.no_grad():
        tok.kmeans.codebook.copy_((centre + 1.5 * spread * noise).T)
    return tok


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _reference(sd: dict, config, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official math on ONE unpadded waveform (float64): returns (hidden [F, D], codes [F])."""
    enc = config.encoder
    x = wave * 32767.0  # LongCatAudioCodecEncoder.get_semantic_codes_with_lengths
    # Fbank.forward: 25 ms frames every 10 ms (snip edges), pre-emphasis inside each frame, Povey window.
    win, hop, nfft = 400, 160, 512
    n_frames = (x.numel() - win) // hop + 1
    frames = torch.stack([x[i * hop : i * hop + win] for i in range(n_frames)])
    shifted = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = (frames - 0.97 * shifted) * sd["feature_extractor.fbank.window"]
    frames = torch.cat([frames, frames.new_zeros(n_frames, nfft - win)], dim=1)
    # power spectrum by an explicit DFT
    n = torch.arange(nfft, dtype=torch.float64)
    k = torch.arange(nfft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * n[:, None] * k[None, :] / nfft
    power = (frames @ torch.cos(angle)) ** 2 + (frames @ torch.sin(angle)) ** 2
    energy = torch.log(
        torch.clamp(power @ sd["feature_extractor.fbank.mel_banks"], min=float(np.finfo(np.float32).eps))
    )
    # Cmvn.forward
    feats = (energy - sd["feature_extractor.cmvn.cmvn_mean"]) * sd["feature_extractor.cmvn.cmvn_scale"]
    # Conv2dSubsampling: per layer two zero frames in front, 3x3 conv, stride (s, 1), ReLU
    h = feats[None, None]  # [1, 1, T, 80]
    for i, s in enumerate(enc.conv2d_stride):
        h = torch.cat([h.new_zeros(1, h.shape[1], 2, h.shape[3]), h], dim=2)
        conv = f"model.subsampling.conv.subsampling/conv{i}"
        h = torch.relu(F.conv2d(h, sd[f"{conv}.weight"], sd[f"{conv}.bias"], stride=(s, 1)))
    h = h[0].permute(1, 0, 2).reshape(h.shape[2], -1)  # [T', C * D'] channel-major
    h = h @ sd["model.subsampling.affine.weight"].T + sd["model.subsampling.affine.bias"]
    h = _layer_norm(h, sd["model.subsampling.norm.weight"], sd["model.subsampling.norm.bias"])
    # PositionalEncoding: scale by sqrt(d_model), add sin/cos positions (the official table is float32)
    d = enc.d_model
    pos = torch.arange(h.shape[0], dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe = torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1).reshape(h.shape[0], d)
    h = math.sqrt(d) * h + pe.double()
    # TransformerPreLNEncoderLayer x select_layer (TransformerEncoder returns at layer `select_layer`)
    heads, hd = enc.nhead, d // enc.nhead
    for i in range(config.select_layer):
        p = {key: sd[f"model.encoder.layers.{i}.{key}"] for key in LAYER_KEYS}
        a = _layer_norm(h, p["norm1.weight"], p["norm1.bias"])
        wq, wk, wv = p["self_attn.in_proj_weight"].chunk(3)
        bq, bk, bv = p["self_attn.in_proj_bias"].chunk(3)
        q, kk, v = ((a @ w.T + b).reshape(-1, heads, hd).transpose(0, 1) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        att = torch.softmax(q @ kk.transpose(1, 2) / math.sqrt(hd), dim=-1)
        ctx = (att @ v).transpose(0, 1).reshape(-1, d)
        h = h + ctx @ p["self_attn.out_proj.weight"].T + p["self_attn.out_proj.bias"]
        m = _layer_norm(h, p["norm2.weight"], p["norm2.bias"]) @ p["linear1.weight"].T + p["linear1.bias"]
        m = 0.5 * m * (1 + torch.erf(m / math.sqrt(2)))
        h = h + m @ p["linear2.weight"].T + p["linear2.bias"]
        h = _layer_norm(h, p["norm3.weight"], p["norm3.bias"])
    # Kmeans: L2-normalise, nearest column of the [D, C] codebook
    unit = h / h.norm(dim=-1, keepdim=True)
    codebook = sd["kmeans.codebook"]
    dist = ((unit[:, :, None] - codebook[None, :, :]) ** 2).sum(1)
    return h, dist.argmin(-1)


# -- conformance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("select_layer", [2, 1])
def test_batch_matches_the_official_math_item_by_item(tmp_path, select_layer):
    config = replace(semantic.TINY_SEMANTIC_CONFIG, select_layer=select_layer)
    tok = _random_tokenizer(tmp_path, config)
    sd = tok.state_dict()
    lengths = [16000 + 123, 9000]
    waves = [_speechlike(n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.rand(2, max(lengths), dtype=torch.float64) * 2 - 1  # junk in the padding
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w
    hidden, hidden_lengths = tok.encode_hidden(batch, torch.tensor(lengths))
    codes, code_lengths = tok(batch, torch.tensor(lengths))
    assert codes.dtype == torch.int64 and codes.shape == hidden.shape[:2]
    assert code_lengths.tolist() == hidden_lengths.tolist() == [17, 9]
    assert codes.min() >= 0 and codes.max() < config.codebook_size
    for i, w in enumerate(waves):
        n = int(code_lengths[i])
        ref_hidden, ref_codes = _reference(sd, config, w)
        assert ref_hidden.shape[0] == n
        torch.testing.assert_close(hidden[i, :n], ref_hidden, atol=1e-9, rtol=0)
        assert torch.equal(codes[i, :n], ref_codes)
        assert len(set(ref_codes.tolist())) > 1  # a real test of the search, not a constant
        alone_codes, alone_lengths = tok(w[None], torch.tensor([w.numel()]))
        alone_hidden, _ = tok.encode_hidden(w[None], torch.tensor([w.numel()]))
        assert alone_lengths.tolist() == [n] and alone_codes.shape[1] == n
        torch.testing.assert_close(alone_hidden[0], hidden[i, :n], atol=1e-9, rtol=0)
        assert torch.equal(alone_codes[0], codes[i, :n])


def test_fbank_matches_kaldi_without_dc_removal(tmp_path):
    torchaudio_kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    tok = semantic.SemanticTokenizer(semantic.TINY_SEMANTIC_CONFIG).double()
    # Broadband noise keeps every band well above the leakage of strong tones through the window, where
    # a float32 (official) and a float64 (torchaudio) window would disagree.
    wave = _speechlike(8000, seed=3) + 0.05 * torch.randn(
        8000, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    ours, frames = tok.feature_extractor.fbank(wave[None] * 32767, torch.tensor([8000]))
    kaldi = torchaudio_kaldi.fbank(
        wave[None] * 32767, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
        preemphasis_coefficient=0.97, remove_dc_offset=False, window_type="povey", low_freq=40,
        high_freq=-200, sample_frequency=16000, snip_edges=True, use_energy=False,
    )  # fmt: skip
    assert frames.tolist() == [kaldi.shape[0]] == [48]
    torch.testing.assert_close(ours[0], kaldi, atol=1e-4, rtol=0)


def test_derived_buffers_follow_the_official_rules():
    fb = semantic.OFFICIAL_SEMANTIC_CONFIG.fbank
    tok = semantic.SemanticTokenizer(semantic.TINY_SEMANTIC_CONFIG)
    n = torch.arange(400, dtype=torch.float64)
    povey = (0.5 - 0.5 * torch.cos(2 * math.pi * n / 399)) ** 0.85
    torch.testing.assert_close(tok.feature_extractor.fbank.window.double(), povey, atol=1e-6, rtol=0)
    banks = tok.feature_extractor.fbank.mel_banks.double()
    assert banks.shape == (257, 80) and torch.all(banks[-1] == 0)
    mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    lo, hi = mel(40.0), mel(8000.0 - 200.0)
    for m in (0, 41, 79):
        left, center, right = (lo + (m + j) * (hi - lo) / 81 for j in range(3))
        for b in range(256):
            x = mel(b * 16000 / 512)
            want = max(0.0, min((x - left) / (center - left), (right - x) / (right - center)))
            assert abs(banks[b, m].item() - want) < 1e-4  # the official filters are float32
    assert tok.feature_extractor.fbank.eps.item() == np.finfo(np.float32).eps
    assert fb.window_size == 400 and fb.window_shift == 160 and fb.padded_window_size == 512


@pytest.mark.parametrize(
    ("samples", "codes"),
    [(0, 0), (80, 0), (240, 0), (241, 1), (399, 1), (400, 1), (960, 1), (1920, 2), (961, 1), (9600, 10), (16000, 17)],
)
def test_length_rules(samples, codes):
    tok = semantic.SemanticTokenizer(semantic.TINY_SEMANTIC_CONFIG)
    assert tok.code_lengths(torch.tensor([samples])).tolist() == [codes]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_960n_samples_give_n_codes_at_16_67_hz(n):
    config = semantic.TINY_SEMANTIC_CONFIG
    assert config.hop_samples == 960 and config.frame_rate == pytest.approx(16.6667, rel=1e-4)
    tok = semantic.SemanticTokenizer(config).eval()
    wave = _speechlike(960 * n, seed=n).float()
    codes, lengths = tok(wave[None].repeat(2, 1), torch.tensor([960 * n, 960 * n]))
    assert codes.shape == (2, n) and lengths.tolist() == [n, n]


def test_too_short_and_bad_inputs():
    tok = semantic.SemanticTokenizer(semantic.TINY_SEMANTIC_CONFIG)
    codes, lengths = tok(torch.zeros(2, 100), torch.tensor([100, 50]))
    assert codes.shape == (2, 0) and lengths.tolist() == [0, 0]
    codes, lengths = tok(torch.zeros(2, 2000), torch.tensor([2000, 0]))  # an empty item: finite, length 0
    assert lengths.tolist() == [2, 0] and codes.shape == (2, 2)
    with pytest.raises(ValueError, match="lengths"):
        tok(torch.zeros(1, 1000), torch.tensor([1001]))
    with pytest.raises(ValueError, match="batch, samples"):
        tok(torch.zeros(1000), torch.tensor([1000]))


# -- key names, checkpoint loading, size --------------------------------------------------------------


def test_state_dict_keys_are_the_official_ones():
    config = semantic.TINY_SEMANTIC_CONFIG
    sd = semantic.SemanticTokenizer(config).state_dict()
    assert list(sd) == official_keys(2)
    assert semantic.CHECKPOINT_PREFIX == "semantic_tokenizer."
    d, ffn = config.encoder.d_model, config.encoder.dim_feedforward
    assert sd["kmeans.codebook"].shape == (d, config.codebook_size)
    assert sd["model.subsampling.conv.subsampling/conv0.weight"].shape == (32, 1, 3, 3)
    assert sd["model.subsampling.conv.subsampling/conv1.weight"].shape == (32, 32, 3, 3)
    assert sd["model.subsampling.affine.weight"].shape == (d, 32 * 76)
    assert sd["model.encoder.layers.1.self_attn.in_proj_weight"].shape == (3 * d, d)
    assert sd["model.encoder.layers.1.linear1.weight"].shape == (ffn, d)
    assert sd["feature_extractor.fbank.mel_banks"].shape == (257, 80)
    assert sd["feature_extractor.fbank.eps"].shape == ()
    assert sd["feature_extractor.cmvn.cmvn_mean"].shape == (80,)


def test_real_size_on_meta():
    assert semantic.parameter_count() == 514_806_368
    with torch.device("meta"):
        tok = semantic.SemanticTokenizer(semantic.OFFICIAL_SEMANTIC_CONFIG)
    sd = tok.state_dict()
    assert list(sd) == official_keys(26)
    assert sd["kmeans.codebook"].shape == (1280, 8192)


def test_checkpoint_load_names_missing_stray_and_misshaped_keys(tmp_path):
    source = _random_tokenizer(tmp_path)
    prefix = semantic.CHECKPOINT_PREFIX
    checkpoint = {prefix + k: v.clone() for k, v in source.state_dict().items()}
    checkpoint["encoder.block.0.weight"] = torch.zeros(3)  # the acoustic encoder's, not ours
    target = semantic.SemanticTokenizer(semantic.TINY_SEMANTIC_CONFIG).double()
    report = target.load_checkpoint_state(checkpoint, "ckpts/LongCatAudioCodec_encoder.pt")
    assert report.kept == () and report.other_keys == 1 and len(report.loaded) == len(official_keys(2))
    wave = _speechlike(4000, seed=9)[None]
    assert torch.equal(target(wave, torch.tensor([4000]))[0], source(wave, torch.tensor([4000]))[0])

    derived_absent = {k: v for k, v in checkpoint.items() if k[len(prefix) :] not in semantic.DERIVED_BUFFERS}
    report = semantic.SemanticTokenizer(semantic.TINY_SEMANTIC_CONFIG).load_checkpoint_state(derived_absent, "ck")
    assert report.kept == tuple(prefix + k for k in semantic.DERIVED_BUFFERS)

    broken = dict(checkpoint)
    del broken[prefix + "model.encoder.layers.1.norm3.bias"]
    broken[prefix + "model.encoder.layers.2.norm3.bias"] = torch.zeros(32)
    broken[prefix + "kmeans.codebook"] = torch.zeros(64, 32)
    with pytest.raises(ModelError) as err:
        target.load_checkpoint_state(broken, "ckpts/LongCatAudioCodec_encoder.pt")
    message = str(err.value)
    assert "ckpts/LongCatAudioCodec_encoder.pt" in message
    assert "missing 1 key(s): semantic_tokenizer.model.encoder.layers.1.norm3.bias" in message
    assert "unexpected 1 key(s): semantic_tokenizer.model.encoder.layers.2.norm3.bias" in message
    assert "semantic_tokenizer.kmeans.codebook: shape [64, 32], expected [32, 64]" in message


# -- CMVN file ----------------------------------------------------------------------------------------


def test_cmvn_round_trip_in_the_official_format(tmp_path):
    mean = torch.linspace(5, 20, 80, dtype=torch.float64)
    std = torch.linspace(0.5, 4, 80, dtype=torch.float64)
    path = semantic.write_cmvn(tmp_path / "LongCatAudioCodec_encoder_cmvn.npy", mean, std, count=1234.0)
    stats = np.load(path)
    assert stats.shape == (2, 81) and stats[0, -1] == 1234.0 and stats[1, -1] == 0.0
    np.testing.assert_allclose(stats[0, :-1], mean.numpy() * 1234.0)
    # Cmvn.__init__: count = stats[0][-1]; mean = stats[0][:-1] / count; var = stats[1][:-1] / count - mean^2
    got_mean, got_scale = semantic.load_cmvn(path, dim=80)
    assert got_mean.dtype == got_scale.dtype == torch.float32
    torch.testing.assert_close(got_mean.double(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_scale.double(), 1 / std, rtol=1e-5, atol=0)


def test_cmvn_file_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        semantic.load_cmvn(tmp_path / "none.npy")
    np.save(tmp_path / "flat.npy", np.zeros(81))
    with pytest.raises(ModelError, match=r"shape \[81\].*\[2, D \+ 1\]"):
        semantic.load_cmvn(tmp_path / "flat.npy")
    semantic.write_cmvn(tmp_path / "small.npy", np.zeros(40), np.ones(40))
    with pytest.raises(ModelError, match=r"\[2, 41\].*\[2, 81\]"):
        semantic.load_cmvn(tmp_path / "small.npy", dim=80)
    bad = np.zeros((2, 4))
    bad[0] = [1.0, 2.0, 3.0, 10.0]
    np.save(tmp_path / "neg.npy", bad)
    with pytest.raises(ModelError, match=r"negative variance in dimensions \[0, 1, 2\]"):
        semantic.load_cmvn(tmp_path / "neg.npy")
    bad[0, -1] = 0
    np.save(tmp_path / "zero.npy", bad)
    with pytest.raises(ModelError, match="frame count"):
        semantic.load_cmvn(tmp_path / "zero.npy")


# -- config -------------------------------------------------------------------------------------------


def test_official_yaml_round_trip():
    tokenizer_yaml, infer_yaml = yaml.safe_load(OFFICIAL_TOKENIZER_YAML), yaml.safe_load(OFFICIAL_INFER_YAML)
    config = semantic.SemanticTokenizerConfig.from_yaml_dicts(tokenizer_yaml, infer_yaml, "configs")
    assert config == semantic.OFFICIAL_SEMANTIC_CONFIG
    assert config.to_yaml_dicts() == (tokenizer_yaml, infer_yaml)
    tiny = semantic.TINY_SEMANTIC_CONFIG
    assert semantic.SemanticTokenizerConfig.from_yaml_dicts(*tiny.to_yaml_dicts(), "tiny") == tiny
    assert (tiny.encoder.d_model, tiny.encoder.nhead, tiny.encoder.num_encoder_layers) == (32, 2, 2)
    assert (tiny.encoder.dim_feedforward, tiny.codebook_size, tiny.select_layer) == (64, 64, 2)


def test_config_errors_name_file_and_key():
    tokenizer_yaml, infer_yaml = yaml.safe_load(OFFICIAL_TOKENIZER_YAML), yaml.safe_load(OFFICIAL_INFER_YAML)
    del tokenizer_yaml["semantic_tokenizer_config"]["codebook_size"]
    tokenizer_yaml["semantic_tokenizer_config"]["select_layer"] = "26"
    infer_yaml["feature"]["fbank"]["preemphasis"] = True
    infer_yaml["encoder"]["VGGtf_encoder"]["conv2d_stride"] = "2;3"
    with pytest.raises(ModelError) as err:
        semantic.SemanticTokenizerConfig.from_yaml_dicts(tokenizer_yaml, infer_yaml, "/repo/configs")
    message = str(err.value)
    tok, inf = "/repo/configs/LongCatAudioCodec_semantic_tokenizer.yaml", "/repo/configs/semantic_tokenizer.infer.yaml"
    assert f"{tok}: semantic_tokenizer_config.codebook_size: missing" in message
    assert f"{tok}: semantic_tokenizer_config.select_layer: '26' must be an integer" in message
    assert f"{inf}: feature.fbank.preemphasis: True must be a number" in message
    assert f"{inf}: encoder.VGGtf_encoder.conv2d_stride: '2;3'" in message

    tokenizer_yaml, infer_yaml = yaml.safe_load(OFFICIAL_TOKENIZER_YAML), yaml.safe_load(OFFICIAL_INFER_YAML)
    tokenizer_yaml["semantic_tokenizer_config"]["select_layer"] = 27
    infer_yaml["encoder"]["VGGtf_encoder"]["nhead"] = 3
    infer_yaml["encoder"]["VGGtf_encoder"]["conv2d_stride"] = "2,3,2"
    infer_yaml["feature"]["fbank"]["num_mel_bins"] = 64
    with pytest.raises(ModelError) as err:
        semantic.SemanticTokenizerConfig.from_yaml_dicts(tokenizer_yaml, infer_yaml, "/repo/configs")
    message = str(err.value)
    assert f"{tok}: semantic_tokenizer_config.select_layer: 27 must be in 1..26" in message
    assert f"{inf}: encoder.VGGtf_encoder.nhead: 3 must divide d_model 1280" in message
    assert f"{inf}: encoder.VGGtf_encoder.conv2d_stride: 2,3,2 must list one stride per conv layer (2)" in message
    assert f"{inf}: encoder.VGGtf_encoder.feat_dim:" in message and "fbank width 64" in message

    with pytest.raises(ModelError, match=r"semantic_tokenizer.infer.yaml: encoder: missing"):
        semantic.SemanticTokenizerConfig.from_yaml_dicts(yaml.safe_load(OFFICIAL_TOKENIZER_YAML), {"feature": {}}, "d")
    with pytest.raises(ModelError, match=r"SemanticTokenizerConfig/.*codebook_dim: 16 must equal d_model 32"):
        semantic.SemanticTokenizer(replace(semantic.TINY_SEMANTIC_CONFIG, codebook_dim=16))
