"""vss_core.runs: the run directory (config.json and the DeepSpeed JSON), runs keyed by their inputs and
locked, and no run starting beside live ranks of an earlier run of its directory (real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vss_core import launch, runs
from vss_core.config import load_config
from vss_core.runs import RunInProgressError, create_run


def test_a_run_refuses_to_start_beside_live_ranks_of_its_directory(tmp_path):
    cfg = load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=busy"])
    run = create_run(cfg)
    # A process with a rank's command line for this run directory (what an orphaned rank looks like).
    rank = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "-m",
            "vss_core.train",
            "--config",
            run.config,
            "--local_rank=0",
        ]
    )
    try:
        with pytest.raises(RunInProgressError, match=rf"pid {rank.pid}\b"):
            launch.run_training(cfg, run, Path("/nonexistent-model"), Path("/nonexistent-prepared"))
        with pytest.raises(RunInProgressError, match=rf"pid {rank.pid}\b"):
            with runs.locked(run):
                pass
        other = create_run(load_config("cpu-demo", [f"training.output_dir={tmp_path}", "training.run_name=free"]))
        assert runs.live_ranks(other) == []  # another directory's ranks do not count
    finally:
        rank.kill()
        rank.wait()
    assert runs.live_ranks(run) == []


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
