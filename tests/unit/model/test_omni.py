"""vss_core.model.omni: the training forward on prepared samples (losses and their weights, padding,
the pad counts, gradients), and its losses recomputed by hand (cross-entropy at the labelled positions)."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch

from tests.helpers import forward_hidden
from vss_core import lora
from vss_core import model as omni
from vss_core.errors import ModelError


def test_forward_gives_finite_losses_and_weights_them(tiny_omni: omni.OmniModel, two_samples: list[dict]) -> None:
    with torch.no_grad():
        out = tiny_omni(**omni.collate(two_samples))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert out.text_loss.ndim == 0 and torch.isfinite(out.text_loss)
        assert out.codebook_losses.shape == (4,) and torch.isfinite(out.codebook_losses).all()
        # random weights over 8224 ids: near log(8224) ~ 9.0
        assert ((out.codebook_losses > 8) & (out.codebook_losses < 10)).all()
        torch.testing.assert_close(out.loss, torch.cat([out.text_loss[None], out.codebook_losses]).mean())
        semantic = tiny_omni(**omni.collate(two_samples), text_weight=0.0, codebook_weights=[1.0, 0.0, 0.0, 0.0])
        torch.testing.assert_close(semantic.loss, semantic.codebook_losses[0])
        with pytest.raises(ModelError, match="codebook_weights"):
            tiny_omni(**omni.collate(two_samples), codebook_weights=[1.0, 1.0])


def test_a_loaded_model_is_deterministic(tiny_omni: omni.OmniModel, two_samples: list[dict]) -> None:
    # fresh from load_omni (train mode, .train() never called): the audio encoder's dropout is off
    assert tiny_omni.training and not tiny_omni.audio_encoder.training
    with torch.no_grad():
        first, second = (tiny_omni(**omni.collate(two_samples)) for _ in range(2))
    assert torch.equal(first.loss, second.loss) and torch.equal(first.codebook_losses, second.codebook_losses)


def test_padding_does_not_change_a_samples_losses(tiny_omni: omni.OmniModel, two_samples: list[dict]) -> None:
    # float64: in float32 a different batch shape changes the matmul order (~1e-5 noise)
    model = copy.deepcopy(tiny_omni).double()
    a, b = two_samples

    def only(batch: dict, keep: int) -> dict:
        # the other sample stays in the batch (and pads/ is padded), its labels carry no loss
        batch = dict(batch)
        for key in ("text_labels", "codec_labels"):
            batch[key] = batch[key].clone()
            batch[key][1 - keep] = omni.IGNORE
        return batch

    with torch.no_grad():
        both = omni.collate([a, b])
        for i, sample in enumerate(two_samples):
            alone = model(**omni.collate([sample]))
            in_batch = model(**only(both, i))
            torch.testing.assert_close(in_batch.text_loss, alone.text_loss, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(in_batch.codebook_losses, alone.codebook_losses, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(
            model(**omni.collate([a])).codebook_losses, model(**omni.collate([b])).codebook_losses
        )


def test_pad_counts_must_match_the_media(tiny_omni: omni.OmniModel, two_samples: list[dict]) -> None:
    batch = omni.collate(two_samples[:1])
    with pytest.raises(ModelError, match="audio_pad"):
        tiny_omni(**{**batch, "audio_features": None, "audio_mask": None})
    with pytest.raises(ModelError, match="image_pad"):
        first = int(batch["grid_shapes"][0].prod())  # one frame pair fewer than the sequence has pads for
        tiny_omni(**{**batch, "pixel_values": batch["pixel_values"][:first], "grid_shapes": batch["grid_shapes"][:1]})


def test_backward_reaches_the_lora_targets(tiny_model_dir: Path, two_samples: list[dict]) -> None:
    model = omni.load_omni(tiny_model_dir)
    model.train()
    model(**omni.collate(two_samples)).loss.backward()
    for set_name in lora.TARGET_SETS:
        names, _ = lora.resolve_targets(model, [set_name])
        assert names, set_name
        for name in names:
            grad = model.get_submodule(name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, name
    for pattern in lora.PARAMETER_SETS.values():
        rx = re.compile(pattern)
        params = [(n, p) for n, p in model.named_parameters() if rx.fullmatch(n)]
        assert params and all(p.grad is not None for _, p in params)
        assert all(p.grad.abs().sum() > 0 for _, p in params)  # some routed expert got tokens
    # the frozen-by-recipe audio encoder still gets gradients here: freezing is the trainer's job,
    # but its dropout is off in train mode (the official SFT keeps it deterministic)
    assert not model.audio_encoder.training


def test_forward_losses_are_cross_entropy_at_the_labelled_positions(
    tiny_model_dir: Path, prepared_sample: dict
) -> None:
    sample = prepared_sample
    model = copy.deepcopy(omni.load_omni(tiny_model_dir)).double().eval()
    batch = omni.collate([sample])
    with torch.no_grad():
        out = model(**batch)
        hidden = forward_hidden(model, batch)
    W = [h.weight.detach() for h in model.audio_output_layer.audio_output_layers]
    E = [e.weight.detach() for e in model.audio_output_layer.embedding]
    lm_head = model.llm.lm_head.weight.detach()
    codec_ids, codec_labels = sample["codec_ids"], sample["codec_labels"]
    text_labels = sample["text_labels"]
    n = codec_ids.shape[0]

    def nll(logits: torch.Tensor, label: int) -> float:
        return float(torch.logsumexp(logits, 0) - logits[label])

    per_head: list[list[float]] = [[] for _ in range(4)]
    for p in range(n):
        labelled = [i for i in range(4) if int(codec_labels[p, i]) != omni.IGNORE]
        if not labelled:
            continue
        assert p + 1 < n
        nxt = codec_ids[p + 1]  # head i is fed the ids of heads < i at p + 1
        acc = hidden[p].clone()
        for i in range(4):
            if i > 0:
                acc = acc + E[i - 1][int(nxt[i - 1])]
            if i in labelled:
                assert int(codec_labels[p, i]) == int(nxt[i])  # the target is the id of p + 1
                per_head[i].append(nll(W[i] @ acc, int(codec_labels[p, i])))
    assert all(per_head), "every codebook has labelled positions"
    want_codec = torch.tensor([sum(h) / len(h) for h in per_head], dtype=torch.float64)
    text = [nll(lm_head @ hidden[p], int(text_labels[p])) for p in range(n) if int(text_labels[p]) != omni.IGNORE]
    assert text
    want_text = sum(text) / len(text)

    torch.testing.assert_close(out.codebook_losses.double(), want_codec, rtol=1e-6, atol=1e-6)
    assert math.isclose(float(out.text_loss), want_text, rel_tol=1e-6)
    assert math.isclose(float(out.loss), (want_text + float(want_codec.sum())) / 5, rel_tol=1e-6)
