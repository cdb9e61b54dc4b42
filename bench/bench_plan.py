"""The planner's memory and disk figures (`vss plan`, vss_core/plan.py) against measured peaks (issue 18 item 1).

    .venv/bin/python bench/bench_plan.py [--sizes 0,384,768,1152 --layers 6 --steps 4]   # ~11 min on 2 cores

For each --sizes hidden size a scaled LongCat-Flash-Omni is written through the tiny checkpoint's own
code path (`vss_core.model.write_tiny_checkpoint(dir, llm_overrides=...)`, the official layout) with
the real model's proportions (LongcatFlashConfig(): hidden 6144, expert width 2048 = hidden/3, 512
routed experts = hidden/12 and 256 zero experts, top-12 routing = 2.3% of the experts, dense FFN
2 x hidden, 64 heads = hidden/96 of the real head sizes 128/64/128, q_lora hidden/4, kv_lora hidden/12)
and --layers decoder layers. What stays tiny: the text vocabulary (the tiny tokenizer's 512 ids; the
speech tables keep their real 8224 rows) and the vision and audio encoders (only their projectors
follow the LLM's hidden size). The default sizes have 0.079B, 0.358B and 1.008B parameters; size 0 is
the demo's tiny model (0.006B) as it is, whose planned items are near zero: on it the bench measures
a training step's fixed working memory.

Each model is trained for --steps optimizer steps with the cpu-demo config (2 CPU ranks, ZeRO-3 with
parameter and optimizer offload, fp32, LoRA on the cpu-demo targets, 1 loader worker per rank) through
vss_core.launch.run_training on the demo's samples, saving a checkpoint after every step but the last
(training.checkpoints_to_keep of them kept), so every planned item happens. Measured, from outside, every 0.2 s with psutil:
- the peak RSS of each rank process (the planner's `plan.ram_per_rank`: its share of the node's
  items, shared library pages whole, as RSS counts them) and its RssAnon / RssFile split at that peak;
  the largest loader-worker USS; the launcher processes' USS (and PSS);
- the node: the RAM every training process takes at one instant, its peak: their anonymous memory by
  PSS (a page shared copy-on-write counted once) plus their library pages once (the largest RssFile
  of any of them; their PSS sum alone counts those pages only in part, since every other process
  mapping the same files, this benchmark included, takes a share), beside that PSS sum, psutil's
  `used` and `available` and the RSS sum;
- disk: the checkpoints folder's peak size (its own 5 ms loop: a checkpoint is written and the
  oldest removed within ~0.1 s), the adapter, the prepared data;
and from the run itself (train_summary.json "measured"): the peak RSS (VmHWM) per rank and each rank's memory
at the end of each phase (started, model loaded, engine built, trained: what each phase added),
trainable_parameters.json. Per-process overhead is measured by a separate process that does what a
rank does before it builds the model (imports vss_core.train and DeepSpeed on the CPU accelerator,
init_distributed with gloo, loads the cpu_adam op): its RssAnon (the planner's per-process memory)
and RssFile + RssShmem (the library pages, once per node).

The planner is run for the same config and this machine (`vss_core.hardware.plan_run(cfg,
plan.Machine(gpus_per_node=2, gpu_memory_gib=None, ram_gib=<total>, disk_gib=<free>))`, as `vss plan
--gpus 2 --ram-gb .. --disk-gb ..` does) and each resource and each item that can be measured on its
own is printed as predicted / measured / ratio, under the planner's own item names. On the CPU
accelerator there is no GPU memory: the planner folds its per-rank "device" column into RAM as one
item; its parts (MoE leaf gathers, activations, ...) cannot be measured apart and are printed as
planned only, with the residual the other measurements leave for them, except the parameters ZeRO-3
holds gathered at once (DeepSpeed's own count). The ranks run with the environment vss gives them
(`launch.training_env`: glibc's mmap threshold fixed, so the device column is RAM at its bytes; with
glibc's default dynamic threshold a rank kept 1.9-3.2x the column's bytes, see the README's planner section).
The planner is not changed.
The time estimate (`vss plan`'s seconds per optimizer step, vss_core/steptime.py) is printed against
the run's measured step time too; on the CPU accelerator its rates are assumptions, so that row shows
how far they are, not a goal.

The first DeepSpeed use compiles its CPU ops (~75 s); TORCH_EXTENSIONS_DIR defaults to the repo's
.cache/torch_extensions, where they are cached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
GIB = 2**30

# What a rank holds before it builds the model: vss_core.train and DeepSpeed imported on the CPU
# accelerator, torch.distributed up (gloo), the cpu_adam op loaded. Prints its RSS in bytes.
_OVERHEAD_CHILD = """
import psutil, torch
from vss_core.train import proc_status  # what the rank imports: the model code, peft, transformers
import deepspeed
deepspeed.init_distributed(dist_backend="gloo")
from deepspeed.ops.adam import DeepSpeedCPUAdam
DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(8))])
status = proc_status()
print(psutil.Process().memory_info().rss, status["RssAnon"], status["RssFile"] + status["RssShmem"])
"""

_WRITE_CHILD = """
import json, sys
from vss_core import model
model.write_tiny_checkpoint(sys.argv[1], llm_overrides=json.loads(sys.argv[2]))
"""


def scaled_llm(hidden: int, layers: int) -> dict:
    """config.json keys of a LongCat-Flash LLM of `hidden` with the real model's proportions."""
    experts = max(4, hidden // 12)
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_attention_heads": max(2, hidden // 96),
        "ffn_hidden_size": 2 * hidden,
        "q_lora_rank": hidden // 4,
        "kv_lora_rank": hidden // 12,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "head_dim": 64,
        "n_routed_experts": experts,
        "zero_expert_num": experts // 2,
        "moe_topk": max(2, round(experts * 12 / 512)),
        "expert_ffn_hidden_size": hidden // 3,
    }


def du(path: Path) -> int:
    """Bytes of the files under path (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


class RunSampler:
    """Peaks of one training run, sampled from outside: per rank tree RSS and PSS, the node's RAM
    (psutil; the training processes' anonymous PSS + library pages once, and their PSS sum), the launcher
    processes, checkpoint disk."""

    def __init__(self, config: str, checkpoints: Path, interval_s: float = 0.2) -> None:
        self.config, self.checkpoints, self.interval_s = config, checkpoints, interval_s
        self.peaks: dict[int, int] = {}  # rank pid -> peak RSS of the rank and its loader workers
        self.rank_rss: dict[int, int] = {}  # rank pid -> peak RSS of the rank process alone
        self.worker_uss = 0
        self.tree_sum_peak = 0  # RSS of every training process (launcher, ranks, workers) at one instant
        self.pss_sum_peak = 0  # PSS of the same at one instant: each shared page counted once in all
        # The node's RAM at one instant: the training processes' anonymous memory by PSS (a page shared
        # copy-on-write with a loader worker counted once) and their library pages once, as the largest
        # RssFile of any of them. Their PSS sum alone gives the library pages only in part: every other
        # process mapping the same files (this benchmark, a Prefect server, a test run) takes a share.
        self.node_peak = 0
        self.launcher_pss = 0  # PSS of the DeepSpeed launcher processes (the runner and launch)
        self.launcher_uss = 0  # their USS: what they hold beside the library pages every process maps
        self.others: list[str] = []
        self.other_pss = 0  # PSS of any other process of the tree (neither launcher, rank nor worker)
        self.rank_split: dict[int, dict[str, int]] = {}  # rank pid -> RssAnon/RssFile/RssShmem at its RSS peak
        self.ports: set[str] = set()
        self.ckpt_peak = 0
        vm = []
        for _ in range(5):  # the idle baseline, before the launch
            vm.append(psutil.virtual_memory())
            time.sleep(0.2)
        self.used0 = statistics.median(v.used for v in vm)
        self.avail0 = statistics.median(v.available for v in vm)
        self.used_peak, self.avail_min = self.used0, self.avail0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._disk = threading.Thread(target=self._disk_loop, daemon=True)

    def _ranks(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "ppid"]):
            cmd = p.info["cmdline"] or []
            if "vss_core.train" in cmd and self.config in cmd and any(a.startswith("--local_rank") for a in cmd):
                found.append(p)
        pids = {p.pid for p in found}
        return [p for p in found if p.info["ppid"] not in pids]  # a forked loader worker keeps its rank's cmdline

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            vm = psutil.virtual_memory()
            self.used_peak = max(self.used_peak, vm.used)
            self.avail_min = min(self.avail_min, vm.available)
            in_ranks: set[int] = set()
            for rank in self._ranks():
                try:
                    workers = rank.children(recursive=True)
                    in_ranks |= {rank.pid, *(w.pid for w in workers)}
                    own = rank.memory_info().rss
                    if own > self.rank_rss.get(rank.pid, 0):
                        self.rank_split[rank.pid] = rss_split(rank.pid)
                    total = own + sum(p.memory_info().rss for p in workers)
                    for w in workers:
                        self.worker_uss = max(self.worker_uss, w.memory_full_info().uss)
                    if rank.pid not in self.peaks:
                        port = rank.environ().get("MASTER_PORT")
                        if port:
                            self.ports.add(port)
                except psutil.Error:
                    continue
                self.peaks[rank.pid] = max(self.peaks.get(rank.pid, 0), total)
                self.rank_rss[rank.pid] = max(self.rank_rss.get(rank.pid, 0), own)
            tree = pss = launcher = launcher_uss = other = anon = files = 0
            others: list[str] = []
            for p in me.children(recursive=True):
                try:
                    cmd = p.cmdline()
                except psutil.Error:
                    continue
                rollup = smaps_rollup(p.pid)  # one read for RSS, PSS, USS and the anonymous PSS
                if not rollup:
                    continue  # gone meanwhile
                own_pss = rollup.get("Pss", 0)
                tree += rollup.get("Rss", 0)
                pss += own_pss
                anon += rollup.get("Pss_Anon", 0) + rollup.get("Pss_Shmem", 0)
                files = max(files, rss_split(p.pid).get("RssFile", 0))
                if p.pid in in_ranks:
                    continue
                if any(a.endswith("/deepspeed") or a == "deepspeed.launcher.launch" for a in cmd[:4]):
                    launcher += own_pss
                    # USS as psutil counts it: the private pages
                    launcher_uss += sum(rollup.get(k, 0) for k in ("Private_Clean", "Private_Dirty", "Private_Hugetlb"))
                else:
                    other += own_pss
                    others.append(f"{own_pss / GIB:.3f} GiB: {' '.join(cmd)[:120]}")
            self.tree_sum_peak = max(self.tree_sum_peak, tree)
            self.pss_sum_peak = max(self.pss_sum_peak, pss)
            self.node_peak = max(self.node_peak, anon + files)
            if in_ranks:  # while the ranks run: the launchers' steady state, not their start
                self.launcher_pss = max(self.launcher_pss, launcher)
                self.launcher_uss = max(self.launcher_uss, launcher_uss)
                if other > self.other_pss:
                    self.other_pss, self.others = other, others
            self._stop.wait(self.interval_s)

    def _disk_loop(self) -> None:
        # its own fast loop: a checkpoint of a few MB is written and the oldest removed within ~0.1 s
        while not self._stop.is_set():
            self.ckpt_peak = max(self.ckpt_peak, du(self.checkpoints))
            self._stop.wait(0.005)

    def __enter__(self):
        self._thread.start()
        self._disk.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._disk.join()


def smaps_rollup(pid: int) -> dict[str, int]:
    """A process's /proc/PID/smaps_rollup totals (Pss_Anon, Pss_File, Pss_Shmem, ...), in bytes ({} when gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def rss_split(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and RssShmem of a process, in bytes (/proc/PID/status)."""
    from vss_core.train import proc_status

    return {k: v for k, v in proc_status(pid).items() if k in ("RssAnon", "RssFile", "RssShmem")}


def process_overhead() -> tuple[int, int, int]:
    """(RSS, anonymous RSS, file-backed + shmem RSS) of a process that does what a rank does before
    building the model (one rank, gloo): its own heap, and the libraries' pages, held once per node."""
    from vss_core import launch
    from vss_core.config import load_config

    env = launch.training_env(load_config("cpu-demo"))
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(launch.free_port()))
    out = subprocess.run(
        [sys.executable, "-c", _OVERHEAD_CHILD], capture_output=True, text=True, check=True, cwd=REPO, env=env
    )
    rss, anon, files = out.stdout.strip().splitlines()[-1].split()
    return int(rss), int(anon), int(files)


def sample_in_memory(prepared: Path) -> int:
    """Bytes of the tensors of one prepared sample once read (data.PreparedSamples), the largest one."""
    import torch

    from vss_core import data

    def nbytes(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(nbytes(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(nbytes(v) for v in x)
        return 0

    samples = data.PreparedSamples(prepared)
    return max(nbytes(samples[i]) for i in range(len(samples)))


def frozen_fragment_dtype(checkpoint: Path) -> str | None:
    """The dtype DeepSpeed stored the frozen parameters' partitions in (`frozen_param_fragments`)."""
    import torch

    for f in sorted(checkpoint.glob("*model_states*")):
        state = torch.load(f, map_location="cpu", weights_only=False, mmap=True)
        for t in (state.get("frozen_param_fragments") or {}).values():
            return str(t.dtype).removeprefix("torch.")
    return None


def leaked_shm(ports: set[str]) -> list[Path]:
    """DeepSpeed's shared-memory all-reduce buffers of this run's rendezvous ports left in /dev/shm."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return [p for p in shm.glob("deepspeed_*") if any(f"_{port}_" in p.name for port in ports)]


def idle_children(timeout_s: float = 60.0) -> None:
    """Wait until this process has no child left (preparation's spawned workers end a few seconds after
    their work: `pool.shutdown(wait=False)`), so the run's figures hold the training's processes only."""
    deadline = time.monotonic() + timeout_s
    while psutil.Process().children() and time.monotonic() < deadline:
        time.sleep(0.2)


def train_one(cfg, model_dir: Path, prepared: Path, name: str, steps: int) -> dict:
    from vss_core import launch
    from vss_core.runs import create_run

    tr = cfg.training.model_copy(update={"run_name": name})
    run = create_run(cfg.model_copy(update={"training": tr}))
    start = time.perf_counter()
    stopped = None
    with RunSampler(run.config, Path(run.checkpoints)) as s:
        try:
            launch.run_training(cfg, run, model_dir, prepared)
        except launch.TrainingStoppedError as exc:  # the RAM guard: what was sampled up to the stop still counts
            stopped = str(exc).split(":")[0] + ": " + str(exc).split(":")[-2].strip()
    wall = time.perf_counter() - start
    root = Path(run.root)
    summary_file = root / "train_summary.json"
    measured = json.loads(summary_file.read_text())["measured"] if summary_file.is_file() else None
    counts = json.loads((root / "trainable_parameters.json").read_text())
    ckpts = sorted(
        (p for p in Path(run.checkpoints).iterdir() if p.is_dir() and p.name.startswith("step-")),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    last = ckpts[-1] if ckpts else None
    optim = sum(f.stat().st_size for f in last.rglob("*optim_states*")) if last else 0
    states = sum(f.stat().st_size for f in last.rglob("*model_states*")) if last else 0
    frozen_dtype = frozen_fragment_dtype(last) if last else None
    shm = leaked_shm(s.ports)
    shm_bytes = sum(p.stat().st_size for p in shm)
    for p in shm:  # this run's own leftovers only (named by its rendezvous port)
        p.unlink(missing_ok=True)
    return {
        "wall": wall,
        "tree_peaks": sorted(s.peaks.values()),
        "worker_uss": s.worker_uss,
        "used_delta": s.used_peak - s.used0,
        "avail_drop": s.avail0 - s.avail_min,
        "tree_sum": s.tree_sum_peak,
        "pss_sum": s.pss_sum_peak,
        "node": s.node_peak,
        "launcher_pss": s.launcher_pss,
        "launcher_uss": s.launcher_uss,
        "rank_rss": sorted(s.rank_rss.values()),
        "rank_split": max(s.rank_split.values(), key=lambda d: sum(d.values()), default={}),
        "other_pss": s.other_pss,
        "others": s.others,
        "phases": [g.get("memory_by_phase", {}) for g in measured["per_rank"]] if measured else [],
        "ckpt_peak": s.ckpt_peak,
        "ckpt_one": du(last) if last else 0,
        "ckpt_kept": len(ckpts),
        "optim_on_disk": optim,
        "model_states_on_disk": states,
        "frozen_dtype": frozen_dtype,
        "adapter": du(Path(run.adapter)),
        "run_dir": du(root),
        "shm_leaked": shm_bytes,
        "trainable": counts["trainable"],
        "total": counts["total"],
        "hwm": [g["peak_rss_bytes"] for g in measured["per_rank"]] if measured else None,
        "gathered": [g.get("gathered_params_peak_bytes") for g in measured["per_rank"]] if measured else [],
        "step_time_s": measured["step_time_s"] if measured else None,
        # the ranks' seconds in DeepSpeed's forward fetches (forward + recompute), the slower rank's
        "fetch_s": max(
            ((g.get("fetch_s_leaf", 0.0), g.get("fetch_s_other", 0.0)) for g in measured["per_rank"]),
            key=sum,
            default=None,
        )
        if measured
        else None,
        "steps": steps,
        "stopped": stopped,
    }


def device_parts(cfg) -> list:
    """The planner's per-rank device items (on the CPU accelerator: RAM, one item of the RAM column)."""
    from vss_core import hardware
    from vss_core import plan as planner

    try:
        shape = hardware.model_shape(cfg.model)
        ins = planner.inputs_from_config(cfg, shape)
        return planner._device_items(ins, planner._derive(ins))  # private: its parts are not in Plan
    except Exception:  # noqa: BLE001 - the planner is being changed; the parts are informational only
        return []


def fixed_working_memory(res: dict, ram, cfg) -> float | None:
    """What a rank's own memory (RssAnon) grew by from its start to its peak beyond its planned items
    (its weight partition and optimizer share, batches, device column): on the tiny model, whose items
    are near zero, the training step's fixed working memory itself; at the larger sizes the residual
    of the planned items as well."""
    if not res["phases"] or not res["rank_split"]:
        return None
    ranks = cfg.hardware.gpus_per_node
    start = max(ph.get("started", {}).get("rss_anon", 0) for ph in res["phases"])
    grown = res["rank_split"]["RssAnon"] - start
    planned = 0.0
    for it in ram.items:
        c = it.component
        if c.startswith(("weight partitions", "optimizer", "batches in flight")) or "device memory" in c:
            planned += it.gib * GIB / ranks
    return grown - planned


def seconds_row(name: str, pred: float, meas: float, note: str = "") -> str:
    return f"  {name[:74]:74s} | {pred:8.2f}s | {meas:8.2f}s | {meas / pred:6.2f}x | {note}"


def row(name: str, pred: float | None, meas: float | None, note: str = "") -> str:
    p = "-" if pred is None else f"{pred / GIB:9.3f}"
    m = "-" if meas is None else f"{meas / GIB:9.3f}"
    r = f"{meas / pred:6.2f}x" if pred and meas is not None else "     -"
    return f"  {name[:74]:74s} | {p:>9s} | {m:>9s} | {r:>7s} | {note}"


def item(resource, *starts: str):
    """The first item of a planner resource whose name starts with any of `starts`."""
    return next((i for i in resource.items if i.component.startswith(starts)), None)


def report_size(
    h: int,
    res: dict,
    the_plan,
    cfg,
    overhead: tuple[int, int, int],
    in_memory: int,
    prepared_bytes: int,
    model_bytes: int,
) -> dict:
    """Print one size's table; return its totals' ratios."""
    from vss_core import plan as planner

    ranks = cfg.hardware.gpus_per_node
    overhead, overhead_anon, overhead_files = overhead
    ram, disk = the_plan.resource("CPU RAM"), the_plan.resource("disk")
    b = 2 if cfg.model.dtype == "bfloat16" else 4
    print(
        f"\n=== hidden {h}: {res['total'] / 1e9:.3f}B parameters ({res['trainable'] / 1e6:.2f}M trainable LoRA), "
        f"planner counts {the_plan.facts['total_params'] / 1e9:.3f}B + {the_plan.facts['lora_params'] / 1e6:.2f}M; "
        f"trained {res['wall']:.0f} s" + (f", {res['step_time_s']:.1f} s/step ===" if res["step_time_s"] else " ===")
    )
    if res["stopped"]:
        print(f"  STOPPED EARLY (figures are peaks up to the stop; no train_summary.json): {res['stopped']}")
    print(
        f"  {'planner item (its own name) / measured':74s} | {'pred GiB':>9s} | {'meas GiB':>9s} | {'ratio':>7s} | how measured"
    )
    reserve = item(ram, "kept free")
    used_items = sum(i.gib for i in ram.items if i is not reserve) * GIB
    measured_parts = 0.0
    print(" CPU RAM (per node) items:")
    for it in ram.items:
        c, pred = it.component, it.gib * GIB
        if c.startswith("weight partitions"):
            meas = res["total"] * b
            measured_parts += meas
            print(row(c, pred, meas, "parameter bytes: trainable_parameters.json total x 4 B (a count, not a reading)"))
        elif c.startswith("optimizer"):
            meas = 16 * res["trainable"]
            measured_parts += meas
            print(row(c, pred, meas, "16 B x trainable_parameters.json trainable"))
            print(
                row(
                    "  (optimizer states in a saved checkpoint, fp32 master + m + v = 12 B/param)",
                    12 * res["trainable"],
                    res["optim_on_disk"],
                    "*optim_states* files of the last checkpoint",
                )
            )
        elif c.startswith("training processes' own memory"):
            meas = ranks * overhead_anon
            measured_parts += meas
            print(row(c, pred, meas, f"{ranks} x RssAnon of a process set up as a rank before the model is built"))
        elif c.startswith("libraries' pages"):
            files = max((ph.get("trained", {}).get("rss_file", 0) for ph in res["phases"]), default=0)
            measured_parts += files
            print(
                row(
                    c,
                    pred,
                    files or None,
                    f"a rank's RssFile at the end of training (before its model: {overhead_files / GIB:.3f})",
                )
            )
        elif c.startswith("DeepSpeed launcher"):
            measured_parts += res["launcher_uss"]
            print(
                row(
                    c,
                    pred,
                    res["launcher_uss"],
                    f"USS of the launcher processes (their PSS, a share of the libraries: {res['launcher_pss'] / GIB:.3f})",
                )
            )
        elif c.startswith("a training step's fixed"):
            fixed = fixed_working_memory(res, ram, cfg)
            print(
                row(
                    c,
                    pred,
                    None if fixed is None else ranks * fixed,
                    f"{ranks} x a rank's RssAnon growth, start to peak, less its planned items (only the tiny model "
                    "has ~none: at the others, their error too)",
                )
            )
        elif c.startswith("batches in flight"):
            n = planner.loader_batches(cfg.training.loader_workers, cfg.training.prefetch_batches)
            meas = ranks * n * cfg.training.micro_batch_size * in_memory
            measured_parts += meas
            print(row(c, pred, meas, f"{ranks} x {n} x the largest prepared sample's tensors once read"))
        elif c.startswith("loader workers"):
            meas = ranks * cfg.training.loader_workers * res["worker_uss"]
            measured_parts += meas
            print(row(c, pred, meas, "ranks x workers x the largest loader-worker USS seen"))
        elif c.startswith("checkpoint load"):
            print(row(c, pred, None, "not measurable apart (rank 0, transient, inside the rank's peak)"))
        elif "device memory" in c:
            print(row(c, pred, None, "see its parts and the residual below"))
        elif it is reserve:
            print(row(c, pred, None, "headroom, not a use: left out of the totals compared below"))
        else:
            print(row(c, pred, None, "not measured here"))
    dev = item(ram, *[i.component for i in ram.items if "device memory" in i.component])
    if dev is not None:
        residual = res["node"] - measured_parts
        print(
            row(
                "  residual: the training processes' RAM at its peak - the measured parts above",
                sum(
                    i.gib
                    for i in ram.items
                    if "device memory" in i.component or i.component.startswith("a training step's fixed")
                )
                * GIB,
                residual,
                "left for the device column and the fixed working memory (+ checkpoint load)",
            )
        )
        parts = device_parts(cfg)
        gathered = [g for g in res["gathered"] if g is not None]
        planned_gathered = sum(p.gib * GIB for p in parts if p.component.startswith(("MoE leaf", "other gathered")))
        print(
            row(
                "    per rank: gathered parameters at once (the leaf once + the others)",
                planned_gathered,
                max(gathered) if gathered else None,
                "DeepSpeed's own count of available elements at each module's forward (train._ZeroGathers)",
            )
        )
        for part in parts:
            print(row(f"    per rank, planned: {part.component}", part.gib * GIB, None, "planned only"))
        print(
            "    (CPU accelerator: no CUDA context or allocator fragmentation is planned and there is no GPU"
            " memory to compare; these parts live in the ranks' RAM and are only seen in the totals)"
        )
    print(" RAM totals:")
    per_rank_pred = planner.ram_per_rank(ram.items) * GIB
    rank_rss = max(res["rank_rss"]) if res["rank_rss"] else None
    print(
        row("per rank: plan.ram_per_rank vs the rank process's RSS peak (max)", per_rank_pred, rank_rss, "RSS, 0.2 s")
    )
    print(
        row(
            "per rank: same vs rank VmHWM (max, train_summary.json)",
            per_rank_pred,
            max(res["hwm"]) if res["hwm"] else None,
            "getrusage",
        )
    )
    split = res["rank_split"]
    if split:
        print("    at the largest rank's RSS peak: " + ", ".join(f"{k} {v / GIB:.3f} GiB" for k, v in split.items()))
    for i, ph in enumerate(res["phases"]):  # train_summary.json: each rank's memory at the end of each phase
        cells = [
            f"{k} " + " / ".join(f"{m.get(x, 0) / GIB:.3f}" for x in ("rss_anon", "rss_file", "peak_rss"))
            for k, m in ph.items()
        ]
        print(f"    rank {i} by phase (RssAnon / RssFile / peak RSS, GiB): " + "; ".join(cells))
        loaded = ph.get("model_loaded", {})
        if "partition_bytes" in loaded:
            grown = loaded.get("rss_anon", 0) - ph.get("started", {}).get("rss_anon", 0)
            print(
                f"      its weight partitions (ds_tensor bytes) {loaded['partition_bytes'] / GIB:.3f} GiB; "
                f"its RssAnon grew {grown / GIB:.3f} GiB while the model loaded"
            )
    if res["other_pss"]:
        print(row("  (other processes of the tree while the ranks ran, PSS)", None, res["other_pss"], ""))
        for line in res["others"]:
            print(f"      {line}")
    print(
        row(
            "  (the rank with its loader workers: tree RSS peak, shared pages counted in each)",
            None,
            max(res["tree_peaks"]) if res["tree_peaks"] else None,
            "",
        )
    )
    print(
        row(
            "per node: need - OS reserve vs the training processes' RAM",
            used_items,
            res["node"],
            "at one instant: anonymous PSS + library pages once (largest RssFile)",
        )
    )
    print(
        row(
            "  (same vs their PSS sum: library pages other processes map too counted in part)",
            used_items,
            res["pss_sum"],
            "",
        )
    )
    print(
        row("  (same vs psutil used, peak - idle: no shared memory, no file pages)", used_items, res["used_delta"], "")
    )
    print(row("  (same vs psutil available, idle - min)", used_items, res["avail_drop"], "whole machine, noisy"))
    print(
        row(
            "  (same vs training processes' RSS sum: shared pages counted per process)", used_items, res["tree_sum"], ""
        )
    )
    print(row("per node: need (with reserve) as `vss plan` prints it", ram.need_gib * GIB, res["node"], ""))
    print(" disk items:")
    for it in disk.items:
        c, pred = it.component, it.gib * GIB
        if c.startswith("model weights"):
            print(row(c, pred, None, f"local model.source used in place ({model_bytes / GIB:.2f} GiB of files)"))
        elif c.startswith("prepared data"):
            print(row(c, pred, prepared_bytes, "files of the prepared folder"))
        elif c.startswith("checkpoints"):
            print(row(c, pred, res["ckpt_peak"], "checkpoints folder, peak while training"))
            keep = cfg.training.checkpoints_to_keep + 1
            print(
                row(
                    "  one checkpoint (the item / kept + 1)",
                    pred / keep,
                    res["ckpt_one"],
                    "the last checkpoint's files",
                )
            )
            print(
                row(
                    "    of it *model_states* (frozen_param_fragments) vs frozen params x model dtype",
                    (res["total"] - res["trainable"]) * b,
                    res["model_states_on_disk"],
                    f"every rank's frozen partition, stored as {res['frozen_dtype']}: no plan item",
                )
            )
        elif c.startswith("adapter"):
            print(row(c, pred, res["adapter"], "the adapter folder"))
        else:
            print(row(c, pred, None, "not measured here"))
    disk_meas = prepared_bytes + res["ckpt_peak"] + res["adapter"]
    print(row("disk total: need vs prepared + checkpoints' peak + adapter", disk.need_gib * GIB, disk_meas, ""))
    print(row("  (the whole run folder at the end: logs, metrics, config too)", None, res["run_dir"], ""))
    if res["shm_leaked"]:
        print(
            f"  note: the run left {res['shm_leaked'] / GIB:.3f} GiB of DeepSpeed all-reduce buffers in /dev/shm "
            "(removed by this benchmark); RAM no plan item holds"
        )
    step_pred = the_plan.time.step_s if the_plan.time is not None else None
    if step_pred and res["step_time_s"]:
        rates = the_plan.time.assumptions[0].removeprefix("rates: ")
        print(
            seconds_row(
                "time: seconds per optimizer step (vss plan estimate vs the run)",
                step_pred,
                res["step_time_s"],
                f"rates {rates}",
            )
        )
        if res["fetch_s"]:
            # the estimate's parameter traffic is 3 passes a micro batch (forward, recompute, backward);
            # the run times the fetches of the first two (train._ZeroGathers)
            micro = cfg.training.gradient_accumulation_steps
            traffic = sum(i.seconds for i in the_plan.time.items if i.component.startswith("parameter")) * micro
            leaf, other = (x / res["steps"] for x in res["fetch_s"])
            print(
                seconds_row(
                    "  of it: parameter fetches in the forward + recompute (2 of 3 passes)",
                    traffic * 2 / 3,
                    leaf + other,
                    f"DeepSpeed's pre-forward hooks: MoE leaves {leaf:.2f} s + the rest {other:.2f} s",
                )
            )
            print(
                seconds_row(
                    "  of it: the rest (compute, the backward's fetches, optimizer)",
                    step_pred - traffic * 2 / 3,
                    res["step_time_s"] - leaf - other,
                )
            )
    return {
        "seconds per step": res["step_time_s"] / step_pred if step_pred and res["step_time_s"] else None,
        "RAM per rank (RSS peak)": rank_rss / per_rank_pred if rank_rss else None,
        "RAM per rank (VmHWM)": max(res["hwm"]) / per_rank_pred if res["hwm"] else None,
        "RAM per node": res["node"] / used_items,
        "disk": disk_meas / (disk.need_gib * GIB) if disk.need_gib else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="0,384,768,1152",
        help="hidden sizes of the scaled models, comma-separated (0: the demo's tiny model as it is)",
    )
    parser.add_argument("--layers", type=int, default=6, help="decoder layers of every scaled model")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of each training")
    parser.add_argument("--accumulation", type=int, default=1, help="training.gradient_accumulation_steps")
    parser.add_argument("--samples", type=int, default=8, help="generated demo samples")
    parser.add_argument(
        "--ram-stop-gb",
        type=float,
        default=1.0,
        help="training.ram_stop_gb: the run checkpoints and stops when available RAM falls below this "
        "(the default 2 stops the 1B size on a 24 GiB machine whose /dev/shm holds others' leftovers); "
        "a stopped run is still reported, marked STOPPED EARLY",
    )
    parser.add_argument("--dir", help="keep models, data and runs here (default: a temp dir, removed)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.steps < 2:
        parser.error("--steps must be at least 2 (a checkpoint is saved after every step but the last)")

    from vss_core import codec, data, demo, hardware
    from vss_core import plan as planner
    from vss_core.config import load_config

    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.dir or tmp).absolute()
        work.mkdir(parents=True, exist_ok=True)
        codec_dir = work / "codec"
        if not codec_dir.is_dir():
            codec.write_tiny_codec(codec_dir)
        demo.write_demo_dataset(work / "data", args.samples, seconds=2.0, overwrite=True)
        overhead = process_overhead()
        print(
            f"process overhead (a rank before its model): RSS {overhead[0] / GIB:.3f} GiB: its own (RssAnon) "
            f"{overhead[1] / GIB:.3f} GiB, library pages (RssFile + RssShmem) {overhead[2] / GIB:.3f} GiB",
            flush=True,
        )
        rows = {}
        for h in sizes:
            model_dir = work / (f"model-{h}x{args.layers}" if h else "model-tiny")
            if not (model_dir / "config.json").is_file():
                shutil.rmtree(model_dir, ignore_errors=True)
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _WRITE_CHILD,
                        str(model_dir),
                        json.dumps(scaled_llm(h, args.layers) if h else {}),
                    ],
                    check=True,
                    cwd=REPO,
                )
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
                    "training.gradient_accumulation_steps": args.accumulation,
                    "training.save_every_n_steps": 1,
                    "training.ram_stop_gb": args.ram_stop_gb,
                },
            )
            report = data.validate_dataset(cfg.data)
            prepared = Path(
                data.prepare_dataset(report.valid, cfg.data, model_dir, codec_dir, work / f"prepared-{h}").dir
            )
            vm, free = psutil.virtual_memory(), shutil.disk_usage(work).free
            machine = planner.Machine(gpus_per_node=2, gpu_memory_gib=None, ram_gib=vm.total / GIB, disk_gib=free / GIB)
            the_plan = hardware.plan_run(cfg, machine)
            print(
                f"hidden {h}: checkpoint {du(model_dir) / GIB:.2f} GiB on disk; planned RAM "
                f"{the_plan.resource('CPU RAM').need_gib:.2f} GiB of {vm.total / GIB:.1f} "
                f"({vm.available / GIB:.1f} available); training ...",
                flush=True,
            )
            idle_children()
            res = train_one(cfg, model_dir, prepared, f"plan-{h}", args.steps)
            rows[h] = report_size(
                h, res, the_plan, cfg, overhead, sample_in_memory(prepared), du(prepared), du(model_dir)
            )
            sys.stdout.flush()

        print("\n=== totals: measured / predicted at each size (goal: within 0.90..1.10; time: rates assumed) ===")
        names = list(next(iter(rows.values())))
        print(
            f"  {'total':32s} | "
            + " | ".join(f"hidden {h:>5d}" if h else "        tiny" for h in sizes)
            + " | within 10% everywhere | error grows"
        )
        for n in names:
            ratios = [rows[h][n] for h in sizes]
            cells = " | ".join("           -" if r is None else f"{r:11.2f}x" for r in ratios)
            known = [r for r in ratios if r is not None]
            within = all(abs(r - 1) <= 0.10 for r in known) if known else None
            errs = [abs(r - 1) for r in known]
            grows = len(errs) > 1 and all(b >= a for a, b in zip(errs, errs[1:])) and errs[-1] > errs[0]
            print(f"  {n:32s} | {cells} | {str(within):>21s} | {'yes' if grows else 'no'}")
        print(
            f"\nwall time {time.perf_counter() - begun:.0f} s; work dir {'kept: ' + str(work) if args.dir else 'removed'}"
        )


if __name__ == "__main__":
    main()
