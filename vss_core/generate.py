"""Text + speech generation as LongCat-Flash-Omni does it: the official two-stage state machine.

Follows the SGLang port (XiaoBin1992/sglang, branch longcat_omni_v0.5.3.post3,
python/sglang/srt/models/longcat_flash_omni.py: `StateMachine`, `AudioOutputLayer.forward`,
`penalize_repetition`, `LongcatFlashOmniForCausalLM.sample`) and the official post-processor
(post_process/unified_post_processor.py `shift_codec_back`, `Codec2WavProcessor`):

- every step, the LLM state h gives the 4 audio ids (head i sees h plus the `embedding` of the ids
  heads < i just picked; each head argmax after the EXPONENTIAL repetition penalty 1.1 over the last
  30 steps) and a text id (greedy by default, as the official demo's top_k=1);
- stage AT_ST0 (text + audio): the text id is kept; `</pause>` (CHAT_TEXT_FREE_END) moves to AT_ST1,
  EOS (CHAT_TEXT_FINALLY_END) moves to AT_ST1 and marks the answer as ending;
- stage AT_ST1 (audio only): the text input is masked (text PAD); a semantic EOS (codec id 2) ends
  the segment: the answer ends if it was marked, else a new segment starts in AT_ST0, whose first
  step's acoustic ids are discarded (the one-step delay: they belong to no frame);
- the next input embeds the kept text id and the 4 audio ids (`embeddings.merge_embeddings`);
- frames are recovered as the post-processor does: frame j = semantic of step j with the acoustic
  ids of step j + 1, for every step whose semantic is not EOS, minus the 32-id offset.

This is the layout `vss_core.sequence` trains (a segment of N frames takes N + 1 positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vss_core.errors import ConfigError
from vss_core.model import embeddings as emb
from vss_core.model.omni import OmniModel
from vss_core.sequence import SpecialIds

DISCARDED = -1  # an audio id that belongs to no frame (excluded from the penalty window)


@dataclass
class Generation:
    codes: torch.Tensor  # int64 [frames, 4] raw codec ids (no offset), column 0 semantic
    text_ids: list[int]  # the text stream's kept ids (end tokens included)
    stopped_at_eos: bool  # False: cut at the step cap
    segments: int = 0
    steps: list[list[int]] = field(default_factory=list)  # per step: [text, s, a1, a2, a3] as fed back


def _pick_text(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if temperature == 0 or top_k == 1:
        return int(logits.argmax())
    scaled = logits.float() / temperature
    if top_k:
        kth = torch.topk(scaled, min(top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    return int(torch.multinomial(torch.softmax(scaled, -1).cpu(), 1, generator=gen))


def shift_codec_back(steps: list[list[int]]) -> torch.Tensor:
    """Audio ids per step [s, a1, a2, a3] -> codec frames [F, 4] (official `shift_codec_back`, minus 32)."""
    frames = [[s[0], *steps[i + 1][1:]] for i, s in enumerate(steps[:-1]) if s[0] != emb.AUDIO_EOS]
    if not frames:
        return torch.zeros(0, emb.AUDIO_HEAD_NUM, dtype=torch.int64)
    out = torch.tensor(frames, dtype=torch.int64) - emb.AUDIO_ID_OFFSET
    return out.clamp(min=0)


@torch.inference_mode()
def generate(
    model: OmniModel,
    prompt: dict[str, torch.Tensor],
    ids: SpecialIds,
    max_steps: int,
    temperature: float = 0.0,
    top_k: int = 1,
    seed: int = 0,
    penalty: float = emb.AUDIO_REPETITION_PENALTY,
    window: int = emb.AUDIO_REPETITION_WINDOW,
) -> Generation:
    """Generate the voice-assistant answer for one prompt (`data.prepare_inputs`), with a KV cache.

    Raises:
        ConfigError: max_steps < 1, temperature < 0 or top_k < 0.
    """
    if max_steps < 1 or temperature < 0 or top_k < 0:
        raise ConfigError(
            f"generation: max_steps={max_steps} must be >= 1, temperature={temperature} and top_k={top_k} must be >= 0"
        )
    gen = torch.Generator().manual_seed(seed)
    embeds = model.embed(
        prompt["input_ids"][None],
        prompt["codec_ids"][None],
        prompt.get("pixel_values"),
        prompt.get("grid_shapes"),
        prompt["audio_features"][None],
        torch.ones(1, prompt["audio_features"].shape[0], dtype=torch.bool),
    )
    llm, heads = model.llm.model, model.audio_output_layer
    out = llm(inputs_embeds=embeds, use_cache=True)
    cache, h = out.past_key_values, out.last_hidden_state[0, -1]
    device = h.device
    stage, ending, new_segment, segments = "ST0", False, True, 1
    history: list[list[int]] = []  # audio ids per step (DISCARDED where they belong to no frame)
    fed: list[list[int]] = []
    text_ids: list[int] = []
    stopped = False
    for _ in range(max_steps):
        audio: list[int] = []
        acc = h
        for i, head in enumerate(heads.audio_output_layers):
            if i > 0:
                acc = acc + heads.embedding[i - 1](torch.tensor(audio[-1], device=device))
            logits = head(acc).float()
            past = torch.tensor([s[i] for s in history[-window:]] or [DISCARDED], device=device)
            audio.append(int(emb.repetition_penalty(logits, past, penalty).argmax()))
        text = _pick_text(model.llm.lm_head(h).float(), temperature, top_k, gen)
        if new_segment:  # first step of a segment: its acoustic ids belong to no frame
            audio[1:] = [DISCARDED] * (emb.AUDIO_HEAD_NUM - 1)
            new_segment = False
        if stage == "ST0":
            text_ids.append(text)
            if text in (ids.free_end, ids.final_end):
                ending = text == ids.final_end
                stage = "ST1"
            fed_text = text
        else:
            fed_text = ids.text_pad
            if audio[0] == emb.AUDIO_EOS:
                if ending:
                    history.append(audio)
                    fed.append([fed_text, *audio])
                    stopped = True
                    break
                stage, new_segment, segments = "ST0", True, segments + 1
        history.append(audio)
        fed.append([fed_text, *audio])
        codec_in = [a if a >= 0 else emb.PADDING_IDX for a in audio]
        x = emb.merge_embeddings(
            model.text_embedding,
            model.audio_embedding,
            torch.tensor([[fed_text]], device=device),
            torch.tensor([[codec_in]], device=device),
        ).to(embeds.dtype)
        out = llm(inputs_embeds=x, past_key_values=cache, use_cache=True)
        cache, h = out.past_key_values, out.last_hidden_state[0, -1]
    return Generation(
        codes=shift_codec_back(history), text_ids=text_ids, stopped_at_eos=stopped, segments=segments, steps=fed
    )
