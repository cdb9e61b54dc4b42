"""Batching of prepared samples into the keyword arguments of `OmniModel.forward`."""

from __future__ import annotations

import torch
from torch import nn

from vss_core import sequence

MEDIA_KEYS = ("pixel_values", "grid_shapes", "audio_features")


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad prepared samples into one batch.

    Each sample holds the official sequence (`vss_core.sequence.SEQUENCE_KEYS`), its video as
    `pixel_values` float32 [P, 3*2*14*14] with `grid_shapes` int64 [G, 3] (one (1, h, w) per frame
    pair), and its input speech as `audio_features` float32 [T, D] (the spliced features the audio
    encoder reads). Sequences are right-padded (`sequence.collate_sequences`); patches and grids are
    concatenated in sample order, as the official collate does; features are zero-padded with a mask.
    """
    batch = sequence.collate_sequences(samples)
    batch["pixel_values"] = torch.cat([s["pixel_values"].float() for s in samples])
    batch["grid_shapes"] = torch.cat([s["grid_shapes"].long() for s in samples])
    feats = [s["audio_features"].float() for s in samples]
    lengths = torch.tensor([f.shape[0] for f in feats])
    batch["audio_features"] = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    batch["audio_mask"] = torch.arange(batch["audio_features"].shape[1])[None] < lengths[:, None]
    for key in ("token_types", "role_flags"):
        batch.pop(key)  # bookkeeping of the layout; the forward does not read them
    return batch
