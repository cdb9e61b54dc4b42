"""One typed config for a vss run.

Built once at the edge — a shipped profile (YAML) plus `section.key=value` overrides — then each
function gets only the section it needs. Every field is typed, bounded and described; the
descriptions feed `--help`, the Prefect run form and the docs. Unknown keys and out-of-range values
are rejected naming the key as the user writes it.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from vss_core.errors import ConfigError, bullet_list

PROFILE_PACKAGE = "vss_core.profiles"


def is_local_source(source: str) -> bool:
    """model.source / model.codec_source names a local directory (used in place), not a Hub repo id: it
    exists, or it is written as a path (./, /, ~). The one rule hub, plan and infer apply."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _repo_id_problem(value: str) -> str | None:
    """Why `value` is not an owner/name Hub repo id (huggingface_hub's own rule), or None when it is one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        return str(exc).split(". Use `repo_type`", 1)[0].rstrip(".")
    if value.count("/") != 1:
        return f"a repo id is owner/name, got {value!r}"
    return None


def _check_source(value: str) -> str:
    """A model source: a local path, or else a Hub repo id (owner/name).

    A path (starting with '/', '~' or '.', or of more than two parts) is not required to exist here:
    the config is also built where it does not (a profile naming a folder `vss demo` makes later, a
    re-validation elsewhere); the download stage checks it, before any Hub call.
    """
    if Path(value).expanduser().is_dir() or value.startswith(("/", "~", ".")) or value.count("/") > 1:
        return value
    problem = _repo_id_problem(value)
    if problem:
        raise ValueError(
            f"neither an existing directory nor a Hub repo id: {problem}. Use "
            "owner/name (e.g. meituan-longcat/LongCat-Flash-Omni) or the path of a local checkpoint"
        )
    return value


class HardwareConfig(_Section):
    accelerator: Literal["cuda", "cpu"] = Field(
        "cuda", description="Device the training ranks run on: 'cuda' for NVIDIA GPUs, 'cpu' for the CPU demo."
    )
    gpus_per_node: int = Field(
        2, ge=1, le=64, description="Training ranks per node (GPUs per node; CPU processes for accelerator=cpu)."
    )
    nodes: int = Field(1, ge=1, le=1024, description="Number of nodes; >1 needs hostfile.")
    hostfile: str | None = Field(
        None, description="DeepSpeed hostfile ('host slots=N' per line) for multi-node launches."
    )
    node_rank: int | None = Field(
        None,
        ge=0,
        description="Multi-node without ssh: this node's rank (0..nodes-1, its line in the hostfile). vss is "
        "started on every node with its own node_rank and the same config; each node's DeepSpeed launcher "
        "starts its own ranks (--no_ssh). Unset: the launcher on node 0 starts every node over ssh (pdsh).",
    )
    master_addr: str | None = Field(
        None,
        description="Node 0's address the ranks of every node reach (multi-node without ssh; needed with node_rank).",
    )
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port on node 0 (multi-node).")
    min_gpu_memory_gb: float = Field(
        0.0, ge=0, description="Memory each GPU must have (GiB total, as nvidia-smi reports) for the profile to run."
    )
    min_ram_gb: float = Field(0.0, ge=0, description="System RAM the run needs (GiB total).")
    min_free_disk_gb: float = Field(
        1.0, ge=0, description="Free disk the run needs where weights, prepared data and checkpoints go (GiB)."
    )

    @model_validator(mode="after")
    def _multi_node_needs_hostfile(self) -> HardwareConfig:
        if self.nodes > 1 and not self.hostfile:
            raise ValueError("hardware.nodes > 1 needs hardware.hostfile (a DeepSpeed hostfile)")
        if self.node_rank is not None:
            if self.nodes < 2:
                raise ValueError("hardware.node_rank is for multi-node runs: set hardware.nodes (> 1) too")
            if self.node_rank >= self.nodes:
                raise ValueError(f"hardware.node_rank={self.node_rank} must be below hardware.nodes={self.nodes}")
            if not self.master_addr:
                raise ValueError(
                    "hardware.node_rank needs hardware.master_addr: node 0's address, the same on every node"
                )
        return self


class ModelConfig(_Section):
    source: str = Field(
        "meituan-longcat/LongCat-Flash-Omni",
        min_length=1,
        description="Hub repo id of the base model, or a local directory in the checkpoint layout (used in place).",
    )
    revision: str = Field("main", min_length=1, description="Hub revision (branch, tag or commit) to download.")
    cache_dir: str | None = Field(
        None, description="Download cache; default: huggingface_hub's (HF_HUB_CACHE, HF_HOME/hub)."
    )
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Dtype the model is trained in.")
    codec_source: str = Field(
        "meituan-longcat/LongCat-Audio-Codec",
        min_length=1,
        description=(
            "Hub repo id of LongCat-Audio-Codec (its ckpts/ encoder turns out.wav into the codec ids the model "
            "speaks), or a local directory in that repo's layout (used in place)."
        ),
    )
    codec_revision: str = Field("main", min_length=1, description="Hub revision of model.codec_source to download.")
    verify: Literal["size", "full"] = Field(
        "size",
        description=(
            "Integrity check of files already in the cache before the run: 'size' compares sizes with the Hub's "
            "metadata (cheap); 'full' also hashes them (sha256 of LFS files, git id of the others; one read of "
            "each). Files downloaded by the run are always hashed as they arrive. A damaged file is fetched again."
        ),
    )
    download_workers: int = Field(8, ge=1, le=64, description="Files downloaded in parallel from the Hub.")

    @field_validator("source", "codec_source")
    @classmethod
    def _source_is_a_dir_or_a_repo(cls, value: str) -> str:
        return _check_source(value)


class LoraConfig(_Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    targets: list[str] = Field(
        default_factory=lambda: ["attention"],
        min_length=1,
        description="LoRA target sets (attention, dense_mlp, projectors, audio_heads, text_head, experts) or module-name suffixes.",
    )


class DataConfig(_Section):
    root: str = Field(
        "data/train",
        min_length=1,
        description="Dataset: a folder <root>/<sample>/{in.mp4,in.wav,out.wav}, or a .jsonl manifest (one sample "
        "per line: video, input_speech, target_speech, optional transcript/instruction/system; paths relative "
        "to the manifest).",
    )
    on_invalid: Literal["fail", "skip"] = Field(
        "fail", description="Invalid samples: 'fail' stops the run listing them all; 'skip' trains on the rest."
    )
    video_frames: int = Field(16, ge=2, le=256, description="Frames sampled from each in.mp4 (even: temporal patch 2).")
    video_fps: float = Field(2.0, gt=0, le=60, description="Rate frames are sampled at, before the frame cap.")
    audio_seconds: float = Field(30.0, gt=0, le=600, description="Maximum seconds of in.wav and out.wav used.")
    sample_rate: int = Field(16000, ge=8000, le=48000, description="Audio rate the model wants (Hz).")
    workers: int = Field(
        0, ge=0, le=512, description="Validation threads and preparation worker processes; 0 = one per CPU core."
    )
    min_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Shortest in.mp4/in.wav/out.wav accepted (s); a shorter one makes the sample invalid. "
        "0: only what decoding needs (one video frame, one 25 ms fbank window).",
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        le=36000,
        description="Longest in.mp4/in.wav/out.wav accepted as is (s); unset: data.audio_seconds. "
        "What happens to a longer one is data.on_too_long.",
    )
    on_too_long: Literal["crop", "error"] = Field(
        "crop",
        description="A file longer than data.max_seconds: 'crop' warns and uses its first max_seconds; "
        "'error' makes the sample invalid.",
    )
    require_non_silent: bool = Field(
        True, description="in.wav and out.wav must be louder than data.silence_dbfs (RMS); a silent one is invalid."
    )
    silence_dbfs: float = Field(
        -60.0, ge=-120, le=0, description="RMS level (dBFS) at or below which a WAV counts as silent."
    )
    fingerprint: Literal["stat", "content"] = Field(
        "stat",
        description="Dataset fingerprint: 'stat' (sample names, file sizes, mtimes) or 'content' (also the "
        "sha256 of every file, which reads every byte).",
    )
    eval_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the valid samples held out for the evaluate stage, never trained on: the samples "
        "whose sha256(name) rank lowest (deterministic, by name), at least one when > 0. 0: none (unless "
        "data.eval_root is set).",
    )
    eval_root: str | None = Field(
        None,
        description="A separate dataset (a folder or a .jsonl manifest, as data.root) to evaluate on instead of a "
        "held-out share.",
    )
    validation_cache: str | None = Field(
        "~/.cache/vss/validation",
        description="Directory of the validation cache (one JSON file per dataset root) so unchanged samples "
        "are not probed again; '~' is expanded; null disables it.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> DataConfig:
        if self.video_frames % 2:
            raise ValueError(
                f"data.video_frames={self.video_frames} must be even (the vision encoder patches 2 frames at a time)"
            )
        if self.max_seconds is not None and self.min_seconds >= self.max_seconds:
            raise ValueError(f"data.min_seconds={self.min_seconds} must be below data.max_seconds={self.max_seconds}")
        if self.max_seconds is None and self.min_seconds >= self.audio_seconds:
            raise ValueError(
                f"data.min_seconds={self.min_seconds} must be below data.audio_seconds={self.audio_seconds} "
                "(the longest audio used), or set data.max_seconds"
            )
        return self

    @property
    def crop_seconds(self) -> float:
        """Seconds of each sample that preparation uses: data.audio_seconds, or less if data.max_seconds is less."""
        return min(self.audio_seconds, self.max_seconds) if self.max_seconds is not None else self.audio_seconds

    @property
    def limit_seconds(self) -> float:
        """The duration above which a file counts as too long (data.max_seconds, else data.audio_seconds)."""
        return self.max_seconds if self.max_seconds is not None else self.audio_seconds


class TrainingConfig(_Section):
    output_dir: str = Field("runs", min_length=1, description="Where run directories are created.")
    run_name: str | None = Field(None, description="Run directory name; default: <profile>-<timestamp>.")
    epochs: int = Field(3, ge=1, le=10_000, description="Passes over the dataset.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    micro_batch_size: int = Field(1, ge=1, le=1024, description="Samples per rank per forward pass.")
    gradient_accumulation_steps: int = Field(32, ge=1, le=65536, description="Micro batches per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps before cosine decay.")
    gradient_clipping: float = Field(1.0, gt=0, description="Max gradient norm.")
    log_every_n_steps: int = Field(10, ge=1, description="Log 'Step k/N - Loss: x' every N optimizer steps.")
    save_every_n_steps: int = Field(500, ge=1, description="Save a checkpoint every N optimizer steps.")
    loader_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="DataLoader worker processes per rank reading prepared samples (0: read in the rank "
        "itself). Each holds at most training.prefetch_batches micro batches; memory does not grow with the dataset.",
    )
    prefetch_batches: int = Field(
        2,
        ge=1,
        le=64,
        description="Micro batches each loader worker reads ahead of the step (DataLoader prefetch_factor).",
    )
    checkpoints_to_keep: int = Field(3, ge=1, le=100, description="Checkpoints kept; older ones are deleted.")
    monitor_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds between samples of GPU memory/utilisation, RAM and swap while training.",
    )
    swap_stop_gb: float = Field(
        1.0,
        gt=0,
        description="Stop training cleanly (after a checkpoint) when swap in use grows by more than this (GiB).",
    )
    ram_stop_gb: float = Field(
        2.0,
        ge=0,
        le=4096,
        description="On a machine without swap: stop training cleanly (after a checkpoint) when available RAM "
        "falls below this (GiB); 0 turns this guard off.",
    )
    oom_step_downs: int = Field(
        3, ge=0, le=10, description="CUDA out-of-memory retries, each with the next memory-only step-down."
    )
    seed: int = Field(42, ge=0, description="Random seed.")
    codebook_loss_weights: list[float] = Field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0],
        min_length=4,
        max_length=4,
        description=(
            "Cross-entropy weight of each of the 4 speech codebooks (semantic first; weight it above the "
            "acoustic ones to favour what is said over how it sounds)."
        ),
    )
    text_loss_weight: float = Field(
        1.0, ge=0, description="Cross-entropy weight of the text stream (the transcript the model speaks along)."
    )

    @field_validator("run_name")
    @classmethod
    def _run_name_is_one_folder_name(cls, value: str | None) -> str | None:
        # The run directory is output_dir/run_name: anything but one plain folder name would put it elsewhere.
        if value is None:
            return value
        if value in ("", ".", "..") or any(c in value for c in "/\\\0") or Path(value).is_absolute():
            raise ValueError(
                "must be one folder name inside training.output_dir (no '/', '\\', "
                "'.' or '..'); use e.g. 'my-run', or leave it unset for a generated name"
            )
        return value


class DeepSpeedConfig(_Section):
    zero_stage: Literal[3] = Field(3, description="ZeRO stage (vss trains with ZeRO-3).")
    offload_optimizer: Literal["cpu", "nvme", "none"] = Field("cpu", description="Where optimizer states live.")
    offload_param: Literal["cpu", "nvme", "none"] = Field("cpu", description="Where partitioned parameters live.")
    nvme_path: str | None = Field(None, description="NVMe directory for offload='nvme'.")
    pin_memory: bool = Field(True, description="Pin offloaded CPU buffers (faster transfers; needs a GPU).")
    optimizer_buffer_count: int | None = Field(None, ge=1, le=64, description="offload_optimizer.buffer_count.")
    param_buffer_count: int | None = Field(None, ge=1, le=64, description="offload_param.buffer_count.")
    param_buffer_size: float | None = Field(
        None,
        gt=0,
        description="offload_param.buffer_size (elements); for nvme it must hold the largest parameter partition.",
    )
    sub_group_size: float | None = Field(None, gt=0, description="zero_optimization.sub_group_size.")
    allgather_sequential: bool = Field(
        False,
        description="stage3_allgather_sequential: gather a ZeRO-3 leaf parameter by parameter instead of into one "
        "coalesced buffer (halves the peak of the MoE leaf on the GPU, slower).",
    )
    max_live_parameters: float = Field(1e9, gt=0, description="stage3_max_live_parameters.")
    max_reuse_distance: float = Field(1e9, gt=0, description="stage3_max_reuse_distance.")
    prefetch_bucket_size: float | None = Field(
        None, gt=0, description="stage3_prefetch_bucket_size (unset: DeepSpeed's default)."
    )
    reduce_bucket_size: float | None = Field(None, gt=0, description="reduce_bucket_size (unset: DeepSpeed's default).")
    activation_checkpointing: bool = Field(True, description="Recompute activations in the backward pass.")
    partition_activations: bool = Field(False, description="Shard checkpointed activations across ranks.")
    contiguous_memory_optimization: bool = Field(False, description="Copy checkpointed activations to one buffer.")

    @model_validator(mode="after")
    def _nvme_needs_path(self) -> DeepSpeedConfig:
        if "nvme" in (self.offload_optimizer, self.offload_param) and not self.nvme_path:
            raise ValueError("deepspeed.offload_*='nvme' needs deepspeed.nvme_path")
        return self


class UploadConfig(_Section):
    enabled: bool = Field(True, description="Upload the adapter to the Hub when a token is configured.")
    repo_id: str | None = Field(
        None, description="Hub repo for the adapter, e.g. 'you/longcat-flash-omni-vss-lora'. Unset: skip upload."
    )
    private: bool = Field(True, description="Create the Hub repo private.")
    commit_message: str = Field(
        "Upload LoRA adapter (vss)", min_length=1, description="Commit message of the adapter upload."
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=20,
        description="Attempts per Hub call on transient errors (5xx, dropped connections), with backoff.",
    )

    @field_validator("repo_id")
    @classmethod
    def _repo_id_is_owner_name(cls, value: str | None) -> str | None:
        problem = None if value is None else _repo_id_problem(value)
        if problem:
            raise ValueError(f"not a Hub repo id: {problem}. Use owner/name, e.g. you/longcat-flash-omni-vss-lora")
        return value


class EvalConfig(_Section):
    enabled: bool = Field(True, description="Run the evaluate stage when there are held-out samples.")
    base: bool = Field(True, description="Also score the base model (adapter disabled), to compare and gate.")
    gate: Literal["block", "pause", "off"] = Field(
        "off",
        description="Before upload: 'block' fails the run when the adapter is worse than the base on eval.metric; "
        "'pause' pauses the flow showing the comparison until approved in the Prefect UI; 'off' uploads anyway.",
    )
    metric: Literal["loss", "text_wer", "mcd", "asr_wer"] = Field(
        "loss",
        description="The metric the gate compares (all lower-is-better): eval loss, text WER, mel-cepstral "
        "distance, or ASR WER (needs eval.asr_model).",
    )
    tolerance: float = Field(0.0, ge=0, description="How much worse than the base the adapter may be on eval.metric.")
    max_seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        description="Longest speech generated per sample; default: data.audio_seconds.",
    )
    audio_samples: int = Field(2, ge=0, le=64, description="Generated answers logged to TensorBoard as audio.")
    asr_model: str | None = Field(
        None,
        description="A local transformers ASR model directory: transcribe the generated speech and score "
        "its word error rate against out.txt.",
    )
    pause_timeout_s: float = Field(
        86400.0,
        gt=0,
        description="How long eval.gate=pause waits for an approval before failing the run.",
    )

    @field_validator("gate", mode="before")
    @classmethod
    def _yaml_off_is_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false


class VSSConfig(_Section):
    """The whole configuration of one vss run."""

    profile: str = Field("custom", description="Profile this config was built from.")
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)

    @model_validator(mode="after")
    def _cpu_means_no_gpu_features(self) -> VSSConfig:
        if self.hardware.accelerator == "cpu" and self.model.dtype == "bfloat16":
            raise ValueError("hardware.accelerator='cpu' trains in float32: set model.dtype=float32")
        return self


# --- partial overrides: the typed form of `section.key=value` ------------------------------------


def _partial(section: type[_Section]) -> type[BaseModel]:
    """The section with every field optional (default None: not overridden), same types and bounds."""
    fields: dict[str, Any] = {}
    for name, info in section.model_fields.items():
        partial = copy.copy(info)
        partial.default, partial.default_factory = None, None
        fields[name] = (info.annotation | None, partial)
    return create_model(
        section.__name__.removesuffix("Config") + "Overrides",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Overrides of the {section.__name__} section; unset fields keep the profile's value.",
        **fields,
    )


VSSOverrides = create_model(
    "VSSOverrides",
    __config__=ConfigDict(extra="forbid"),
    __doc__='Values to override in the chosen profile, by section, e.g. {"training": {"learning_rate": 1e-5}}.',
    **{
        name: (_partial(info.annotation) | None, Field(None, description=info.description))
        for name, info in VSSConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, _Section)
    },
)


def overrides_to_dotted(overrides: BaseModel | dict[str, Any] | list[str] | None) -> list[str] | dict[str, Any]:
    """Normalise the three override forms (typed model, dotted dict, KEY=VALUE list) for `apply_overrides`."""
    if overrides is None:
        return []
    if isinstance(overrides, BaseModel):
        nested = overrides.model_dump(exclude_unset=True)
        return {
            f"{section}.{key}": value for section, values in nested.items() if values for key, value in values.items()
        }
    return overrides


def nested_overrides(dotted: list[str]) -> dict[str, dict[str, Any]]:
    """KEY=VALUE strings as the nested mapping the `vss` flow's `overrides` parameter takes."""
    out: dict[str, dict[str, Any]] = {}
    for keys, value in map(parse_override, dotted):
        if len(keys) != 2:
            raise ConfigError(f"override {'.'.join(keys)}: keys are section.key (e.g. training.epochs)")
        out.setdefault(keys[0], {})[keys[1]] = value
    return out


# --- profiles and overrides -------------------------------------------------------------------


def list_profiles() -> list[str]:
    """Names of the profiles shipped with vss."""
    files = resources.files(PROFILE_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def _profile_dict(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        text = path.read_text()
    else:
        res = resources.files(PROFILE_PACKAGE) / f"{name}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"profile {name!r} does not exist. Shipped profiles: {', '.join(list_profiles())}; "
                "or give the path of a YAML file."
            )
        text = res.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {name!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {name!r} must be a YAML mapping of sections, got {type(raw).__name__}")
    raw.setdefault("profile", path.stem if path.suffix else name)
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split 'training.learning_rate=1e-4' into (['training', 'learning_rate'], 0.0001).

    Values are read as YAML, so numbers, booleans, null and [lists] work as typed.

    Raises:
        ConfigError: the override is not of the form key.path=value.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. training.learning_rate=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    # YAML 1.1 reads '5e-5' as a string; numbers written that way are meant as floats.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed.lower() for c in "e.") and parsed.strip() else parsed
        except ValueError:
            pass
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides to a raw config mapping (returns a new mapping)."""
    out = json.loads(json.dumps(raw))
    items = (
        [parse_override(o) for o in overrides]
        if isinstance(overrides, list)
        else [(k.split("."), v) for k, v in overrides.items()]
    )
    for keys, value in items:
        node = out
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def format_validation_error(exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `vss config --profile P` lists the valid ones)"
        value = err.get("input")
        shown = f" (got {value!r})" if err["type"] != "extra_forbidden" and not isinstance(value, dict) else ""
        problems.append(f"{key}: {msg}{shown}")
    return f"invalid configuration in {where}:\n{bullet_list(problems)}"


def load_config(profile: str, overrides: BaseModel | list[str] | dict[str, Any] | None = None) -> VSSConfig:
    """Build the run config from a shipped profile name (or YAML path) and overrides: a `VSSOverrides`,
    a mapping of dotted keys, or a list of KEY=VALUE strings.

    Raises:
        ConfigError: unknown profile, unknown key or out-of-range value (all problems at once).
    """
    overrides = overrides_to_dotted(overrides)
    raw = apply_overrides(_profile_dict(profile), overrides or [])
    where = f"profile {profile!r}" + (" with overrides" if overrides else "")
    try:
        return VSSConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def config_from_json(path: str | Path) -> VSSConfig:
    """Re-validate a resolved config written into a run directory.

    Raises:
        ConfigError: the file is missing or does not validate.
    """
    path = Path(path)
    try:
        return VSSConfig.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


# --- DeepSpeed ------------------------------------------------------------------------------


def _offload(
    device: str, cfg: DeepSpeedConfig, buffer_count: int | None, buffer_size: float | None = None
) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": cfg.pin_memory}
    if device == "nvme":
        section["nvme_path"] = cfg.nvme_path
    if buffer_count is not None:
        section["buffer_count"] = buffer_count
    if buffer_size is not None:
        section["buffer_size"] = int(buffer_size)
    return section


def deepspeed_config(cfg: VSSConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for a run, generated from the config (never hand-edited).

    Optimizer and scheduler are built by the training entry point; this carries batch shape, precision,
    clipping, ZeRO-3 partitioning/offload and activation checkpointing.
    """
    ds, tr = cfg.deepspeed, cfg.training
    world = cfg.hardware.gpus_per_node * cfg.hardware.nodes
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": cfg.hardware.accelerator == "cuda",
        "contiguous_gradients": True,
        "stage3_max_live_parameters": int(ds.max_live_parameters),
        "stage3_max_reuse_distance": int(ds.max_reuse_distance),
        "stage3_gather_16bit_weights_on_model_save": False,
    }
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(ds.offload_optimizer, ds, ds.optimizer_buffer_count)
    if ds.offload_param != "none":
        zero["offload_param"] = _offload(ds.offload_param, ds, ds.param_buffer_count, ds.param_buffer_size)
    if ds.sub_group_size is not None:
        zero["sub_group_size"] = int(ds.sub_group_size)
    if ds.allgather_sequential:
        zero["stage3_allgather_sequential"] = True
    if ds.prefetch_bucket_size is not None:
        zero["stage3_prefetch_bucket_size"] = int(ds.prefetch_bucket_size)
    if ds.reduce_bucket_size is not None:
        zero["reduce_bucket_size"] = int(ds.reduce_bucket_size)
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "train_batch_size": tr.micro_batch_size * tr.gradient_accumulation_steps * world,
        "gradient_clipping": tr.gradient_clipping,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        # The MoE router's score-correction bias stays fp32 under zero.Init's bf16 (DeepSpeed keeps
        # matching buffers in fp32: deepspeed/runtime/keep_in_fp32.py); partitioned parameters share
        # one dtype, so the router's classifier weight is stored bf16 there (it computes in fp32).
        "data_types": {"keep_in_fp32_modules": ["e_score_correction_bias"]},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # vss logs steps itself
        "wall_clock_breakdown": False,
    }
    if ds.activation_checkpointing:
        out["activation_checkpointing"] = {
            "partition_activations": ds.partition_activations,
            "contiguous_memory_optimization": ds.contiguous_memory_optimization,
            "cpu_checkpointing": False,
        }
    return out
