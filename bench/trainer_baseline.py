"""The reference side of bench/bench_train.py: the same tiny model, prepared data and cpu-demo config as a
vss run, trained by a minimal plain transformers Trainer with its DeepSpeed integration. Launched like
vss_core.train, one process per rank:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 bench/trainer_baseline.py \
        --config RUN/config.json --model-dir MODEL --prepared-dir PREPARED --out OUT_DIR

Rank 0 writes OUT_DIR/steps.jsonl: one {"step", "time", "loss"} per optimizer step (a TrainerCallback).

What the Trainer path needs beyond the ds config vss generates (vss_core.config.deepspeed_config):
- deepspeed.init_distributed(gloo) before TrainingArguments: with use_cpu=True accelerate starts plain
  torch.distributed (MULTI_CPU, not its DeepSpeed branch, which needs a non-CPU device), and
  deepspeed.zero.Init would otherwise see a world of 1 ("train_batch_size is not equal to ...").
- an "optimizer" entry (AdamW, "auto" params, filled from TrainingArguments): without it the run works
  too, but accelerate swaps Trainer's torch AdamW for DeepSpeedCPUAdam keeping only lr and weight_decay
  (accelerate.utils.deepspeed.map_pytorch_optim_to_deepspeed), so betas fall back to (0.9, 0.999) where
  vss uses (0.9, 0.95). With it, DeepSpeed builds DeepSpeedCPUAdam (adamw mode) from the same values.
- no "scheduler" entry: Trainer's own cosine-with-warmup (lr_scheduler_type="cosine").
- activation checkpointing switched on on the LLM as vss does (non-reentrant): Trainer's own switch
  calls activation_checkpointing_enable on its model, here a PeftModel around OmniModel, a plain
  nn.Module that has no such method.
- codebook_weights go through the collated batch, so Trainer's default compute_loss
  (`model(**inputs)["loss"]`) is the loss; remove_unused_columns=False keeps the batch whole.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import deepspeed
import torch
from deepspeed.utils import set_z3_leaf_modules
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from vss_core import data, lora
from vss_core import model as omni
from vss_core.config import config_from_json, deepspeed_config


class PreparedSamples(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict[str, torch.Tensor]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.samples[i]


class StepTimes(TrainerCallback):
    """Rank 0: the wall time at the end of each optimizer step, and the loss Trainer logs for it."""

    def __init__(self, path: Path) -> None:
        self.path, self.times, self.losses = path, {}, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.times[state.global_step] = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with open(self.path, "w") as f:
                for step, t in sorted(self.times.items()):
                    f.write(json.dumps({"step": step, "time": t, "loss": self.losses.get(step)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Trainer + DeepSpeed baseline of vss training.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prepared-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()

    cfg = config_from_json(args.config)
    deepspeed.init_distributed(dist_backend="gloo" if cfg.hardware.accelerator == "cpu" else "nccl")
    tr, out = cfg.training, Path(args.out)
    ds_config = deepspeed_config(cfg)
    ds_config["optimizer"] = {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
    }
    training_args = TrainingArguments(
        output_dir=str(out),
        deepspeed=ds_config,
        use_cpu=cfg.hardware.accelerator == "cpu",
        per_device_train_batch_size=tr.micro_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        max_steps=tr.max_steps,
        learning_rate=tr.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=tr.warmup_steps,
        weight_decay=tr.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=tr.gradient_clipping,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=tr.seed,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )

    # Build the model partitioned under zero.Init, as vss builds it: deepspeed.comm must be started first
    # (with use_cpu=True accelerate starts plain torch.distributed, which deepspeed.comm does not see).
    set_seed(tr.seed)  # before LoRA's random init, as vss seeds before building (Trainer seeds only later)
    base = omni.load_omni(Path(args.model_dir), dtype=torch.float32, zero_config=ds_config)
    if cfg.deepspeed.activation_checkpointing:
        base.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = lora.apply_lora(base, cfg.lora)
    set_z3_leaf_modules(model, omni.zero3_leaf_classes())

    weights = tr.codebook_loss_weights
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=PreparedSamples(data.load_prepared(Path(args.prepared_dir))),
        data_collator=lambda samples: {**omni.collate(samples), "codebook_weights": weights},
        callbacks=[StepTimes(out / "steps.jsonl")],
    )
    trainer.train()
    if trainer.is_world_process_zero():  # what actually trained: the bench prints it
        engine = trainer.model_wrapped
        optimizer = getattr(engine, "optimizer", None)
        info = {
            "engine": type(engine).__name__,
            "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
            "zero_optimizer": type(optimizer).__name__,
            "optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
            "offload_optimizer": str(getattr(engine.zero_offload_optimizer(), "device", None)),
            "offload_param": str(getattr(engine.zero_offload_param(), "device", None)),
            "lr_scheduler": type(trainer.lr_scheduler).__name__,
            "world_size": training_args.world_size,
        }
        (out / "baseline_info.json").write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
