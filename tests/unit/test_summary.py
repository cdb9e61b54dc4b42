"""vss_core.summary: what a whole run produced, stage by stage, as a table, and the one line on training."""

from __future__ import annotations

from vss_core.launch import TrainingReport
from vss_core.summary import RunResult, describe_training


def _report(**changes) -> TrainingReport:
    base = {
        "run_dir": "/runs/r",
        "adapter_dir": "/runs/r/adapter",
        "steps": 12,
        "first_loss": 9.87654,
        "final_loss": 1.23449,
        "trainable_parameters": 10,
        "total_parameters": 100,
        "resumed_from_step": 0,
        "exit_code": 0,
    }
    return TrainingReport(**(base | changes))


def test_the_table_lists_the_stages_in_order_and_where_the_adapter_is():
    result = RunResult(profile="cpu-demo", adapter_dir="/runs/r/adapter")
    result.add("validate", "ok", "3 of 3 samples valid")
    result.add("train", "ok", "12 steps")
    assert [s.stage for s in result.stages] == ["validate", "train"]
    assert result.table() == (
        "| stage | outcome | detail |\n|---|---|---|\n"
        "| validate | ok | 3 of 3 samples valid |\n| train | ok | 12 steps |\n\nAdapter: `/runs/r/adapter`"
    )
    result.hub_url = "https://huggingface.co/me/x"
    assert result.table().endswith("Adapter: `/runs/r/adapter`\n\nHub: https://huggingface.co/me/x")


def test_a_result_round_trips_through_json_as_the_cli_reads_it():
    result = RunResult(profile="cpu-demo", run_dir="/runs/r", training_wall_s=4.5)
    result.add("upload", "skipped", "no HF_TOKEN")
    again = RunResult.model_validate_json(result.model_dump_json())
    assert again == result and again.stages[0].detail == "no HF_TOKEN"
    assert RunResult(profile="p").stages == [] and RunResult(profile="q").stages is not result.stages


def test_describe_training_says_reused_resumed_and_step_downs():
    assert describe_training(_report()) == "12 steps, loss 9.877 -> 1.234"
    assert describe_training(_report(reused=True)) == "adapter already produced by these inputs: /runs/r/adapter"
    resumed = _report(resumed_from_step=8, step_downs=["deepspeed.max_live_parameters 5e+08 -> 2e+08", "x"])
    assert describe_training(resumed) == "resumed from step 8, 12 steps, loss 9.877 -> 1.234; 2 memory step-down(s)"
