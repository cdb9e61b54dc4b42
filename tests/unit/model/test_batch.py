"""vss_core.model.batch: prepared samples padded into one batch for OmniModel.forward."""

from __future__ import annotations

import torch

from vss_core import model as omni
from vss_core import sequence


def test_collate_pads_right_and_concatenates_media(two_samples: list[dict]) -> None:
    a, b = two_samples
    batch = omni.collate([a, b])
    n = a["input_ids"].shape[0]
    m = b["input_ids"].shape[0]
    assert batch["input_ids"].shape == (2, n) and batch["codec_ids"].shape == (2, n, 4)
    assert batch["attention_mask"][1].tolist() == [1] * m + [0] * (n - m)
    assert (batch["input_ids"][1, m:] == sequence.PADDING_IDX).all()
    assert (batch["codec_ids"][1, m:] == sequence.CODEC_PAD_ID).all()
    assert (batch["text_labels"][1, m:] == omni.IGNORE).all() and (batch["codec_labels"][1, m:] == omni.IGNORE).all()
    assert torch.equal(batch["pixel_values"], torch.cat([a["pixel_values"], b["pixel_values"]]))
    assert torch.equal(batch["grid_shapes"], torch.cat([a["grid_shapes"], b["grid_shapes"]]))
    la, lb = a["audio_features"].shape[0], b["audio_features"].shape[0]
    assert batch["audio_mask"].sum(1).tolist() == [la, lb]
    assert (
        torch.equal(batch["audio_features"][1, :lb], b["audio_features"])
        and (batch["audio_features"][1, lb:] == 0).all()
    )
    assert "token_types" not in batch and "role_flags" not in batch
