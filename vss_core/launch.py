"""Start the training process through the DeepSpeed launcher and judge it by what it wrote.

gloo can abort at teardown after a successful run (DESIGN.md), so the outcome is the adapter and
train_summary.json on disk, not the exit code alone.

Nothing outlives its run: the launcher starts in its own session (process group), which is ended as
a whole when the caller is interrupted or cancelled (KeyboardInterrupt, Prefect's TerminationSignal
on SIGTERM); each rank dies with its parent and watches this process's pid (vss_core.train
`die_with_parent`), so even a SIGKILL of this process ends the ranks; and no run starts while ranks
of an earlier run of its directory are alive.
"""

from __future__ import annotations

import collections
import contextvars
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from vss_core.config import VSSConfig
from vss_core.errors import NONFINITE_MARK, TrainingDivergedError, TrainingError
from vss_core.monitor import ResourceSample, sample_resources, stop_reason
from vss_core.runs import (
    NODE_RANK_ARG,
    STOP_REQUEST,
    STOPPED,
    RunPaths,
    refuse_live_ranks,
    write_config,
    write_json_atomic,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
OOM_MARKERS = (
    "CUDA out of memory",
    "torch.OutOfMemoryError",
    "torch.cuda.OutOfMemoryError",
    "CUBLAS_STATUS_ALLOC_FAILED",
)
STEP_DOWNS = "step_downs.json"
STOP_GRACE_S = 20.0  # after SIGTERM, how long the launcher's group gets to exit before SIGKILL
log = logging.getLogger(__name__)


class TrainingReport(BaseModel):
    run_dir: str
    adapter_dir: str
    steps: int
    first_loss: float
    final_loss: float
    trainable_parameters: int
    total_parameters: int
    resumed_from_step: int
    exit_code: int
    wall_s: float = 0.0  # the training subprocess's wall time (0 when reused)
    reused: bool = False  # this run's adapter already existed: nothing was trained
    step_downs: list[str] = []  # memory step-downs applied after CUDA OOM
    plan_check: dict | None = None  # measured peaks beside the plan's (vss_core.plancheck.PlanCheck)


class TrainingOOMError(TrainingError):
    """CUDA ran out of memory (handled by run_training's step-downs)."""


class TrainingStoppedError(TrainingError):
    """Training stopped cleanly on purpose (swap growth, low RAM); retrying would stop again."""

    retryable = False


def _deepspeed_bin() -> str:
    here = Path(sys.executable).with_name("deepspeed")
    return str(here) if here.exists() else (shutil.which("deepspeed") or "deepspeed")


def free_port() -> int:
    """A TCP port free on this machine now (two runs on one box must not share 29500)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHM_DIR = Path("/dev/shm")


def _shm_buffers() -> list[tuple[Path, str, str]]:
    """(path, master address, port) of this user's DeepSpeed all-reduce buffers.

    DeepSpeed's CPU accelerator gives each rank a 66 MB `/dev/shm/deepspeed_allreduce_buffer_<uid>_
    <addr>_<port>_<rank>` and never unlinks it (ops/csrc/cpu/comm/shm.cpp has a `shared_close` no
    one calls): every CPU run on a machine kept 132 MB of RAM until reboot (10.6 GB seen here).
    """
    if not SHM_DIR.is_dir():
        return []
    prefix = f"deepspeed_allreduce_buffer_{os.getuid()}_"
    found = []
    for path in SHM_DIR.glob(prefix + "*"):
        parts = path.name[len(prefix) :].rsplit("_", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            found.append((path, parts[0], parts[1]))
    return found


def _unlink(paths: list[Path]) -> list[str]:
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:  # gone already
            pass
    return removed


def remove_shm_buffers(cmd: list[str]) -> list[str]:
    """Delete the all-reduce buffers (`_shm_buffers`) the ranks of this launch left, once they are
    gone. The port is this launch's own rendezvous port, free when it started, so no other live
    run's buffers match. Returns the names removed."""
    if "--master_port" not in cmd:
        return []
    port = cmd[cmd.index("--master_port") + 1]
    return _unlink([path for path, _, p in _shm_buffers() if p == port])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def remove_stale_shm_buffers(min_age_s: float = 60.0) -> list[str]:
    """Delete the all-reduce buffers of local launches that are over: vss killed before it could
    (`remove_shm_buffers`), or runs of other tools. A buffer is stale when nothing holds its
    rendezvous port on this machine (every live run's rank 0 keeps its store bound there, and binds
    it before the buffers exist) and it is older than min_age_s. Returns the names removed."""
    now, free = time.time(), {}
    stale = []
    for path, addr, port in _shm_buffers():
        if addr not in ("127.0.0.1", "localhost"):
            continue
        try:
            old = now - path.stat().st_mtime >= min_age_s
        except OSError:
            continue
        if old and free.setdefault(port, _port_free(int(port))):
            stale.append(path)
    return _unlink(stale)


def build_command(
    cfg: VSSConfig, run: RunPaths, model_dir: Path, prepared_dir: Path, master_port: int | None = None
) -> list[str]:
    """The launcher command line. Multi-node goes through DeepSpeed's own hostfile mechanism.

    A single-node run gets a free rendezvous port, so concurrent runs on one machine don't collide
    on DeepSpeed's default 29500; multi-node runs keep the launcher's default unless one is given.
    """
    hw = cfg.hardware
    cmd = [_deepspeed_bin()]
    if hw.hostfile:
        cmd += ["--hostfile", hw.hostfile, "--num_nodes", str(hw.nodes), "--num_gpus", str(hw.gpus_per_node)]
    else:
        cmd += ["--num_gpus", str(hw.gpus_per_node)]
        master_port = master_port or free_port()
    if hw.node_rank is not None:  # each node's vss starts its own launcher: DeepSpeed's no-ssh mode
        cmd += ["--no_ssh", "--node_rank", str(hw.node_rank), "--master_addr", str(hw.master_addr)]
        master_port = master_port or hw.master_port
    if master_port:
        cmd += ["--master_port", str(master_port)]
    cmd += ["--module", "vss_core.train", "--config", run.config]
    if hw.node_rank is not None:
        cmd += [NODE_RANK_ARG, str(hw.node_rank)]
    if not hw.hostfile or hw.node_rank is not None:
        # ranks on this machine watch this process; over ssh a remote node cannot see its pid
        cmd += ["--parent-pid", str(os.getpid())]
    cmd += [
        "--model-dir",
        str(model_dir),
        "--prepared-dir",
        str(prepared_dir),
    ]
    return cmd


# A CPU rank's freed tensors go back to the OS only when glibc served them with mmap, and by default
# glibc raises its mmap threshold (up to 32 MiB) after each such free: the rank's gathered weights,
# all-gather buffers and activations then come from the heap, which keeps what it frees. bench/bench_plan.py
# measured a rank's memory beyond its other items at 1.9-3.2x the device column's bytes that way. Setting
# the threshold turns the dynamic adjustment off (mallopt(3), M_MMAP_THRESHOLD; MALLOC_MMAP_THRESHOLD_ is
# its environment form): every block of 1 MiB or more is mmap'ed and leaves RSS when freed, so a rank holds
# what its live tensors take and the plan need not guess glibc's retention (a rank's peak: 0.98-1.08x the plan
# from 0.006B to 1B parameters, README "Will it fit?").
CPU_MMAP_THRESHOLD = 1 << 20


def training_env(cfg: VSSConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the training process: CPU accelerator for the demo (with glibc's mmap threshold
    fixed, see CPU_MMAP_THRESHOLD), cached op builds. A value the user set is kept."""
    env = dict(os.environ if base is None else base)
    if cfg.hardware.accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(CPU_MMAP_THRESHOLD))
    # DeepSpeed compiles cpu_adam / shm_comm on first use (~75 s); keep the builds between runs.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vss" / "torch_extensions"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def completed_report(
    run: RunPaths, exit_code: int = 0, wall_s: float = 0.0, reused: bool = False
) -> TrainingReport | None:
    """The report of a training that finished writing its adapter, or None when the adapter or the
    summary is missing or damaged (a re-run then trains, resuming from checkpoints)."""
    from safetensors import safe_open

    adapter = Path(run.adapter)
    summary_file = Path(run.root) / "train_summary.json"
    if not (all((adapter / f).is_file() for f in ADAPTER_FILES) and summary_file.is_file()):
        return None
    try:
        summary = json.loads(summary_file.read_text())
        json.loads((adapter / "adapter_config.json").read_text())
        with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
            if not list(f.keys()):
                return None
    except Exception:  # unreadable JSON or safetensors: not an adapter to trust
        return None
    nan = float("nan")
    return TrainingReport(
        run_dir=run.root,
        adapter_dir=str(adapter),
        steps=summary["steps"],
        first_loss=nan if summary["first_loss"] is None else summary["first_loss"],
        final_loss=nan if summary["final_loss"] is None else summary["final_loss"],
        trainable_parameters=summary["trainable_parameters"],
        total_parameters=summary["total_parameters"],
        resumed_from_step=summary["resumed_from_step"],
        exit_code=exit_code,
        wall_s=wall_s,
        reused=reused,
        step_downs=_read_step_downs(run),
        plan_check=summary.get("plan_check"),
    )


def _read_step_downs(run: RunPaths) -> list[str]:
    path = Path(run.root) / STEP_DOWNS
    return [d["change"] for d in json.loads(path.read_text())] if path.is_file() else []


def is_out_of_memory(lines: list[str]) -> bool:
    """Whether the training output shows a CUDA out-of-memory failure."""
    return any(marker in line for line in lines for marker in OOM_MARKERS)


def next_step_down(cfg: VSSConfig) -> tuple[VSSConfig, str] | None:
    """The next memory-only change after a CUDA OOM, or None when none is left.

    Never touches LoRA rank, learning rate or data; a smaller micro batch gets more accumulation so the
    effective batch stays the same.
    """
    ds, tr = cfg.deepspeed, cfg.training
    if ds.max_live_parameters > 1e8:
        live = max(1e8, ds.max_live_parameters / 2)
        prefetch = max(1e6, (ds.prefetch_bucket_size or 5e7) / 2)
        change = {
            "max_live_parameters": live,
            "max_reuse_distance": min(ds.max_reuse_distance, live),
            "prefetch_bucket_size": prefetch,
        }
        why = (
            f"deepspeed.max_live_parameters {ds.max_live_parameters:.0e} -> {live:.0e}, "
            f"max_reuse_distance -> {min(ds.max_reuse_distance, live):.0e}, prefetch_bucket_size -> {prefetch:.0e}"
        )
        return cfg.model_copy(update={"deepspeed": ds.model_copy(update=change)}), why
    if not ds.allgather_sequential:
        return (
            cfg.model_copy(update={"deepspeed": ds.model_copy(update={"allgather_sequential": True})}),
            "deepspeed.allgather_sequential false -> true (gather the MoE leaf parameter by parameter)",
        )
    if tr.micro_batch_size > 1:
        micro = tr.micro_batch_size // 2
        accum = tr.gradient_accumulation_steps * tr.micro_batch_size // micro
        return (
            cfg.model_copy(
                update={
                    "training": tr.model_copy(update={"micro_batch_size": micro, "gradient_accumulation_steps": accum})
                }
            ),
            f"training.micro_batch_size {tr.micro_batch_size} -> {micro}, "
            f"gradient_accumulation_steps {tr.gradient_accumulation_steps} -> {accum} (same effective batch)",
        )
    return None


def _guarded(what: str, call: Callable, *args) -> None:
    """Run one monitor step; an exception is logged and the follower goes on (its guards must not die)."""
    try:
        call(*args)
    except Exception:
        log.exception("training monitor: %s failed; monitoring continues", what)


def _read_new_records(metrics: Path, offset: int) -> tuple[list[dict], int]:
    """Complete metrics lines past `offset`, and the new offset; a malformed line is logged and skipped."""
    if not metrics.is_file():
        return [], offset
    with open(metrics, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    records = []
    for line in complete.decode(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("training monitor: skipped a malformed line of %s: %r", metrics, line[:200])
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, offset + len(complete)


def _follow(
    run: RunPaths,
    cfg: VSSConfig,
    stop: threading.Event,
    on_metrics: Callable[[list[dict]], None],
    on_resources: Callable[[ResourceSample], None],
    sampler: Callable[[], ResourceSample],
) -> None:
    """Follow metrics.jsonl and sample resources until `stop`; ask training to stop on swap growth
    or, without swap, low RAM (monitor.stop_reason). A failing callback, sampler or malformed line
    is logged and skipped: the guards keep running."""
    metrics, offset = Path(run.metrics), 0
    baseline: list[float] = []  # swap in use at the first good sample

    def sample_and_guard() -> None:
        sample = sampler()
        if not baseline:
            baseline.append(sample.swap_used_gb)
        _guarded("the resources callback", on_resources, sample)
        reason = stop_reason(sample, baseline[0], cfg.training)
        stop_file = Path(run.root) / STOP_REQUEST
        if reason and not stop_file.exists():
            log.warning("training monitor: asking training to checkpoint and stop: %s", reason)
            stop_file.write_text(reason)

    def read_metrics() -> None:
        nonlocal offset
        records, offset = _read_new_records(metrics, offset)
        if records:
            _guarded("the metrics callback", on_metrics, records)

    _guarded("the first resource sample", sample_and_guard)
    next_sample = time.time() + cfg.training.monitor_interval_s
    while not stop.wait(min(0.5, cfg.training.monitor_interval_s)):
        _guarded("reading metrics", read_metrics)
        if time.time() >= next_sample:
            next_sample = time.time() + cfg.training.monitor_interval_s
            _guarded("the resource sample", sample_and_guard)


def end_process_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """End the launcher's whole process group (it leads its own session): SIGTERM, then SIGKILL
    after `grace_s`. Ranks that outlive the launcher itself are in the group and end too."""

    def signal_group(sig: int) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):  # the group is gone
            return False

    if not signal_group(signal.SIGTERM):
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + grace_s
    while time.time() < deadline and _group_alive(proc.pid):
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("the training launcher (pid %d) did not exit after SIGKILL", proc.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def run_training(
    cfg: VSSConfig,
    run: RunPaths,
    model_dir: Path,
    prepared_dir: Path,
    on_line: Callable[[str], None] = lambda line: None,
    on_metrics: Callable[[list[dict]], None] = lambda records: None,
    on_resources: Callable[[ResourceSample], None] = lambda sample: None,
    sampler: Callable[[], ResourceSample] = sample_resources,
) -> TrainingReport:
    """Run training to completion, or reuse the adapter this run already produced.

    Each output line goes to `on_line` and RUN/train.log; new metrics records to `on_metrics`;
    resource samples (every training.monitor_interval_s) to `on_resources` (a callback that raises
    is logged, not fatal). Swap growth past training.swap_stop_gb, or on a machine without swap
    available RAM below training.ram_stop_gb, makes training checkpoint and stop. A CUDA out-of-memory failure is
    retried with the next memory-only step-down (up to training.oom_step_downs), each recorded in
    RUN/step_downs.json and in the run's config.json.

    The launcher runs in its own process group, ended as a whole when this call is interrupted
    (KeyboardInterrupt, a Prefect cancellation's TerminationSignal); ranks also die when this
    process dies, however it dies.

    Raises:
        RunInProgressError: processes of an earlier run of this directory still train (pids named).
        TrainingStoppedError: training stopped cleanly on swap growth or low RAM (not retried: change the config).
        TrainingError: the process failed, or finished without writing a complete adapter.
    """
    refuse_live_ranks(run, cfg.hardware.node_rank)
    done = completed_report(run, reused=True)
    if done is not None:
        return done
    for attempt in range(cfg.training.oom_step_downs + 1):
        try:
            return _run_once(cfg, run, model_dir, prepared_dir, on_line, on_metrics, on_resources, sampler)
        except TrainingOOMError as exc:
            step = next_step_down(cfg) if attempt < cfg.training.oom_step_downs else None
            if step is None:
                raise TrainingError(
                    f"{exc}\nNo memory step-down left (training.oom_step_downs="
                    f"{cfg.training.oom_step_downs}). Run `vss plan` for what would fit."
                ) from None
            cfg, change = step
            on_line(f"CUDA out of memory: retrying with a memory-only step-down: {change}")
            path = Path(run.root) / STEP_DOWNS
            history = json.loads(path.read_text()) if path.is_file() else []
            write_json_atomic(path, history + [{"change": change, "time": time.time()}])
            write_config(run, cfg)
    raise AssertionError("unreachable")


def node_log(cfg: VSSConfig, run: RunPaths) -> Path:
    """This node's launcher log: RUN/train.log, or RUN/train-node-K.log on node K > 0 of a multi-node
    run without ssh (every node writes into the one shared run directory)."""
    node = cfg.hardware.node_rank
    return Path(run.log) if not node else Path(run.root) / f"train-node-{node}.log"


def _run_once(cfg, run, model_dir, prepared_dir, on_line, on_metrics, on_resources, sampler) -> TrainingReport:
    if not cfg.hardware.node_rank:  # node 0 (or the only node) owns the run's stop files
        for name in (STOP_REQUEST, STOPPED):
            (Path(run.root) / name).unlink(missing_ok=True)
    log_path = node_log(cfg, run)
    stale = remove_stale_shm_buffers()
    if stale:
        log.info(
            "Removed %d stale DeepSpeed all-reduce buffers from %s (runs that ended without removing them)",
            len(stale),
            SHM_DIR,
        )
    cmd = build_command(cfg, run, model_dir, prepared_dir)
    stop = threading.Event()
    # The callbacks run in the caller's context (contextvars: e.g. the orchestrator's run context).
    follower = threading.Thread(
        target=contextvars.copy_context().run,
        args=(_follow, run, cfg, stop, on_metrics, on_resources, sampler),
        daemon=True,
        name="vss-follow",
    )
    started = time.time()
    with open(log_path, "a") as log_file:
        log_file.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=training_env(cfg),
            cwd=str(Path(run.root)),
            bufsize=1,
            start_new_session=True,  # its own process group: ended as a whole below
        )
        follower.start()
        tail: collections.deque[str] = collections.deque(maxlen=200)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                log_file.write(line + "\n")
                tail.append(line)
                on_line(line)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the caller was interrupted or cancelled: don't leave ranks running
                log.warning("training interrupted: ending the launcher's process group (pid %d)", proc.pid)
                end_process_group(proc)
            elif _group_alive(proc.pid):  # the launcher exited and left ranks behind
                end_process_group(proc, grace_s=5.0)
            stop.set()
            follower.join(timeout=5)
            remove_shm_buffers(cmd)
    wall = time.time() - started

    stopped = Path(run.root) / STOPPED
    if stopped.is_file():
        info = json.loads(stopped.read_text())
        raise TrainingStoppedError(
            f"training stopped cleanly at step {info['step']} after saving checkpoint {info['checkpoint']}: "
            f"{info['reason']}. The machine is short of RAM for this run: lower deepspeed.max_live_parameters, "
            "use deepspeed.offload_param=nvme, fewer data.video_frames / data.audio_seconds, or add RAM; "
            "a re-run with the same inputs resumes from that checkpoint."
        )
    report = completed_report(run, exit_code=code, wall_s=wall)
    if report is None:
        if is_out_of_memory(tail):
            raise TrainingOOMError(f"training ran out of GPU memory. Full log: {log_path}")
        diverged = [line for line in tail if NONFINITE_MARK in line]
        if diverged:  # not retried: the same samples give the same loss again
            raise TrainingDivergedError(f"{diverged[-1].strip()}\nFull log: {log_path}")
        raise TrainingError(
            f"training exited with code {code} without writing a complete adapter to {run.adapter}. "
            f"Full log: {log_path}. Last lines:\n" + "\n".join(list(tail)[-15:])
        )
    return report
