"""Speech out of a fine-tuned model: base checkpoint + LoRA adapter -> 4-codebook codes -> WAV.

    vss infer --adapter RUN/adapter --sample data/train/01 --out out.wav [--model MODEL_DIR]

The sample's in.mp4 and in.wav are prepared by `data.prepare_inputs`, the code `prepare_dataset`
runs for training. The prompt is the training sequence up to SPEECH_START (see `vss_core.model`),
then speech steps are generated one at a time with a KV cache:

- the hidden state at SPEECH_START predicts step 0, the one at step t predicts step t+1;
- at each step the semantic head (0) picks first, then head i sees head i-1's token of the same
  step (the head-to-head chain), exactly as the training forward teacher-forces it;
- step t holds semantic code t and acoustic codes t-1 (the one-step delay): step 0's acoustic slots
  are the AUDIO_BOS filler, and the acoustic codes of frame t come from step t+1;
- generation stops at the semantic AUDIO_EOS (its step still carries the last frame's acoustic
  codes) or after `max_frames` frames, where the semantic slot is set to AUDIO_EOS as training does.

Semantic picks are restricted to codec codes or AUDIO_EOS (not before the first frame), acoustic
picks to codec codes: PAD/BOS are fillers the model is never asked to predict.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peft
import soundfile as sf
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file

from vss_core import codec as codec_lib, data, model as omni
from vss_core.config import DataConfig, VSSConfig, config_from_json
from vss_core.errors import ConfigError, DatasetError, ModelError, VSSError, bullet_list

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# choose(step, head, logits [V]) -> token id (an embedding row of that head's codebook)
Chooser = Callable[[int, int, torch.Tensor], int]


# --- generation (plain functions on OmniModel) ---------------------------------------------------


@dataclass
class SpeechCodes:
    codes: torch.Tensor  # int64 [frames, 4]: codec codes (no special-id offset), column 0 semantic
    stopped_at_eos: bool  # False: cut at max_frames
    logits: list[torch.Tensor] | None = None  # per head [steps, V] float32, when asked for


def _device_dtype(model: omni.OmniModel) -> tuple[torch.device, torch.dtype]:
    w = model.audio_projector[0].weight
    return w.device, w.dtype


def build_prompt(model: omni.OmniModel, frames: torch.Tensor, fbank: torch.Tensor) -> torch.Tensor:
    """The input embeddings [1, L, H] of one sample up to and including SPEECH_START, laid out as
    `OmniModel.forward` lays them out (frames [F, 3, S, S], fbank [T, num_mel_bins], as prepared)."""
    device, dtype = _device_dtype(model)
    frames = frames[None].to(device=device, dtype=dtype)
    tp = model.vision_config.temporal_patch_size
    if frames.shape[1] % tp:  # repeat the last frame to fill the last temporal patch, as forward does
        frames = torch.cat([frames, frames[:, -1:].expand(-1, tp - frames.shape[1] % tp, -1, -1, -1)], 1)
    vis = model.vision_model(frames)
    vis = model.vision_projector(omni.pixel_unshuffle_tokens(vis, model.vision_config.spatial_merge_size))[0]
    lengths = torch.tensor([fbank.shape[0]], device=device)
    aud, aud_lengths = model.audio_encoder(fbank[None].to(device=device, dtype=dtype), lengths)
    aud = model.audio_projector(aud)[0, : aud_lengths[0]]
    parts = [model._text(omni.TEXT_BOS, device)]
    for g in range(vis.shape[0]):
        parts += [model._text(omni.TEXT_TIMESTAMP_BASE + g, device), vis[g]]
    parts += [aud, model._text(omni.TEXT_SPEECH_START, device)]
    return torch.cat(parts, 0)[None]


def _head_logits(model: omni.OmniModel, h: torch.Tensor, k: int, prev: int | None) -> torch.Tensor:
    """Logits [V] of head k from the hidden state h [H]; head k>0 also sees token `prev` of head k-1."""
    x = h
    if k > 0:
        x = h + model.audio_embeddings[k - 1](torch.tensor(prev, device=h.device))
    return model.audio_heads[k](x).float()


def decode_steps(
    model: omni.OmniModel,
    frames: torch.Tensor,
    fbank: torch.Tensor,
    choose: Chooser,
    max_frames: int,
    use_cache: bool = True,
    keep_logits: bool = False,
) -> SpeechCodes:
    """The generation loop, with the token picks left to `choose` (sampling, or teacher forcing).

    `use_cache=True` feeds one step at a time through the LLM's KV cache; False recomputes the whole
    sequence every step (slow, kept as the reference the cache is checked against).
    """
    special = model.audio_config.num_special_ids
    embeds = build_prompt(model, frames, fbank)
    llm = model.llm.model
    out = llm(inputs_embeds=embeds, use_cache=use_cache)
    cache = out.past_key_values if use_cache else None
    h = out.last_hidden_state[0, -1]
    pad_text = model._text(omni.TEXT_AUDIO_PAD, embeds.device)
    steps: list[list[int]] = []
    logits: list[list[torch.Tensor]] = [[] for _ in range(omni.NUM_CODEBOOKS)]
    stopped_at_eos = False
    for t in range(max_frames + 1):
        ids: list[int] = []
        for k in range(omni.NUM_CODEBOOKS):
            step_logits = _head_logits(model, h, k, ids[-1] if ids else None)
            if keep_logits:
                logits[k].append(step_logits)
            if k == 0 and t == max_frames:
                tok = omni.AUDIO_EOS  # cut here: end the semantic stream as training ends it
            elif k > 0 and t == 0:
                tok = omni.AUDIO_BOS  # acoustic codes run one step behind: nothing to predict yet
            else:
                tok = int(choose(t, k, step_logits))
            ids.append(tok)
        steps.append(ids)
        if ids[0] == omni.AUDIO_EOS:
            stopped_at_eos = t < max_frames
            break
        x = model._speech_inputs(torch.tensor(ids, device=embeds.device)[None, None]) + pad_text
        if use_cache:
            out = llm(inputs_embeds=x, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            embeds = torch.cat([embeds, x], 1)
            out = llm(inputs_embeds=embeds, use_cache=False)
        h = out.last_hidden_state[0, -1]
    ids = torch.tensor(steps, dtype=torch.int64)  # [n+1, 4]
    codes = torch.cat([ids[:-1, :1], ids[1:, 1:]], 1) - special  # semantic of step t, acoustic of t+1
    return SpeechCodes(
        codes=codes,
        stopped_at_eos=stopped_at_eos,
        logits=[torch.stack(x) for x in logits] if keep_logits else None,
    )


def _sampling_problems(temperature: float, top_k: int) -> list[str]:
    problems = []
    if not (temperature >= 0 and math.isfinite(temperature)):
        problems.append(f"temperature={temperature}: must be 0 (greedy) or a positive number")
    if top_k < 0:
        problems.append(f"top_k={top_k}: must be 0 (no limit) or a positive number of candidates")
    return problems


def sampler(
    model: omni.OmniModel, temperature: float = 0.0, top_k: int = 0, seed: int = 0, min_frames: int = 1
) -> Chooser:
    """Greedy (temperature 0) or temperature / top-k sampling over the ids each head may emit.

    Raises:
        ConfigError: temperature < 0 or top_k < 0.
    """
    problems = _sampling_problems(temperature, top_k)
    if problems:
        raise ConfigError(f"invalid sampling settings:\n{bullet_list(problems)}")
    special = model.audio_config.num_special_ids
    gen = torch.Generator().manual_seed(seed)

    def choose(t: int, k: int, logits: torch.Tensor) -> int:
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        allowed[special:] = True  # codec codes
        if k == 0 and t >= min_frames:
            allowed[omni.AUDIO_EOS] = True
        masked = logits.masked_fill(~allowed, -math.inf)
        if temperature == 0:
            return int(masked.argmax())
        scaled = masked / temperature
        if top_k:
            kth = torch.topk(scaled, min(top_k, int(allowed.sum()))).values[-1]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        probs = torch.softmax(scaled, -1).cpu()
        return int(torch.multinomial(probs, 1, generator=gen))

    return choose


@torch.inference_mode()
def generate_codes(
    model: omni.OmniModel,
    frames: torch.Tensor,
    fbank: torch.Tensor,
    max_frames: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    use_cache: bool = True,
) -> SpeechCodes:
    """Generate speech codes [frames, 4] for one prepared sample (greedy by default).

    Raises:
        ConfigError: max_frames < 1, or invalid sampling settings.
    """
    if max_frames < 1:
        raise ConfigError(f"max_frames={max_frames}: must be at least 1 (raise --max-seconds)")
    choose = sampler(model, temperature, top_k, seed)
    return decode_steps(model, frames, fbank, choose, max_frames, use_cache=use_cache)


@torch.inference_mode()
def teacher_forced_logits(
    model: omni.OmniModel, frames: torch.Tensor, fbank: torch.Tensor, codes: torch.Tensor, use_cache: bool = True
) -> list[torch.Tensor]:
    """Per-head logits [Fc+1, V] of the generation loop when fed the target codes [Fc, 4] as its picks.

    They are the logits the training forward computes for the same sample at its Fc+1 prediction
    positions: the check that generation reads the sequence the way training wrote it.
    """
    ids, _ = model._speech_targets(codes[None], torch.tensor([codes.shape[0]]))
    ids = ids[0]

    def choose(t: int, k: int, logits: torch.Tensor) -> int:
        return int(ids[t, k])

    return decode_steps(model, frames, fbank, choose, codes.shape[0], use_cache, keep_logits=True).logits


# --- adapter and model directory --------------------------------------------------------------------


def _adapter_problems(adapter_dir: Path) -> list[str]:
    fix = (
        "point --adapter at a run's adapter/ folder (RUN/adapter, written by `vss run`), which holds "
        f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
    )
    if not adapter_dir.is_dir():
        return [f"--adapter {adapter_dir}: not a directory; {fix}"]
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (adapter_dir / name).is_file()]
    if missing:
        return [f"--adapter {adapter_dir}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; {fix}"]
    try:
        raw = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        return [f"{adapter_dir / ADAPTER_CONFIG}: not valid JSON ({exc}); save the adapter again"]
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        got = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        return [f"{adapter_dir / ADAPTER_CONFIG}: peft_type is {got!r}, vss adapters are LORA; save the adapter again"]
    return []


def resolve_model_dir(adapter_dir: Path, model_dir: Path | None) -> tuple[Path | None, VSSConfig | None, list[str]]:
    """(model dir, the run's config, problems): --model if given, else the base the run recorded in
    adapter_dir/../config.json (model.source). A Hub repo id is resolved through the Hub cache."""
    run_config = Path(adapter_dir) / ".." / "config.json"
    cfg = None
    if run_config.is_file():
        try:
            cfg = config_from_json(run_config.resolve())
        except ConfigError as exc:
            if model_dir is None:
                return None, None, [f"{exc}; pass the base checkpoint with --model MODEL_DIR"]
    if model_dir is not None:
        return Path(model_dir), cfg, []
    if cfg is None:
        return None, None, [
            f"--model is required: {run_config.resolve()} (the run's config.json, which records the base model) "
            f"does not exist next to --adapter {adapter_dir}. Pass the base checkpoint with --model MODEL_DIR"
        ]
    source = Path(cfg.model.source).expanduser()
    if source.is_dir():
        return source, cfg, []
    if cfg.model.source.startswith((".", "/", "~")) or source.exists():
        return None, cfg, [
            f"model.source {cfg.model.source!r} recorded in {run_config.resolve()} is not a directory from "
            f"{Path.cwd()}; run from the directory the run started in, or pass --model MODEL_DIR"
        ]
    from vss_core import hub
    from vss_core.settings import load_settings

    return Path(hub.download_weights(cfg.model, load_settings()).path), cfg, []


def load_adapter(model: omni.OmniModel, adapter_dir: Path) -> peft.PeftModel:
    """Wrap the base model with the saved LoRA adapter (config and weights as `train.save_adapter` writes them).

    Raises:
        ModelError: the files are missing or invalid, or the adapter does not fit this base model
            (a target module or a weight is missing, unexpected or of another shape).
    """
    adapter_dir = Path(adapter_dir)
    problems = _adapter_problems(adapter_dir)
    if problems:
        raise ModelError(f"cannot load the adapter:\n{bullet_list(problems)}")
    fix = "the adapter was trained on another base model; pass the checkpoint it was trained on with --model"
    try:
        config = peft.LoraConfig.from_pretrained(str(adapter_dir))
        config.inference_mode = True
        peft_model = peft.get_peft_model(model, config)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{adapter_dir / ADAPTER_CONFIG} does not fit the base model ({exc}); {fix}") from None
    try:
        state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ModelError(f"{adapter_dir / ADAPTER_WEIGHTS}: cannot be read ({exc}); save the adapter again") from None
    try:
        result = peft.set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:  # shape mismatches
        raise ModelError(f"{adapter_dir / ADAPTER_WEIGHTS} does not fit the base model ({exc}); {fix}") from None
    missing = sorted(k for k in result.missing_keys if "lora_" in k)
    unexpected = sorted(result.unexpected_keys)
    what = []
    if missing:
        what.append(f"{len(missing)} missing LoRA weight(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        what.append(f"{len(unexpected)} unexpected weight(s), e.g. {', '.join(unexpected[:3])}")
    if what:
        raise ModelError(f"{adapter_dir / ADAPTER_WEIGHTS} does not match {ADAPTER_CONFIG}:\n{bullet_list(what)}\n{fix}")
    return peft_model.eval()


# --- the command --------------------------------------------------------------------------------------


class InferenceReport(BaseModel):
    out: str = Field(description="The WAV written.")
    model_dir: str = Field(description="Base checkpoint used.")
    adapter_dir: str = Field(description="LoRA adapter used.")
    frames: int = Field(description="Speech frames generated (60 ms each with LongCat-Audio-Codec's rate).")
    seconds: float = Field(description="Length of the WAV.")
    sample_rate: int = Field(description="Sample rate of the WAV.")
    stopped_at_eos: bool = Field(description="True: the model ended its speech; False: cut at max_seconds.")
    codes: list[list[int]] = Field(description="The generated codes, one [semantic, a1, a2, a3] per frame.")


def run_inference(
    adapter_dir: Path,
    sample_dir: Path,
    out: Path,
    model_dir: Path | None = None,
    max_seconds: float | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    device: str | None = None,
) -> InferenceReport:
    """Load base + adapter, generate speech for one sample folder and write it as a mono WAV.

    The data settings (frames, fps, seconds) are the run's (adapter_dir/../config.json) when it
    exists, else vss's defaults. max_seconds defaults to the run's data.audio_seconds.

    Raises:
        DatasetError: only the sample is at fault: its folder or its in.mp4 / in.wav is missing or
            unreadable.
        ModelError: anything else, all problems listed at once: the adapter or base checkpoint is
            missing, invalid or mismatched; --model is needed and not given; bad generation settings.
    """
    adapter_dir, sample_dir, out = Path(adapter_dir), Path(sample_dir), Path(out)
    problems = _adapter_problems(adapter_dir)
    cfg = None
    if adapter_dir.is_dir() or model_dir is not None:  # else the run's config.json cannot be found either
        model_dir, cfg, more = resolve_model_dir(adapter_dir, model_dir)
        problems += more
    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        problems.append(f"--max-seconds {max_seconds}: must be a positive number of seconds")
    problems += _sampling_problems(temperature, top_k)
    data_cfg = cfg.data if cfg is not None else DataConfig()
    inputs, sample_error = None, None
    if model_dir is not None:  # the checkpoint's preprocessing config shapes the inputs
        try:
            inputs = data.prepare_inputs(sample_dir, data_cfg, model_dir)
        except VSSError as exc:
            sample_error = exc
            problems.append(str(exc))
    if problems:
        only_sample = isinstance(sample_error, DatasetError) and len(problems) == 1
        raise (DatasetError if only_sample else ModelError)(f"vss infer cannot run:\n{bullet_list(problems)}")

    speech_codec = codec_lib.load_codec(model_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if (cfg is not None and cfg.model.dtype == "bfloat16" and dev.type == "cuda") else torch.float32
    base = omni.load_omni(model_dir, dtype=dtype)
    model = load_adapter(base, adapter_dir).to(dev).get_base_model()
    seconds = max_seconds if max_seconds is not None else data_cfg.audio_seconds
    max_frames = max(1, math.ceil(seconds * speech_codec.frame_rate))
    result = generate_codes(
        model, inputs["frames"], inputs["fbank"], max_frames, temperature=temperature, top_k=top_k, seed=seed
    )
    wave = speech_codec.decode(result.codes).float().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.wav")
    sf.write(str(tmp), wave, speech_codec.sample_rate, subtype="PCM_16")
    os.replace(tmp, out)
    return InferenceReport(
        out=str(out),
        model_dir=str(model_dir),
        adapter_dir=str(adapter_dir),
        frames=result.codes.shape[0],
        seconds=len(wave) / speech_codec.sample_rate,
        sample_rate=speech_codec.sample_rate,
        stopped_at_eos=result.stopped_at_eos,
        codes=result.codes.tolist(),
    )
