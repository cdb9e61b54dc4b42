"""vss_core.codec.quantizer: LongCat-Audio-Codec's grouped residual VQ against the official math recomputed
with plain tensor ops (networks/quantizers/auto_grvq.py): round trip, code range, the code-id rule a * K + b."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import randomize, ref_conv, ref_nearest, ref_quantize
from vss_core.codec.acoustic import TINY_ENCODER_YAML
from vss_core.codec.quantizer import GroupResidualVectorQuantize

K = TINY_ENCODER_YAML["codec_codebook_size"]


@pytest.fixture()
def tiny_quantizer():
    return randomize(GroupResidualVectorQuantize(input_dim=16, n_codebooks=3, codebook_size=K, codebook_dim=4).double())


def test_quantizer_round_trip_and_range(tiny_quantizer):
    z = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = tiny_quantizer.encode(z)
    assert out.codes.shape == (2, 3, 7) and out.latents.shape == (2, 3 * 2 * 4, 7)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < K * K
    torch.testing.assert_close(tiny_quantizer.decode(out.codes), out.z_q, atol=1e-12, rtol=0)
    sd = tiny_quantizer.state_dict()
    zq_ref, codes_ref = ref_quantize(sd, "", z, 3, K)
    assert torch.equal(out.codes.transpose(1, 2), codes_ref)
    torch.testing.assert_close(out.z_q, zq_ref, atol=1e-12, rtol=0)


def test_code_is_a_times_k_plus_b(tiny_quantizer):
    sd = tiny_quantizer.state_dict()
    z = torch.randn(1, 16, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    codes = tiny_quantizer.encode(z, n_codebooks=1).codes[:, 0]
    a = ref_nearest(ref_conv(sd, "quantizers.0.in_proj_a.", z), sd["quantizers.0.codebook_a.weight"])
    b = ref_nearest(ref_conv(sd, "quantizers.0.in_proj_b.", z), sd["quantizers.0.codebook_b.weight"])
    assert torch.equal(codes, a * K + b)
    # Decoding code a*K+b uses codebook_a[a] (first half of the channels) and codebook_b[b].
    a, b = 3, 1
    got = tiny_quantizer.decode(torch.tensor([[[a * K + b]]]))
    half_a = ref_conv(sd, "quantizers.0.out_proj_a.", sd["quantizers.0.codebook_a.weight"][a].view(1, -1, 1))
    half_b = ref_conv(sd, "quantizers.0.out_proj_b.", sd["quantizers.0.codebook_b.weight"][b].view(1, -1, 1))
    torch.testing.assert_close(got, torch.cat((half_a, half_b), dim=1), atol=1e-12, rtol=0)
    assert not torch.allclose(got, tiny_quantizer.decode(torch.tensor([[[b * K + a]]])))


def test_decode_refuses_codes_out_of_range(tiny_quantizer):
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        tiny_quantizer.decode(torch.tensor([[[25]]]))
    with pytest.raises(ValueError, match="n_codebooks"):
        tiny_quantizer.decode(torch.zeros(1, 4, 2, dtype=torch.int64))
