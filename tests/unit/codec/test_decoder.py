"""vss_core.codec.decoder: LongCat-Audio-Codec's 16 kHz and 24 kHz decoders.

The reference below recomputes the official math (LongCatAudioCodec_model.py LongCatAudioCodecDecoder,
mem_decoders.py MemDecoder, modules.py GLSTM, model.py / causal_model.py decoder blocks) with plain
tensor ops from the state dict alone, by the official key names (the weight-norm conv and Snake from
tests/helpers.py); it imports nothing from vss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.helpers import randomize, ref_conv, ref_snake, ref_wn_weight
from vss_core.codec.acoustic import AcousticEncoder, AcousticEncoderConfig
from vss_core.codec.decoder import TINY_DECODER_16K_YAML, Decoder, DecoderConfig
from vss_core.errors import ModelError

# configs/LongCatAudioCodec_decoder_{16k,24k}_4codebooks.yaml of the official GitHub repo, verbatim.
OFFICIAL_YAML_TEXT = {
    "16k": """\
codec_config:
  codec_dimension: 1024
  codec_dec_ratios: [8,6,5,4]
  decoder_dim: 1536
  semantic_dim: 1280
  decoder_type: '16k'
  ckpt_path: 'ckpts/LongCatAudioCodec_decoder_16k_4codebooks.pt'
  codec_codebook_size: 90
  codec_codebook_search_dim: 8 
  codec_codebooks: 3
  semantic_token_nums: 8192""",
    "24k": """\
codec_config:
  codec_dimension: 1024
  codec_dec_ratios: [8,6,6,5]
  decoder_dim: 1536
  semantic_dim: 1280
  decoder_type: '24k'
  ckpt_path: 'ckpts/LongCatAudioCodec_decoder_24k_4codebooks.pt'
  codec_codebook_size: 90
  codec_codebook_search_dim: 8 
  codec_codebooks: 3
  semantic_token_nums: 8192""",
}

K = TINY_DECODER_16K_YAML["codec_codebook_size"]
SEMANTIC_VOCAB = TINY_DECODER_16K_YAML["semantic_token_nums"]
STRIDES = {"16k": [8, 6, 5, 4], "24k": [8, 6, 6, 5]}


# -- independent reference (official math, plain tensor ops) ----------------------------------------


def ref_lstm(sd, p, x):
    """One-layer LSTM, batch first, zero initial state; gates i, f, g, o as torch orders them."""
    w_ih, w_hh = sd[p + "weight_ih_l0"], sd[p + "weight_hh_l0"]
    b_ih, b_hh = sd[p + "bias_ih_l0"], sd[p + "bias_hh_l0"]
    hidden = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], hidden)
    c = x.new_zeros(x.shape[0], hidden)
    out = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = gates.split(hidden, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, dim=1)


def ref_layer_norm(sd, p, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[p + "weight"] + sd[p + "bias"]


def ref_decoder(sd, semantic, acoustic, decoder_type, k):
    """LongCatAudioCodecDecoder.forward(semantic [B, F], acoustic [B, N, F] -> here [B, F, N])."""
    causal = decoder_type == "24k"
    strides = STRIDES[decoder_type]
    sem = sd["semantic_dequantizer.dequant.weight"][semantic].permute(0, 2, 1)
    ac = 0.0
    for i in range(acoustic.shape[-1]):
        p = f"acoustic_quantizer.quantizers.{i}."
        a, b = acoustic[..., i] // k, acoustic[..., i] % k
        half_a = ref_conv(sd, p + "out_proj_a.", sd[p + "codebook_a.weight"][a].permute(0, 2, 1))
        half_b = ref_conv(sd, p + "out_proj_b.", sd[p + "codebook_b.weight"][b].permute(0, 2, 1))
        ac = ac + torch.cat((half_a, half_b), dim=1)
    frames = min(sem.shape[-1], ac.shape[-1])
    x = torch.cat((sem[..., :frames], ac[..., :frames]), dim=1)
    h = x.permute(0, 2, 1)
    h = ref_layer_norm(sd, "decoder.mem_layers.0.ln1.", ref_lstm(sd, "decoder.mem_layers.0.lstm_list1.0.", h))
    h = ref_layer_norm(sd, "decoder.mem_layers.0.ln2.", ref_lstm(sd, "decoder.mem_layers.0.lstm_list2.0.", h))
    x = ref_conv(sd, "decoder.model.0.", h.permute(0, 2, 1), padding=3)
    for i, s in enumerate(strides, start=1):
        p = f"decoder.model.{i}.block."
        x = ref_snake(x, sd[p + "0.alpha"])
        weight, bias = ref_wn_weight(sd, p + "1."), sd[p + "1.bias"]
        if causal:
            x = F.conv_transpose1d(x, weight, bias, stride=s)
        else:
            x = F.conv_transpose1d(x, weight, bias, stride=s, padding=math.ceil(s / 2), output_padding=s % 2)
        for j, d in zip((2, 3, 4), (1, 3, 9)):
            q = f"{p}{j}.block."
            if causal:
                y = F.pad(ref_snake(x, sd[q + "0.alpha"]), (6 * d, 0))
                y = ref_conv(sd, q + "4.", ref_snake(ref_conv(sd, q + "2.", y, dilation=d), sd[q + "3.alpha"]))
            else:
                y = ref_conv(sd, q + "1.", ref_snake(x, sd[q + "0.alpha"]), dilation=d, padding=3 * d)
                y = ref_conv(sd, q + "3.", ref_snake(y, sd[q + "2.alpha"]))
            x = x + y
    n = len(strides)
    x = ref_snake(x, sd[f"decoder.model.{n + 1}.alpha"])
    if causal:
        x = ref_conv(sd, f"decoder.model.{n + 3}.", F.pad(x, (6, 0)))
    else:
        x = ref_conv(sd, f"decoder.model.{n + 2}.", x, padding=3)
    return torch.tanh(x)[:, 0]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["16k", "24k"])
def tiny_decoder(request):
    decoder = randomize(Decoder(DecoderConfig.tiny(request.param)).double().eval(), seed=len(request.param), scale=0.4)
    # A small gain on the output conv keeps tanh out of saturation, so the comparison stays sharp.
    final = "decoder.model.7." if request.param == "24k" else "decoder.model.6."
    state = decoder.state_dict()
    with torch.no_grad():
        state[final + "weight_g"].fill_(0.05)
        state[final + "bias"].zero_()
    return decoder


def _codes(batch, frames, n=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, SEMANTIC_VOCAB, (batch, frames), generator=gen)
    acoustic = torch.randint(0, K * K, (batch, frames, n), generator=gen)
    return semantic, acoustic


# -- 1. conformance --------------------------------------------------------------------------------


@pytest.mark.parametrize("n_codebooks", [3, 2])
def test_decoder_matches_reference(tiny_decoder, n_codebooks):
    kind = tiny_decoder.config.decoder_type
    semantic, acoustic = _codes(2, 4, n_codebooks)
    wave = tiny_decoder.decode(semantic, acoustic)
    ref = ref_decoder(tiny_decoder.state_dict(), semantic, acoustic, kind, K)
    hop = 960 if kind == "16k" else 1440
    assert wave.shape == ref.shape == (2, 4 * hop)
    # Random weights that neither saturate tanh nor wash out the input (else the check would be weak).
    assert (wave.abs() > 0.99).float().mean() < 0.01 and wave.std() > 0.02
    assert (wave[0] - wave[1]).abs().mean() > 0.01
    torch.testing.assert_close(wave, ref, atol=1e-9, rtol=0)


def test_output_rate_hop_and_frame_alignment(tiny_decoder):
    kind = tiny_decoder.config.decoder_type
    assert tiny_decoder.output_rate == {"16k": 16000, "24k": 24000}[kind]
    assert tiny_decoder.hop_length * 16000 == 960 * tiny_decoder.output_rate
    semantic, acoustic = _codes(1, 5)
    # As the official forward: frames are cut to the shorter stream.
    assert tiny_decoder.decode(semantic, acoustic[:, :4]).shape == (1, 4 * tiny_decoder.hop_length)


def test_decode_checks_codes(tiny_decoder):
    semantic, acoustic = _codes(1, 3)
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        tiny_decoder.decode(semantic, acoustic + K * K)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tiny_decoder.decode(semantic + SEMANTIC_VOCAB, acoustic)
    with pytest.raises(ValueError, match="n_codebooks"):
        tiny_decoder.decode(semantic, torch.cat((acoustic, acoustic[..., :1]), dim=-1))
    with pytest.raises(ValueError, match=r"\[B, F, N\]"):
        tiny_decoder.decode(semantic, acoustic[0])


def test_encoder_codes_decode_end_to_end():
    encoder = AcousticEncoder(AcousticEncoderConfig.tiny()).eval()
    decoder = Decoder(DecoderConfig.tiny("24k")).eval()
    wave = torch.randn(2, 3000, generator=torch.Generator().manual_seed(7)) * 0.1
    codes, lengths = encoder.encode(wave, torch.tensor([3000, 2000]))
    semantic = torch.zeros(codes.shape[:2], dtype=torch.int64)
    out = decoder.decode(semantic, codes)
    assert out.shape == (2, 4 * 1440) and lengths.tolist() == [3, 2]
    assert torch.isfinite(out).all()


# -- 2. key names ----------------------------------------------------------------------------------


def _wn(p):
    return [p + "bias", p + "weight_g", p + "weight_v"]


def expected_decoder_keys(decoder_type, n_codebooks=3, n_strides=4):
    """From LongCatAudioCodecDecoder (decoder, acoustic_quantizer, semantic_dequantizer) and MemDecoder."""
    causal = decoder_type == "24k"
    keys = []
    for lstm in ("lstm_list1", "lstm_list2"):
        p = f"decoder.mem_layers.0.{lstm}.0."
        keys += [p + w for w in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    keys += [f"decoder.mem_layers.0.{ln}.{w}" for ln in ("ln1", "ln2") for w in ("weight", "bias")]
    keys += _wn("decoder.model.0.")
    for i in range(1, n_strides + 1):
        p = f"decoder.model.{i}.block."
        keys += [p + "0.alpha", *_wn(p + "1.")]
        for j in (2, 3, 4):
            q = f"{p}{j}.block."
            if causal:  # causal_model.py ResidualUnit: 0 Snake, 1 ZeroPad1d, 2 conv, 3 Snake, 4 conv
                keys += [q + "0.alpha", *_wn(q + "2."), q + "3.alpha", *_wn(q + "4.")]
            else:  # model.py ResidualUnit: 0 Snake, 1 conv, 2 Snake, 3 conv
                keys += [q + "0.alpha", *_wn(q + "1."), q + "2.alpha", *_wn(q + "3.")]
    keys += [f"decoder.model.{n_strides + 1}.alpha"]
    keys += _wn(f"decoder.model.{n_strides + (3 if causal else 2)}.")  # causal: ZeroPad1d in between
    for i in range(n_codebooks):
        p = f"acoustic_quantizer.quantizers.{i}."
        for proj in ("in_proj_a", "out_proj_a", "in_proj_b", "out_proj_b"):
            keys += _wn(f"{p}{proj}.")
        keys += [p + "codebook_a.weight", p + "codebook_b.weight"]
    return keys + ["semantic_dequantizer.dequant.weight"]


def test_state_dict_keys_are_the_official_ones(tiny_decoder):
    kind = tiny_decoder.config.decoder_type
    keys = list(tiny_decoder.state_dict())
    assert keys == expected_decoder_keys(kind)
    assert len(keys) == 174
    assert not list(tiny_decoder.buffers())


@pytest.mark.parametrize(("kind", "params", "up_kernel"), [("16k", 162_459_042, 16), ("24k", 150_902_178, 8)])
def test_real_size_on_meta(kind, params, up_kernel):
    with torch.device("meta"):
        dec = Decoder(DecoderConfig.official(kind))
    sd = dec.state_dict()
    assert list(sd) == expected_decoder_keys(kind)
    shapes = {
        "decoder.mem_layers.0.lstm_list1.0.weight_ih_l0": (4 * 2304, 2304),
        "decoder.mem_layers.0.lstm_list2.0.weight_hh_l0": (4 * 2304, 2304),
        "decoder.mem_layers.0.lstm_list2.0.bias_ih_l0": (4 * 2304,),
        "decoder.mem_layers.0.ln1.weight": (2304,),
        "decoder.model.0.weight_v": (1536, 2304, 7),
        "decoder.model.1.block.0.alpha": (1, 1536, 1),
        # Transposed conv: weight [in, out, k], so the dim-0 weight norm has one g per input channel.
        "decoder.model.1.block.1.weight_g": (1536, 1, 1),
        "decoder.model.1.block.1.weight_v": (1536, 768, up_kernel),
        "decoder.model.1.block.1.bias": (768,),
        "decoder.model.5.alpha": (1, 96, 1),
        "acoustic_quantizer.quantizers.0.codebook_b.weight": (90, 8),
        "semantic_dequantizer.dequant.weight": (8192, 1280),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert sum(p.numel() for p in dec.parameters()) == params
    assert dec.output_rate == {"16k": 16000, "24k": 24000}[kind]


# -- checkpoint loading (strict) -------------------------------------------------------------------


def test_strict_load_names_every_bad_key(tiny_decoder, tmp_path):
    kind = tiny_decoder.config.decoder_type
    state = dict(tiny_decoder.state_dict())
    fresh = Decoder(DecoderConfig.tiny(kind)).double()
    fresh.load_official_state_dict(state, "x.pt")
    semantic, acoustic = _codes(1, 2)
    assert torch.equal(fresh.decode(semantic, acoustic), tiny_decoder.decode(semantic, acoustic))

    broken = dict(state)
    del broken["decoder.mem_layers.0.ln2.bias"]
    broken["decoder.model.9.alpha"] = torch.ones(1, 1, 1)
    broken["semantic_dequantizer.dequant.weight"] = torch.zeros(8192, 8)
    where = f"ckpts/LongCatAudioCodec_decoder_{kind}_4codebooks.pt"
    with pytest.raises(ModelError) as err:
        fresh.load_official_state_dict(broken, where)
    msg = str(err.value)
    assert where in msg
    assert "decoder.mem_layers.0.ln2.bias" in msg and "missing" in msg
    assert "decoder.model.9.alpha" in msg and "stray" in msg
    assert "semantic_dequantizer.dequant.weight" in msg and "(64, 8)" in msg

    path = tmp_path / "decoder.pt"
    torch.save({k: v.float() for k, v in state.items()}, path)
    loaded = Decoder.from_checkpoint(path, DecoderConfig.tiny(kind))
    assert not loaded.training
    assert all(torch.equal(v, state[k].float()) for k, v in loaded.state_dict().items())
    wave32 = loaded.decode(semantic, acoustic).double()
    torch.testing.assert_close(wave32, fresh.decode(semantic, acoustic), atol=1e-3, rtol=0)


# -- 4. config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["16k", "24k"])
def test_official_yaml_parses_and_round_trips(kind):
    raw = yaml.safe_load(OFFICIAL_YAML_TEXT[kind])
    where = f"configs/LongCatAudioCodec_decoder_{kind}_4codebooks.yaml"
    config = DecoderConfig.from_yaml(raw["codec_config"], where)
    assert config == DecoderConfig.official(kind)
    assert config.to_yaml() == raw["codec_config"]
    assert config.output_rate == {"16k": 16000, "24k": 24000}[kind]
    assert config.hop_length == {"16k": 960, "24k": 1440}[kind]
    tiny = DecoderConfig.tiny(kind)
    assert DecoderConfig.from_yaml(tiny.to_yaml(), "x") == tiny


def test_config_errors_name_file_and_every_key():
    raw = dict(yaml.safe_load(OFFICIAL_YAML_TEXT["24k"])["codec_config"])
    raw["codec_dec_ratios"] = [8, 6, 5, 4]  # 960: a 16 kHz hop under decoder_type 24k
    raw["decoder_dim"] = 1000
    del raw["semantic_token_nums"]
    raw["semantic_dim"] = -1
    with pytest.raises(ModelError) as err:
        DecoderConfig.from_yaml(raw, "configs/my_decoder.yaml")
    msg = str(err.value)
    assert "configs/my_decoder.yaml" in msg
    for key in (
        "codec_config.codec_dec_ratios",
        "codec_config.decoder_dim",
        "codec_config.semantic_token_nums: missing",
        "codec_config.semantic_dim",
    ):
        assert key in msg, key
    assert "1440" in msg and "[8, 6, 6, 5]" in msg
    bad_type = dict(raw, decoder_type="48k", decoder_dim=1536, semantic_token_nums=8192, semantic_dim=1280)
    with pytest.raises(ModelError, match="codec_config.decoder_type: '48k'"):
        DecoderConfig.from_yaml(bad_type, "configs/my_decoder.yaml")
