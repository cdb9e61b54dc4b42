"""vss_core.model.embeddings against independent float64 re-computations of the official math:

- `merge_embeddings`: longcat_omni_demo.py `_get_input_embedding` with encoders/embedding.py
  `AudioEmbedding` (text embedding zeroed at text PAD 3, plus every audio embedding zeroed at codec
  PAD 3; a position where text and all codecs are PAD gets the text embedding of 3);
- `AudioOutputLayer`: the SGLang port's cumulative rule (head i sees h + sum_{j<i} embedding[j](id_j));
- `repetition_penalty`: SGLang `penalize_repetition` with RepetitionPenaltyType.EXPONENTIAL.
"""

from __future__ import annotations

import math

import torch

from vss_core.model.embeddings import (
    AUDIO_HEAD_NUM,
    AudioEmbedding,
    AudioOutputLayer,
    TextEmbedding,
    merge_embeddings,
    repetition_penalty,
)

PAD = 3  # the official padding_idx (text and codec)
V_TEXT, V_AUDIO, H = 17, 13, 6


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module


# --- merge_embeddings -----------------------------------------------------------------------------


def test_merge_embeddings_follows_the_official_rule() -> None:
    text = _randomised(TextEmbedding(V_TEXT, H).double(), 0)
    audio = _randomised(AudioEmbedding(V_AUDIO, H).double(), 1)
    T = text.word_embeddings.weight.detach().clone()
    A = [t.weight.detach().clone() for t in audio.audio_embeddings]
    # row 3 is not zero anywhere: the zeros must come from masking, not from the tables
    assert T[PAD].abs().sum() > 0 and all(a[PAD].abs().sum() > 0 for a in A)

    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, V_TEXT, (2, 9), generator=gen)
    codec_ids = torch.randint(0, V_AUDIO, (2, 9, 4), generator=gen)
    input_ids[0, 0], codec_ids[0, 0] = PAD, PAD  # text and all codecs PAD -> text embedding of 3
    input_ids[1, 8], codec_ids[1, 8] = PAD, PAD
    input_ids[0, 1], codec_ids[0, 1] = PAD, torch.tensor([5, PAD, PAD, PAD])  # text PAD, one codec real
    input_ids[0, 2], codec_ids[0, 2] = 7, PAD  # text real, every codec PAD
    input_ids[0, 3], codec_ids[0, 3] = PAD, torch.tensor([PAD, 4, 9, PAD])
    input_ids[1, 0], codec_ids[1, 0] = 11, torch.tensor([1, 2, PAD, 12])

    want = torch.zeros(2, 9, H, dtype=torch.float64)
    for b in range(2):
        for n in range(9):
            t, cs = int(input_ids[b, n]), [int(c) for c in codec_ids[b, n]]
            e = torch.zeros(H, dtype=torch.float64) if t == PAD else T[t].clone()
            for i, c in enumerate(cs):
                if c != PAD:
                    e = e + A[i][c]
            if t == PAD and all(c == PAD for c in cs):
                e = T[PAD].clone()
            want[b, n] = e

    with torch.no_grad():
        got = merge_embeddings(text, audio, input_ids, codec_ids)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[0, 0], T[PAD])
    torch.testing.assert_close(got[0, 2], T[7])
    torch.testing.assert_close(got[0, 1], A[0][5])


def test_audio_embedding_masks_pad_in_forward_and_trains_row_3_nowhere() -> None:
    audio = _randomised(AudioEmbedding(V_AUDIO, H).double(), 3)
    ids = torch.tensor([[[PAD, PAD, PAD, PAD], [PAD, 1, PAD, 2]]])
    out = audio(ids)
    torch.testing.assert_close(out[0, 0], torch.zeros(H, dtype=torch.float64))
    want = audio.audio_embeddings[1].weight[1] + audio.audio_embeddings[3].weight[2]
    torch.testing.assert_close(out[0, 1], want.detach())
    out.sum().backward()
    assert all(t.weight.grad[PAD].abs().sum() == 0 for t in audio.audio_embeddings)


# --- AudioOutputLayer -----------------------------------------------------------------------------


def test_teacher_forced_logits_follow_the_sglang_cumulative_rule() -> None:
    layer = _randomised(AudioOutputLayer(H, V_AUDIO).double(), 4)
    assert not hasattr(layer, "linear")  # has_proj=False, as the official model runs
    W = [h.weight.detach().clone() for h in layer.audio_output_layers]
    E = [e.weight.detach().clone() for e in layer.embedding]
    assert len(W) == AUDIO_HEAD_NUM and len(E) == AUDIO_HEAD_NUM - 1

    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 5, H, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, V_AUDIO, (3, 5, 4), generator=gen)
    with torch.no_grad():
        got = layer.teacher_forced_logits(hidden, ids)
    for b in range(3):
        for n in range(5):
            acc = hidden[b, n].clone()
            for i in range(AUDIO_HEAD_NUM):
                if i > 0:
                    acc = acc + E[i - 1][int(ids[b, n, i - 1])]
                torch.testing.assert_close(got[i][b, n], W[i] @ acc, rtol=1e-12, atol=1e-12)
                with torch.no_grad():
                    torch.testing.assert_close(layer.head_input(hidden[b, n], ids[b, n, :i]), acc)
    # the last head's id never feeds anything
    other = ids.clone()
    other[..., 3] = (other[..., 3] + 1) % V_AUDIO
    with torch.no_grad():
        torch.testing.assert_close(layer.teacher_forced_logits(hidden, other)[3], got[3])


# --- repetition_penalty ---------------------------------------------------------------------------


def _sglang_exponential(logits: torch.Tensor, past: list[int], penalty: float) -> torch.Tensor:
    out = logits.clone()
    for v in range(logits.shape[0]):
        count = sum(1 for p in past if 0 <= p < logits.shape[0] and p == v)
        alpha = penalty**count
        out[v] = logits[v] * alpha if logits[v] < 0 else logits[v] / alpha
    return out


def test_repetition_penalty_is_the_exponential_one() -> None:
    logits = torch.tensor([2.0, -1.5, 0.0, 3.0, -0.25, 1.0, -4.0, 0.5], dtype=torch.float64)
    past = [0, 0, 0, 1, 1, 2, 3, -1, -1, 4, 6, 6, 8, 99]  # -1 (none) and out-of-vocab ids count for nothing
    got = repetition_penalty(logits, torch.tensor(past), 1.1)
    want = _sglang_exponential(logits, past, 1.1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # exponential, not multiplicative: three repeats divide by 1.1**3
    assert math.isclose(float(got[0]), 2.0 / 1.1**3, rel_tol=1e-12)
    assert math.isclose(float(got[1]), -1.5 * 1.1**2, rel_tol=1e-12)
    assert float(got[5]) == 1.0 and float(got[7]) == 0.5  # unseen ids unchanged
    torch.testing.assert_close(repetition_penalty(logits, torch.tensor([-1, -1]), 1.1), logits)
    torch.testing.assert_close(repetition_penalty(logits, torch.zeros(0, dtype=torch.long), 1.1), logits)
