"""The `vss` flow end to end on CPU: real Prefect (test harness server), real DeepSpeed launcher with
2 CPU ranks under ZeRO-3 with CPU offload, real MP4/WAV files, the tiny model of the real
architecture, weights downloaded and the adapter uploaded through the real huggingface_hub client
against the loopback Hub server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from devtools.hubserver import HubServer

pytestmark = pytest.mark.integration
REPO, ADAPTER_REPO = "org/tiny-omni", "me/vss-adapter"
CODEC_REPO = "org/tiny-codec"
TOKEN = "hf_flowtest_SECRETVALUE_4242424242"


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def hub_server(tiny_model_dir, tiny_codec_dir):
    with HubServer(tokens={TOKEN: "write"}) as srv:
        srv.add_repo_from_dir(REPO, tiny_model_dir)
        srv.add_repo_from_dir(CODEC_REPO, tiny_codec_dir)
        yield srv


def _overrides(out: Path, data_dir, model_source, codec_source=CODEC_REPO, **extra_training):
    return {
        "data": {"root": str(data_dir)},
        "model": {"source": str(model_source), "codec_source": str(codec_source), "cache_dir": str(out / "hf-cache")},
        "training": {"output_dir": str(out / "runs"), "monitor_interval_s": 2, **extra_training},
    }


def _run(**kwargs):
    """Run the flow, returning (result, flow_run_id)."""
    from flows.vss import vss

    state = vss(return_state=True, **kwargs)
    return state.result(), state.state_details.flow_run_id


def _logs_and_artifacts(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join([log.message for log in logs] + [json.dumps(a.data) for a in artifacts])


def test_flow_downloads_trains_uploads_and_a_rerun_reuses_the_adapter(
    prefect_harness, hub_server, monkeypatch, tmp_path, demo_data_dir
):
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    overrides = _overrides(tmp_path, demo_data_dir, REPO)
    overrides["upload"] = {"repo_id": ADAPTER_REPO}
    result, flow_run_id = _run(profile="cpu-demo", overrides=overrides)

    assert [s.stage for s in result.stages] == [
        "preflight",
        "validate data",
        "download weights",
        "prepare data",
        "train",
        "evaluate",
        "gate",
        "upload adapter",
    ]
    by_stage = {s.stage: s for s in result.stages}
    assert "1 held-out: loss" in by_stage["evaluate"].detail and by_stage["gate"].status == "passed"
    assert result.stages[-1].status == "uploaded" and result.hub_url and ADAPTER_REPO in result.hub_url
    assert hub_server.head(ADAPTER_REPO) is not None

    adapter = Path(result.adapter_dir)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("q_a_proj" in k and "lora_A" in k for k in weights)
    assert all(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at 0: it trained

    run = Path(result.run_dir)
    summary = json.loads((run / "train_summary.json").read_text())
    assert len(summary["held_out"]) == 1 and summary["held_out"][0] not in summary["trained_on"]
    # the run checked the planner: its measured peaks beside the plan's figures for its own config
    check = {f["name"]: f for f in summary["plan_check"]["figures"]}
    rank_peak = max(r["peak_rss_bytes"] for r in summary["measured"]["per_rank"]) / 2**30
    # ZeRO-3's own count of gathered parameters, read in the run: the tiny model is gathered whole at
    # once (it is under stage3_max_live_parameters), so each rank's peak is at most all its weights
    weights = summary["total_parameters"] * 4  # cpu-demo: fp32
    assert all(0 < r["gathered_params_peak_bytes"] <= weights for r in summary["measured"]["per_rank"])
    # and the seconds its forward fetches took, the MoE leaves apart: some, and less than the loop
    loop_s = summary["measured"]["step_time_s"] * summary["steps"]
    assert all(0 < r["fetch_s_leaf"] and 0 < r["fetch_s_other"] for r in summary["measured"]["per_rank"])
    assert all(r["fetch_s_leaf"] + r["fetch_s_other"] < loop_s for r in summary["measured"]["per_rank"])
    assert (
        check["RAM per rank (peak RSS)"]["measured"] == rank_peak and check["RAM per rank (peak RSS)"]["predicted"] > 0
    )
    assert summary["plan_check"]["warnings"] == []  # the cpu-demo plan covers what its ranks use
    assert "## Evaluation (vss)" in (adapter / "README.md").read_text()  # the card uploaded with the adapter
    assert (run / "eval" / "report.json").is_file() and (run / "eval" / "comparison.png").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    assert len(losses) == metrics[-1]["total_steps"] >= 4
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first * 0.9, f"loss did not go down: {losses}"
    assert f"Step 1/{len(losses)} - Loss: " in (run / "train.log").read_text()
    assert any((run / "checkpoints").glob("step-*/COMPLETE"))
    # DeepSpeed's CPU all-reduce buffers of this run are gone with it (it never unlinks them itself)
    launched = (run / "train.log").read_text().split("--master_port ", 1)[1].split()[0]
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{launched}_*"))

    # The token never shows: not in logs, artifacts, or any file of the run directory.
    seen = _logs_and_artifacts(flow_run_id)
    assert "Step 1/" in seen and "Resources: RAM" in seen  # training output and resource samples stream in
    assert "Held-out evaluation: adapter vs base" in seen and "data:image/png;base64," in seen
    assert "| RAM per rank (peak RSS) |" in seen  # the planner check's artifact
    assert TOKEN not in seen
    for path in run.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path

    # Same data and config again: every stage reuses its work and nothing is trained.
    again, _ = _run(profile="cpu-demo", overrides=overrides)
    by_stage = {s.stage: s for s in again.stages}
    assert by_stage["train"].status == "reused" and again.adapter_dir == result.adapter_dir
    assert "4 unchanged" in by_stage["validate data"].detail and "(4 reused)" in by_stage["prepare data"].detail
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(losses)  # no new step


def test_swap_growth_stops_training_after_a_checkpoint_and_a_rerun_resumes(
    prefect_harness, monkeypatch, tmp_path, tiny_model_dir, tiny_codec_dir, demo_data_dir
):
    from vss_core.launch import TrainingStoppedError

    real = psutil.swap_memory
    calls = {"n": 0}

    def swapping():  # psutil is the boundary: this machine has no swap to fill
        calls["n"] += 1
        s = real()
        used = 0 if calls["n"] <= 3 else 6 * 1024**3
        return s._replace(total=max(s.total, 8 * 1024**3), used=used)

    overrides = _overrides(tmp_path, demo_data_dir, tiny_model_dir, tiny_codec_dir)
    monkeypatch.setattr(psutil, "swap_memory", swapping)
    with pytest.raises(TrainingStoppedError, match=r"stopped cleanly at step \d+ after saving checkpoint.*swap"):
        _run(profile="cpu-demo", overrides=overrides)
    monkeypatch.setattr(psutil, "swap_memory", real)
    run = next((tmp_path / "runs").glob("cpu-demo-*"))
    stopped = json.loads((run / "stopped.json").read_text())
    assert (Path(stopped["checkpoint"]) / "COMPLETE").is_file()
    assert not (run / "adapter").exists()

    result, _ = _run(profile="cpu-demo", overrides=overrides)
    train = {s.stage: s for s in result.stages}["train"]
    assert train.status == "ok" and f"resumed from step {stopped['step']}" in train.detail
    assert result.run_dir == str(run) and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_invalid_dataset_fails_before_download_naming_the_sample(
    prefect_harness, hub_server, monkeypatch, tmp_path, demo_data_dir
):
    from flows.vss import vss
    from vss_core.errors import DatasetError

    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data = tmp_path / "data"
    shutil.copytree(demo_data_dir, data)
    bad = sorted(p for p in data.iterdir() if p.is_dir())[0]
    (bad / "out.wav").unlink()
    hub_server.reset_counters()
    with pytest.raises(DatasetError, match=rf"{bad.name}.*out.wav"):
        vss(profile="cpu-demo", overrides=_overrides(tmp_path, data, REPO))
    served = hub_server.served_by_file(REPO)
    assert not any(name.endswith((".safetensors", ".pt")) for name in served), served  # no weights fetched
