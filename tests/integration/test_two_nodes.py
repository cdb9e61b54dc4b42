"""Two nodes for real (issue 14 item 5): two DeepSpeed launchers on 127.0.0.1 in the launcher's
no-ssh mode (each node's vss starts its own, with its node rank), one CPU rank each, ZeRO-3 across
both; a checkpoint, both nodes killed, both started again: the run resumes and ends on the same
losses as one node with two ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vss_core import launch
from vss_core.config import load_config
from vss_core.runs import RunPaths, create_run, live_ranks

pytestmark = pytest.mark.integration
CHILD = Path(__file__).with_name("two_node_child.py")
STEPS = 8


def _cfg(tmp_path, name, *extra):
    return load_config(
        "cpu-demo",
        [
            f"training.output_dir={tmp_path}",
            f"training.run_name={name}",
            f"training.max_steps={STEPS}",
            "training.save_every_n_steps=2",
            *extra,
        ],
    )


def _losses(run: RunPaths) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, Path(run.metrics).read_text().splitlines())}


def _start_nodes(tmp_path, run: RunPaths, configs, model_dir, prepared_dir) -> list[subprocess.Popen]:
    procs = []
    for k, cfg in enumerate(configs):
        path = tmp_path / f"node-{k}.json"
        path.write_text(cfg.model_dump_json())
        log = open(tmp_path / f"node-{k}.out", "a")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(CHILD), str(path), run.root, str(model_dir), str(prepared_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
            )
        )
    return procs


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_two_nodes_train_zero3_across_both_and_resume_after_a_kill(tmp_path, tiny_model_dir, prepared):
    # The reference: one node, two ranks (the same world of 2, the same data order per rank).
    one_cfg = _cfg(tmp_path, "one-node")
    one_run = create_run(one_cfg)
    launch.run_training(one_cfg, one_run, tiny_model_dir, Path(prepared.dir))
    reference = _losses(one_run)

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = launch.free_port()
    nodes = [
        _cfg(
            tmp_path,
            "two-nodes",
            "hardware.nodes=2",
            "hardware.gpus_per_node=1",
            f"hardware.hostfile={hostfile}",
            f"hardware.node_rank={k}",
            "hardware.master_addr=127.0.0.1",
            f"hardware.master_port={port}",
        )
        for k in (0, 1)
    ]
    assert nodes[0].hardware.node_rank == 0 and nodes[1].hardware.node_rank == 1
    run = create_run(nodes[0])
    cmd = launch.build_command(nodes[1], run, tiny_model_dir, Path(prepared.dir))
    assert cmd[cmd.index("--node_rank") + 1] == "1" and "--no_ssh" in cmd and "--parent-pid" in cmd

    # Both nodes start; once a checkpoint is complete and a step past it logged, both are SIGKILLed.
    procs = _start_nodes(tmp_path, run, nodes, tiny_model_dir, prepared.dir)
    ckpts = Path(run.checkpoints)

    def past_a_checkpoint() -> bool:
        for p in procs:
            assert p.poll() is None, (tmp_path / "node-0.out").read_text()[-3000:]
        metrics = Path(run.metrics)
        return any(ckpts.glob("step-*/COMPLETE")) and metrics.is_file() and len(metrics.read_text().splitlines()) >= 5

    _wait_for(past_a_checkpoint, 300, "a complete checkpoint and 5 logged steps")
    for p in reversed(procs):
        p.send_signal(signal.SIGKILL)
        p.wait()
    _wait_for(lambda: not live_ranks(run), 30, "the killed nodes' ranks to exit")
    assert not Path(run.adapter).exists()
    # every rank of both nodes wrote its partition into the shared checkpoint
    (done,) = [d for d in sorted(ckpts.glob("step-*")) if (d / "COMPLETE").is_file()][-1:]
    shards = sorted(p.name for p in done.rglob("zero_pp_rank_*optim_states.pt"))
    assert [s.split("_mp_rank")[0] for s in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"], shards

    # Started again on both nodes: resumes from the checkpoint and finishes.
    procs = _start_nodes(tmp_path, run, nodes, tiny_model_dir, prepared.dir)
    for p in procs:
        assert p.wait(timeout=600) == 0, [(tmp_path / f"node-{k}.out").read_text()[-3000:] for k in (0, 1)]
    reports = [json.loads((tmp_path / f"node-{k}.out").read_text().strip().splitlines()[-1]) for k in (0, 1)]
    assert all(r["steps"] == STEPS for r in reports)
    summary = json.loads((Path(run.root) / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and 2 <= summary["resumed_from_step"] < STEPS
    assert "Resumed from checkpoint" in Path(run.log).read_text()
    assert (Path(run.root) / "train-node-1.log").is_file()  # each node logs to its own file
    losses = _losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # ZeRO-3 across two nodes computes what one node with two ranks does
        assert losses[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-5), step
    assert not [p for p in psutil.process_iter(["cmdline"]) if run.config in (p.info["cmdline"] or [])]
