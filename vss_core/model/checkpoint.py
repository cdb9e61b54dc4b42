"""Checkpoint I/O of LongCat-Flash-Omni: the official file layout, strict loading, the tiny writer.

The layout (the official loader `longcat_omni_demo.py` `load_encoder_ckpt` and the SGLang port's
`LongcatFlashOmniForCausalLM.__init__` read these files; each `.pt` holds the state dict of one
submodule, keys without a prefix):

    config.json, *.safetensors           LLM (`LongcatFlashForCausalLM` keys, `model.embed_tokens`
                                         and `lm_head` included; `model.mtp.*` multi-token-prediction
                                         keys are listed and left out: vss does not train them)
    tokenizer files                      the text tokenizer (transformers `AutoTokenizer`)
    language_model_embedding.pt          TextEmbedding (`word_embeddings.weight`)
    vision/{config.json, vision_model.pt, vision_projector.pt}
    audio/{config.json, preprocessor_config.json, global_cmvn (a Kaldi stats matrix),
           audio_encoder.pt, audio_projector.pt, audio_embeddings.pt, audio_output_layers.pt}
    audio_codec/config.yaml              the LongCat-Audio-Codec decoder config (`vss_core.codec`)

`write_tiny_checkpoint` writes a random-weight model of the same architecture in exactly this layout
(official config keys and key names, a real tokenizer, a Kaldi cmvn); `load_omni` reads the tiny one
and the published one through the same code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import LongcatFlashConfig
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

from vss_core import sequence
from vss_core.configfile import read_mapping
from vss_core.errors import ModelError, bullet_list
from vss_core.model import audio, vision
from vss_core.model.omni import OmniModel, SpecialTokenIds

log = logging.getLogger(__name__)

# The tiny LLM: LongCat-Flash at toy sizes (MODEL_FACTS.md).
TINY_LLM_CONFIG: dict[str, Any] = {
    "vocab_size": sequence.TINY_VOCAB_SIZE,  # the tiny tokenizer's vocabulary
    "hidden_size": 64,
    "num_layers": 1,
    "num_attention_heads": 4,
    "ffn_hidden_size": 128,
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "head_dim": 8,
    "n_routed_experts": 4,
    "moe_topk": 2,
    "zero_expert_num": 2,
    "expert_ffn_hidden_size": 32,
    "max_position_embeddings": 2048,
}

# file (relative to the checkpoint dir) -> submodule of OmniModel whose state dict it holds
PT_FILES: dict[str, str] = {
    "language_model_embedding.pt": "text_embedding",
    "vision/vision_model.pt": "vision_model",
    "vision/vision_projector.pt": "vision_projector",
    "audio/audio_encoder.pt": "audio_encoder",
    "audio/audio_projector.pt": "audio_projector",
    "audio/audio_embeddings.pt": "audio_embedding",
    "audio/audio_output_layers.pt": "audio_output_layer",
}
VISION_CONFIG = Path("vision/config.json")
AUDIO_CONFIG = Path("audio/config.json")
PREPROCESSOR_CONFIG = Path("audio/preprocessor_config.json")
GLOBAL_CMVN = Path("audio/global_cmvn")
CODEC_CONFIG = Path("audio_codec/config.yaml")
# LongCat-Flash checkpoints carry multi-token-prediction weights training does not use
# (transformers: `_keys_to_ignore_on_load_unexpected = [r"model\.mtp.*"]`).
MTP_PREFIX = "model.mtp."
# Kept in fp32 under a bf16 load, as transformers' `_keep_in_fp32_modules` does for this model.
FP32_SUFFIXES = ("mlp.router.classifier.weight", "mlp.router.classifier.bias", "mlp.router.e_score_correction_bias")

_LAYOUT = (
    "config.json, *.safetensors, tokenizer files, language_model_embedding.pt, "
    "vision/{config.json, vision_model.pt, vision_projector.pt}, "
    "audio/{config.json, preprocessor_config.json, global_cmvn, audio_encoder.pt, audio_projector.pt, "
    "audio_embeddings.pt, audio_output_layers.pt}, audio_codec/config.yaml"
)


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """A checkpoint's JSON config file, or None with the problem appended (`configfile.read_mapping`)."""
    return read_mapping(
        path, problems, what=f"a checkpoint directory holds {_LAYOUT}", fix="re-download the checkpoint"
    )


def llm_config(raw: dict[str, Any]) -> LongcatFlashConfig:
    """The LongCat-Flash config of a checkpoint's config.json."""
    skip = {"architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype"}
    return LongcatFlashConfig(**{k: v for k, v in raw.items() if k not in skip})


def _config_part(parse, path: Path, problems: list[str]) -> Any:
    raw = read_json(path, problems)
    if raw is None:
        return None
    try:
        return parse(raw, path)
    except ModelError as exc:
        problems.append(str(exc))
        return None


class ModelConfigs(NamedTuple):
    """A checkpoint's model config files, parsed; a part is None where its file had a problem."""

    llm: LongcatFlashConfig | None
    vision: vision.VisionConfig | None
    audio: audio.AudioConfig | None
    preprocessor: audio.PreprocessorConfig | None


def read_model_configs(model_dir: Path, problems: list[str], *, preprocessor_required: bool = True) -> ModelConfigs:
    """config.json (the LLM), vision/config.json, audio/config.json and audio/preprocessor_config.json parsed,
    every problem appended to `problems`: the one reader the model loader and the planner share. The
    preprocessor config is skipped when absent unless `preprocessor_required` (the Hub does not publish it)."""
    raw = read_json(model_dir / "config.json", problems)
    llm = None
    if raw is not None:
        try:
            llm = llm_config(raw)
        except (TypeError, ValueError) as exc:
            problems.append(f"{model_dir / 'config.json'}: not a LongCat-Flash config ({exc})")
    vision_cfg = _config_part(vision.VisionConfig.from_json, model_dir / VISION_CONFIG, problems)
    audio_cfg = _config_part(audio.AudioConfig.from_json, model_dir / AUDIO_CONFIG, problems)
    pre = None
    if preprocessor_required or (model_dir / PREPROCESSOR_CONFIG).is_file():
        pre = _config_part(audio.PreprocessorConfig.from_json, model_dir / PREPROCESSOR_CONFIG, problems)
    return ModelConfigs(llm, vision_cfg, audio_cfg, pre)


class CheckpointConfigs:
    """Everything a checkpoint's small files say (no weights read): enough to build the model on meta."""

    def __init__(self, model_dir: Path) -> None:
        """Raises:
        ModelError: a config file is missing or invalid (all problems listed)."""
        self.model_dir = model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir}: not a directory; model.source must point at a checkpoint holding {_LAYOUT}")
        problems: list[str] = []
        self.llm, self.vision, self.audio, self.preprocessor = read_model_configs(model_dir, problems)
        if not (model_dir / GLOBAL_CMVN).is_file():
            problems.append(f"{model_dir / GLOBAL_CMVN}: file missing (a Kaldi stats matrix of the audio features)")
        if not (model_dir / CODEC_CONFIG).is_file():
            problems.append(f"{model_dir / CODEC_CONFIG}: file missing (the speech decoder's config)")
        self.special_ids = None
        try:
            self.tokenizer = sequence.load_tokenizer(model_dir)
            self.special_ids = sequence.special_ids(self.tokenizer)
        except ModelError as exc:
            problems.append(str(exc))
        if self.llm is not None and self.special_ids is not None:
            top = max(self.special_ids.all_ids())
            if top >= self.llm.vocab_size:
                problems.append(
                    f"{model_dir / 'config.json'}: vocab_size {self.llm.vocab_size} is smaller than the "
                    f"tokenizer's special id {top}; the tokenizer is not this model's"
                )
        if problems:
            raise ModelError(f"checkpoint {model_dir} is incomplete:\n{bullet_list(problems)}")

    def token_ids(self) -> SpecialTokenIds:
        return SpecialTokenIds(image_pad=self.special_ids.image_pad, audio_pad=self.special_ids.audio_pad)

    def build(self) -> OmniModel:
        return OmniModel(self.llm, self.vision, self.audio, self.token_ids())


# --- the tiny checkpoint ----------------------------------------------------------------------------


def tiny_llm_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """TINY_LLM_CONFIG with `overrides` (config.json keys of LongCat-Flash) applied; a new dict."""
    return {**TINY_LLM_CONFIG, **(overrides or {})}


def build_tiny_model(
    model_dir_with_tokenizer: Path, seed: int = 0, llm_overrides: dict[str, Any] | None = None
) -> OmniModel:
    """The random-weight tiny model (deterministic by seed) for a directory holding its configs.

    `llm_overrides` replaces keys of TINY_LLM_CONFIG (a scaled LLM, e.g. for bench/bench_plan.py); the
    vision and audio towers stay tiny (their projectors follow the LLM's hidden size)."""
    ids = sequence.special_ids(sequence.load_tokenizer(model_dir_with_tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OmniModel(
            llm_config(tiny_llm_config(llm_overrides)),
            vision.VisionConfig.from_json(vision.TINY_VISION_CONFIG, VISION_CONFIG),
            audio.AudioConfig.from_json(audio.TINY_AUDIO_CONFIG, AUDIO_CONFIG),
            SpecialTokenIds(image_pad=ids.image_pad, audio_pad=ids.audio_pad),
        )
        # Same std for every weight matrix so the tiny model starts from sane logits; norms stay 1.
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith(("bias", "ls1", "ls2")):
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.constant_(p, 0.1)
    return model


def _submodule_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.get_submodule(name).state_dict().items()}


def write_tiny_checkpoint(out_dir: Path, seed: int = 0, llm_overrides: dict[str, Any] | None = None) -> Path:
    """Write a random-weight tiny model in the official checkpoint layout to out_dir (atomically).

    Official config files and keys, official state-dict key names, a real tokenizer carrying the
    official special tokens, a Kaldi `global_cmvn` and the codec decoder's `audio_codec/config.yaml`;
    the LLM safetensors also carry a `model.mtp.*` tensor as the published ones do. The speech codec
    itself (the LongCat-Audio-Codec repository layout) is written by `vss_core.codec.write_tiny_codec`.

    `llm_overrides` replaces keys of TINY_LLM_CONFIG (config.json keys: a scaled LLM of the same
    architecture, as bench/bench_plan.py builds); the vision and audio towers and the tokenizer stay
    tiny. Without it the checkpoint is the tiny one, byte for byte. Writing holds the model and a copy
    of the LLM's weights at once: about 8 bytes per LLM parameter of RAM.

    Raises:
        ModelError: out_dir exists and is not empty.
    """
    from vss_core import codec

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir}: exists and is not empty; choose a new directory or delete it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        sequence.write_tiny_tokenizer(tmp)
        model = build_tiny_model(tmp, seed, llm_overrides)
        llm_keys = tiny_llm_config(llm_overrides)
        llm_cfg = dict(llm_keys, model_type="longcat_flash", architectures=["LongcatFlashForCausalLM"])
        (tmp / "config.json").write_text(json.dumps(llm_cfg, indent=2))
        llm_state = _submodule_state(model, "llm")
        hidden = llm_keys["hidden_size"]
        llm_state[f"{MTP_PREFIX}layers.0.eh_proj.weight"] = torch.zeros(hidden, 2 * hidden)
        save_file(llm_state, str(tmp / "model.safetensors"))
        (tmp / "vision").mkdir()
        (tmp / "audio").mkdir()
        (tmp / VISION_CONFIG).write_text(json.dumps(model.vision_config.to_json(), indent=2))
        (tmp / AUDIO_CONFIG).write_text(json.dumps(model.audio_config.to_json(), indent=2))
        (tmp / PREPROCESSOR_CONFIG).write_text(json.dumps(audio.TINY_PREPROCESSOR_CONFIG, indent=2))
        dim = audio.PreprocessorConfig.from_json(audio.TINY_PREPROCESSOR_CONFIG, PREPROCESSOR_CONFIG).cmvn_dim
        # Stats of roughly log-mel-like features (mean 8, var 4), so normalised features are O(1).
        audio.write_kaldi_cmvn(tmp / GLOBAL_CMVN, mean=[8.0] * dim, var=[4.0] * dim, count=1000.0)
        for rel, name in PT_FILES.items():
            torch.save(_submodule_state(model, name), tmp / rel)
        codec.write_decoder_config(tmp / CODEC_CONFIG, codec.TINY_DECODER)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --- loading ----------------------------------------------------------------------------------------


def _check_state(
    file: Path, found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], problems: list[str]
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{file}: missing weight(s) {', '.join(missing)}; the file is incomplete or from another model")
    if unexpected:
        problems.append(
            f"{file}: unexpected weight(s) {', '.join(unexpected)}; "
            "the file does not match the model its configs describe"
        )
    for key in sorted(set(found) & set(expected)):
        if tuple(found[key].shape) != tuple(expected[key].shape):
            problems.append(
                f"{file}: weight {key} has shape {tuple(found[key].shape)}, the configs give "
                f"{tuple(expected[key].shape)}; config and weights disagree"
            )


def _load_pt(path: Path, problems: list[str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        problems.append(f"{path}: file missing (a checkpoint directory holds {_LAYOUT})")
        return None
    try:
        # mmap: tensors are read when copied into the model, not all at once
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        problems.append(f"{path}: cannot be read as a weights-only torch file ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append(f"{path}: must hold a state dict (name -> tensor)")
        return None
    return state


def _shapes(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Meta tensors with the shapes of a (lazy) state dict, for `_check_state`."""
    return {k: torch.empty(tuple(v), device="meta") for k, v in state.items()}


def load_omni(
    model_dir: Path, dtype: torch.dtype = torch.float32, zero_config: dict[str, Any] | None = None
) -> OmniModel:
    """Build OmniModel from the checkpoint's configs and load every weight strictly.

    Weights are read lazily (safetensors `safe_open`, `.pt` files memory-mapped with
    `weights_only=True`) and checked against a meta-device build before anything is allocated. With
    `zero_config` (a DeepSpeed config with ZeRO stage 3) the model is built under `deepspeed.zero.Init`,
    so each rank holds only its partition, and each module's weights are copied in by rank 0 inside
    `GatheredParameters`: no rank ever holds a full copy of the model.

    The LLM is transformers' native `LongcatFlashForCausalLM` (its MoE experts swapped for
    `vss_core.experts.RoutedExperts`, same names and math, routed experts only) and the modality parts
    are vss code following the official definitions, so no checkpoint code ever runs. Per-expert
    weights (the published layout) are fused; a fused `gate_up_proj` with zero-expert rows is read
    for its routed rows only; `model.mtp.*` keys are listed in the log and not loaded. The router
    (`mlp.router.classifier`, `e_score_correction_bias`) stays fp32 when `dtype` is bf16 (without ZeRO-3;
    under ZeRO-3 too: the bias through the DeepSpeed config's `data_types.keep_in_fp32_modules`, the
    weight as an fp32 partitioned parameter of its own, `_router_weights_to_fp32`).

    Raises:
        ModelError: a file is missing or unreadable, a config key is missing, or a weight is missing,
            unexpected or of the wrong shape (all problems listed at once, each naming file and key).
    """
    from safetensors import safe_open

    cfgs = CheckpointConfigs(model_dir)
    model_dir = cfgs.model_dir
    problems: list[str] = []
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        problems.append(f"{model_dir}: no *.safetensors file (the LLM weights; a checkpoint directory holds {_LAYOUT})")
    with torch.device("meta"):
        expected = cfgs.build().state_dict()

    # full model key -> where to read it: ("st", shard, key, rows) or ("pt", loaded dict, key, None);
    # rows (or None for all) is how many leading rows of the stored tensor the model holds.
    sources: dict[str, tuple[str, Any, str, int | None]] = {}
    llm_shapes: dict[str, Any] = {}
    mtp: list[str] = []
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for k in f.keys():
                if k.startswith(MTP_PREFIX):
                    mtp.append(k)
                    continue
                if k in llm_shapes:
                    problems.append(f"{shard}: weight {k} also appears in another shard")
                llm_shapes[k] = f.get_slice(k).get_shape()
                sources[f"llm.{k}"] = ("st", shard, k, None)
    llm_expected = {k[len("llm.") :]: v for k, v in expected.items() if k.startswith("llm.")}
    _fuse_per_expert_weights(cfgs.llm, llm_shapes, sources, problems)
    _routed_rows_only(cfgs.llm, llm_shapes, llm_expected, sources)
    if shards:
        where = shards[0] if len(shards) == 1 else model_dir / "*.safetensors"
        _check_state(where, _shapes(llm_shapes), llm_expected, problems)

    for rel, name in PT_FILES.items():
        state = _load_pt(model_dir / rel, problems)
        if state is None:
            continue
        sub_expected = {k[len(name) + 1 :]: v for k, v in expected.items() if k.startswith(name + ".")}
        _check_state(model_dir / rel, state, sub_expected, problems)
        sources.update({f"{name}.{k}": ("pt", state, k, None) for k in state})
    try:
        features = audio.FeatureExtractor(cfgs.preprocessor, model_dir / GLOBAL_CMVN)
        if features.feature_dim != cfgs.audio.input_size:
            problems.append(
                f"{model_dir / PREPROCESSOR_CONFIG}: the features are {features.feature_dim}-d but "
                f"{model_dir / AUDIO_CONFIG} input_size is {cfgs.audio.input_size}; the two configs disagree"
            )
    except ModelError as exc:
        problems.append(str(exc))
    if problems:
        raise ModelError(f"checkpoint {model_dir} does not match its configs:\n{bullet_list(problems)}")
    if mtp:
        log.info(
            "%s: %d multi-token-prediction weight(s) (%s...) not loaded: vss does not train them",
            model_dir,
            len(mtp),
            mtp[0],
        )

    if zero_config is not None:
        import deepspeed

        # dtype=None: zero.Init then takes the dtype from the config's bf16/fp16 flags. An explicit dtype
        # is dropped on an accelerator without fp16 (the CPU): `_set_dtype` reads `dtype or fp16 if
        # fp16_supported() else bf16 if is_bf16_supported else fp32` (no call: always bf16), so the
        # cpu-demo's "fp32" model held bf16 partitions (deepspeed/runtime/zero/partition_parameters.py;
        # the missing call is deepspeedai/DeepSpeed#8428, the precedence stays). Checked below.
        with deepspeed.zero.Init(config_dict_or_path=zero_config, dtype=None):
            model = cfgs.build()
        built = next(model.parameters()).ds_tensor.dtype
        if built != dtype:
            raise RuntimeError(
                f"zero.Init built {built} partitions for a {dtype} model: the DeepSpeed config's bf16/fp16 "
                "flags must match model.dtype (config.deepspeed_config sets them from it)"
            )
        if dtype != torch.float32:
            _router_weights_to_fp32(model, zero_config)
    else:
        model = cfgs.build().to(dtype)
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(FP32_SUFFIXES):
                t.data = t.data.float()
    model.skipped_keys = mtp
    _copy_weights(model, sources, partitioned=zero_config is not None)
    return model


def _router_weights_to_fp32(model: nn.Module, zero_config: dict[str, Any]) -> None:
    """Re-create each MoE router's classifier weight as an fp32 ZeRO-3 parameter.

    `zero.Init(dtype=bf16)` makes every parameter it creates bf16; transformers keeps this one in fp32
    (`_keep_in_fp32_modules = ["classifier.weight"]`). A parameter converted by `zero.Init(module=...)`
    keeps its own dtype (deepspeed/runtime/zero/partition_parameters.py `_convert_to_zero_parameters`)
    and ZeRO-3 all-gathers coalesced parameters grouped by dtype, so an fp32 partition beside the bf16
    ones is supported. The weight is filled from the checkpoint afterwards like any other.
    """
    import deepspeed

    for name, module in model.named_modules():
        if name.endswith("mlp.router"):
            clf = module.classifier
            shape = tuple(clf.weight.ds_shape)
            clf.weight = nn.Parameter(torch.empty(shape, dtype=torch.float32), requires_grad=clf.weight.requires_grad)
            deepspeed.zero.Init(module=clf, config_dict_or_path=zero_config)


_PER_EXPERT = re.compile(r"(?P<prefix>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight")


def _fuse_per_expert_weights(
    config: LongcatFlashConfig,
    shapes: dict[str, Any],
    sources: dict[str, tuple[str, Any, str, int | None]],
    problems: list[str],
) -> None:
    """Map per-expert checkpoint weights onto the fused expert parameters.

    The published checkpoint (and transformers' `save_pretrained`) stores each expert as
    `...mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight`; the module holds
    `gate_up_proj[e] = cat(gate, up)` and `down_proj[e]`, as transformers' own loader fuses them
    (its `qwen2_moe` weight conversion, which `longcat_flash` uses). Rows of zero experts, if present,
    are ignored: zero experts are identities without weights.
    """
    groups: dict[str, dict[tuple[int, str], str]] = {}
    for key in list(shapes):
        m = _PER_EXPERT.fullmatch(key)
        if m:
            groups.setdefault(m["prefix"], {})[(int(m["e"]), m["proj"])] = key
    n = config.n_routed_experts
    for prefix, found in groups.items():
        missing = [
            f"{prefix}.{e}.{proj}.weight"
            for e in range(n)
            for proj in ("gate_proj", "up_proj", "down_proj")
            if (e, proj) not in found
        ]
        if missing:
            problems.append(
                f"per-expert weights missing under {prefix}: {', '.join(missing[:6])}"
                + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            )
            continue
        where = {
            found[(e, proj)]: sources[f"llm.{found[(e, proj)]}"][1]
            for e in range(n)
            for proj in ("gate_proj", "up_proj", "down_proj")
        }
        gate, down = shapes[found[(0, "gate_proj")]], shapes[found[(0, "down_proj")]]
        for key in found.values():
            del shapes[key], sources[f"llm.{key}"]
        layer = prefix.removeprefix("llm.")
        shapes[f"{layer}.gate_up_proj"] = [n, 2 * gate[0], gate[1]]
        shapes[f"{layer}.down_proj"] = [n, *down]
        sources[f"llm.{layer}.gate_up_proj"] = (
            "experts",
            where,
            ([(found[(e, "gate_proj")], found[(e, "up_proj")]) for e in range(n)]),
            None,
        )
        sources[f"llm.{layer}.down_proj"] = ("experts", where, ([(found[(e, "down_proj")],) for e in range(n)]), None)


def _routed_rows_only(
    config: LongcatFlashConfig,
    shapes: dict[str, Any],
    expected: dict[str, torch.Tensor],
    sources: dict[str, tuple[str, Any, str, int | None]],
) -> None:
    """Read only the routed experts' rows of a fused gate_up_proj that also has zero-expert rows.

    transformers 5.23's own experts module holds gate_up_proj rows for the zero (identity) experts
    too (MODEL_FACTS.md), so a state dict saved from it (or a tiny checkpoint of an older vss) has
    [routed + zero, 2 * ffn, hidden]. The zero experts never read those rows: dropping them is exact.
    """
    stored_rows = config.n_routed_experts + (config.zero_expert_num or 0)
    for key, shape in shapes.items():
        want = expected.get(key)
        if (
            key.endswith("mlp.experts.gate_up_proj")
            and want is not None
            and len(shape) == 3
            and shape[0] == stored_rows != want.shape[0]
            and tuple(shape[1:]) == tuple(want.shape[1:])
        ):
            shapes[key] = [want.shape[0], *shape[1:]]
            kind, where, name, _ = sources[f"llm.{key}"]
            sources[f"llm.{key}"] = (kind, where, name, want.shape[0])


def _copy_weights(model: nn.Module, sources: dict[str, tuple[str, Any, str, int | None]], partitioned: bool) -> None:
    """Copy every parameter and persistent buffer from its source, module by module.

    The shards a module reads are opened for that module and closed after it. safetensors maps a
    shard, and every page read stays in this process's RSS until the handle is closed (left open, a
    1B model's 3.7 GiB shard stood in rank 0's RSS through the whole load, bench/bench_plan.py; the
    real model's would be its 1.1 TB). Closed per module, it holds one module's pages at a time;
    reopening costs one header parse per module.
    """
    import contextlib

    from safetensors import safe_open

    handles: dict[Path, Any] = {}
    opened = contextlib.ExitStack()

    def tensor(shard: Path, name: str) -> torch.Tensor:
        if shard not in handles:
            handles[shard] = opened.enter_context(safe_open(str(shard), framework="pt"))
        return handles[shard].get_tensor(name)

    def read(key: str) -> torch.Tensor:
        kind, where, name, rows = sources[key]
        if kind == "pt":
            return where[name]
        if kind == "experts":  # per-expert weights fused: stack experts, gate and up concatenated
            return torch.stack([torch.cat([tensor(where[k], k) for k in keys]) for keys in name])
        if rows is not None:
            tensor(where, name)  # opens the handle
            return handles[where].get_slice(name)[:rows]
        return tensor(where, name)

    if partitioned:
        import deepspeed
        import deepspeed.comm as dist

        writer = dist.get_rank() == 0
    with torch.no_grad():
        for prefix, module in model.named_modules():
            params = [(n, p) for n, p in module.named_parameters(prefix=prefix, recurse=False)]
            gather = (
                deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0)
                if partitioned and params
                else contextlib.nullcontext()
            )
            with gather, opened:
                if not partitioned or writer:
                    for name, p in params:
                        p.data.copy_(read(name).to(p.dtype))
                for name, b in module.named_buffers(prefix=prefix, recurse=False):
                    if name in sources:
                        b.data.copy_(read(name).to(b.dtype))
            handles.clear()


# --- helpers for training / planning ------------------------------------------------------------


def zero3_leaf_classes() -> list[type]:
    """Module classes DeepSpeed ZeRO-3 must gather whole (ranks route tokens to different experts)."""
    return [LongcatFlashMoE]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitioned params count by their full size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
