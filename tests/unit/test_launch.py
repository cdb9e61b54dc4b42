"""vss_core.launch: the launcher's command (single node, multi-node, without ssh), memory step-downs
after an out-of-memory failure, a damaged adapter never reused, DeepSpeed's shared-memory buffers
removed, and the follower thread that watches a training run: it survives bad input and failing
callbacks, and its guards (swap growth; available RAM on a machine without swap) still ask training to
stop. psutil is faked at its boundary: this machine has no swap to fill and RAM we must not exhaust."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from vss_core import launch
from vss_core.config import load_config
from vss_core.runs import STOP_REQUEST, RunPaths


def test_the_shared_memory_buffers_of_a_finished_launch_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "SHM_DIR", tmp_path)
    uid = os.getuid()
    mine = [tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_41234_{r}" for r in (0, 1)]
    others = [
        tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_41235_0",  # another launch's port
        tmp_path / f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_41234_0",  # another user's
        tmp_path / "unrelated",
    ]
    for path in mine + others:
        path.write_bytes(b"x")
    removed = launch.remove_shm_buffers(["deepspeed", "--num_gpus", "2", "--master_port", "41234", "--module", "m"])
    assert sorted(removed) == sorted(p.name for p in mine)
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert launch.remove_shm_buffers(["deepspeed", "--hostfile", "h"]) == []  # no port of its own: nothing


def test_stale_buffers_of_ended_launches_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(launch, "SHM_DIR", tmp_path)
    uid = os.getuid()
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))  # a live run's rendezvous port: held
        live_port = live.getsockname()[1]
        ended_port = launch.free_port()
        names = {
            "ended": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{ended_port}_0",
            "live": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{live_port}_0",
            "young": f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{ended_port}_1",
            "remote": f"deepspeed_allreduce_buffer_{uid}_10.0.0.7_{ended_port}_0",  # another node's master
        }
        old = time.time() - 600
        for key, name in names.items():
            (tmp_path / name).write_bytes(b"x")
            if key != "young":
                os.utime(tmp_path / name, (old, old))
        assert launch.remove_stale_shm_buffers() == [names["ended"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "ended")


GiB = 1024**3


def _follow_until_stop(tmp_path, cfg, on_metrics, on_resources=lambda s: None, timeout=15.0):
    run = RunPaths(root=str(tmp_path))
    stop = threading.Event()
    thread = threading.Thread(
        target=launch._follow, args=(run, cfg, stop, on_metrics, on_resources, launch.sample_resources), daemon=True
    )
    thread.start()
    stop_file = Path(run.root) / STOP_REQUEST
    deadline = time.time() + timeout
    while not stop_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    alive = thread.is_alive()
    stop.set()
    thread.join(timeout=5)
    return stop_file, alive


def test_a_raising_callback_and_a_malformed_line_do_not_end_the_swap_guard(tmp_path, monkeypatch):
    real = psutil.swap_memory
    calls = {"n": 0}

    def swapping():
        calls["n"] += 1
        s = real()
        return s._replace(total=8 * GiB, used=0 if calls["n"] <= 2 else 6 * GiB)

    monkeypatch.setattr(psutil, "swap_memory", swapping)
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0, "lr": 0.1, "total_steps": 4}\n{not json\n'
        '{"step": 2, "loss": 1.5, "lr": 0.1, "total_steps": 4}\n'
    )
    seen = []

    def failing_artifact_call(records):
        seen.extend(records)
        raise RuntimeError("artifact API unavailable")

    def failing_resources(sample):
        raise RuntimeError("log handler broke")

    cfg = load_config("cpu-demo", ["training.monitor_interval_s=0.2"])
    stop_file, alive = _follow_until_stop(tmp_path, cfg, failing_artifact_call, failing_resources)
    assert stop_file.is_file() and "swap in use grew" in stop_file.read_text()
    assert alive, "the follower thread died"
    assert [r["step"] for r in seen] == [1, 2]  # the malformed line is skipped, its neighbours delivered


def test_ram_guard_stops_a_machine_without_swap(tmp_path, monkeypatch):
    real_vm, real_swap = psutil.virtual_memory, psutil.swap_memory
    calls = {"n": 0}

    def shrinking():
        calls["n"] += 1
        vm = real_vm()
        return vm._replace(total=16 * GiB, available=(8 if calls["n"] <= 2 else 0.2) * GiB)

    monkeypatch.setattr(psutil, "virtual_memory", shrinking)
    monkeypatch.setattr(psutil, "swap_memory", lambda: real_swap()._replace(total=0, used=0, free=0))
    cfg = load_config("cpu-demo", ["training.monitor_interval_s=0.2", "training.ram_stop_gb=1"])
    stop_file, alive = _follow_until_stop(tmp_path, cfg, lambda records: None)
    assert stop_file.is_file(), "no stop request on low RAM"
    assert "available RAM" in stop_file.read_text() and "training.ram_stop_gb=1" in stop_file.read_text()
    assert alive


def test_launcher_command_single_and_multi_node(tmp_path):
    run = RunPaths(root=str(tmp_path))
    cmd = launch.build_command(load_config("conservative-2xb200"), run, Path("/m"), Path("/p"))
    assert cmd[0].endswith("deepspeed") and cmd[1:3] == ["--num_gpus", "2"]
    assert cmd[3] == "--master_port" and int(cmd[4]) > 0  # a free port, not the shared default 29500
    assert cmd[5:7] == ["--module", "vss_core.train"] and cmd[-4:] == ["--model-dir", "/m", "--prepared-dir", "/p"]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    cfg = load_config("standard-8xh100", [f"hardware.hostfile={hostfile}", "hardware.nodes=2"])
    cmd = launch.build_command(cfg, run, Path("/m"), Path("/p"))
    assert cmd[1:7] == ["--hostfile", str(hostfile), "--num_nodes", "2", "--num_gpus", "8"]
    assert "--master_port" not in cmd  # all nodes must agree: the launcher's default
    env = launch.training_env(load_config("cpu-demo"), base={})
    assert env["DS_ACCELERATOR"] == "cpu" and "TORCH_EXTENSIONS_DIR" in env
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(1 << 20)
    assert (
        launch.training_env(load_config("cpu-demo"), base={"MALLOC_MMAP_THRESHOLD_": "65536"})["MALLOC_MMAP_THRESHOLD_"]
        == "65536"
    )  # the user's own setting is kept
    gpu = launch.training_env(cfg, base={})
    assert "DS_ACCELERATOR" not in gpu and "MALLOC_MMAP_THRESHOLD_" not in gpu


# A child that mallocs 64 blocks of 2 MiB, touches them, frees every other one and prints its RSS (KiB)
# before and after the frees. A 4 MiB block freed first makes glibc's dynamic threshold rise above 2 MiB.
_MALLOC_CHILD = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
blocks = [libc.malloc(2 << 20) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, 2 << 20)
before = rss()
for b in blocks[::2]:
    libc.free(b)
print(before, rss())
"""


def test_the_cpu_ranks_env_makes_freed_blocks_leave_rss():
    # What the plan's "device memory at its bytes" rests on: with glibc's default, 2 MiB blocks come from
    # the heap once the threshold has risen, and freeing every other one returns nothing (64 MiB kept);
    # with training_env's fixed threshold each is mmap'ed and its free gives it back.
    def freed_kib(env):
        out = subprocess.run([sys.executable, "-c", _MALLOC_CHILD], env=env, capture_output=True, text=True, check=True)
        before, after = map(int, out.stdout.split())
        return before - after

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    fixed = {
        **base,
        "MALLOC_MMAP_THRESHOLD_": launch.training_env(load_config("cpu-demo"), base={})["MALLOC_MMAP_THRESHOLD_"],
    }
    assert freed_kib(fixed) >= 60 * 1024  # 32 blocks of 2 MiB returned
    assert freed_kib(base) < 8 * 1024  # glibc's dynamic threshold: kept in the heap


def test_oom_step_downs_change_memory_settings_only_and_keep_the_effective_batch():
    cfg = load_config("conservative-2xb200", ["training.micro_batch_size=4", "training.gradient_accumulation_steps=16"])
    seen, changes = [], []
    step = launch.next_step_down(cfg)
    while step is not None:
        cfg, why = step
        changes.append(why)
        seen.append(cfg)
        step = launch.next_step_down(cfg)
    assert changes[0].startswith("deepspeed.max_live_parameters 5e+08 -> 2e+08")
    assert any("allgather_sequential" in c for c in changes)
    assert changes[-1].startswith("training.micro_batch_size 2 -> 1")
    final = seen[-1]
    assert final.deepspeed.max_live_parameters == 1e8 and final.deepspeed.allgather_sequential
    assert final.training.micro_batch_size * final.training.gradient_accumulation_steps == 64
    base = load_config("conservative-2xb200")
    for c in seen:  # never LoRA, learning rate or data
        assert c.lora == base.lora and c.training.learning_rate == base.training.learning_rate and c.data == base.data


def test_oom_is_recognised_in_the_training_output():
    assert launch.is_out_of_memory(["[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"])
    assert not launch.is_out_of_memory(["RuntimeError: shape mismatch"])


def test_a_damaged_adapter_is_not_reused(tmp_path):
    run = RunPaths(root=str(tmp_path))
    adapter = Path(run.adapter)
    adapter.mkdir()
    (tmp_path / "train_summary.json").write_text(
        '{"steps": 1, "first_loss": 1.0, "final_loss": 0.5, '
        '"trainable_parameters": 1, "total_parameters": 2, "resumed_from_step": 0}'
    )
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"truncated")
    assert launch.completed_report(run) is None
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(adapter / "adapter_model.safetensors"))
    report = launch.completed_report(run, reused=True)
    assert report is not None and report.reused and report.final_loss == 0.5


def test_multi_node_without_ssh_settings_are_checked_and_do_not_change_the_training_key():
    import pytest

    from vss_core.runs import training_key

    base = ["hardware.nodes=2", "hardware.hostfile=/etc/hosts.ds", "hardware.gpus_per_node=1"]
    with pytest.raises(Exception, match="needs hardware.master_addr"):
        load_config("cpu-demo", [*base, "hardware.node_rank=1"])
    with pytest.raises(Exception, match="must be below hardware.nodes"):
        load_config("cpu-demo", [*base, "hardware.node_rank=2", "hardware.master_addr=10.0.0.1"])
    with pytest.raises(Exception, match="for multi-node runs"):
        load_config("cpu-demo", ["hardware.node_rank=0", "hardware.master_addr=10.0.0.1"])
    node0, node1 = (
        load_config("cpu-demo", [*base, f"hardware.node_rank={k}", "hardware.master_addr=10.0.0.1"]) for k in (0, 1)
    )
    assert training_key(node0, "w", "d", "p") == training_key(node1, "w", "d", "p")  # one run directory for all nodes
    run = RunPaths(root="/runs/r")
    cmd = launch.build_command(node1, run, Path("/m"), Path("/p"))
    assert cmd[cmd.index("--node_rank") + 1] == "1" and cmd[cmd.index("--master_addr") + 1] == "10.0.0.1"
    assert cmd[cmd.index("--node-rank") + 1] == "1" and "--no_ssh" in cmd and "--parent-pid" in cmd
    assert launch.node_log(node1, run) == Path("/runs/r/train-node-1.log") and launch.node_log(node0, run) == Path(
        run.log
    )
