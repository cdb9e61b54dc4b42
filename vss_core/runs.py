"""The run directory: one folder per run holding the resolved config, the DeepSpeed JSON, logs,
metrics, checkpoints and the adapter. Files between stages, never tensors.

    <training.output_dir>/<run_name>/
        config.json        resolved VSSConfig (re-validated by the training process)
        ds_config.json     generated DeepSpeed config
        train.log          the training subprocess's output
        metrics.jsonl      one JSON object per logged step
        checkpoints/       step-N/ (complete ones only)
        adapter/           adapter_config.json, adapter_model.safetensors
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
from pydantic import BaseModel

from vss_core.atomic import write_json_atomic  # noqa: F401 - re-exported: runs writes its JSON with it
from vss_core.config import VSSConfig, deepspeed_config
from vss_core.errors import ConfigError

# Files by which the flow side and the training process talk about stopping.
STOP_REQUEST = "STOP"  # written by vss_core.launch (swap growth): training checkpoints and exits at its next step
STOPPED = "stopped.json"  # written by training when it honoured a stop request: step, checkpoint, reason


class RunPaths(BaseModel):
    root: str

    def _p(self, name: str) -> str:
        return str(Path(self.root) / name)

    @property
    def config(self) -> str:
        return self._p("config.json")

    @property
    def ds_config(self) -> str:
        return self._p("ds_config.json")

    @property
    def log(self) -> str:
        return self._p("train.log")

    @property
    def metrics(self) -> str:
        return self._p("metrics.jsonl")

    @property
    def checkpoints(self) -> str:
        return self._p("checkpoints")

    @property
    def adapter(self) -> str:
        return self._p("adapter")

    @property
    def eval_dir(self) -> str:
        return self._p("eval")

    @property
    def tensorboard(self) -> str:
        return self._p("tensorboard")


def write_config(paths: RunPaths, cfg: VSSConfig) -> None:
    """Write the run's config.json and the DeepSpeed JSON generated from it (the pair always agrees)."""
    write_json_atomic(paths.config, cfg.model_dump(mode="json"))
    write_json_atomic(paths.ds_config, deepspeed_config(cfg))


def create_run(cfg: VSSConfig) -> RunPaths:
    """Create a fresh run directory (named by time) and write config.json and ds_config.json into it.

    Raises:
        ConfigError: training.run_name names a directory that already exists.
    """
    base = Path(cfg.training.output_dir).absolute()
    base.mkdir(parents=True, exist_ok=True)
    name = cfg.training.run_name or f"{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    root = base / name
    try:
        root.mkdir()  # exclusive: two runs never share a directory
    except FileExistsError:
        raise ConfigError(
            f"training.run_name: run directory {root} already exists. Choose another name or leave it unset."
        ) from None
    paths = RunPaths(root=str(root))
    write_config(paths, cfg)
    return paths


# Settings that do not change what training computes: where things go, and the upload stage.
_NOT_TRAINING_INPUTS = {
    # which node this is and where node 0 listens: every node of one run has the same training key
    "hardware": {"node_rank", "master_addr", "master_port"},
    # where runs go, how they are watched and how samples are read: none changes what is trained
    "training": {
        "output_dir",
        "run_name",
        "monitor_interval_s",
        "swap_stop_gb",
        "ram_stop_gb",
        "oom_step_downs",
        "loader_workers",
        "prefetch_batches",
    },
}


def training_key(cfg: VSSConfig, weights: str, dataset_fingerprint: str, prepared_key: str) -> str:
    """Identity of a training: the config that shapes it plus its inputs (weights revision, data
    fingerprint, preparation settings). Same key, same adapter: a re-run reuses or resumes it."""
    payload = cfg.model_dump(
        mode="json", exclude={"upload": True, "eval": True, **_NOT_TRAINING_INPUTS, "profile": True}
    )
    blob = json.dumps([payload, weights, dataset_fingerprint, prepared_key], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunInProgressError(ConfigError):
    """Another process holds the run directory, or ranks of an earlier run of it are still alive."""


NODE_RANK_ARG = "--node-rank"


def live_ranks(run: RunPaths, node_rank: int | None = None) -> list[int]:
    """Pids of live processes training this run directory: DeepSpeed launchers and ranks started for
    RUN/config.json (found by their command line), this process excluded. With a node rank (multi-node
    without ssh), only this node's: the ones started with `--node-rank K` (other nodes' ranks are theirs)."""
    found = []
    mine = None if node_rank is None else [NODE_RANK_ARG, str(node_rank)]
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            proc.info["pid"] != os.getpid()
            and proc.info["status"] != psutil.STATUS_ZOMBIE
            and run.config in cmdline
            and "vss_core.train" in cmdline
            and (mine is None or _has_pair(cmdline, mine))
        ):
            found.append(proc.info["pid"])
    return sorted(found)


def _has_pair(cmdline: list[str], pair: list[str]) -> bool:
    return any(cmdline[i : i + 2] == pair for i in range(len(cmdline) - 1))


def refuse_live_ranks(run: RunPaths, node_rank: int | None = None) -> None:
    """Raise when processes of an earlier run of this directory still train (e.g. orphaned ranks);
    with a node rank, this node's only.

    Raises:
        RunInProgressError: naming their pids and how to end them.
    """
    pids = live_ranks(run, node_rank)
    if pids:
        listed = ", ".join(f"pid {pid}" for pid in pids)
        raise RunInProgressError(
            f"run directory {run.root} is still being trained by processes of an earlier run ({listed}): "
            "starting beside them would mix two trainings in one directory. Wait for them to exit, or end "
            f"them (`kill {' '.join(map(str, pids))}`) and run again: the run resumes from its last complete checkpoint."
        )


def open_run(cfg: VSSConfig, key: str) -> tuple[RunPaths, VSSConfig]:
    """The run directory for a training key: created with config.json and ds_config.json the first time,
    found again by a re-run with the same inputs (which then reuses its adapter or resumes its
    checkpoints). Returns the paths and the run's effective config — the recorded one, which carries
    any memory step-downs an earlier attempt made.

    Raises:
        ConfigError: training.run_name names a directory made for other inputs.
    """
    base = Path(cfg.training.output_dir).absolute()
    base.mkdir(parents=True, exist_ok=True)
    root = base / (cfg.training.run_name or f"{cfg.profile}-{key[:12]}")
    paths = RunPaths(root=str(root))
    inputs = root / "inputs.json"
    if inputs.is_file():
        recorded = json.loads(inputs.read_text()).get("key")
        if recorded != key:
            raise ConfigError(
                f"training.run_name: run directory {root} was made for other inputs (key {recorded}, now {key}). "
                "Choose another run_name, or leave it unset to get one directory per set of inputs."
            )
        effective = VSSConfig.model_validate_json(Path(paths.config).read_text())
        # where things go and how the run is watched follow the current request
        effective = effective.model_copy(
            update={
                "upload": cfg.upload,
                **{
                    section: getattr(effective, section).model_copy(
                        update={k: getattr(getattr(cfg, section), k) for k in keys}
                    )
                    for section, keys in _NOT_TRAINING_INPUTS.items()
                },
            }
        )
        return paths, effective
    root.mkdir(exist_ok=True)
    write_config(paths, cfg)
    write_json_atomic(inputs, {"key": key, "created": time.time()})
    return paths, cfg


@contextmanager
def locked(run: RunPaths, node_rank: int | None = None):
    """Hold the run directory for this process; a second run of the same inputs fails fast. In a
    multi-node run without ssh each node holds its own lock (`.lock-node-K`) on the shared directory.

    Raises:
        RunInProgressError: another live process holds it, or ranks of an earlier run of it are still
            alive (their pids are named).
    """
    lock_path = Path(run.root) / (".lock" if node_rank is None else f".lock-node-{node_rank}")
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunInProgressError(
            f"run directory {run.root} is in use by {holder}: a run with the same inputs is in progress. "
            "Wait for it to finish (a re-run then reuses its adapter) or cancel it."
        ) from None
    try:
        refuse_live_ranks(run, node_rank)
    except RunInProgressError:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    try:
        yield run
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
