"""LongCat-Flash-Omni as one torch module: the official encoders, embeddings and speech heads around
the LongCat-Flash LLM, with a training forward over the official token layout.

Submodules, each loaded from the official file of the same part (`vss_core.model.checkpoint`):

    llm                 transformers LongcatFlashForCausalLM (routed experts only)   *.safetensors
    text_embedding      TextEmbedding (word_embeddings)                               language_model_embedding.pt
    vision_model        LongCatVisionModel                                            vision/vision_model.pt
    vision_projector    VisionProjector (p0.*, proj)                                  vision/vision_projector.pt
    audio_encoder       LongCatAudioEncoder (DFSMN)                                   audio/audio_encoder.pt
    audio_projector     Linear-GELU-Linear (0, 2)                                     audio/audio_projector.pt
    audio_embedding     AudioEmbedding (audio_embeddings.{0..3})                      audio/audio_embeddings.pt
    audio_output_layer  AudioOutputLayer (audio_output_layers.{0..3}, embedding.{0..2}) audio/audio_output_layers.pt

The input embedding follows `longcat_omni_demo.py` `_get_input_embedding`: text + audio embeddings
(`embeddings.merge_embeddings`), then the audio encoder's outputs replace the `<|audio_pad|>`
positions and the vision encoder's outputs the `<|image_pad|>` positions, in order. The LLM's
hidden state at position p predicts the text id and the 4 codec ids of position p + 1: text through
the LLM's `lm_head`, codecs through the speech heads, head i fed the ids of heads < i at p + 1
(teacher forcing; generation feeds its own picks, as the SGLang port does). Which positions carry a
loss is decided by the sequence builder (`vss_core.sequence`): labels of -100 carry none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LongcatFlashConfig
from transformers.utils import ModelOutput

from vss_core import experts
from vss_core.errors import ModelError
from vss_core.model import audio, vision
from vss_core.model.embeddings import (
    AUDIO_HEAD_NUM,
    AUDIO_VOCAB_SIZE,
    AudioEmbedding,
    AudioOutputLayer,
    TextEmbedding,
    merge_embeddings,
)

IGNORE = -100


# The loss streams of OmniOutput, in order: `text_loss`, then the 4 codebooks of `codebook_losses`.
STREAMS = ("text", "semantic", "acoustic1", "acoustic2", "acoustic3")


@dataclass
class OmniOutput(ModelOutput):
    # A ModelOutput (a dict) so DeepSpeed's ZeRO-3 hooks see the tensors inside; a plain dataclass
    # is opaque to them ("unknown inputs or outputs type") and the backward hooks may not fire.
    loss: torch.Tensor | None = None  # scalar: weighted sum of the stream losses over the weights' sum
    text_loss: torch.Tensor | None = None  # mean cross-entropy of the text stream over its targets
    codebook_losses: torch.Tensor | None = None  # [4]: mean cross-entropy of each codebook over its targets


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the placeholder tokens the encoders' outputs replace (from the checkpoint's tokenizer)."""

    image_pad: int
    audio_pad: int


class OmniModel(nn.Module):
    """LongCat-Flash-Omni for video + speech in, text + speech out."""

    def __init__(
        self,
        llm_config: LongcatFlashConfig,
        vision_config: vision.VisionConfig,
        audio_config: audio.AudioConfig,
        special: SpecialTokenIds,
    ) -> None:
        super().__init__()
        self.llm_config, self.vision_config, self.audio_config, self.special = (
            llm_config,
            vision_config,
            audio_config,
            special,
        )
        hidden = llm_config.hidden_size
        # transformers' own experts would allocate gate_up_proj for the zero (identity) experts too.
        self.llm = experts.build_llm(llm_config)
        self.text_embedding = TextEmbedding(llm_config.vocab_size, hidden)
        self.vision_model = vision.LongCatVisionModel(vision_config)
        self.vision_projector = vision.VisionProjector(vision_config.hidden_size * 2, vision_config.adaptor_dim, hidden)
        self.audio_encoder = audio.LongCatAudioEncoder(audio_config)
        self.audio_projector = audio.AudioProjector(audio_config.output_dim, hidden)
        self.audio_embedding = AudioEmbedding(AUDIO_VOCAB_SIZE, hidden)
        self.audio_output_layer = AudioOutputLayer(hidden, AUDIO_VOCAB_SIZE)
        self.audio_encoder.eval()  # from construction on, not only after .train() (see train)

    def train(self, mode: bool = True) -> OmniModel:
        """Train mode everywhere but the audio encoder: it stays frozen and deterministic (its
        dropout off), as the official SFT recipe freezes it (tech report)."""
        super().train(mode)
        self.audio_encoder.eval()
        return self

    # -- pieces --
    def _param(self) -> torch.Tensor:
        return self.audio_output_layer.audio_output_layers[0].weight

    def encode_vision(self, pixel_values: torch.Tensor, grid_shapes: torch.Tensor) -> torch.Tensor:
        """pixel_values [P, 3*2*14*14], grid_shapes [G, 3] -> one LLM-width row per <|image_pad|>."""
        p = self._param()
        shapes = [tuple(int(v) for v in g) for g in grid_shapes.tolist()]
        h = self.vision_model(pixel_values.to(device=p.device, dtype=p.dtype), shapes)
        return self.vision_projector(h, shapes)

    def encode_audio(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features [A, T, D], mask [A, T] -> one LLM-width row per valid frame, audios in order."""
        p = self._param()
        mask = mask.to(p.device)
        h = self.audio_projector(self.audio_encoder(features.to(device=p.device, dtype=p.dtype), mask))
        return h[mask]

    def embed(
        self,
        input_ids: torch.Tensor,
        codec_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        grid_shapes: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The LLM's input embeddings [B, N, H] of a (batched) official sequence.

        Raises:
            ModelError: the number of <|image_pad|> / <|audio_pad|> positions differs from the number
                of rows the encoders produce (the sequence and the prepared inputs disagree).
        """
        p = self._param()
        input_ids, codec_ids = input_ids.to(p.device), codec_ids.to(p.device)
        x = merge_embeddings(self.text_embedding, self.audio_embedding, input_ids, codec_ids).to(p.dtype)
        for name, pad_id, rows in (
            ("audio", self.special.audio_pad, None if audio_features is None else (audio_features, audio_mask)),
            ("image", self.special.image_pad, None if pixel_values is None else (pixel_values, grid_shapes)),
        ):
            where = input_ids == pad_id
            n = int(where.sum())
            if rows is None:
                if n:
                    raise ModelError(f"the sequence has {n} <|{name}_pad|> positions but no {name} input was given")
                continue
            values = self.encode_audio(*rows) if name == "audio" else self.encode_vision(*rows)
            if values.shape[0] != n:
                raise ModelError(
                    f"the sequence has {n} <|{name}_pad|> positions but the {name} encoder gave {values.shape[0]} "
                    "rows; prepare the data again (the prepared inputs and the sequence disagree)"
                )
            x = x.masked_scatter(where.unsqueeze(-1), values.to(x.dtype))
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        codec_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        text_labels: torch.Tensor,
        codec_labels: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        grid_shapes: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        text_weight: float = 1.0,
        codebook_weights: list[float] | None = None,
    ) -> OmniOutput:
        """Training forward: the weighted text + 4 codebook cross-entropies.

        text_labels [B, N] and codec_labels [B, N, 4] hold at position p the target of the hidden
        state at p (the ids of p + 1, or -100 for no loss), as `vss_core.sequence` builds them.
        """
        weights = list(codebook_weights or [1.0] * AUDIO_HEAD_NUM)
        if len(weights) != AUDIO_HEAD_NUM:
            raise ModelError(f"codebook_weights must have {AUDIO_HEAD_NUM} values, got {len(weights)}")
        embeds = self.embed(input_ids, codec_ids, pixel_values, grid_shapes, audio_features, audio_mask)
        device = embeds.device
        hidden = self.llm.model(
            inputs_embeds=embeds, attention_mask=attention_mask.to(device), use_cache=False
        ).last_hidden_state
        text_labels, codec_labels = text_labels.to(device), codec_labels.to(device)

        # Heads run on the selected rows only (a 131072-wide lm_head over every position would dominate
        # memory), but always run, so every rank calls every module (ZeRO-3 gathers per module).
        tsel = text_labels != IGNORE
        text_logits = self.llm.lm_head(hidden[tsel]).float()
        text_loss = _mean_ce(text_logits, text_labels[tsel])

        csel = (codec_labels != IGNORE).any(-1)
        # head i is fed the ids of heads < i at the next position: the inputs of p + 1
        next_ids = torch.cat([codec_ids[:, 1:].to(device), torch.full_like(codec_ids[:, :1], IGNORE).to(device)], 1)
        teacher = torch.where(codec_labels != IGNORE, codec_labels, next_ids.clamp(min=0))[csel]
        logits = self.audio_output_layer.teacher_forced_logits(hidden[csel], teacher)
        labels = codec_labels[csel]
        codebook_losses = torch.stack([_mean_ce(lg.float(), labels[:, i]) for i, lg in enumerate(logits)])

        w = torch.tensor([text_weight, *weights], device=device, dtype=torch.float32)
        losses = torch.cat([text_loss[None], codebook_losses])
        loss = (losses * w).sum() / w.sum()
        return OmniOutput(loss=loss, text_loss=text_loss.detach(), codebook_losses=codebook_losses.detach())


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not IGNORE; 0 (still in the graph) when none are."""
    total = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    keep = (labels != IGNORE).to(total.dtype)
    return (total * keep).sum() / keep.sum().clamp(min=1.0)
