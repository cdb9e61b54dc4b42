"""vss_core.codec.acoustic: LongCat-Audio-Codec's acoustic encoder (its grouped residual VQ:
test_quantizer.py).

The reference functions below (and the weight-norm conv, Snake and VQ ones in tests/helpers.py) recompute the official math (networks/modules/{layers,model}.py,
networks/quantizers/auto_grvq.py, LongCatAudioCodec_model.py) with plain tensor ops from the
state dict alone, by the official key names; they import nothing from vss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.helpers import randomize, ref_conv, ref_quantize, ref_snake
from vss_core.codec.acoustic import (
    CHECKPOINT_PREFIXES,
    TINY_ENCODER_YAML,
    AcousticEncoder,
    AcousticEncoderConfig,
)
from vss_core.errors import ModelError

# configs/LongCatAudioCodec_encoder.yaml of the official GitHub repo, verbatim.
OFFICIAL_ENCODER_YAML_TEXT = """\
codec_config:
  input_sample_rate: 16000 
  codec_dimension: 1024
  codec_codebook_size: 90
  codec_enc_ratios: [4,5,6,8] 
  encoder_dim: 64
  codec_codebook_search_dim: 8 
  codec_codebooks: 3
  semantic_tokenizer_type: 'LongCatAudioCodec_semantic_tokenizer'
  semantic_token_nums: 8192
  semantic_dim: 1280

  ckpt_path: 'ckpts/LongCatAudioCodec_encoder.pt'
"""

STRIDES = [4, 5, 6, 8]
K = TINY_ENCODER_YAML["codec_codebook_size"]


# -- independent reference (official math, plain tensor ops) ----------------------------------------


def ref_mask(x, lengths):
    if lengths is None:
        return 1.0
    return (torch.arange(x.shape[-1])[None, :] < lengths[:, None]).to(x.dtype)[:, None, :]


def ref_residual_unit(sd, p, x, dilation, lengths):
    """model.py ResidualUnit.forward(x, batch_sizes): mask before every item and after."""
    m = ref_mask(x, lengths)
    y = ref_snake(x * m, sd[p + "block.0.alpha"])
    y = ref_conv(sd, p + "block.1.", y * m, dilation=dilation, padding=3 * dilation)
    y = ref_snake(y * m, sd[p + "block.2.alpha"])
    y = ref_conv(sd, p + "block.3.", y * m)
    return x * m + y * m


def ref_encoder(sd, wave, lengths):
    """LongCatAudioCodecEncoder.preprocess + Encoder.forward (lengths None) / forward_with_lens."""
    pad = math.ceil(wave.shape[-1] / 960) * 960 - wave.shape[-1]
    x = F.pad(wave, (0, pad))[:, None, :]
    x = ref_conv(sd, "encoder.block.0.", x * ref_mask(x, lengths), padding=3)
    for i, s in enumerate(STRIDES, start=1):
        p = f"encoder.block.{i}.block."
        x = x * ref_mask(x, lengths)
        for j, dilation in enumerate((1, 3, 9)):
            x = ref_residual_unit(sd, f"{p}{j}.", x * ref_mask(x, lengths), dilation, lengths)
        x = ref_snake(x * ref_mask(x, lengths), sd[p + "3.alpha"])
        x = ref_conv(sd, p + "4.", x * ref_mask(x, lengths), stride=s, padding=math.ceil(s / 2))
        if lengths is not None:
            lengths = lengths // s if s % 2 == 0 else (lengths + 1) // s
            x = x * ref_mask(x, lengths)
    x = ref_snake(x * ref_mask(x, lengths), sd["encoder.block.5.alpha"])
    x = ref_conv(sd, "encoder.block.6.", x * ref_mask(x, lengths), padding=1)
    return x * ref_mask(x, lengths), lengths


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder():
    return randomize(AcousticEncoder(AcousticEncoderConfig.tiny()).double().eval())


def _wave(batch, samples, seed=1):
    return 0.3 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- 1. conformance --------------------------------------------------------------------------------


def test_encoder_matches_reference_without_lengths(tiny_encoder):
    sd = tiny_encoder.state_dict()
    wave = _wave(2, 2500)
    z, frame_lengths = tiny_encoder.encode_latents(wave)
    codes, code_lengths = tiny_encoder.encode(wave)
    z_ref, _ = ref_encoder(sd, wave, None)
    _, codes_ref = ref_quantize(sd, "acoustic_quantizer.", z_ref, 3, K)
    assert z.shape == (2, 16, 3) and codes.shape == (2, 3, 3) and codes.dtype == torch.int64
    torch.testing.assert_close(z, z_ref, atol=1e-9, rtol=0)
    assert torch.equal(codes, codes_ref)
    assert codes.unique().numel() > 3, "random weights should give varied codes (else the check would be weak)"
    assert code_lengths.tolist() == frame_lengths.tolist() == [3, 3]


def test_encoder_matches_reference_with_lengths(tiny_encoder):
    sd = tiny_encoder.state_dict()
    wave = _wave(3, 2500, seed=2)
    lengths = torch.tensor([2500, 1920, 961])
    wave[1, 1920:] = 0.0
    wave[2, 961:] = 0.0
    z, _ = tiny_encoder.encode_latents(wave, lengths)
    codes, code_lengths = tiny_encoder.encode(wave, lengths)
    z_ref, lengths_ref = ref_encoder(sd, wave, lengths)
    zq_ref, codes_ref = ref_quantize(sd, "acoustic_quantizer.", z_ref, 3, K)
    torch.testing.assert_close(z, z_ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(tiny_encoder.quantize(z).z_q, zq_ref, atol=1e-9, rtol=0)
    assert torch.equal(codes, codes_ref)
    # Official rule: even stride l // s, odd (l + 1) // s; 2500 -> 625 -> 125 -> 20 -> 2.
    assert code_lengths.tolist() == lengths_ref.tolist() == [2, 2, 1]
    assert torch.equal(tiny_encoder.code_lengths(lengths), code_lengths)
    # The masked path really differs from encoding the padded signal whole.
    assert not torch.allclose(z, tiny_encoder.encode_latents(wave)[0])


def test_fewer_codebooks_are_a_prefix(tiny_encoder):
    wave = _wave(1, 3000, seed=3)
    full, _ = tiny_encoder.encode(wave)
    for n in (1, 2):
        part, _ = tiny_encoder.encode(wave, n_codebooks=n)
        assert torch.equal(part, full[..., :n])
    with pytest.raises(ValueError, match="n_codebooks"):
        tiny_encoder.encode(wave, n_codebooks=4)


def test_input_checks(tiny_encoder):
    with pytest.raises(ValueError, match="30 s"):
        tiny_encoder.encode(torch.zeros(1, 30 * 16000 + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths"):
        tiny_encoder.encode(_wave(2, 1000), torch.tensor([1000, 1001]))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        tiny_encoder.encode(_wave(1, 1000)[0])


# -- 2. key names ----------------------------------------------------------------------------------


def _wn(p):
    return [p + "bias", p + "weight_g", p + "weight_v"]


def _residual_unit(p):
    return [p + "block.0.alpha", *_wn(p + "block.1."), p + "block.2.alpha", *_wn(p + "block.3.")]


def expected_encoder_keys(n_strides=4, n_codebooks=3):
    """From model.py Encoder/EncoderBlock/ResidualUnit and auto_grvq.py, under LongCatAudioCodecEncoder."""
    keys = _wn("encoder.block.0.")
    for i in range(1, n_strides + 1):
        p = f"encoder.block.{i}.block."
        for j in range(3):
            keys += _residual_unit(f"{p}{j}.")
        keys += [f"{p}3.alpha", *_wn(f"{p}4.")]
    keys += [f"encoder.block.{n_strides + 1}.alpha", *_wn(f"encoder.block.{n_strides + 2}.")]
    for i in range(n_codebooks):
        p = f"acoustic_quantizer.quantizers.{i}."
        for proj in ("in_proj_a", "out_proj_a", "in_proj_b", "out_proj_b"):
            keys += _wn(f"{p}{proj}.")
        keys += [p + "codebook_a.weight", p + "codebook_b.weight"]
    return keys


def test_state_dict_keys_are_the_official_ones(tiny_encoder):
    keys = list(tiny_encoder.state_dict())
    assert keys == expected_encoder_keys()
    assert len(keys) == 161
    assert "encoder.block.1.block.0.block.1.weight_g" in keys
    assert AcousticEncoder.CHECKPOINT_PREFIXES == CHECKPOINT_PREFIXES == ("encoder.", "acoustic_quantizer.")
    assert all(k.startswith(CHECKPOINT_PREFIXES) for k in keys)
    assert not list(tiny_encoder.buffers())


def test_real_size_on_meta():
    with torch.device("meta"):
        enc = AcousticEncoder(AcousticEncoderConfig.official())
    sd = enc.state_dict()
    assert list(sd) == expected_encoder_keys()
    shapes = {
        "encoder.block.0.weight_v": (64, 1, 7),
        "encoder.block.0.weight_g": (64, 1, 1),
        "encoder.block.1.block.0.block.0.alpha": (1, 64, 1),
        "encoder.block.1.block.4.weight_v": (128, 64, 8),
        "encoder.block.2.block.4.weight_v": (256, 128, 10),
        "encoder.block.4.block.4.weight_v": (1024, 512, 16),
        "encoder.block.5.alpha": (1, 1024, 1),
        "encoder.block.6.weight_v": (1024, 1024, 3),
        "acoustic_quantizer.quantizers.2.in_proj_a.weight_v": (8, 1024, 1),
        "acoustic_quantizer.quantizers.2.out_proj_b.weight_v": (512, 8, 1),
        "acoustic_quantizer.quantizers.0.codebook_a.weight": (90, 8),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert sum(p.numel() for p in enc.parameters()) == 21_966_272
    assert enc.hop_length == 960 and enc.acoustic_quantizer.vocab_size == 8100


# -- checkpoint loading ----------------------------------------------------------------------------


def test_load_official_state_dict_names_missing_and_stray_keys(tiny_encoder, tmp_path):
    fresh = AcousticEncoder(AcousticEncoderConfig.tiny()).double()
    state = dict(tiny_encoder.state_dict())
    state["semantic_tokenizer.encoder.layer.0.weight"] = torch.zeros(2)
    others = fresh.load_official_state_dict(state, "ckpts/LongCatAudioCodec_encoder.pt")
    assert others == ["semantic_tokenizer.encoder.layer.0.weight"]
    wave = _wave(1, 2000, seed=6)
    assert torch.equal(fresh.encode(wave)[0], tiny_encoder.encode(wave)[0])

    broken = dict(state)
    del broken["encoder.block.6.weight_g"]
    broken["acoustic_quantizer.quantizers.3.codebook_a.weight"] = torch.zeros(K, 4)
    broken["encoder.block.0.weight_v"] = torch.zeros(4, 1, 5)
    with pytest.raises(ModelError) as err:
        fresh.load_official_state_dict(broken, "ckpts/LongCatAudioCodec_encoder.pt")
    msg = str(err.value)
    assert "ckpts/LongCatAudioCodec_encoder.pt" in msg
    assert "encoder.block.6.weight_g" in msg and "missing" in msg
    assert "acoustic_quantizer.quantizers.3.codebook_a.weight" in msg and "stray" in msg
    assert "encoder.block.0.weight_v" in msg and "(4, 1, 7)" in msg

    path = tmp_path / "LongCatAudioCodec_encoder.pt"
    torch.save({k: v.float() for k, v in state.items()}, path)
    loaded, others = AcousticEncoder.from_checkpoint(path, AcousticEncoderConfig.tiny())
    assert others == ["semantic_tokenizer.encoder.layer.0.weight"] and not loaded.training
    with pytest.raises(ModelError, match=str(tmp_path / "absent.pt")):
        AcousticEncoder.from_checkpoint(tmp_path / "absent.pt", AcousticEncoderConfig.tiny())


# -- 4. config ---------------------------------------------------------------------------------------


def test_official_yaml_parses_and_round_trips():
    raw = yaml.safe_load(OFFICIAL_ENCODER_YAML_TEXT)
    config = AcousticEncoderConfig.from_yaml(raw["codec_config"], "configs/LongCatAudioCodec_encoder.yaml")
    assert config == AcousticEncoderConfig.official()
    assert config.to_yaml() == raw["codec_config"]
    assert AcousticEncoderConfig.from_yaml(raw, "whole document") == config
    assert config.codec_enc_ratios == (4, 5, 6, 8) and config.hop_length == 960
    tiny = AcousticEncoderConfig.tiny()
    assert AcousticEncoderConfig.from_yaml(tiny.to_yaml(), "x") == tiny and tiny.hop_length == 960


def test_config_errors_name_file_and_every_key():
    raw = dict(yaml.safe_load(OFFICIAL_ENCODER_YAML_TEXT)["codec_config"])
    del raw["encoder_dim"]
    raw["codec_enc_ratios"] = [4, 5, 6, 4]
    raw["codec_codebook_size"] = "90"
    raw["input_sample_rate"] = 24000
    raw["codec_dimension"] = 1023
    raw["codec_codebooks"] = True
    raw["codec_codebook_search_dim"] = [8, 8]
    raw["bogus"] = 1
    with pytest.raises(ModelError) as err:
        AcousticEncoderConfig.from_yaml(raw, "configs/my_encoder.yaml")
    msg = str(err.value)
    assert "configs/my_encoder.yaml" in msg
    for key in (
        "codec_config.encoder_dim: missing",
        "codec_config.codec_enc_ratios",
        "codec_config.codec_codebook_size",
        "codec_config.input_sample_rate",
        "codec_config.codec_dimension",
        "codec_config.codec_codebooks",
        "codec_config.bogus: unknown key",
    ):
        assert key in msg, key
    assert "960" in msg
    with pytest.raises(ModelError, match="configs/list.yaml"):
        AcousticEncoderConfig.from_yaml([1, 2], "configs/list.yaml")
