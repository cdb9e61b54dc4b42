"""The `vss` flow end to end on CPU: real Prefect (test harness), real DeepSpeed launcher with 2 CPU
ranks under ZeRO-3 with CPU offload, real MP4/WAV files, the tiny model of the real architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _overrides(tmp_path, data_dir, model_dir, **extra):
    return {
        "data.root": str(data_dir),
        "model.source": str(model_dir),
        "training.output_dir": str(tmp_path / "runs"),
        **extra,
    }


def test_flow_end_to_end_trains_an_adapter_and_loss_goes_down(prefect_harness, tmp_path, tiny_model_dir, demo_data_dir):
    from flows.vss import vss

    result = vss(profile="cpu-demo", overrides=_overrides(tmp_path, demo_data_dir, tiny_model_dir))
    assert [s.stage for s in result.stages] == [
        "preflight", "validate data", "download weights", "prepare data", "train", "upload adapter",
    ]
    assert result.stages[-1].status == "skipped" and "no Hub token" in result.stages[-1].detail

    adapter = Path(result.adapter_dir)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in weights) and any("q_a_proj" in k for k in weights)
    assert all(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at 0: it trained

    run = Path(result.run_dir)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    assert len(losses) == metrics[-1]["total_steps"] >= 4
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first * 0.9, f"loss did not go down: {losses}"

    log = (run / "train.log").read_text()
    assert f"Step 1/{len(losses)} - Loss: " in log
    assert (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*/COMPLETE"))
    assert json.loads((run / "ds_config.json").read_text())["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_invalid_dataset_fails_before_download_naming_the_sample(prefect_harness, tmp_path, tiny_model_dir, demo_data_dir):
    from flows.vss import vss
    from vss_core.errors import DatasetError

    data = tmp_path / "data"
    shutil.copytree(demo_data_dir, data)
    bad = sorted(p for p in data.iterdir() if p.is_dir())[0]
    (bad / "out.wav").unlink()
    with pytest.raises(DatasetError, match=rf"{bad.name}.*out.wav"):
        vss(profile="cpu-demo", overrides=_overrides(tmp_path, data, tmp_path / "not-downloaded-yet"))
