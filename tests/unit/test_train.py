from pathlib import Path

from vss_core import data, launch, train
from vss_core.config import load_config
from vss_core.runs import RunPaths, create_run


def test_warmup_then_cosine():
    f = train.lr_lambda(warmup_steps=4, total_steps=20)
    warm = [f(s) for s in range(5)]
    assert warm == sorted(warm) and warm[-1] == 1.0
    decay = [f(s) for s in range(4, 21)]
    assert decay == sorted(decay, reverse=True) and abs(decay[-1]) < 1e-9


def test_steps_per_epoch_and_rank_order_cover_the_data():
    assert train.steps_per_epoch(8, world_size=2, micro_batch=1, accumulation=1) == 4
    assert train.steps_per_epoch(8, world_size=2, micro_batch=1, accumulation=64) == 1
    a = data.rank_order(8, epoch=0, seed=1, rank=0, world_size=2, length=4)
    b = data.rank_order(8, epoch=0, seed=1, rank=1, world_size=2, length=4)
    assert sorted(a + b) == list(range(8))
    assert data.rank_order(3, 0, 0, 1, 2, length=4) == [data.rank_order(3, 0, 0, 1, 2, 1)[0]] * 4


def test_only_complete_checkpoints_are_trusted(tmp_path):
    for step, complete in [(2, True), (4, True), (6, False)]:
        d = tmp_path / f"step-{step}"
        d.mkdir()
        if complete:
            (d / train.COMPLETE).write_text("{}")
    (tmp_path / "tmp-step-8").mkdir()
    assert [s for s, _ in train.complete_checkpoints(tmp_path)] == [2, 4]
    removed = {p.name for p in train.remove_partial_checkpoints(tmp_path)}
    assert removed == {"step-6", "tmp-step-8"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-4"]


def test_run_directory_holds_config_and_deepspeed_json(tmp_path):
    cfg = load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=r1"])
    run = create_run(cfg)
    assert Path(run.config).is_file() and Path(run.ds_config).is_file()
    import json

    assert json.loads(Path(run.ds_config).read_text())["zero_optimization"]["stage"] == 3
    import pytest

    from vss_core.errors import ConfigError

    with pytest.raises(ConfigError, match="already exists"):
        create_run(cfg)


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
    assert "DS_ACCELERATOR" not in launch.training_env(cfg, base={})


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


def test_runs_are_keyed_by_inputs_and_locked(tmp_path):
    import pytest

    from vss_core import runs
    from vss_core.errors import ConfigError

    cfg = load_config("cpu-demo", [f"training.output_dir={tmp_path}"])
    key = runs.training_key(cfg, "rev", "fp", "prep")
    assert key == runs.training_key(
        load_config("cpu-demo", [f"training.output_dir={tmp_path}/elsewhere"]), "rev", "fp", "prep"
    )
    assert key != runs.training_key(cfg, "rev", "fp-changed", "prep")
    assert key != runs.training_key(load_config("cpu-demo", ["lora.rank=4"]), "rev", "fp", "prep")
    run, effective = runs.open_run(cfg, key)
    assert effective == cfg and Path(run.config).is_file()
    again, _ = runs.open_run(cfg, key)
    assert again.root == run.root
    with runs.locked(run):
        import subprocess
        import sys

        code = (
            f"from vss_core import runs; r = runs.RunPaths(root={run.root!r})\n"
            "try:\n    runs.locked(r).__enter__()\nexcept runs.RunInProgressError as e:\n    print(e)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert "is in use by pid" in out and "in progress" in out
    named = load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=mine"])
    runs.open_run(named, key)
    with pytest.raises(ConfigError, match="made for other inputs"):
        runs.open_run(named, "another-key")


class _OneRankDist:
    """deepspeed.comm's calls check_shared_run_dir makes, for one rank; `barrier` runs a hook."""

    def __init__(self, on_barrier=lambda: None) -> None:
        self.on_barrier = on_barrier

    def broadcast_object_list(self, objs, src):
        pass

    def barrier(self):
        self.on_barrier()

    def all_gather_object(self, out, obj):
        out[0] = obj


def test_a_run_directory_every_rank_sees_passes_and_one_it_does_not_fails_naming_the_host(tmp_path):
    import socket

    import pytest

    from vss_core.errors import TrainingError

    train.check_shared_run_dir(tmp_path, rank=0, world=1, dist=_OneRankDist())
    # what another node would see on its own local disk: not the token rank 0 wrote
    blind = _OneRankDist(on_barrier=lambda: (tmp_path / ".shared-dir-check").write_text('{"token": "other"}'))
    with pytest.raises(TrainingError, match=f"ranks on {socket.gethostname()} do not see") as err:
        train.check_shared_run_dir(tmp_path, rank=0, world=1, dist=blind)
    assert "training.output_dir on storage every node mounts" in str(err.value)


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


def test_a_rank_reports_its_own_peak_not_the_peak_of_the_process_that_started_it():
    # ru_maxrss survives fork + exec: a rank started by a big Prefect process would report that
    # process's size as its own peak and fail the plan check for memory it never used
    import subprocess
    import sys

    held = b"\x01" * (3 * 2**30)  # 3 GiB of written pages in this (the parent) process
    code = "from vss_core.train import peak_rss_bytes; import resource; print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    del held
    peak, ru_maxrss = (int(x) for x in out)
    assert ru_maxrss >= 3 * 2**30  # the kernel's inherited figure: what the old measure read
    assert 0 < peak < 2 * 2**30  # the child's own high-water mark (imports: ~1 GiB)
