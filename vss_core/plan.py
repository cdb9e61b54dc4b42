"""Will a run fit? A memory planner for LongCat-Flash-Omni + LoRA under DeepSpeed ZeRO-3.

Pure functions: the model's shape (from `transformers.LongcatFlashConfig`, whose no-argument form
carries the real model's values, or from a local checkpoint's config.json), the LoRA targets, the
DeepSpeed settings, the world and the batch shape go in; figures per GPU, per node's CPU RAM, NVMe
and disk come out, component by component, with a verdict and the changes that would make a run
that does not fit, fit (each re-planned). The only I/O is reading a checkpoint's config files when
asked (`read_model_shape`). Sizes are bytes inside, GiB (1024**3, as nvidia-smi, free -h and df -h
report) in every report.

Why not DeepSpeed's own estimator: it assumes every parameter is trainable (~15 TB of optimizer
state here) and knows nothing of ZeRO-3 gathering a mixture-of-experts block whole.

How ZeRO-3 spends GPU memory on this model (DeepSpeed 0.19.8):
- The MoE block is a ZeRO-3 leaf (`set_z3_leaf_modules`): its routed experts (19.3B params,
  38.7 GB bf16 on the real model) are gathered on every rank at once, whatever
  stage3_max_live_parameters says.
- A leaf of several parameters is gathered by `_all_gather_coalesced` into one flat buffer, then
  `AllGatherCoalescedHandle.wait` copies each parameter out of it (`torch.cat`) while the flat buffer
  is still held: the peak is twice the leaf. `zero_optimization.stage3_allgather_sequential: true`
  gathers parameter by parameter into its own buffer and avoids the second copy.
- transformers 5.23's `LongcatFlashExperts` allocates `gate_up_proj` for routed *and* zero
  experts (MODEL_FACTS.md). vss builds the LLM with `vss_core.experts.RoutedExperts` (routed
  experts only), which the default plans; `ModelShape.allocated_zero_experts=True` plans
  transformers' module as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from vss_core import steptime
from vss_core import targets as targets_lib
from vss_core.config import is_local_source
from vss_core.errors import ConfigError, bullet_list

GiB = 1024**3
DS_DEFAULT_REDUCE = 5e8  # reduce_bucket_size
DS_DEFAULT_PREFETCH_BUCKET = 5e7  # stage3_prefetch_bucket_size (deepspeed/runtime/zero/config.py)
DS_DEFAULT_PARAM_BUFFER_SIZE = 1e8  # offload_param.buffer_size (elements)
DS_DEFAULT_PARAM_BUFFER_COUNT = 5
DS_DEFAULT_OPT_BUFFER_COUNT = 4
DS_DEFAULT_SUB_GROUP = 1e9
AUDIO_TOKEN_S = 0.080  # one audio-in token per 80 ms (10 ms fbank hop x splice stride 8), without a preprocessor config
TIMESTAMP_TOKENS = 8  # text tokens of one frame pair's `second{t}:` (assumed; tokenizer-dependent)
TEXT_TOKENS = 32  # SYSTEM:/USER:/VOICE ASSISTANT: prefixes, EOS, newlines, <|audio|> <|/audio|> (assumed)
REAL_VISION_RESIZE_FACTOR = 2  # vision/config.json `resize_factor` assumed when no config is read (as the tiny one)


# --- the model --------------------------------------------------------------------------------


class ModelShape(BaseModel):
    """The sizes the planner needs, read from the model's configs."""

    source: str
    vocab_size: int
    hidden_size: int
    num_layers: int  # decoder layers (each: 2 attention sublayers, 2 dense MLPs, 1 MoE)
    num_attention_heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    ffn_hidden_size: int
    n_routed_experts: int
    zero_expert_num: int
    expert_ffn_hidden_size: int
    moe_topk: int
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    # False: vss's RoutedExperts (what vss allocates); True: transformers 5.23's oversized gate_up_proj
    allocated_zero_experts: bool = False
    # vision: LongCat-ViT + VisionProjector (vss_core.model.vision), counted on the meta device
    vision_config: dict[str, Any]  # vision/config.json keys (VisionConfig.to_json): the token rules read them
    vision_params: int  # encoder (vision_model)
    vision_projector_params: int
    vision_hidden_size: int
    vision_patch_dim: int  # values of one flattened patch (3 x 2 x 14 x 14)
    vision_modules: list[tuple[str, int, int]] = []  # (name, in, out) of the LoRA-wrappable modules
    # audio in: DFSMN encoder + AudioProjector (vss_core.model.audio), counted on the meta device
    audio_params: int  # encoder (audio_encoder), CTC output layer included
    audio_projector_params: int
    audio_input_size: int  # feature width of one 80 ms frame
    audio_preprocessor: dict[str, Any] | None = None  # audio/preprocessor_config.json, when read
    audio_modules: list[tuple[str, int, int]] = []
    # speech out: audio_embedding (4 tables) and audio_output_layer (4 heads + 3 tables)
    speech_vocab_size: int
    speech_heads: int
    notes: list[str] = []


def _wrappable(module: Any, prefix: str) -> list[tuple[str, int, int]]:
    """(name, in, out) of the modules peft's LoRA wraps, so that r x (in + out) is its LoRA size:
    Linear (in, out), Embedding (rows, dim), ConvNd (in x kernel, out / groups)."""
    from torch import nn

    out = []
    for name, m in module.named_modules():
        full = f"{prefix}.{name}" if name else prefix
        if isinstance(m, nn.Linear):
            out.append((full, m.in_features, m.out_features))
        elif isinstance(m, nn.Embedding):
            out.append((full, m.num_embeddings, m.embedding_dim))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out.append((full, m.in_channels * math.prod(m.kernel_size), m.out_channels // m.groups))
    return out


def _modality_parts(vcfg: Any, acfg: Any, hidden: int) -> dict[str, Any]:
    """Counts (each module's own helper) and LoRA-wrappable modules (a meta build) of the vision and
    audio-in parts for an LLM of width `hidden`."""
    import torch

    from vss_core.model import audio, vision

    v = vision.count_parameters(vcfg, hidden)
    a = audio.count_parameters(acfg, hidden)
    with torch.device("meta"):
        vmods = _wrappable(vision.LongCatVisionModel(vcfg), "vision_model") + _wrappable(
            vision.build_projector(vcfg, hidden), "vision_projector"
        )
        amods = _wrappable(audio.LongCatAudioEncoder(acfg), "audio_encoder") + _wrappable(
            audio.AudioProjector(acfg.output_dim, hidden), "audio_projector"
        )
    return {
        "vision_config": vcfg.to_json(),
        "vision_params": v["vision_model"],
        "vision_projector_params": v["vision_projector"],
        "vision_hidden_size": vcfg.hidden_size,
        "vision_patch_dim": vcfg.patch_dim,
        "vision_modules": vmods,
        "audio_params": a["audio_encoder"],
        "audio_projector_params": a["audio_projector"],
        "audio_input_size": acfg.input_size,
        "audio_modules": amods,
    }


def shape_from_llm_config(
    llm: Any, source: str, vision: Any = None, audio: Any = None, preprocessor: Mapping[str, Any] | None = None
) -> ModelShape:
    """ModelShape from a `LongcatFlashConfig` (or anything with its attributes) and the modality
    configs (`vision.VisionConfig`, `audio.AudioConfig`, or their config.json objects; the audio
    preprocessor_config.json object); without them, the official values of the real model."""
    from vss_core.model import audio as audio_lib
    from vss_core.model import embeddings
    from vss_core.model import vision as vision_lib

    notes: list[str] = []
    if vision is None:
        vision = vision_lib.VisionConfig(**vision_lib.REAL_VISION_SIZES, resize_factor=REAL_VISION_RESIZE_FACTOR)
        notes.append(
            "vision: the official LongCat-ViT sizes (hidden 1280, intermediate 5184, 32 layers, 16 heads, "
            f"adaptor 7168); no vision/config.json read, resize_factor {REAL_VISION_RESIZE_FACTOR} assumed"
        )
    elif isinstance(vision, Mapping):
        vision = vision_lib.VisionConfig.from_json(dict(vision), "vision/config.json")
    if audio is None:
        audio = audio_lib.AudioConfig()
        notes.append("audio encoder: the official DFSMN defaults (LongCatAudioConfig); no audio/config.json read")
    elif isinstance(audio, Mapping):
        audio = audio_lib.AudioConfig.from_json(dict(audio), "audio/config.json")
    if preprocessor is None:
        notes.append(f"audio in: one token per {AUDIO_TOKEN_S * 1000:.0f} ms (no audio/preprocessor_config.json read)")
    return ModelShape(
        source=source,
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        num_layers=llm.num_layers,
        num_attention_heads=llm.num_attention_heads,
        q_lora_rank=llm.q_lora_rank,
        kv_lora_rank=llm.kv_lora_rank,
        qk_nope_head_dim=llm.qk_nope_head_dim,
        qk_rope_head_dim=llm.qk_rope_head_dim,
        v_head_dim=llm.v_head_dim,
        ffn_hidden_size=llm.ffn_hidden_size,
        n_routed_experts=llm.n_routed_experts,
        zero_expert_num=llm.zero_expert_num or 0,
        expert_ffn_hidden_size=llm.expert_ffn_hidden_size,
        moe_topk=llm.moe_topk,
        attention_bias=bool(getattr(llm, "attention_bias", False)),
        tie_word_embeddings=bool(getattr(llm, "tie_word_embeddings", False)),
        **_modality_parts(vision, audio, llm.hidden_size),
        audio_preprocessor=None if preprocessor is None else dict(preprocessor),
        speech_vocab_size=embeddings.AUDIO_VOCAB_SIZE,
        speech_heads=embeddings.AUDIO_HEAD_NUM,
        notes=notes,
    )


@functools.cache
def real_model_shape() -> ModelShape:
    """The real LongCat-Flash-Omni: `LongcatFlashConfig()` with no arguments carries its LLM values,
    the modality parts take the official defaults."""
    from transformers import LongcatFlashConfig

    return shape_from_llm_config(LongcatFlashConfig(), "LongcatFlashConfig() (the real LongCat-Flash-Omni)")


def read_model_shape(model_dir: str | Path) -> ModelShape:
    """ModelShape from a local checkpoint's small config files: config.json, vision/config.json,
    audio/config.json, and audio/preprocessor_config.json when present (the Hub does not publish it).
    Parsed as `vss_core.model.CheckpointConfigs` parses them; no weights, tokenizer or codec read.

    Raises:
        ConfigError: a config file is missing, unreadable or invalid (all such files listed).
    """
    from vss_core.model import checkpoint

    model_dir = Path(model_dir)
    problems: list[str] = []
    parts = checkpoint.read_model_configs(model_dir, problems, preprocessor_required=False)
    if problems:
        raise ConfigError(
            f"model.source: cannot read the checkpoint's configs to plan memory:\n{bullet_list(problems)}\n"
            "Point model.source at a checkpoint directory (`vss tiny-model DIR` writes one) or at a Hub repo id."
        )
    pre = None if parts.preprocessor is None else parts.preprocessor.raw
    return shape_from_llm_config(parts.llm, str(model_dir), parts.vision, parts.audio, pre)


@functools.cache
def codec_parameter_counts() -> dict[str, int]:
    """The official LongCat-Audio-Codec parts, counted on the meta device: the encoders data
    preparation runs (semantic tokenizer, acoustic encoder) and the 16 kHz decoder `vss infer` runs."""
    import torch

    from vss_core.codec import acoustic, decoder, semantic

    with torch.device("meta"):
        ac = acoustic.AcousticEncoder(acoustic.AcousticEncoderConfig.official())
        dec = decoder.Decoder(decoder.DecoderConfig.official("16k"))
    return {
        "semantic_tokenizer": semantic.parameter_count(),
        "acoustic_encoder": sum(p.numel() for p in ac.parameters()),
        "decoder_16k": sum(p.numel() for p in dec.parameters()),
    }


@dataclass(frozen=True)
class ParamCounts:
    total: int  # everything the model allocates (in every training rank)
    llm: int
    moe_leaf: int  # one layer's MoE block (experts + router): what ZeRO-3 gathers at once
    experts_per_layer: int
    largest_param: int  # numel of the largest single parameter (gate_up_proj)
    vision: int  # vision encoder
    audio: int  # audio encoder
    omni_extras: int  # projectors, the text-embedding copy, speech embeddings and output layer
    parts: dict[str, int] = field(default_factory=dict)  # OmniModel's submodules by name


def count_params(s: ModelShape) -> ParamCounts:
    """Parameters of OmniModel, by part: the LLM from its config fields, the modality parts as
    counted by their modules' own helpers (no model is built here)."""
    h, qk = s.hidden_size, s.qk_nope_head_dim + s.qk_rope_head_dim
    b = int(s.attention_bias)
    attn = (
        h * s.q_lora_rank
        + b * s.q_lora_rank
        + s.q_lora_rank
        + s.q_lora_rank * s.num_attention_heads * qk
        + h * (s.kv_lora_rank + s.qk_rope_head_dim)
        + b * (s.kv_lora_rank + s.qk_rope_head_dim)
        + s.kv_lora_rank
        + s.kv_lora_rank * s.num_attention_heads * (s.qk_nope_head_dim + s.v_head_dim)
        + s.num_attention_heads * s.v_head_dim * h
        + b * h
    )
    dense = 3 * h * s.ffn_hidden_size
    gate_up_experts = s.n_routed_experts + (s.zero_expert_num if s.allocated_zero_experts else 0)
    gate_up = gate_up_experts * 2 * s.expert_ffn_hidden_size * h
    experts = gate_up + s.n_routed_experts * h * s.expert_ffn_hidden_size
    router = h * (s.n_routed_experts + s.zero_expert_num)
    layer = 2 * attn + 2 * dense + experts + router + 4 * h
    embed = s.vocab_size * h
    llm = s.num_layers * layer + embed + h + (0 if s.tie_word_embeddings else embed)
    v, k = s.speech_vocab_size, s.speech_heads
    parts = {
        "llm": llm,
        "text_embedding": embed,  # language_model_embedding.pt, a second copy beside llm.model.embed_tokens
        "vision_model": s.vision_params,
        "vision_projector": s.vision_projector_params,
        "audio_encoder": s.audio_params,
        "audio_projector": s.audio_projector_params,
        "audio_embedding": k * v * h,  # 4 codec-id tables
        "audio_output_layer": k * h * v + (k - 1) * v * h,  # 4 heads + 3 cumulative-input tables
    }
    total = sum(parts.values())
    return ParamCounts(
        total=total,
        llm=llm,
        moe_leaf=experts + router,
        experts_per_layer=experts,
        largest_param=max(gate_up, embed),
        vision=s.vision_params,
        audio=s.audio_params,
        omni_extras=total - llm - s.vision_params - s.audio_params,
        parts=parts,
    )


def linear_modules(s: ModelShape) -> list[tuple[str, int, int]]:
    """(full name, in, out) of every module LoRA can wrap in OmniModel (names as in vss_core.model)."""
    h, heads = s.hidden_size, s.num_attention_heads
    mods: list[tuple[str, int, int]] = [("llm.model.embed_tokens", s.vocab_size, h), ("llm.lm_head", h, s.vocab_size)]
    for i in range(s.num_layers):
        p = f"llm.model.layers.{i}"
        for j in (0, 1):
            mods += [
                (f"{p}.self_attn.{j}.q_a_proj", h, s.q_lora_rank),
                (f"{p}.self_attn.{j}.q_b_proj", s.q_lora_rank, heads * (s.qk_nope_head_dim + s.qk_rope_head_dim)),
                (f"{p}.self_attn.{j}.kv_a_proj_with_mqa", h, s.kv_lora_rank + s.qk_rope_head_dim),
                (f"{p}.self_attn.{j}.kv_b_proj", s.kv_lora_rank, heads * (s.qk_nope_head_dim + s.v_head_dim)),
                (f"{p}.self_attn.{j}.o_proj", heads * s.v_head_dim, h),
                (f"{p}.mlps.{j}.gate_proj", h, s.ffn_hidden_size),
                (f"{p}.mlps.{j}.up_proj", h, s.ffn_hidden_size),
                (f"{p}.mlps.{j}.down_proj", s.ffn_hidden_size, h),
            ]
        mods.append((f"{p}.mlp.router.classifier", h, s.n_routed_experts + s.zero_expert_num))
    v, k = s.speech_vocab_size, s.speech_heads
    mods.append(("text_embedding.word_embeddings", s.vocab_size, h))
    mods += [(f"audio_embedding.audio_embeddings.{i}", v, h) for i in range(k)]
    mods += [(f"audio_output_layer.audio_output_layers.{i}", h, v) for i in range(k)]
    mods += [(f"audio_output_layer.embedding.{i}", v, h) for i in range(k - 1)]
    return mods + s.vision_modules + s.audio_modules


EXPERTS_TARGET = "experts"  # planner-known set: LoRA on the fused expert parameters (peft target_parameters)


@dataclass(frozen=True)
class LoraCount:
    params: int  # trainable LoRA parameters in all
    per_target: dict[str, int]
    in_moe_leaf_per_layer: int  # LoRA parameters inside one MoE leaf (gathered with it)


def count_lora(s: ModelShape, targets: list[str], rank: int) -> LoraCount:
    """LoRA parameters for `lora.targets` at `rank`, resolved by vss_core.targets (as vss_core.lora does).

    `experts` (LoRA on every routed expert through peft's target_parameters: r x (in + out) per expert
    and fused parameter) is counted too, so its cost shows before it is trained.

    Raises:
        ConfigError: a target matches no module (all such targets at once).
    """
    mods = linear_modules(s)
    per_target: dict[str, int] = {}
    seen: set[str] = set()
    problems = []
    leaf = 0
    for target in targets:
        if target == EXPERTS_TARGET:
            e, f, h = (
                s.n_routed_experts + (s.zero_expert_num if s.allocated_zero_experts else 0),
                s.expert_ffn_hidden_size,
                s.hidden_size,
            )
            per_layer = rank * e * (h + 2 * f) + rank * s.n_routed_experts * (f + h)
            per_target[target] = per_layer * s.num_layers
            leaf = per_layer
            continue
        rx = re.compile(targets_lib.target_pattern(target)[0])
        found = [(n, i, o) for n, i, o in mods if rx.fullmatch(n) and n not in seen]
        if not any(rx.fullmatch(n) for n, _, _ in mods):
            problems.append(f"lora.targets: {target!r} matches no module of this model")
            continue
        seen.update(n for n, _, _ in found)
        per_target[target] = sum(rank * (i + o) for _, i, o in found)
    if problems:
        raise ConfigError(
            bullet_list(problems) + f"\nValid sets: {', '.join([*targets_lib.TARGET_SETS, EXPERTS_TARGET])}, "
            "or a module-name suffix such as q_a_proj"
        )
    return LoraCount(params=sum(per_target.values()), per_target=per_target, in_moe_leaf_per_layer=leaf)


def vision_unit(s: ModelShape, frames: int, height: int, width: int) -> tuple[int, int]:
    """(`<|image_pad|>` tokens, encoder patches) of one frame pair of a `frames`-frame video of
    height x width, by the official rules (`vision.pixel_budget` for that many frames of a video,
    `vision.smart_resize`, `vision.image_pad_count` = h*w/2)."""
    from vss_core.model import vision

    cfg = vision.VisionConfig.from_json(s.vision_config, "vision/config.json")
    lo, hi = vision.pixel_budget(cfg, frames, is_video=True)
    hi = min(hi, cfg.max_tokens * cfg.patch_size**2)
    rh, rw = vision.smart_resize(height, width, vision.resize_factor(cfg), lo, hi, cfg.patch_size)
    grid = (1, rh // cfg.patch_size, rw // cfg.patch_size)
    return vision.image_pad_count(grid), grid[1] * grid[2]


def audio_in_tokens(s: ModelShape, seconds: float) -> int:
    """`<|audio_pad|>` tokens of `seconds` of in.wav: `audio.audio_token_count` with the checkpoint's
    preprocessor config, else one per 80 ms."""
    if s.audio_preprocessor is None:
        return math.ceil(seconds / AUDIO_TOKEN_S - 1e-9)
    from vss_core.model import audio

    pre = audio.PreprocessorConfig.from_json(s.audio_preprocessor, "audio/preprocessor_config.json")
    return audio.audio_token_count(round(seconds * pre.sample_rate), pre)


def codec_frames(seconds: float) -> int:
    """Codec frames of `seconds` of out.wav: ceil(samples / 960) at 16 kHz (16.67 Hz)."""
    from vss_core import codec

    return math.ceil(round(seconds * codec.SAMPLE_RATE) / codec.HOP_SAMPLES)


def sequence_tokens(s: ModelShape, frames: int, audio_seconds: float, frame_size: tuple[int, int] = (720, 1280)) -> int:
    """LLM positions of one voice-chat sample (vss_core.sequence): per frame pair a `second{t}:`
    timestamp and its `<|image_pad|>` tokens, `<|audio|>` + one `<|audio_pad|>` per 80 ms + `<|/audio|>`,
    the answer as one segment of N codec frames in N + 1 positions, and the turns' text."""
    pads, _ = vision_unit(s, frames, *frame_size)
    pairs = math.ceil(frames / 2)
    return (
        TEXT_TOKENS
        + pairs * (TIMESTAMP_TOKENS + pads)
        + audio_in_tokens(s, audio_seconds)
        + codec_frames(audio_seconds)
        + 1
    )


def sample_bytes(s: ModelShape, patches: int, audio_tokens: int, code_frames: int, tokens: int) -> dict[str, int]:
    """Bytes of one prepared sample: on disk (uint8 patches, float32 features, int64 codes and the six
    sequence columns, two of them 4 codebooks wide) and in memory once read (patches as float32)."""
    rest = (
        audio_tokens * s.audio_input_size * 4 + code_frames * s.speech_heads * 8 + tokens * (4 + 2 * s.speech_heads) * 8
    )
    return {"on_disk": patches * s.vision_patch_dim + rest, "in_memory": patches * s.vision_patch_dim * 4 + rest}


def loader_batches(workers: int, prefetch: int) -> int:
    """Micro batches a rank holds at once: each worker's read-ahead (DataLoader prefetch_factor),
    the one the step uses and its collated copy; without workers, those two."""
    return workers * prefetch + 2


# --- inputs and machine --------------------------------------------------------------------------


# What a rank process holds beside its model, measured by bench/bench_plan.py (train_summary.json
# memory_by_phase, /proc/self/status; torch 2.14.1): 0.438 GiB of its own (RssAnon) when it starts, at
# every size; 0.63 GiB of library pages (RssFile) at the end of training, 0.56 before its model (the
# full torch build maps its CUDA libraries and triton even on the CPU accelerator; a rank touches more
# of them as it trains). Every process on the node maps those pages from the same files, so RAM holds
# them once, while each process's RSS counts them whole.
PROCESS_HEAP_GIB = 0.44
LIBRARY_PAGES_GIB = 0.63
# What a rank's own memory grows by in training beyond its planned items (DeepSpeed's engine and
# hooks, autograd, CPU Adam, the metrics writers): bench/bench_plan.py measures it on the demo's
# tiny model, whose planned items are near zero (`fixed_working_memory`): 0.08 GiB a rank with the
# ranks' fixed mmap threshold (launch.CPU_MMAP_THRESHOLD; 0.16 under glibc's default, which kept more).
TRAINING_FIXED_GIB = 0.08
# A CUDA rank maps the CUDA libraries too: every shared object of torch 2.14.1 and its nvidia-* wheels
# (cuBLAS, cuDNN, NCCL, libtorch_cuda, ...) is 4.05 GiB on disk (`du` of the installed files),
# counted as if all resident: an upper bound, once per node.
CUDA_LIBRARY_PAGES_GIB = 4.05
# The PyTorch caching allocator's margin on the GPU peak (max reserved over max allocated, less 1): ZeRO-3
# runs report 1.12 (DeepSpeed#3378: 12.46 -> 14 GB) and 1.23 (DeepSpeed#3734, 13B on 8x A100: 56.1 -> 69.2
# GB); planned at the larger, since a "fits" must not be wrong. Not measured: no GPU lent.
FRAGMENTATION = 0.23
# The CUDA driver's host memory per process (context bookkeeping, the kernels' host images, pinned
# staging): reported at 1.2 GB of RSS on the first CUDA use (pytorch/pytorch#106511) and 0.32 -> 2.06 GB
# around CUDA's init and first tensor (pytorch/pytorch#113326). Planned at 1.5 GiB, inside that range;
# not measured here (no GPU lent: bench/bench_plan_gpu.py prints it where one is).
CUDA_PROCESS_HOST_GIB = 1.5
# The DeepSpeed launcher beside the ranks (the `deepspeed` runner and its `launch` child, each of
# which imports torch and DeepSpeed): the two processes' USS while the ranks run (what they hold
# beside the library pages, counted once above), measured by bench/bench_plan.py at every size.
LAUNCHER_GIB = 0.6
# USS of one DataLoader worker: forked before its rank builds the model (train.train), it shares the
# rank's pages; what it holds alone is the pages of the rank's heap that the rank rewrites after the
# fork (copy-on-write) and the batches it reads. bench/bench_plan.py measured 0.157 GiB at every size
# from 0.08B to 1B parameters (forked after the model it had grown to 0.57 GiB at 1B); the rank's
# whole heap at the fork, 0.44 GiB, bounds it.
LOADER_WORKER_RAM_GIB = 0.16


@dataclass(frozen=True)
class Assumptions:
    """What the planner cannot read from a config; every figure that uses one says so."""

    cuda_context_gib: float = 3.0  # CUDA context + NCCL communicator buffers per GPU (cited in its item's note)
    fragmentation: float = FRAGMENTATION  # PyTorch caching-allocator margin on the GPU peak (cited)
    process_heap_gib: float = PROCESS_HEAP_GIB  # a rank's own memory before its model (measured)
    library_pages_gib: float = LIBRARY_PAGES_GIB  # torch, DeepSpeed, transformers pages, once per node (measured)
    cuda_library_pages_gib: float = CUDA_LIBRARY_PAGES_GIB  # the same with the CUDA libraries (file sizes)
    cuda_process_host_gib: float = CUDA_PROCESS_HOST_GIB  # a CUDA rank's driver host memory (not measured)
    launcher_gib: float = LAUNCHER_GIB  # the DeepSpeed launcher processes (measured)
    training_fixed_gib: float = TRAINING_FIXED_GIB  # a rank's fixed working memory in training (measured)
    ram_reserve: float = 0.05  # RAM kept free for the OS and page cache
    # a DataLoader worker's own memory (forked from its rank: what it does not share with it)
    loader_worker_ram_gib: float = LOADER_WORKER_RAM_GIB
    attention_scores: bool = True  # eager attention materializes heads x T x T scores (sdpa/flash do not)

    def process_gib(self, cuda: bool) -> float:
        """A training process's own memory beside its model: its heap, and on CUDA the driver's host memory."""
        return self.process_heap_gib + (self.cuda_process_host_gib if cuda else 0.0)


@dataclass(frozen=True)
class PlanInputs:
    """Everything a plan depends on (build it with `inputs_from_config`)."""

    shape: ModelShape
    lora_targets: tuple[str, ...]
    lora_rank: int
    dtype_bytes: int  # 2 for bfloat16, 4 for float32
    accelerator: Literal["cuda", "cpu"]
    gpus_per_node: int
    nodes: int
    zero_stage: int = 3
    offload_param: str = "cpu"
    offload_optimizer: str = "cpu"
    max_live_parameters: float = 1e9
    prefetch_bucket_size: float = DS_DEFAULT_PREFETCH_BUCKET
    reduce_bucket_size: float | None = None
    param_buffer_count: int | None = None
    optimizer_buffer_count: int | None = None
    sub_group_size: float | None = None
    allgather_sequential: bool = False
    activation_checkpointing: bool = True
    micro_batch_size: int = 1
    loader_workers: int = 2  # training.loader_workers per rank
    prefetch_batches: int = 2  # training.prefetch_batches per worker
    video_frames: int = 16
    audio_seconds: float = 30.0
    checkpoints_to_keep: int = 3
    gradient_accumulation_steps: int = 1
    save_every_n_steps: int = 500
    epochs: int = 1
    max_steps: int | None = None
    speeds: dict[str, float] = field(default_factory=dict)  # overrides of steptime.Speeds (vss plan --assume)
    num_samples: int = 0  # known samples (0: not counted yet); prepared data is planned per sample
    frame_size_px: tuple[int, int] = (720, 1280)  # (height, width) of in.mp4's frames (assumed); the vision
    # pixel budget caps what the encoder sees, so larger frames give no more tokens
    download_bytes: int | None = None  # from Hub file metadata; None: estimated from the param count
    cached_bytes: int = 0  # already in the download cache
    local_model: bool = False  # model.source is a local directory: used in place, nothing to download
    nvme_shares_disk: bool = True
    assumptions: Assumptions = field(default_factory=Assumptions)

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes


def inputs_from_config(cfg: Any, shape: ModelShape, **changes: Any) -> PlanInputs:
    """PlanInputs from a VSSConfig (sections hardware, lora, deepspeed, data, training, model)."""
    ds = cfg.deepspeed
    ins = PlanInputs(
        shape=shape,
        lora_targets=tuple(cfg.lora.targets),
        lora_rank=cfg.lora.rank,
        dtype_bytes=2 if cfg.model.dtype == "bfloat16" else 4,
        accelerator=cfg.hardware.accelerator,
        gpus_per_node=cfg.hardware.gpus_per_node,
        nodes=cfg.hardware.nodes,
        zero_stage=ds.zero_stage,
        offload_param=ds.offload_param,
        offload_optimizer=ds.offload_optimizer,
        max_live_parameters=ds.max_live_parameters,
        prefetch_bucket_size=ds.prefetch_bucket_size or DS_DEFAULT_PREFETCH_BUCKET,
        reduce_bucket_size=ds.reduce_bucket_size,
        param_buffer_count=ds.param_buffer_count,
        optimizer_buffer_count=ds.optimizer_buffer_count,
        sub_group_size=ds.sub_group_size,
        allgather_sequential=bool(getattr(ds, "allgather_sequential", False)),
        activation_checkpointing=ds.activation_checkpointing,
        micro_batch_size=cfg.training.micro_batch_size,
        loader_workers=cfg.training.loader_workers,
        prefetch_batches=cfg.training.prefetch_batches,
        video_frames=cfg.data.video_frames,
        audio_seconds=cfg.data.audio_seconds,
        checkpoints_to_keep=cfg.training.checkpoints_to_keep,
        gradient_accumulation_steps=cfg.training.gradient_accumulation_steps,
        save_every_n_steps=cfg.training.save_every_n_steps,
        epochs=cfg.training.epochs,
        max_steps=cfg.training.max_steps,
        local_model=is_local_source(cfg.model.source),
    )
    return dataclasses.replace(ins, **changes)


class Machine(BaseModel):
    """What one node has (GiB). None: not given, that resource is reported but not judged."""

    gpus_per_node: int
    gpu_memory_gib: float | None  # the smallest card's total
    gpu_free_gib: float | None = None  # the smallest card's free memory, when probed
    gpu_name: str | None = None  # e.g. "NVIDIA B200": picks the datasheet rates of the time estimate
    ram_gib: float | None
    disk_gib: float | None
    nvme_gib: float | None = None  # None: the NVMe path shares `disk_gib`
    nodes: int = 1
    swap_used_gib: float = 0.0
    source: str = "given"  # "given" (hypothetical) or "probed"


# --- the plan ------------------------------------------------------------------------------------


class Item(BaseModel):
    component: str
    gib: float
    note: str = ""
    # CPU RAM items: what one rank process holds of it, as its RSS counts (shared pages whole; None:
    # not in a rank process, e.g. the launcher or the loader workers)
    rank_gib: float | None = None


class Resource(BaseModel):
    name: str  # "GPU (per rank)", "CPU RAM (per node)", "NVMe (per node)", "disk"
    items: list[Item]
    need_gib: float
    have_gib: float | None
    fits: bool | None  # None: not judged (capacity not given)
    margin_gib: float | None


class Suggestion(BaseModel):
    change: str
    overrides: list[str]
    needs: list[str] = []  # what the change needs that vss cannot set today
    plan: Plan


class Plan(BaseModel):
    fits: bool
    resources: list[Resource]
    suggestions: list[Suggestion] = []
    nothing_fits: bool = False  # no single or paired change re-plans as fitting
    warnings: list[str] = []
    facts: dict[str, Any]  # derived figures: params, MoE leaf, tokens, ...
    assumptions: list[str]
    time: steptime.TimeEstimate | None = None  # seconds per step and per epoch (None: not estimated)

    def resource(self, name: str) -> Resource:
        return next(r for r in self.resources if r.name.startswith(name))

    def table(self) -> str:
        """Markdown a person reads at a glance: verdict, per-resource need/have, components, fixes."""
        out = [
            f"**Verdict: {'FITS' if self.fits else 'DOES NOT FIT'}** (GiB = 1024^3 bytes, as nvidia-smi reports)",
            "",
            "| resource | need | have | margin | fits |",
            "|---|---|---|---|---|",
        ]
        for r in self.resources:
            have = "not given" if r.have_gib is None else f"{r.have_gib:,.1f}"
            margin = "-" if r.margin_gib is None else f"{r.margin_gib:+,.1f}"
            fits = {True: "yes", False: "**NO**", None: "not judged"}[r.fits]
            out.append(f"| {r.name} | {r.need_gib:,.1f} | {have} | {margin} | {fits} |")
        for r in self.resources:
            out += ["", f"{r.name}:", "", "| component | GiB | note |", "|---|---|---|"]
            out += [f"| {i.component} | {i.gib:,.2f} | {i.note} |" for i in r.items if i.gib > 0 or i.note]
        f = self.facts
        out += [
            "",
            "Model: " + f"{f['total_params'] / 1e9:,.2f}B params ({f['weights_gib']:,.1f} GiB), "
            f"MoE leaf {f['moe_leaf_params'] / 1e9:,.2f}B params ({f['moe_leaf_gib']:,.1f} GiB), "
            f"LoRA {f['lora_params'] / 1e6:,.1f}M trainable, {f['tokens_per_sample']:,} tokens per sample.",
        ]
        if self.time is not None:
            out += ["", *self.time.lines()]
        if self.suggestions:
            out += ["", "What would make it fit (each re-planned):", ""]
            for s in self.suggestions:
                extra = f" — needs: {'; '.join(s.needs)}" if s.needs else ""
                over = " ".join(s.overrides)
                worst = ", ".join(
                    f"{r.name} {r.need_gib:,.1f}/{r.have_gib:,.1f}" for r in s.plan.resources if r.have_gib is not None
                )
                out.append(f"- {s.change}: `{over}` -> fits ({worst}){extra}")
        elif self.nothing_fits:
            out += ["", "No single change, nor any pair of changes vss knows, makes this run fit this machine."]
        if self.warnings:
            out += ["", *[f"warning: {w}" for w in self.warnings]]
        out += ["", "Assumptions: " + "; ".join(self.assumptions)]
        return "\n".join(out)


def _gib(n: float) -> float:
    return n / GiB


@dataclass(frozen=True)
class _Run:
    """The figures of one planned run every resource is computed from (`_derive`)."""

    pc: ParamCounts
    lc: LoraCount
    weights: float  # bytes of all weights (+ LoRA) in the training dtype
    leaf: float  # bytes of one MoE leaf (a layer's experts + router), gathered whole
    largest: float  # bytes of the largest parameter
    tokens: int  # sequence tokens per sample
    pads: int
    patches: int
    pairs: int
    code_frames: int
    sample: dict[str, int]  # bytes of one prepared sample in memory and on disk
    cuda: bool
    zero3: bool

    @property
    def trainable(self) -> int:
        return self.lc.params


def _derive(ins: PlanInputs) -> _Run:
    s, b = ins.shape, ins.dtype_bytes
    pc = count_params(s)
    lc = count_lora(s, list(ins.lora_targets), ins.lora_rank)
    tokens = sequence_tokens(s, ins.video_frames, ins.audio_seconds, ins.frame_size_px)
    pads, patches = vision_unit(s, ins.video_frames, *ins.frame_size_px)
    pairs, code_frames = math.ceil(ins.video_frames / 2), codec_frames(ins.audio_seconds)
    return _Run(
        pc=pc,
        lc=lc,
        weights=(pc.total + lc.params) * b,
        leaf=(pc.moe_leaf + lc.in_moe_leaf_per_layer) * b,
        largest=pc.largest_param * b,
        tokens=tokens,
        pads=pads,
        patches=patches,
        pairs=pairs,
        code_frames=code_frames,
        sample=sample_bytes(s, pairs * patches, audio_in_tokens(s, ins.audio_seconds), code_frames, tokens),
        cuda=ins.accelerator == "cuda",
        zero3=ins.zero_stage == 3,
    )


def _notes(ins: PlanInputs, r: _Run) -> list[str]:
    """What the plan's figures rest on, beside the assumptions' own figures."""
    s = ins.shape
    cp = codec_parameter_counts()
    return [
        *s.notes,
        f"sequence: {r.pairs} frame pairs of {ins.frame_size_px[0]}x{ins.frame_size_px[1]} -> {r.pads} "
        f"<|image_pad|> each ({r.patches} patches), {audio_in_tokens(s, ins.audio_seconds)} audio tokens "
        f"(80 ms), {r.code_frames} codec frames (16.67 Hz) in {r.code_frames + 1} positions; "
        f"{TIMESTAMP_TOKENS} tokens per timestamp and {TEXT_TOKENS} of turn text assumed",
        f"codec (LongCat-Audio-Codec, official sizes), in no training rank: data preparation runs the semantic "
        f"tokenizer {cp['semantic_tokenizer'] / 1e6:.1f}M + acoustic encoder {cp['acoustic_encoder'] / 1e6:.2f}M "
        f"params in one process before training; `vss infer` runs the 16k decoder {cp['decoder_16k'] / 1e6:.2f}M",
    ]


def _device_items(ins: PlanInputs, r: _Run) -> list[Item]:
    """Per rank on the device: GPU memory, or RAM for the CPU accelerator."""
    s, a, b = ins.shape, ins.assumptions, ins.dtype_bytes
    world, h = ins.world, s.hidden_size
    t = r.tokens * ins.micro_batch_size
    dev: list[Item] = []
    if r.cuda:
        dev.append(
            Item(
                component="CUDA context + NCCL",
                gib=a.cuda_context_gib,
                note="cited, not measured (no GPU lent): a context is ~0.3-0.5 GiB with CUDA's lazy module "
                "loading (>= 11.7; pytorch/pytorch#107667); an NCCL communicator 0.54-0.69 GB on 2-4 NVLink "
                "A100s (NVIDIA/nccl#964) to ~1.6 GB after an all-reduce, more with more communicators and "
                "channels (NVIDIA/nccl#864, #986)",
            )
        )
    if not r.zero3:
        dev.append(Item(component="frozen weights (whole copy, ZeRO-2 does not partition them)", gib=_gib(r.weights)))
    elif ins.offload_param == "none":
        dev.append(Item(component="weight partitions (1/world each)", gib=_gib(r.weights / world)))
    if r.zero3:
        dev.append(Item(component="MoE leaf gathered whole (one layer's experts + router)", gib=_gib(r.leaf)))
        # DeepSpeed prefetches only while the gathered total is under stage3_max_live_parameters
        # (partitioned_param_coordinator.py, fetch_sub_module: max_params_to_prefetch = min(max_available
        # - n_available, prefetch_bucket_sz)): the prefetch bucket is part of the live parameters, not
        # beside them, and the leaf counts toward the same total. It adds whole parameters until it has
        # asked for that much, so it can overshoot max_live (or a leaf above it) by up to one more
        # parameter: bench/bench_plan.py measured 25M and 47M elements beyond max(max_live, leaf) at 0.36B
        # and 1B parameters, each within one 5e7 bucket, planned so.
        live = min(ins.max_live_parameters * b, r.weights)
        bucket = min(ins.prefetch_bucket_size * b, r.weights)
        overshoot = min(bucket, max(0.0, r.weights - max(live, r.leaf)))
        dev.append(
            Item(
                component="other gathered parameters (stage3_max_live_parameters less the leaf, + a prefetch bucket)",
                gib=_gib(max(0.0, live - r.leaf) + overshoot),
                note="prefetch overshoot measured within one stage3_prefetch_bucket_size (bench/bench_plan.py)",
            )
        )
        if not ins.allgather_sequential:
            # A coalesced all-gather lands in one flat buffer that stays while torch.cat copies each
            # parameter out of it (partition_parameters.py, AllGatherCoalescedHandle.wait): the largest
            # gather is held twice, the leaf (fetched whole) or a prefetch bucket, whichever is larger.
            dev.append(
                Item(
                    component="coalesced all-gather's flat buffer (the larger of the leaf and a prefetch bucket)",
                    gib=_gib(max(r.leaf, bucket)),
                    note="the gather's copy while its parameters are copied out; stage3_allgather_sequential "
                    "gathers parameter by parameter instead",
                )
            )
        if ins.allgather_sequential:  # the coalesced path frees this before the copies that make its 2x peak
            dev.append(
                Item(component="largest parameter's partition staged for its gather", gib=_gib(r.largest / world))
            )
    reduce = min(ins.reduce_bucket_size or DS_DEFAULT_REDUCE, r.trainable) * b
    dev.append(Item(component="gradient reduce buckets (x2)", gib=_gib(2 * reduce)))
    if ins.offload_optimizer == "none":
        dev.append(
            Item(
                component="optimizer: fp32 master, Adam m and v, fp32 grads (16 B/param, 1/world)",
                gib=_gib(16 * r.trainable / world),
            )
        )
    act = (s.num_layers if ins.activation_checkpointing else 0) * t * h * b
    dev.append(Item(component=f"checkpointed layer inputs ({s.num_layers} x {t:,} tokens x {h})", gib=_gib(act)))
    qk = s.qk_nope_head_dim + s.qk_rope_head_dim
    heads = s.num_attention_heads
    attn_tok = (
        2 * h
        + 2 * s.q_lora_rank
        + heads * qk * 2
        + 2 * (s.kv_lora_rank + s.qk_rope_head_dim)
        + heads * (s.qk_nope_head_dim + s.v_head_dim)
        + 2 * heads * s.v_head_dim
        + h
    )
    dense_tok = 4 * s.ffn_hidden_size + 2 * h
    moe_tok = 8 * (s.n_routed_experts + s.zero_expert_num) // b + s.moe_topk * (3 * h + 4 * s.expert_ffn_hidden_size)
    layer_tok = 2 * attn_tok + 2 * dense_tok + moe_tok
    scores = 2 * heads * t * t * 2 if a.attention_scores else 0
    work = 2 * (t * layer_tok * b + scores)  # forward tensors + their gradients during the backward
    if not ins.activation_checkpointing:
        work = work * s.num_layers
    dev.append(
        Item(
            component="one layer's recompute + backward working set",
            gib=_gib(work),
            note="eager attention scores included" if a.attention_scores else "",
        )
    )
    steps = r.code_frames + 1
    heads_logits = 2 * s.speech_heads * s.speech_vocab_size * steps * ins.micro_batch_size * 4
    vis_tok = r.pairs * r.patches * ins.micro_batch_size
    enc = vis_tok * s.vision_hidden_size * 8 * b
    dev.append(Item(component="speech-head logits + frozen encoders' transient", gib=_gib(heads_logits + enc)))
    if r.cuda:
        subtotal = sum(i.gib for i in dev)
        dev.append(
            Item(
                component=f"allocator fragmentation ({a.fragmentation:.0%})",
                gib=subtotal * a.fragmentation,
                note="cited, not measured (no GPU lent): max reserved / max allocated of ZeRO-3 runs, 1.12 "
                "(DeepSpeed#3378) and 1.23 (DeepSpeed#3734); bench/bench_plan_gpu.py measures it",
            )
        )
    return dev


def _ram_items(ins: PlanInputs, r: _Run, dev_need: float) -> list[Item]:
    """CPU RAM per node (the CPU accelerator's ranks hold their device memory here too). Each item
    also says what one rank process holds of it (`Item.rank_gib`, see `ram_per_rank`)."""
    a, b = ins.assumptions, ins.dtype_bytes
    world, ranks = ins.world, ins.gpus_per_node
    node_share = ranks / world
    ram: list[Item] = []

    def add(component: str, gib: float, note: str = "", per_rank: bool = True) -> None:
        ram.append(Item(component=component, gib=gib, note=note, rank_gib=gib / ranks if per_rank else None))

    if r.zero3 and ins.offload_param == "cpu":
        what = "whole copy (one node)" if ins.nodes == 1 else f"this node's {ranks}/{world} share"
        add(f"weight partitions, offloaded ({what})", _gib(r.weights * node_share), "pinned" if r.cuda else "")
    if r.zero3 and ins.offload_param == "nvme":
        numel = max(DS_DEFAULT_PARAM_BUFFER_SIZE, math.ceil(r.pc.largest_param / world))
        count = ins.param_buffer_count or DS_DEFAULT_PARAM_BUFFER_COUNT
        add(
            f"NVMe param swap buffers ({ranks} ranks x {count} x {numel:.3g} elements)",
            _gib(ranks * count * numel * b),
            "offload_param.buffer_size must be >= the largest parameter partition",
        )
    if ins.offload_optimizer == "cpu":
        add("optimizer: fp32 master, Adam m and v, fp32 grads (16 B/param)", _gib(16 * r.trainable * node_share))
    if ins.offload_optimizer == "nvme":
        sub = min(ins.sub_group_size or DS_DEFAULT_SUB_GROUP, max(1, r.trainable // world))
        count = ins.optimizer_buffer_count or DS_DEFAULT_OPT_BUFFER_COUNT
        add("NVMe optimizer swap buffers", _gib(ranks * count * sub * 4))
    heap = a.process_gib(r.cuda)
    add(
        f"training processes' own memory ({ranks} x {heap:g} GiB)",
        ranks * heap,
        f"measured {a.process_heap_gib:g} GiB (bench/bench_plan.py)"
        + (
            f" + {a.cuda_process_host_gib:g} GiB CUDA driver host memory (1.2-1.7 GB reported: pytorch/pytorch#106511, "
            "#113326; not measured, no GPU lent)"
            if r.cuda
            else ""
        ),
    )
    add(
        f"a training step's fixed working memory ({ranks} x {a.training_fixed_gib:g} GiB)",
        ranks * a.training_fixed_gib,
        "DeepSpeed engine, autograd, CPU Adam; measured on the tiny model (bench/bench_plan.py)",
    )
    libs = a.cuda_library_pages_gib if r.cuda else a.library_pages_gib
    ram.append(
        Item(
            component="libraries' pages (torch, DeepSpeed, transformers"
            + (", CUDA" if r.cuda else "")
            + "), once a node",
            gib=libs,
            note="shared by every process; each rank's RSS counts them whole; "
            + ("upper bound: the libraries' file sizes" if r.cuda else "measured (bench/bench_plan.py)"),
            rank_gib=libs,
        )
    )
    add("DeepSpeed launcher (runner + launch)", a.launcher_gib, "measured (bench/bench_plan.py)", per_rank=False)
    in_flight = loader_batches(ins.loader_workers, ins.prefetch_batches)
    add(
        f"batches in flight ({ranks} ranks x {in_flight} micro batches x {ins.micro_batch_size} "
        f"x {_gib(r.sample['in_memory']) * 1024:,.1f} MiB)",
        _gib(ranks * in_flight * ins.micro_batch_size * r.sample["in_memory"]),
        "constant in the dataset's size: samples are read per step (data.PreparedSamples)",
    )
    if ins.loader_workers:
        add(
            f"loader workers ({ranks} ranks x {ins.loader_workers} x {a.loader_worker_ram_gib:g} GiB)",
            ranks * ins.loader_workers * a.loader_worker_ram_gib,
            "measured (bench/bench_plan.py); forked before the model, they do not grow with it",
            per_rank=False,
        )
    load_module = _gib(r.pc.experts_per_layer * b)
    ram.append(
        Item(component="checkpoint load: one module's weights read by rank 0", gib=load_module, rank_gib=load_module)
    )
    if not r.cuda:
        add(
            f"{ranks} CPU ranks' device memory (the GPU column above, on the CPU)",
            ranks * dev_need,
            "at its bytes: the ranks run with glibc's mmap threshold fixed (launch.CPU_MMAP_THRESHOLD), so a "
            "freed tensor leaves RSS; glibc's default kept 1.9-3.2x (bench/bench_plan.py)",
        )
    ram_need = sum(i.gib for i in ram) / (1 - a.ram_reserve)
    ram.append(Item(component=f"kept free for the OS ({a.ram_reserve:.0%})", gib=ram_need * a.ram_reserve))
    return ram


def ram_per_rank(items: list[Item]) -> float:
    """GiB one rank process holds at its peak, as its RSS counts: its share of the node's items, the
    shared library pages whole, rank 0's checkpoint load; not the launcher, the loader workers (other
    processes) or the OS reserve."""
    return sum(i.rank_gib for i in items if i.rank_gib is not None)


def _nvme_items(ins: PlanInputs, r: _Run) -> list[Item]:
    """NVMe per node: what ZeRO-Infinity swaps there."""
    node_share = ins.gpus_per_node / ins.world
    nvme: list[Item] = []
    if r.zero3 and ins.offload_param == "nvme":
        nvme.append(Item(component="weight partitions swapped to NVMe", gib=_gib(r.weights * node_share)))
    if ins.offload_optimizer == "nvme":
        nvme.append(Item(component="optimizer states swapped to NVMe", gib=_gib(16 * r.trainable * node_share)))
    return nvme


def checkpoint_bytes(trainable: int) -> int:
    """One training checkpoint on disk: the fp32 master copy and Adam's m and v of the trainable
    parameters (12 B each). Gradients are not saved, nor is the frozen base (train.save_checkpoint)."""
    return 12 * trainable


def _disk_items(ins: PlanInputs, r: _Run, machine: Machine, nvme: list[Item]) -> list[Item]:
    """Disk: where weights, prepared data and checkpoints go."""
    b = ins.dtype_bytes
    disk: list[Item] = []
    if ins.local_model:
        disk.append(Item(component="model weights", gib=0.0, note="local model.source, used in place"))
    else:
        est = ins.download_bytes is None
        total = (r.pc.total * 2) if est else ins.download_bytes
        disk.append(
            Item(
                component="weights download" + (" (estimated: params x 2 B)" if est else " (Hub metadata)"),
                gib=_gib(max(0, total - ins.cached_bytes)),
                note=f"{_gib(ins.cached_bytes):,.1f} GiB already cached" if ins.cached_bytes else "",
            )
        )
    per_sample = r.sample["on_disk"]
    disk.append(
        Item(
            component=f"prepared data ({ins.num_samples} samples x {_gib(per_sample) * 1024:,.1f} MiB)",
            gib=_gib(per_sample * ins.num_samples),
            note="" if ins.num_samples else "samples not counted",
        )
    )
    disk.append(
        Item(
            component=f"checkpoints ({ins.checkpoints_to_keep} kept + 1 being written)",
            gib=_gib(checkpoint_bytes(r.trainable) * (ins.checkpoints_to_keep + 1)),
            note="fp32 master, Adam m and v: 12 B per LoRA param (bench/bench_plan.py: 12.4-13); no frozen base",
        )
    )
    disk.append(Item(component="adapter", gib=_gib(r.trainable * b)))
    if nvme and ins.nvme_shares_disk and machine.nvme_gib is None:
        disk += [
            Item(component=f"NVMe offload: {i.component}", gib=i.gib, note="nvme_path on the same disk") for i in nvme
        ]
    return disk


def _judged(name: str, items: list[Item], have: float | None) -> Resource:
    need = sum(i.gib for i in items)
    return Resource(
        name=name,
        items=items,
        need_gib=need,
        have_gib=have,
        fits=None if have is None else need <= have,
        margin_gib=None if have is None else have - need,
    )


def _warnings(ins: PlanInputs, machine: Machine, dev_need: float) -> list[str]:
    warnings = []
    if machine.swap_used_gib > 0.5:
        warnings.append(
            f"{machine.swap_used_gib:.1f} GiB of swap already in use: a run that swaps crawls "
            "(the documents: if it swaps, stop). Free RAM first."
        )
    if (
        ins.accelerator == "cuda"
        and machine.gpu_free_gib is not None
        and machine.gpu_memory_gib is not None
        and machine.gpu_free_gib < dev_need <= machine.gpu_memory_gib
    ):
        warnings.append(
            f"a GPU has only {machine.gpu_free_gib:.1f} GiB free (another process holds memory); "
            f"the run needs {dev_need:.1f} GiB per rank"
        )
    return warnings


def _facts(ins: PlanInputs, r: _Run) -> dict[str, Any]:
    s, pc, lc = ins.shape, r.pc, r.lc
    return {
        "total_params": pc.total,
        "llm_params": pc.llm,
        "weights_gib": _gib(r.weights),
        "params_by_part": pc.parts,
        "codec_params": {
            **codec_parameter_counts(),
            "where": "semantic_tokenizer and acoustic_encoder: data preparation; decoder_16k: vss infer; not in training",
        },
        "moe_leaf_params": pc.moe_leaf + lc.in_moe_leaf_per_layer,
        "moe_leaf_gib": _gib(r.leaf),
        "largest_param": pc.largest_param,
        "largest_param_gib": _gib(r.largest),
        "lora_params": lc.params,
        "lora_per_target": lc.per_target,
        "tokens_per_sample": r.tokens,
        "world_size": ins.world,
        "nodes": ins.nodes,
        "model": s.source,
        "allocated_zero_experts": s.allocated_zero_experts,
    }


def _time(ins: PlanInputs, r: _Run, machine: Machine) -> steptime.TimeEstimate:
    """Seconds per micro batch, optimizer step and epoch (`steptime.estimate`)."""
    s, pc = ins.shape, r.pc
    routed = 3 * s.hidden_size * s.expert_ffn_hidden_size  # gate, up and down of one expert
    unused = s.num_layers * max(0, s.n_routed_experts - s.moe_topk) * routed
    embed = s.vocab_size * s.hidden_size  # the input lookup computes nothing
    active = pc.llm - embed - unused + pc.parts.get("audio_output_layer", 0)
    encoders = 2 * pc.vision * r.pairs * r.patches + 2 * pc.audio * audio_in_tokens(s, ins.audio_seconds)
    speeds = steptime.Speeds.for_device(ins.accelerator, machine.gpu_name).with_overrides(ins.speeds)
    return steptime.estimate(
        speeds=speeds,
        cuda=r.cuda,
        world=ins.world,
        ranks_per_node=ins.gpus_per_node,
        nodes=ins.nodes,
        weight_bytes=r.weights,
        trainable=r.trainable,
        dtype_bytes=ins.dtype_bytes,
        active_llm_params=active,
        encoder_flops_per_sample=encoders,
        tokens_per_sample=r.tokens,
        micro_batch_size=ins.micro_batch_size,
        gradient_accumulation_steps=ins.gradient_accumulation_steps,
        activation_checkpointing=ins.activation_checkpointing,
        offload_param=ins.offload_param,
        offload_optimizer=ins.offload_optimizer,
        zero_stage=ins.zero_stage,
        checkpoint_bytes=checkpoint_bytes(r.trainable),
        save_every_n_steps=ins.save_every_n_steps,
        num_samples=ins.num_samples,
        epochs=ins.epochs,
        max_steps=ins.max_steps,
    )


def plan(ins: PlanInputs, machine: Machine, suggest: bool = True) -> Plan:
    """Plan a run on `machine`: figures per resource, verdict, and (when it does not fit and
    `suggest`) the changes that make it fit, each re-planned.

    The steps: the run's figures (`_derive`), then each resource's items (`_device_items`,
    `_ram_items`, `_nvme_items`, `_disk_items`) judged against what the machine has.
    """
    a, ranks = ins.assumptions, ins.gpus_per_node
    r = _derive(ins)
    notes = _notes(ins, r)
    dev = _device_items(ins, r)
    dev_need = sum(i.gib for i in dev)
    ram = _ram_items(ins, r, dev_need)
    nvme = _nvme_items(ins, r)
    disk = _disk_items(ins, r, machine, nvme)

    resources = []
    if r.cuda:
        gpu_have = machine.gpu_memory_gib if machine.gpus_per_node >= ranks else 0.0
        resources.append(_judged("GPU memory (per rank)", dev, gpu_have))
        if machine.gpus_per_node < ranks:
            notes.append(f"the machine has {machine.gpus_per_node} GPU(s) per node, the run needs {ranks}")
    resources.append(_judged("CPU RAM (per node)", ram, machine.ram_gib))
    if nvme and not (ins.nvme_shares_disk and machine.nvme_gib is None):
        resources.append(_judged("NVMe (per node)", nvme, machine.nvme_gib))
    resources.append(_judged("disk", disk, machine.disk_gib))

    result = Plan(
        time=_time(ins, r, machine),
        fits=all(res.fits is not False for res in resources),
        resources=resources,
        warnings=_warnings(ins, machine, dev_need),
        facts=_facts(ins, r),
        assumptions=[
            *notes,
            f"CUDA context {a.cuda_context_gib:g} GiB/GPU, fragmentation {a.fragmentation:.0%}, "
            f"{a.process_gib(r.cuda):g} GiB RAM per process of its own",
            "partition_activations shards activations across model-parallel ranks only: vss has none, no saving",
            "GiB = 1024^3 bytes, as nvidia-smi, free -h and df -h report",
        ],
    )
    if suggest and not result.fits:
        result.suggestions, result.nothing_fits = suggestions(ins, machine, result)
    return result


# --- suggestions ---------------------------------------------------------------------------------


def _candidates(ins: PlanInputs, machine: Machine, failing: set[str]) -> list[tuple[str, list[str], list[str], dict]]:
    """(change, overrides, needs, PlanInputs changes) worth re-planning, cheapest first."""
    out: list[tuple[str, list[str], list[str], dict]] = []
    if ins.zero_stage == 3 and not ins.allgather_sequential:
        out.append(
            (
                "gather the MoE leaf parameter by parameter (no 2x coalesced copy)",
                ["deepspeed.allgather_sequential=true"],
                [],
                {"allgather_sequential": True},
            )
        )
    if ins.offload_param == "none":
        out.append(("offload parameters to CPU RAM", ["deepspeed.offload_param=cpu"], [], {"offload_param": "cpu"}))
    if ins.offload_optimizer == "none":
        out.append(
            (
                "offload optimizer states to CPU RAM",
                ["deepspeed.offload_optimizer=cpu"],
                [],
                {"offload_optimizer": "cpu"},
            )
        )
    if ins.offload_param != "nvme" and ins.accelerator == "cuda":
        buffer = max(DS_DEFAULT_PARAM_BUFFER_SIZE, math.ceil(count_params(ins.shape).largest_param / ins.world))
        out.append(
            (
                "offload parameters to NVMe",
                [
                    "deepspeed.offload_param=nvme",
                    "deepspeed.nvme_path=/local_nvme",
                    f"deepspeed.param_buffer_size={buffer:.3e}",
                ],
                [],
                {"offload_param": "nvme"},
            )
        )
    for k in range(ins.nodes + 1, ins.nodes + 8):
        out.append(
            (
                f"{k} nodes like this one",
                [f"hardware.nodes={k}", "hardware.hostfile=hostfile"],
                [],
                {"nodes": k, "_nodes": k},
            )
        )
    for live in (5e8, 3e8, 1e8):
        if live < ins.max_live_parameters:
            out.append(
                (
                    f"lower live parameters to {live:.0e}",
                    [f"deepspeed.max_live_parameters={live:.0e}", f"deepspeed.max_reuse_distance={live:.0e}"],
                    [],
                    {"max_live_parameters": live},
                )
            )
    frames, secs = ins.video_frames, ins.audio_seconds
    while frames > 2 or secs > 2:
        frames, secs = max(2, frames // 2 // 2 * 2 or 2), max(2.0, secs / 2)
        out.append(
            (
                f"{frames} frames and {secs:g} s of audio",
                [f"data.video_frames={frames}", f"data.audio_seconds={secs:g}"],
                [],
                {"video_frames": frames, "audio_seconds": secs},
            )
        )
    if set(ins.lora_targets) != {"attention"}:
        out.append(("LoRA on attention only", ["lora.targets=[attention]"], [], {"lora_targets": ("attention",)}))
    return out


def _apply(ins: PlanInputs, machine: Machine, changes: dict) -> tuple[PlanInputs, Machine]:
    changes = dict(changes)
    nodes = changes.pop("_nodes", None)
    if nodes:
        machine = machine.model_copy(update={"nodes": nodes})
    return dataclasses.replace(ins, **changes), machine


def suggestions(ins: PlanInputs, machine: Machine, base: Plan) -> tuple[list[Suggestion], bool]:
    """Changes that re-plan as fitting: single changes first; pairs only when no single change fits.
    Of the node counts and frame/audio cuts, only the smallest change that fits is kept."""
    failing = {r.name for r in base.resources if r.fits is False}
    cands = _candidates(ins, machine, failing)
    found: list[Suggestion] = []

    def kind(c: tuple) -> str:
        return c[0].split()[1] if "nodes" in c[0] else ("batch" if "frames" in c[0] else c[0])

    kinds_done: set[str] = set()
    for c in cands:
        if kind(c) in kinds_done:
            continue
        new_ins, new_m = _apply(ins, machine, c[3])
        p = plan(new_ins, new_m, suggest=False)
        if p.fits:
            found.append(Suggestion(change=c[0], overrides=c[1], needs=c[2], plan=p))
            kinds_done.add(kind(c))
    if found:
        return found, False
    for i, c1 in enumerate(cands):
        for c2 in cands[i + 1 :]:
            if kind(c1) == kind(c2) or kind(c1) in kinds_done or kind(c2) in kinds_done:
                continue
            if set(c1[3]) & set(c2[3]):
                continue
            new_ins, new_m = _apply(ins, machine, {**c1[3], **c2[3]})
            p = plan(new_ins, new_m, suggest=False)
            if p.fits:
                found.append(
                    Suggestion(change=f"{c1[0]} + {c2[0]}", overrides=c1[1] + c2[1], needs=c1[2] + c2[2], plan=p)
                )
                kinds_done.add(kind(c2))
    return found, not found


Suggestion.model_rebuild()
Plan.model_rebuild()


def to_json(p: Plan) -> dict[str, Any]:
    """The plan as a JSON-ready object: top-level `fits`, per-resource figures beside it."""

    def res(r: Resource) -> dict[str, Any]:
        return {
            "need_gib": round(r.need_gib, 3),
            "have_gib": r.have_gib,
            "fits": r.fits,
            "margin_gib": None if r.margin_gib is None else round(r.margin_gib, 3),
            "components": {i.component: round(i.gib, 3) for i in r.items},
        }

    return {
        "fits": p.fits,
        "resources": {r.name: res(r) for r in p.resources},
        "time": None if p.time is None else p.time.model_dump(),
        "facts": p.facts,
        "suggestions": [
            {
                "change": s.change,
                "overrides": s.overrides,
                "needs": s.needs,
                "fits": s.plan.fits,
                "resources": {r.name: res(r) for r in s.plan.resources},
            }
            for s in p.suggestions
        ],
        "nothing_fits": p.nothing_fits,
        "warnings": p.warnings,
        "assumptions": p.assumptions,
        "units": "GiB (1024^3 bytes)",
    }
