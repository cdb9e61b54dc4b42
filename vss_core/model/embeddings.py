"""The text and audio embeddings and the 4-codebook speech heads of LongCat-Flash-Omni.

Follows the official code (meituan-longcat/LongCat-Flash-Omni and its SGLang port):
- `TextEmbedding`: `encoders/embedding.py` `TextEmbedding` (key `word_embeddings.weight`, the file
  `language_model_embedding.pt`);
- `AudioEmbedding`: `encoders/embedding.py` `AudioEmbedding` (keys `audio_embeddings.{i}.weight`, file
  `audio/audio_embeddings.pt`); a codec id equal to the padding id (3) embeds to zero **by masking in
  forward**, not through `padding_idx`, so row 3 of a table need not be zero;
- `AudioOutputLayer`: the SGLang port's `AudioOutputLayer` (python/sglang/srt/models/
  longcat_flash_omni.py, branch longcat_omni_v0.5.3.post3): heads `audio_output_layers.{i}` (Linear
  hidden -> audio vocab, no bias) and a separate table `embedding.{0..2}`; head i sees the LLM state
  plus the sum of `embedding[j](id_j)` over the ids j < i picked (or teacher-forced) at the same step.
  The official model runs with `has_proj=False` (`longcat_omni_demo.py`), so there is no `linear`.
- `merge_embeddings`: `longcat_omni_demo.py` `_get_input_embedding`: text embedding, zeroed where the
  text id is the padding id, plus the 4 audio embeddings; a position where the text and every codec
  are padding embeds as the text embedding of the padding id.

The constants below are the official demo's global config (`longcat_omni_demo.py`
`init_global_config` and `create_sglang_engine`); no checkpoint file carries them, so vss holds them
here and checks every table's shape against them when it loads.
"""

from __future__ import annotations

import torch
from torch import nn

AUDIO_HEAD_NUM = 4  # codebooks: 0 semantic, 1..3 acoustic
AUDIO_VOCAB_SIZE = 8224  # rows per audio table: 8192 codes + 32 special ids
AUDIO_ID_OFFSET = 32  # a codec code c is the audio id c + 32
PADDING_IDX = 3  # text pad and codec pad
AUDIO_EOS = 2  # semantic end of a segment
AUDIO_REPETITION_PENALTY = 1.1
AUDIO_REPETITION_WINDOW = 30


class TextEmbedding(nn.Module):
    """`language_model_embedding.pt`: the table the official prefill embeds text with."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class AudioEmbedding(nn.Module):
    """4 codec-id tables; `forward` returns their sum with padding ids embedded as zero."""

    def __init__(
        self, vocab_size: int, hidden_size: int, head_num: int = AUDIO_HEAD_NUM, padding_idx: int = PADDING_IDX
    ):
        super().__init__()
        self.padding_idx = padding_idx
        self.audio_embeddings = nn.ModuleList(nn.Embedding(vocab_size, hidden_size) for _ in range(head_num))

    def forward(self, codec_ids: torch.Tensor) -> torch.Tensor:
        """codec_ids [..., head_num] (audio ids, offset included) -> [..., hidden]."""
        total = None
        for i, table in enumerate(self.audio_embeddings):
            ids = codec_ids[..., i]
            e = table(ids).masked_fill((ids == self.padding_idx).unsqueeze(-1), 0.0)
            total = e if total is None else total + e
        return total


class AudioOutputLayer(nn.Module):
    """The 4 speech heads with their cumulative input (`embedding.{0..2}` of the ids of earlier heads)."""

    def __init__(self, hidden_size: int, vocab_size: int, head_num: int = AUDIO_HEAD_NUM) -> None:
        super().__init__()
        self.audio_output_layers = nn.ModuleList(
            nn.Linear(hidden_size, vocab_size, bias=False) for _ in range(head_num)
        )
        self.embedding = nn.ModuleList(nn.Embedding(vocab_size, hidden_size) for _ in range(head_num - 1))

    def head_input(self, hidden: torch.Tensor, previous_ids: torch.Tensor) -> torch.Tensor:
        """The input of head i = previous_ids.shape[-1]: hidden + sum_j<i embedding[j](previous_ids[..., j])."""
        acc = hidden
        for j in range(previous_ids.shape[-1]):
            acc = acc + self.embedding[j](previous_ids[..., j])
        return acc

    def teacher_forced_logits(self, hidden: torch.Tensor, ids: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head at once, head i fed the given ids of heads < i (training).

        hidden [..., H], ids [..., head_num] -> head_num tensors [..., vocab]."""
        out, acc = [], hidden
        for i, head in enumerate(self.audio_output_layers):
            if i > 0:
                acc = acc + self.embedding[i - 1](ids[..., i - 1])
            out.append(head(acc))
        return out


def merge_embeddings(
    text_embedding: TextEmbedding, audio_embedding: AudioEmbedding, input_ids: torch.Tensor, codec_ids: torch.Tensor
) -> torch.Tensor:
    """The official input embedding of text + codec positions (before the encoders' outputs go in).

    input_ids [B, N] text ids, codec_ids [B, N, 4] audio ids -> [B, N, H].
    """
    pad = audio_embedding.padding_idx
    text_pad = input_ids == pad
    x = text_embedding(input_ids).masked_fill(text_pad.unsqueeze(-1), 0.0) + audio_embedding(codec_ids)
    all_pad = text_pad & (codec_ids == pad).all(-1)
    pad_row = text_embedding(torch.full((), pad, dtype=torch.long, device=input_ids.device))
    return torch.where(all_pad.unsqueeze(-1), pad_row.to(x.dtype), x)


def repetition_penalty(logits: torch.Tensor, past_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """The SGLang port's EXPONENTIAL audio repetition penalty (`AudioOutputLayer.penalize_repetition`).

    logits [V], past_ids [W] (ids picked in the window; negative = none) -> logits where each id
    seen c times is divided by penalty**c if positive and multiplied by it if negative.
    """
    valid = (past_ids >= 0) & (past_ids < logits.shape[-1])
    counts = torch.zeros_like(logits).index_add_(
        0, past_ids[valid], torch.ones_like(past_ids[valid], dtype=logits.dtype)
    )
    alpha = torch.pow(torch.tensor(penalty, dtype=logits.dtype, device=logits.device), counts)
    return torch.where(logits < 0, logits * alpha, logits / alpha)
