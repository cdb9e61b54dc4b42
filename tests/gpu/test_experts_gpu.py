"""GPU tests (`pytest -m gpu`; skipped without CUDA): what only a GPU can show."""

import pytest
import torch

from tests.unit.test_experts import _config, _pair, _routing, _tol
from vss_core import experts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_bf16_uses_grouped_mm_and_matches_transformers() -> None:
    cfg = _config(64, 32, 16, 8, 8)
    ref, ours = _pair(cfg, torch.bfloat16)
    ref, ours = ref.cuda(), ours.cuda()
    index, weights = _routing(256, cfg)
    x = torch.randn(256, 64).bfloat16().cuda()
    assert experts._use_grouped_mm(x, 64, 32)
    out = ours(x, index.cuda(), weights.cuda())
    expected = ref(x, index.cuda(), weights.cuda())
    torch.testing.assert_close(out, expected, **_tol(torch.bfloat16, expected.abs().max().item()))
