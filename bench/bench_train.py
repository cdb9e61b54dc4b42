"""Training throughput of vss against a minimal plain transformers Trainer + DeepSpeed script, as a ratio.

    .venv/bin/python bench/bench_train.py [--steps 40 --samples 8 --repeats 1]   # ~2.5 min on 2 cores

Both sides train the same tiny checkpoint on the same prepared data with the same config (cpu-demo:
2 CPU ranks under the DeepSpeed launcher, ZeRO-3 with CPU offload, LoRA on the same targets, same micro
batch, accumulation, steps, learning rate and warmup+cosine schedule): vss through
vss_core.launch.run_training, the baseline through bench/trainer_baseline.py. Neither saves checkpoints
during the timed steps (training.save_every_n_steps is set past the last step; the Trainer runs
with save_strategy="no"); vss still saves its adapter at the end, which counts in its wall time only.

Throughput is taken from per-step wall-clock stamps written by rank 0 of each side (vss's metrics.jsonl,
the baseline's TrainerCallback): samples per second over steps --from-step..N, so process start-up,
model load, DeepSpeed set-up and the first steps are left out. The whole-process wall time of each
launcher process is printed too, with both loss trajectories (they follow each other closely but not
exactly: different data order across ranks and slightly different warmup formulas). With --repeats R
the sides alternate which goes first and the medians are compared: other work on the machine moves
these figures by 10% or more.

The first DeepSpeed use compiles its CPU ops (~75 s); point TORCH_EXTENSIONS_DIR at a cache that holds
them (the repo's .cache/torch_extensions, used by default here) or the compile lands in the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


def _read_steps(path: Path) -> dict[int, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out[rec["step"]] = rec
    return out


def _throughput(steps: dict[int, dict], first: int, samples_per_step: int) -> tuple[float, int] | None:
    """Samples per second over steps first..last: from the end of step first-1 to the end of the last."""
    last = max(steps, default=0)
    if first - 1 not in steps or last < first:
        return None
    n = last - first + 1
    return n * samples_per_step / (steps[last]["time"] - steps[first - 1]["time"]), n


def run_side(side: str, cfg, model_dir: Path, prepared: Path, tag: str) -> dict:
    """Train one side to the end; its launcher process's wall time, per-step records and error (or None)."""
    from vss_core import launch
    from vss_core.runs import create_run

    run = create_run(cfg.model_copy(update={"training": cfg.training.model_copy(update={"run_name": f"{side}-{tag}"})}))
    start = time.perf_counter()
    error, info = None, {}
    if side == "vss":
        try:
            launch.run_training(cfg, run, model_dir, prepared)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            error = str(exc)
        wall = time.perf_counter() - start
        steps = _read_steps(Path(run.metrics))
    else:
        cmd = [
            launch._deepspeed_bin(),
            "--num_gpus",
            str(cfg.hardware.gpus_per_node),
            "--master_port",
            str(launch.free_port()),
            str(REPO / "bench" / "trainer_baseline.py"),
            "--config",
            run.config,
            "--model-dir",
            str(model_dir),
            "--prepared-dir",
            str(prepared),
            "--out",
            run.root,
        ]
        env = launch.training_env(cfg)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(run.log, "w") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)).returncode
        wall = time.perf_counter() - start
        steps = _read_steps(Path(run.root) / "steps.jsonl")
        info_file = Path(run.root) / "baseline_info.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        if max(steps, default=0) < cfg.training.max_steps:
            tail = Path(run.log).read_text().splitlines()[-25:]
            error = (
                f"exit code {code}, {len(steps)} of {cfg.training.max_steps} steps recorded. Log {run.log}:\n"
                + "\n".join(tail)
            )
    return {"wall": wall, "steps": steps, "error": error, "info": info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each side")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating which goes first")
    parser.add_argument("--samples", type=int, default=8, help="generated samples")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each generated sample")
    parser.add_argument(
        "--from-step", type=int, default=3, help="first step of the timed window (earlier ones warm up)"
    )
    parser.add_argument("--work-dir", help="keep model, data and runs here (default: a temp dir, removed)")
    args = parser.parse_args()
    if not 2 <= args.from_step <= args.steps:
        parser.error("--from-step must be between 2 and --steps")

    from vss_core import codec, data, demo, model
    from vss_core.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp).absolute()
        work.mkdir(parents=True, exist_ok=True)
        model_dir, codec_dir = work / "model", work / "codec"
        if not (model_dir / "config.json").is_file():  # a kept --work-dir reuses its checkpoint
            model.write_tiny_checkpoint(model_dir)
        if not codec_dir.is_dir():
            codec.write_tiny_codec(codec_dir)
        demo.write_demo_dataset(work / "data", args.samples, seconds=args.seconds, overwrite=True)
        runs = work / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = load_config(
            "cpu-demo",
            {
                "data.root": str(work / "data"),
                "model.source": str(model_dir),
                "training.output_dir": str(runs),
                "training.max_steps": args.steps,
                "training.save_every_n_steps": args.steps + 1,
            },
        )
        report = data.validate_dataset(cfg.data)
        prepared = Path(data.prepare_dataset(report.valid, cfg.data, model_dir, codec_dir, work / "prepared").dir)

        tr = cfg.training
        per_step = tr.micro_batch_size * tr.gradient_accumulation_steps * cfg.hardware.gpus_per_node
        print(
            f"config: cpu-demo, {cfg.hardware.gpus_per_node} CPU ranks, ZeRO-3 offload_param={cfg.deepspeed.offload_param} "
            f"offload_optimizer={cfg.deepspeed.offload_optimizer}, LoRA r={cfg.lora.rank} on {cfg.lora.targets}, "
            f"micro batch {tr.micro_batch_size} x accumulation {tr.gradient_accumulation_steps} x {cfg.hardware.gpus_per_node} ranks "
            f"= {per_step} samples/step, {args.steps} steps, {len(report.valid)} samples of {args.seconds:g} s",
            flush=True,
        )

        names = {"vss": "vss (DeepSpeed engine loop)", "trainer": "Trainer + DeepSpeed"}
        results: dict[str, list[dict]] = {"vss": [], "trainer": []}
        for r in range(args.repeats):
            # alternate which side goes first, so a drift in machine load does not favour one side
            for side in ("vss", "trainer") if r % 2 == 0 else ("trainer", "vss"):
                res = run_side(side, cfg, model_dir, prepared, str(r + 1))
                res["tp"] = _throughput(res["steps"], args.from_step, per_step)
                results[side].append(res)
                print(
                    f"  run {r + 1} {names[side]}: {'FAILED' if res['error'] else 'done'} ({res['wall']:.1f} s)",
                    flush=True,
                )

        info = next((res["info"] for res in results["trainer"] if res["info"]), None)
        if info:
            print(
                f"\nTrainer path as run: {info['engine']}, ZeRO stage {info['zero_stage']} ({info['zero_optimizer']}), "
                f"optimizer {info['optimizer']}, offload param={info['offload_param']} optimizer={info['offload_optimizer']}, "
                f"scheduler {info['lr_scheduler']}, world size {info['world_size']}"
            )
        window = f"steps {args.from_step}..{args.steps}"
        print(
            f"\nsamples/s over {window} ({args.steps - args.from_step + 1} steps x {per_step} samples), "
            f"median of {args.repeats} run(s); process wall time of the launcher, median:"
        )
        medians = {}
        for side, runs_ in results.items():
            failed = [res["error"] for res in runs_ if res["error"] or res["tp"] is None]
            if failed:
                print(f"{names[side]:30s}: FAILED: {failed[0] or 'too few steps recorded'}")
                continue
            tps = [res["tp"][0] for res in runs_]
            medians[side] = statistics.median(tps), statistics.median(res["wall"] for res in runs_)
            each = " ".join(f"{t:.3f}" for t in tps)
            print(
                f"{names[side]:30s}: {medians[side][0]:6.3f} samples/s [{each}]; process wall {medians[side][1]:6.1f} s"
            )
        if len(medians) == 2:
            (v_tp, v_wall), (t_tp, t_wall) = medians["vss"], medians["trainer"]
            print(
                f"{'ratio vss / Trainer':30s}: {v_tp / t_tp:6.2f}x samples/s; process wall {v_wall / t_wall:.2f}x "
                "(vss's wall also holds its end-of-run eval and adapter save)"
            )
        else:
            print(f"{'ratio vss / Trainer':30s}: not available (a side failed; see above)")

        vss_steps, hf_steps = results["vss"][0]["steps"], results["trainer"][0]["steps"]
        every = max(1, args.steps // 16)
        print(f"\nrun 1, every {every} step(s): step | vss loss | Trainer loss | vss step s | Trainer step s")
        for s in [*range(1, args.steps, every), args.steps]:

            def cell(steps, key, s=s):
                v = steps.get(s, {}).get(key)
                return f"{v:8.3f}" if isinstance(v, float) else f"{'-':>8s}"

            def dt(steps, s=s):
                return (
                    f"{steps[s]['time'] - steps[s - 1]['time']:8.2f}" if s in steps and s - 1 in steps else f"{'-':>8s}"
                )

            print(
                f"{s:4d} | {cell(vss_steps, 'loss')} | {cell(hf_steps, 'loss'):>12s} | {dt(vss_steps):>10s} | {dt(hf_steps):>14s}"
            )
        if args.work_dir:
            print(f"\nruns kept in {runs}")
    sys.exit(0 if all(not res["error"] for runs_ in results.values() for res in runs_) else 1)


if __name__ == "__main__":
    main()
