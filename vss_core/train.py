"""Training entry point, started by the DeepSpeed launcher (one process per rank):

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module vss_core.train \
        --config RUN/config.json [--parent-pid PID] --model-dir MODEL --prepared-dir PREPARED

Each rank dies with its parent (the DeepSpeed launcher) and, given --parent-pid, with that process
too (vss passes its own pid): a SIGKILLed vss leaves no rank training (`die_with_parent`).

Set up (distributed, model, LoRA, ZeRO-3 engine), train (resuming from the latest complete
checkpoint), save the adapter atomically, clean up. Writes into the run directory next to
config.json: train_summary.json, metrics.jsonl, tensorboard/, checkpoints/step-N/, adapter/.

Why a short loop over the DeepSpeed engine and not transformers' Trainer: (1) resume must trust only
complete checkpoints — Trainer's `get_last_checkpoint` takes the highest `checkpoint-N` folder whether
or not its save finished, while here a checkpoint is saved under a temp tag and renamed with a
COMPLETE marker; (2) the model is a composed `nn.Module` (vision + audio adaptors around the LLM),
not a `PreTrainedModel`, and is built under `zero.Init` by vss's own partitioned loader; (3) on the
CPU accelerator the loop needs nothing from accelerate's device handling. The loop is the engine's
own forward/backward/step with gradient accumulation, clipping and the warmup+cosine schedule
configured through DeepSpeed. The adapter folder holds what peft loads and the card; no
`training_args.bin`: it would describe a Trainer run that never happened (the run's config.json is the record).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from vss_core import card, data, lora, split, tracking
from vss_core import model as omni
from vss_core.config import VSSConfig, config_from_json, deepspeed_config
from vss_core.errors import NONFINITE_MARK, TrainingError
from vss_core.lifetime import die_with_parent
from vss_core.runs import STOP_REQUEST, STOPPED, RunPaths, write_json_atomic

log = logging.getLogger("vss.train")
COMPLETE = "COMPLETE"


# --- schedule and data order (plain functions, unit-tested) ---------------------------------------


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warmup then cosine decay to 0, as a LambdaLR multiplier."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def steps_per_epoch(num_samples: int, world_size: int, micro_batch: int, accumulation: int) -> int:
    """Optimizer steps per epoch: every rank sees the same number of micro batches (wrapping round)."""
    per_rank = math.ceil(num_samples / world_size)
    return max(1, math.ceil(per_rank / (micro_batch * accumulation)))


# --- checkpoints: complete ones only --------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoints that finished writing (marker present), oldest first."""
    found = []
    for d in root.glob("step-*") if root.is_dir() else []:
        if (d / COMPLETE).is_file() and d.name.removeprefix("step-").isdigit():
            found.append((int(d.name.removeprefix("step-")), d))
    return sorted(found)


def remove_partial_checkpoints(root: Path) -> list[Path]:
    """Delete checkpoint folders a killed process left half-written."""
    removed = []
    for d in root.glob("*") if root.is_dir() else []:
        if d.is_dir() and not (d / COMPLETE).is_file():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def save_checkpoint(engine, root: Path, step: int, keep: int) -> Path:
    """Save to a temp tag, then (rank 0) mark complete and rename: resume never trusts half a checkpoint."""
    import deepspeed.comm as dist

    tmp_tag, final = f"tmp-step-{step}", root / f"step-{step}"
    # exclude_frozen_parameters: without it ZeRO-3 writes every rank's fragment of the frozen base
    # too (`frozen_param_fragments`), 2 bytes a parameter: ~1 TB a checkpoint for the real model,
    # measured 1.89 GiB for a 1B one by bench/bench_plan.py. The base is read again from model.source
    # on resume; only LoRA and its optimizer states change.
    engine.save_checkpoint(
        str(root), tag=tmp_tag, client_state={"step": step}, save_latest=False, exclude_frozen_parameters=True
    )
    dist.barrier()
    if engine.global_rank == 0:
        (root / tmp_tag / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
        os.replace(root / tmp_tag, final)
        for _, old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def stop_requested(run_root: Path, rank: int) -> bool:
    """Whether the parent asked training to stop (rank 0 reads the request; every rank learns it)."""
    import deepspeed.comm as dist

    flag = torch.tensor([1.0 if rank == 0 and (run_root / STOP_REQUEST).exists() else 0.0])
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


# --- adapter --------------------------------------------------------------------------------------


def model_card(cfg: VSSConfig, summary: dict):
    """The adapter's card (vss_core.card): what it is, the config it was trained with, its final metrics."""
    skip = ("adapter", "trained_on", "held_out", "measured", "plan_check")
    metrics = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if k not in skip)
    body = f"""# LoRA adapter for {cfg.model.source} (video + speech in, speech out)

Trained by vss with profile `{cfg.profile}`: LoRA r={cfg.lora.rank}, alpha={cfg.lora.alpha} on
{", ".join(cfg.lora.targets)}, DeepSpeed ZeRO-3, {summary.get("world_size")} rank(s), on
{len(summary.get("trained_on", []))} sample(s) ({len(summary.get("held_out", []))} held out for evaluation).

## Final metrics

| metric | value |
|---|---|
{metrics}

{card.USE}

## Config

```json
{cfg.model_dump_json(indent=2)}
```
"""
    return card.adapter_card(cfg.model.source, body)


def save_adapter(engine, peft_model, out_dir: Path, cfg: VSSConfig, run: RunPaths, summary: dict) -> None:
    """Gather the LoRA weights from their ZeRO-3 partitions and write the adapter folder atomically
    (rank 0) with peft's own `save_pretrained(..., state_dict=...)` (adapter_config.json,
    adapter_model.safetensors), then vss's card as README.md. The gathered state is passed in because
    under ZeRO-3 the module's own parameters are empty partitions outside `GatheredParameters`."""
    import deepspeed

    trainable = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in trainable], modifier_rank=None):
        if engine.global_rank == 0:
            full = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in trainable}
    if engine.global_rank != 0:
        return
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), state_dict=full, safe_serialization=True, save_embedding_layers=False)
    model_card(cfg, summary).save(str(tmp / "README.md"))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


@torch.no_grad()
def evaluate(engine, sample: dict, tr) -> float:
    """Loss of one sample with the trained weights (every rank runs it: ZeRO-3 gathers collectively)."""
    engine.eval()
    out = engine(**omni.collate([sample]), text_weight=tr.text_loss_weight, codebook_weights=tr.codebook_loss_weights)
    engine.train()
    return out.loss.item()


def stream_losses(out) -> torch.Tensor:
    """[5]: the text loss, then the 4 codebook losses of one forward."""
    return torch.cat([out.text_loss.detach().float().reshape(1), out.codebook_losses.detach().float()])


# --- main -----------------------------------------------------------------------------------------


def nonfinite_samples(
    loss: torch.Tensor, indices: list[int], rank: int, world: int, micro_batch: int, all_reduce
) -> list[int]:
    """The samples (indices into the prepared ones) of this micro step whose loss is NaN/Inf, on any rank.

    One small all_reduce, so every rank gets the same answer and all stop together (a rank that
    stopped alone would leave the others waiting in the next collective).
    """
    slots = torch.zeros(world * micro_batch, dtype=torch.float64, device=loss.device)
    if not torch.isfinite(loss.detach()).all():
        for j, i in enumerate(indices):
            slots[rank * micro_batch + j] = i + 1
    all_reduce(slots)
    return sorted({int(v) - 1 for v in slots.tolist() if v > 0})


def nonfinite_loss_error(step: int, total_steps: int, micro: int, names: list[str]) -> TrainingError:
    """The error of a non-finite loss at optimizer step `step` (1-based), before its backward pass."""
    return TrainingError(
        f"training: {NONFINITE_MARK} at step {step}/{total_steps} (micro batch {micro + 1}) on "
        f"sample(s) {', '.join(names)}. Training stopped before that update: no checkpoint of it and no adapter "
        "were written (earlier checkpoints are intact). Check those samples (`vss validate`: levels, NaN), or "
        "lower training.learning_rate if the loss diverged, then run again (it resumes from the last checkpoint)."
    )


def _optimizer(params, cfg: VSSConfig):
    kwargs = dict(lr=cfg.training.learning_rate, betas=(0.9, 0.95), weight_decay=cfg.training.weight_decay)
    if cfg.deepspeed.offload_optimizer != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def check_shared_run_dir(run_root: Path, rank: int, world: int, dist) -> None:
    """Every rank must see the one run directory (a multi-node run needs it on shared storage:
    checkpoints are written by every rank into it and renamed complete by rank 0). Rank 0 writes a
    token there; a rank that cannot read it back names its node.

    Raises:
        TrainingError: on every rank, when any rank does not see the token.
    """
    import socket
    import uuid

    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    probe = run_root / ".shared-dir-check"
    if rank == 0:
        write_json_atomic(probe, {"token": token[0]})
    dist.barrier()
    try:
        seen = json.loads(probe.read_text()).get("token") == token[0]
    except (OSError, ValueError):
        seen = False
    hosts: list = [None] * world
    dist.all_gather_object(hosts, None if seen else socket.gethostname())
    blind = sorted({h for h in hosts if h is not None})
    if blind:
        raise TrainingError(
            f"training: the run directory {run_root} is not shared: ranks on {', '.join(blind)} do not see what "
            "rank 0 wrote there. A multi-node run needs training.output_dir on storage every node mounts at "
            "the same path (NFS, Lustre, a cloud file share): checkpoints are written by every rank into it."
        )


def _model_dtype(cfg: VSSConfig) -> torch.dtype:
    """The dtype the model's weights are built and gathered in (model.dtype)."""
    return torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32


def _build_model(cfg: VSSConfig, model_dir: Path, run: RunPaths, rank: int):
    """The model with LoRA, built partitioned under zero.Init: (peft model, trainable, total parameters)."""
    from deepspeed.utils import set_z3_leaf_modules

    dtype = _model_dtype(cfg)
    # Built under zero.Init: each rank holds its partition only, never a full copy of the model.
    base = omni.load_omni(model_dir, dtype=dtype, zero_config=deepspeed_config(cfg))
    if cfg.deepspeed.activation_checkpointing:
        base.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    peft_model = lora.apply_lora(base, cfg.lora)
    # ZeRO-3 must gather the whole MoE block at once, or ranks that route differently hang.
    set_z3_leaf_modules(peft_model, omni.zero3_leaf_classes())
    trainable, total = omni.count_parameters(peft_model)
    if rank == 0:
        log.info("Trainable parameters: %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        write_json_atomic(Path(run.root) / "trainable_parameters.json", {"trainable": trainable, "total": total})
    return peft_model, trainable, total


def _training_samples(cfg: VSSConfig, prepared_dir: Path, rank: int) -> tuple[data.PreparedSamples, list[str]]:
    """The samples to train on, read lazily (`data.PreparedSamples`), and the held-out names, which
    are never trained on: the evaluate stage scores them."""
    all_names = data.prepared_names(prepared_dir)
    held_out = split.held_out(all_names, cfg.data.eval_fraction)
    samples = data.PreparedSamples(prepared_dir, only=set(split.training_names(all_names, cfg.data.eval_fraction)))
    if rank == 0 and held_out:
        log.info(
            "Held out for evaluation (data.eval_fraction=%g, never trained on): %s",
            cfg.data.eval_fraction,
            ", ".join(held_out),
        )
    return samples, held_out


def _schedule(cfg: VSSConfig, num_samples: int, world: int, rank: int) -> tuple[int, int]:
    """(optimizer steps per epoch, steps of the run); warns when warmup outlasts the run."""
    tr = cfg.training
    per_epoch = steps_per_epoch(num_samples, world, tr.micro_batch_size, tr.gradient_accumulation_steps)
    total_steps = tr.max_steps or per_epoch * tr.epochs
    if rank == 0 and tr.warmup_steps >= total_steps:
        log.warning(
            "training.warmup_steps=%d >= the %d steps of this run: the learning rate never reaches its peak. "
            "Lower training.warmup_steps (e.g. to %d).",
            tr.warmup_steps,
            total_steps,
            max(1, total_steps // 10),
        )
    return per_epoch, total_steps


def _build_engine(cfg: VSSConfig, peft_model, total_steps: int):
    """The DeepSpeed engine over the LoRA parameters, with the warmup + cosine schedule: (engine, scheduler)."""
    import deepspeed

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.training.warmup_steps, total_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=peft_model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg)
    )
    return engine, scheduler


def _resume_point(ckpt_root: Path, rank: int) -> tuple[int, Path] | None:
    """The latest complete checkpoint, (its step, its folder), or None; partial ones are deleted
    first. Read from the folder names, before the model exists, so the loader can start there."""
    import deepspeed.comm as dist

    if rank == 0:
        ckpt_root.mkdir(exist_ok=True)
        for d in remove_partial_checkpoints(ckpt_root):
            log.warning("Removed incomplete checkpoint %s (left by an interrupted run)", d)
    dist.barrier()
    done = complete_checkpoints(ckpt_root)
    return done[-1] if done else None


def _resume(engine, point: tuple[int, Path] | None, rank: int, total_steps: int) -> None:
    """Load the checkpoint `_resume_point` chose into the engine."""
    if point is None:
        return
    step, path = point
    # Not strict: checkpoints leave the frozen base out (save_checkpoint); the trainable weights come
    # back from the optimizer's partitions, and tests/integration/test_training.py checks a resumed
    # run follows the uninterrupted one's losses.
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
    if int(client["step"]) != step:
        raise RuntimeError(
            f"checkpoint {path} holds step {client['step']}, not the {step} its name says: it was renamed "
            f"or copied by hand. Rename it to step-{client['step']} or delete it, then run again."
        )
    if rank == 0:
        log.info("Resumed from checkpoint %s (step %d/%d)", path, step, total_steps)


def _collate_indexed(pairs: list[tuple[int, dict]]) -> tuple[list[int], dict[str, torch.Tensor] | data.Packed]:
    """A micro batch from `data.Indexed` items: (the samples' indices, the model's keyword arguments),
    packed into one buffer when made in a loader worker (`data.Packed`: cheaper to hand over)."""
    batch = omni.collate([item for _, item in pairs])
    in_worker = torch.utils.data.get_worker_info() is not None
    return [i for i, _ in pairs], data.Packed(batch) if in_worker else batch


def _loader(
    samples: data.PreparedSamples, cfg: VSSConfig, rank: int, world: int, per_epoch: int, total_steps: int, start: int
):
    """This rank's DataLoader from optimizer step `start` to the run's end (one pass over all epochs)."""
    tr = cfg.training
    sampler = data.RankBatches(
        len(samples),
        rank=rank,
        world_size=world,
        micro_batch=tr.micro_batch_size,
        micro_batches=per_epoch * tr.gradient_accumulation_steps,
        seed=tr.seed,
        epochs=math.ceil(total_steps / per_epoch),
    )
    epoch, in_epoch = divmod(start, per_epoch)
    sampler.start(epoch, in_epoch * tr.gradient_accumulation_steps)
    workers = tr.loader_workers
    loader = torch.utils.data.DataLoader(
        data.Indexed(samples),
        batch_sampler=sampler,
        collate_fn=_collate_indexed,
        num_workers=workers,
        prefetch_factor=tr.prefetch_batches if workers else None,
        persistent_workers=workers > 0,
        worker_init_fn=_loader_worker_init if workers else None,
        # its own generator: the workers' base seed is drawn from it, not from torch's global one,
        # which the model's LoRA initialisation after it must find as seeded
        generator=torch.Generator().manual_seed(tr.seed),
    )
    return loader


def _loader_worker_init(_worker_id: int) -> None:
    """A loader worker dies the moment its rank does (torch's own watchdog notices only within 5 s):
    it is forked from the rank's main thread, which lives as long as the rank, so the parent-death
    signal is the right tool here. One thread each: normalising one sample's frames needs no more."""
    die_with_parent()
    torch.set_num_threads(1)


class _StepLog:
    """Rank 0's records of each step: the log line, metrics.jsonl, TensorBoard (and W&B when
    WANDB_API_KEY is set, vss_core.tracking). Other ranks hold a silent one."""

    def __init__(self, cfg: VSSConfig, run: RunPaths, rank: int) -> None:
        from vss_core.settings import load_settings

        self.on = rank == 0
        self.every = cfg.training.log_every_n_steps
        if self.on:
            root = Path(run.root)
            self.writer = tracking.Scalars(root, cfg.model_dump(mode="json"), load_settings().wandb_api_key is not None)
            self.metrics = open(run.metrics, "a")

    def step(self, n: int, total: int, epoch: int, loss: float, parts: dict[str, float], lr: float) -> None:
        if not self.on:
            return
        if n % self.every == 0 or n == total:
            log.info("Step %d/%d - Loss: %.3f (%s)", n, total, loss, " ".join(f"{k} {v:.3f}" for k, v in parts.items()))
        record = {
            "step": n,
            "total_steps": total,
            "epoch": epoch,
            "loss": loss,
            **{f"loss_{k}": v for k, v in parts.items()},
            "lr": lr,
            "time": time.time(),
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.writer.log(n, {"train/loss": loss, **{f"train/loss_{k}": v for k, v in parts.items()}, "train/lr": lr})

    def close(self) -> None:
        if self.on:
            self.writer.close()
            self.metrics.close()


class _ZeroGathers:
    """What ZeRO-3's parameter gathers cost this rank, read around DeepSpeed's own hooks:

    - the most parameter bytes held gathered at once: DeepSpeed's count of available parameter
      elements (the coordinator's), read at every module's forward after its fetch and prefetch, the
      checkpointed layers' recompute included; x the weights' element size. What the planner's "MoE
      leaf gathered whole" plus "other gathered parameters" predict;
    - the seconds spent in DeepSpeed's pre-forward hooks (the fetch: an all-gather, or the wait for a
      prefetched one) of the MoE leaves and of every other module, in the forward and the recompute
      (the backward's own fetches are not hooked here): between a hook put before DeepSpeed's
      (prepend) and one after it. On a GPU the pair is a CUDA event pair on the compute stream, so the
      figure is the time that stream waited for the gather, measured without a host synchronisation.

    None where the engine has no ZeRO-3 coordinator (or DeepSpeed renamed its counter)."""

    _COUNT = "_PartitionedParameterCoordinator__n_available_params"  # a private field: read, never set

    def __init__(self, engine, element_size: int, leaf_classes: tuple[type, ...] = ()) -> None:
        offload = getattr(engine.optimizer, "parameter_offload", None)
        self.coordinator = offload.get_param_coordinator() if offload is not None else None
        self.element_size, self.peak = element_size, 0
        self.seconds = {"leaf": 0.0, "other": 0.0}
        from deepspeed.accelerator import get_accelerator

        self.cuda = get_accelerator().device_name() == "cuda"
        self._events: collections.deque = collections.deque()  # CUDA: (kind, start, end), read when done
        self._t0: float | object = 0.0
        if self.coordinator is None or not hasattr(self.coordinator, self._COUNT):
            self.coordinator = None
            return
        for module in engine.module.modules():
            kind = "leaf" if isinstance(module, leaf_classes) else "other"
            module.register_forward_pre_hook(self._start, prepend=True)
            module.register_forward_pre_hook(lambda *_, kind=kind: self._read(kind))

    def _start(self, *_) -> None:
        if self.cuda:
            self._t0 = torch.cuda.Event(enable_timing=True)
            self._t0.record()
        else:
            self._t0 = time.perf_counter()

    def _read(self, kind: str) -> None:
        self.peak = max(self.peak, getattr(self.coordinator, self._COUNT))
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((kind, self._t0, end))
            if len(self._events) >= 4096:  # fold the finished pairs: no host synchronisation
                self._fold(wait=False)
        else:
            self.seconds[kind] += time.perf_counter() - self._t0

    def _fold(self, wait: bool) -> None:
        if not self._events:
            return
        if wait:
            torch.cuda.synchronize()
        while self._events and (wait or self._events[0][2].query()):
            kind, start, end = self._events.popleft()
            self.seconds[kind] += start.elapsed_time(end) / 1000

    def figures(self) -> dict:
        if self.coordinator is None:
            return {}
        self._fold(wait=True)
        return {
            "gathered_params_peak_bytes": self.peak * self.element_size,
            "fetch_s_leaf": self.seconds["leaf"],
            "fetch_s_other": self.seconds["other"],
        }


class _Timer:
    """Where a rank's loop time goes: waiting for the next batch vs the rest (forward, backward, step)."""

    def __init__(self) -> None:
        self.first_batch_s: float | None = None  # the workers' start and first read: once per run
        self.data_wait_s = 0.0  # every later wait
        self.start = time.perf_counter()
        self.steps = 0

    def next_batch(self, it):
        t0 = time.perf_counter()
        indices, batch = next(it)
        batch = batch.unpack() if isinstance(batch, data.Packed) else batch
        waited = time.perf_counter() - t0
        if self.first_batch_s is None:
            self.first_batch_s = waited
        else:
            self.data_wait_s += waited
        return indices, batch

    def figures(self) -> dict[str, float]:
        loop_s = time.perf_counter() - self.start
        steady_s = loop_s - (self.first_batch_s or 0.0)
        return {
            "loop_s": loop_s,
            "first_batch_s": self.first_batch_s or 0.0,
            "data_wait_s": self.data_wait_s,
            # the share of the loop after the first batch spent waiting for the next one
            "data_wait_fraction": self.data_wait_s / steady_s if steady_s > 0 else 0.0,
            "step_time_s": loop_s / self.steps if self.steps else 0.0,
        }


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """A process's memory lines of /proc/PID/status (VmHWM, RssAnon, RssFile, ...), in bytes ({} where
    it cannot be read: not Linux, or the process is gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_rss_bytes() -> int:
    """This process's peak RSS so far: VmHWM, the high-water mark of its own address space.

    Not `getrusage`'s ru_maxrss: Linux keeps that across fork and exec (the kernel folds the old
    address space's peak into it on execve), so a rank started by a 1.3 GiB Prefect process reports
    1.3 GiB before it has done anything (measured: a child of a 1.2 GiB Python reads ru_maxrss
    1213 MiB, VmHWM 13 MiB). ru_maxrss only where /proc cannot be read (not Linux)."""
    hwm = proc_status().get("VmHWM")
    if hwm:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_now() -> dict[str, int]:
    """This process's memory at this moment, bytes: its own pages (RssAnon), mapped file pages
    (RssFile: libraries, checkpoint shards being read), and the peak RSS so far. Only the peak where
    /proc/self/status cannot be read (not Linux)."""
    status = proc_status()
    out = {"peak_rss": peak_rss_bytes()}
    for key in ("RssAnon", "RssFile"):
        if key in status:
            out[key.lower().replace("rss", "rss_")] = status[key]
    return out


def _partition_bytes(model: torch.nn.Module) -> int:
    """Bytes of this rank's ZeRO-3 weight partitions (each parameter's `ds_tensor`; the whole
    parameter where it is not partitioned): what the planner's weight item predicts per rank."""
    total = 0
    for p in model.parameters():
        t = getattr(p, "ds_tensor", None)
        t = p.data if t is None else t
        total += t.numel() * t.element_size()
    return total


def measured_peaks(
    timer: _Timer, world: int, all_gather_object, phases: dict[str, dict] | None = None, gathered=None
) -> dict:
    """This run's measured figures, every rank's gathered (rank 0's list first): peak RSS of each rank
    process (VmHWM; loader workers are separate processes, with their own bounded share), its memory
    at the end of each phase (`phases`, `memory_now`: started, model loaded, engine built, trained =
    after the final evaluation and the adapter's save; what each phase added is what the planner's
    items predict), the most parameter bytes ZeRO-3 held gathered at once and the seconds its fetches
    took (`_ZeroGathers`), peak GPU memory where there is a GPU, loop time and the share spent waiting
    for data."""
    mine = {"peak_rss_bytes": peak_rss_bytes(), **timer.figures(), **(gathered.figures() if gathered else {})}
    if phases:
        mine["memory_by_phase"] = {**phases, "trained": memory_now()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        mine["gpu_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    gathered: list = [None] * world
    all_gather_object(gathered, mine)
    return {
        "per_rank": gathered,
        "peak_rss_bytes_max": max(g["peak_rss_bytes"] for g in gathered),
        "data_wait_fraction_max": max(g["data_wait_fraction"] for g in gathered),
        "step_time_s": max(g["step_time_s"] for g in gathered),
    }


def _check_plan(cfg: VSSConfig, model_dir: Path, measured: dict):
    """The run's measured peaks beside the plan's figures for its config (`plancheck`); a peak over
    the prediction is a warning. None (and a warning) when the plan cannot be made."""
    from vss_core import plancheck

    try:
        check = plancheck.compare(plancheck.predicted_for(cfg, model_dir), measured, cfg.hardware.gpus_per_node)
    except Exception as exc:  # noqa: BLE001 - the check must never fail a finished training
        log.warning("The measured peaks could not be compared with the plan: %s", exc)
        return None
    for warning in check.warnings:
        log.warning("Planner check: %s", warning)
    return check


def train(cfg: VSSConfig, run: RunPaths, model_dir: Path, prepared_dir: Path) -> dict | None:
    """Train, checkpointing as configured; returns the summary, or None when stopped on request.

    The steps: distributed init, the samples read lazily (`_training_samples`) and the schedule,
    the checkpoint to resume from (`_resume_point`), the loader and its workers (`_loader`), the
    partitioned model with LoRA (`_build_model`), the engine, resume, the loop, the adapter.
    """
    import deepspeed
    import deepspeed.comm as dist

    deepspeed.init_distributed(dist_backend="gloo" if cfg.hardware.accelerator == "cpu" else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.training.seed)
    random.seed(cfg.training.seed)
    tr = cfg.training
    if cfg.hardware.nodes > 1:
        check_shared_run_dir(Path(run.root), rank, world, dist)

    samples, held_out = _training_samples(cfg, prepared_dir, rank)
    per_epoch, total_steps = _schedule(cfg, len(samples), world, rank)
    ckpt_root = Path(run.checkpoints)
    point = _resume_point(ckpt_root, rank)
    start_step = point[0] if point else 0
    # The loader workers are forked now, before the model exists: a worker forked later shares the
    # rank's pages copy-on-write, and every page the rank then writes (gathered weights, optimizer
    # states) stays behind as the worker's own copy; bench/bench_plan.py measured that growing with
    # the model (0.15 to 0.57 GiB a worker from 0.08B to 1B parameters). Forked here, a worker holds
    # only what the rank had imported.
    batches = iter(_loader(samples, cfg, rank, world, per_epoch, total_steps, start_step))
    phases = {"started": memory_now()}
    peft_model, trainable, total = _build_model(cfg, model_dir, run, rank)
    phases["model_loaded"] = {**memory_now(), "partition_bytes": _partition_bytes(peft_model)}
    engine, scheduler = _build_engine(cfg, peft_model, total_steps)
    gathered = _ZeroGathers(engine, _model_dtype(cfg).itemsize, tuple(omni.zero3_leaf_classes()))
    _resume(engine, point, rank, total_steps)
    phases["engine_built"] = memory_now()
    steps_log = _StepLog(cfg, run, rank)
    if rank == 0:
        log.info(
            "Starting training: %d samples, %d ranks, %d steps (%d per epoch), %d loader worker(s) per rank",
            len(samples),
            world,
            total_steps,
            per_epoch,
            tr.loader_workers,
        )
    first_loss = last_loss = parts = None
    engine.train()
    timer, epoch_start = _Timer(), time.time()
    for step in range(start_step, total_steps):
        epoch = step // per_epoch
        step_losses, step_parts = [], []
        for m in range(tr.gradient_accumulation_steps):
            indices, batch = timer.next_batch(batches)
            out = engine(**batch, text_weight=tr.text_loss_weight, codebook_weights=tr.codebook_loss_weights)
            # Before backward: a NaN/Inf loss would poison the weights and every checkpoint after it.
            bad = nonfinite_samples(out.loss, indices, rank, world, tr.micro_batch_size, dist.all_reduce)
            if bad:
                raise nonfinite_loss_error(step + 1, total_steps, m, [samples.names[i] for i in bad])
            engine.backward(out.loss)
            engine.step()
            step_losses.append(out.loss.detach().float())
            step_parts.append(stream_losses(out))
        timer.steps += 1
        reduced = torch.cat([torch.stack(step_losses).mean().reshape(1), torch.stack(step_parts).mean(0)])
        dist.all_reduce(reduced)
        reduced = (reduced / world).tolist()
        loss, parts = reduced[0], dict(zip(omni.STREAMS, reduced[1:]))
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        n = step + 1
        steps_log.step(n, total_steps, epoch + 1, loss, parts, scheduler.get_last_lr()[0])
        if n % per_epoch == 0 and rank == 0:
            log.info(
                "Epoch %d/%d complete (%.1f s)",
                n // per_epoch,
                math.ceil(total_steps / per_epoch),
                time.time() - epoch_start,
            )
            epoch_start = time.time()
        saved = n % tr.save_every_n_steps == 0 and n < total_steps
        if saved:
            path = save_checkpoint(engine, ckpt_root, n, tr.checkpoints_to_keep)
            if rank == 0:
                log.info("Saved checkpoint %s", path)
        if n < total_steps and stop_requested(Path(run.root), rank):
            if not saved:  # a second save of step n would collide with the one just made
                path = save_checkpoint(engine, ckpt_root, n, tr.checkpoints_to_keep)
            if rank == 0:
                reason = (Path(run.root) / STOP_REQUEST).read_text().strip()
                log.warning("Stopping at step %d/%d after saving checkpoint %s: %s", n, total_steps, path, reason)
                write_json_atomic(Path(run.root) / STOPPED, {"step": n, "checkpoint": str(path), "reason": reason})
            steps_log.close()
            dist.barrier()
            return None

    summary = {
        "steps": total_steps,
        "resumed_from_step": start_step,
        "first_loss": first_loss,
        "final_loss": last_loss,
        "final_stream_losses": parts,  # text + each codebook at the last step
        # the first sample's loss with the final weights, for checking the saved adapter reproduces it
        "eval_loss_sample0": evaluate(engine, samples[0], tr),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "world_size": world,
        "trained_on": samples.names,
        "held_out": held_out,
        "adapter": run.adapter,
    }
    save_adapter(engine, peft_model, Path(run.adapter), cfg, run, summary)
    # Measured last, so the peaks include the final evaluation and the adapter's gather and save.
    measured = measured_peaks(timer, world, dist.all_gather_object, phases, gathered)
    check = _check_plan(cfg, model_dir, measured) if rank == 0 else None
    summary |= {"measured": measured, "plan_check": check.model_dump() if check is not None else None}
    if rank == 0:
        write_json_atomic(Path(run.root) / "train_summary.json", summary)
        log.info(
            "Adapter saved to %s (peak RSS per rank %.2f GiB, %.1f%% of the loop waiting for data)",
            run.adapter,
            measured["peak_rss_bytes_max"] / 2**30,
            100 * measured["data_wait_fraction_max"],
        )
    steps_log.close()
    dist.barrier()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vss training process (started by the DeepSpeed launcher).")
    parser.add_argument("--config", required=True, help="RUN/config.json written by vss")
    parser.add_argument("--model-dir", required=True, help="checkpoint directory")
    parser.add_argument("--prepared-dir", required=True, help="prepared dataset directory")
    parser.add_argument("--local_rank", type=int, default=0, help="set by the DeepSpeed launcher")
    parser.add_argument("--parent-pid", type=int, default=None, help="die when this process (vss) ends")
    parser.add_argument(
        "--node-rank", type=int, default=None, help="multi-node without ssh: this node (marks its ranks for vss)"
    )
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    # torch.distributed's deprecation notices about its own collectives say nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    cfg = config_from_json(args.config)
    run = RunPaths(root=str(Path(args.config).parent))
    if train(cfg, run, Path(args.model_dir), Path(args.prepared_dir)) is None:
        sys.exit(3)  # stopped on request after a checkpoint (RUN/stopped.json says why)


if __name__ == "__main__":
    main()
