"""Training memory against dataset size, and the share of step time spent waiting for data (issue 14 item 1).

    .venv/bin/python bench/bench_dataset.py [--small 50 --large 2000 --steps 12]   # ~4 min on 2 cores

Prepares the demo's samples with the real path (tiny checkpoint and codec of the real architecture,
cpu-demo settings), then makes two prepared folders of --small and --large samples from them (each
file hard-linked under a new name, with its manifest entry: the files are as training reads them,
they just repeat). Each folder is trained on for --steps steps with the cpu-demo config (2 CPU
ranks, ZeRO-3 with offload, DataLoader workers per rank) through vss_core.launch.run_training.

Printed for each size:
- peak RSS of each rank's process tree (the rank and its loader workers), sampled every 0.2 s from
  outside with psutil, and the rank's own peak (VmHWM, recorded by the run in train_summary.json);
- the share of the loop each rank spent waiting for its next batch (train_summary.json);
- the largest USS of a loader worker (what it does not share with its rank: the planner's figure);
and, as the baseline in the same run, what reading the whole folder into memory costs (the former
load-everything path, `data.load_prepared`) against opening it lazily (`data.PreparedSamples`),
measured as the RSS growth of a fresh process for each size.

Goal (issue 14): per-rank peak differs by less than 10% between the sizes; data wait under 1%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

_RSS_CHILD = """
import resource, sys, psutil
from vss_core import data
before = psutil.Process().memory_info().rss
if sys.argv[2] == "eager":
    held = data.load_prepared(sys.argv[1])
else:
    held = data.PreparedSamples(sys.argv[1])
    for i in range(len(held)):
        held[i]
print(psutil.Process().memory_info().rss - before)
"""


def replicate(src: Path, dst: Path, n: int) -> Path:
    """A prepared folder of n samples made of src's files, hard-linked under new names."""
    manifest = json.loads((src / "manifest.json").read_text())
    entries = manifest["samples"]
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        e = entries[i % len(entries)]
        name = f"s{i:06d}"
        target = dst / f"{name}.pt"
        if not target.exists():
            os.link(src / e["file"], target)
        out.append(e | {"name": name, "file": target.name})
    (dst / "manifest.json").write_text(json.dumps(manifest | {"samples": out}))
    return dst


class TreeSampler:
    """Peak RSS of each rank's process tree of one run, sampled from outside."""

    def __init__(self, config: str, interval_s: float = 0.2) -> None:
        self.config, self.interval_s = config, interval_s
        self.peaks: dict[int, int] = {}
        self.worker_uss = 0  # the largest USS (memory not shared with its rank) of any loader worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _ranks(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "ppid"]):
            cmd = p.info["cmdline"] or []
            if "vss_core.train" in cmd and self.config in cmd and any(a.startswith("--local_rank") for a in cmd):
                found.append(p)
        pids = {p.pid for p in found}
        return [p for p in found if p.info["ppid"] not in pids]  # a forked loader worker keeps its rank's cmdline

    def _loop(self) -> None:
        while not self._stop.is_set():
            for rank in self._ranks():
                try:
                    workers = rank.children(recursive=True)
                    total = sum(p.memory_info().rss for p in [rank, *workers])
                    for w in workers:
                        self.worker_uss = max(self.worker_uss, w.memory_full_info().uss)
                except psutil.Error:
                    continue
                self.peaks[rank.pid] = max(self.peaks.get(rank.pid, 0), total)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def train_on(cfg, model_dir: Path, prepared: Path, name: str) -> dict:
    from vss_core import launch
    from vss_core.runs import create_run

    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"run_name": name})})
    run = create_run(cfg)
    start = time.perf_counter()
    with TreeSampler(run.config) as tree:
        launch.run_training(cfg, run, model_dir, prepared)
    summary = json.loads((Path(run.root) / "train_summary.json").read_text())
    return {
        "wall": time.perf_counter() - start,
        "tree_peaks": sorted(tree.peaks.values()),
        "worker_uss": tree.worker_uss,
        **summary["measured"],
    }


def rss_growth(prepared: Path, how: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(prepared), how], capture_output=True, text=True, check=True, cwd=REPO
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=50, help="samples in the small folder")
    parser.add_argument("--large", type=int, default=2000, help="samples in the large folder")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each training")
    parser.add_argument("--workers", type=int, default=1, help="training.loader_workers per rank")
    parser.add_argument("--work-dir", help="keep model, data and runs here (default: a temp dir, removed)")
    args = parser.parse_args()

    from vss_core import codec, data, demo, model
    from vss_core.config import load_config

    gib = 2**30
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp).absolute()
        work.mkdir(parents=True, exist_ok=True)
        model_dir, codec_dir = work / "model", work / "codec"
        if not (model_dir / "config.json").is_file():
            model.write_tiny_checkpoint(model_dir)
        if not codec_dir.is_dir():
            codec.write_tiny_codec(codec_dir)
        demo.write_demo_dataset(work / "data", 8, seconds=2.0, overwrite=True)
        cfg = load_config(
            "cpu-demo",
            {
                "data.root": str(work / "data"),
                "data.eval_fraction": 0.0,
                "data.validation_cache": None,
                "model.source": str(model_dir),
                "model.codec_source": str(codec_dir),
                "training.output_dir": str(work / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"),
                "training.max_steps": args.steps,
                "training.save_every_n_steps": args.steps + 1,
                "training.loader_workers": args.workers,
            },
        )
        report = data.validate_dataset(cfg.data)
        source = Path(data.prepare_dataset(report.valid, cfg.data, model_dir, codec_dir, work / "prepared").dir)
        sizes = {n: replicate(source, work / f"prepared-{n}", n) for n in (args.small, args.large)}
        per_file = sum(f.stat().st_size for f in source.glob("*.pt")) / len(list(source.glob("*.pt")))
        print(
            f"config: cpu-demo, {cfg.hardware.gpus_per_node} CPU ranks, ZeRO-3 offload, {args.steps} steps, "
            f"{args.workers} loader worker(s) per rank x prefetch {cfg.training.prefetch_batches}; "
            f"prepared file {per_file / 1024:.0f} KiB on disk",
            flush=True,
        )

        print("\nbaseline, same run: RSS growth of a fresh process reading the folder")
        print(f"{'samples':>8} | {'load_prepared (all in RAM)':>27} | {'PreparedSamples (lazy)':>23}")
        for n, path in sizes.items():
            eager, lazy = rss_growth(path, "eager"), rss_growth(path, "lazy")
            print(f"{n:>8} | {eager / 2**20:>23.1f} MiB | {lazy / 2**20:>19.1f} MiB", flush=True)

        results = {}
        for n, path in sizes.items():
            results[n] = train_on(cfg, model_dir, path, f"size-{n}")
            print(f"  trained on {n} samples ({results[n]['wall']:.0f} s)", flush=True)

        print("\ntraining: peak RSS per rank (process tree sampled every 0.2 s; rank process VmHWM), data wait")
        print(f"{'samples':>8} | {'tree peak per rank GiB':>24} | {'VmHWM GiB':>15} | {'data wait % of loop':>20}")
        for n, r in results.items():
            tree = " ".join(f"{p / gib:.3f}" for p in r["tree_peaks"])
            own = " ".join(f"{g['peak_rss_bytes'] / gib:.3f}" for g in r["per_rank"])
            wait = " ".join(f"{100 * g['data_wait_fraction']:.2f}" for g in r["per_rank"])
            print(f"{n:>8} | {tree:>24} | {own:>15} | {wait:>20}")
        small, large = results[args.small], results[args.large]
        tree_ratio = max(large["tree_peaks"]) / max(small["tree_peaks"])
        own_ratio = large["peak_rss_bytes_max"] / small["peak_rss_bytes_max"]
        wait = max(small["data_wait_fraction_max"], large["data_wait_fraction_max"])
        print(
            f"\nratio {args.large} / {args.small} samples, max over ranks: tree {tree_ratio:.3f}x, rank process "
            f"{own_ratio:.3f}x (goal: within 1.10x); data wait at most {100 * wait:.2f}% of the loop (goal: < 1%)"
        )
        uss = max(r["worker_uss"] for r in results.values())
        print(f"loader worker's own memory (USS, largest seen): {uss / gib:.3f} GiB (plan.LOADER_WORKER_RAM_GIB)")
        ok = abs(tree_ratio - 1) < 0.10 and abs(own_ratio - 1) < 0.10 and wait < 0.01
        print("goal met" if ok else "goal NOT met")


if __name__ == "__main__":
    main()
