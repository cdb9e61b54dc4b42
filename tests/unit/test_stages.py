"""tasks.stages: every Prefect task of the flow says what it does (the UI shows the docstring on the
task's page); the flow's retry condition and its single retry layer; the `vss-eval` artifact shows the
comparison table and the plots, embedded as PNG images the Prefect UI renders inline."""

import base64
import re

import pytest
from prefect import Task, task

import tasks.stages as stages
from tasks.stages import eval_markdown
from tests.helpers import connect_error, eval_report
from vss_core import hub
from vss_core.errors import TrainingError
from vss_core.launch import TrainingStoppedError


def test_every_task_has_a_docstring():
    found = {name: obj for name, obj in vars(stages).items() if isinstance(obj, Task)}
    assert {
        "preflight",
        "validate_dataset",
        "download_weights",
        "prepare_dataset",
        "open_run",
        "run_training",
        "evaluate_adapter",
        "upload_adapter",
    } <= set(found)
    missing = [name for name, t in found.items() if len((t.fn.__doc__ or "").strip()) < 30]
    assert not missing, f"tasks without a docstring: {missing}"


def test_training_errors_retry_only_when_they_say_so():
    assert stages.is_retryable(TrainingError("rank 1 died")) and not hub.is_transient(TrainingError("x"))
    assert not stages.is_retryable(TrainingStoppedError("swap grew; stopped cleanly"))


def test_one_retry_layer_the_hub_stages_have_no_task_retries():
    # vss_core.hub retries each Hub request; a task retry would repeat them (the 4 x 5 attempts of before).
    assert stages.download_weights.retries == 0 and stages.upload_adapter.retries == 0
    assert stages.run_training.retries == 1 and stages.run_training.retry_condition_fn is stages._retry_transient


@pytest.mark.integration  # a Prefect task run needs a Prefect API: the test harness's (as tests/integration)
def test_a_task_with_the_condition_does_not_retry_a_type_error():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        _task_retries_only_what_the_condition_allows()


def _task_retries_only_what_the_condition_allows():
    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=stages._retry_transient, persist_result=False)
    def flaky(kind: str) -> str:
        calls.append(kind)
        if len(calls) == 1:
            raise TypeError("a bug") if kind == "bug" else connect_error()
        return "done"

    with pytest.raises(TypeError):
        flaky("bug")
    assert calls == ["bug"], "a TypeError is not retried"
    calls.clear()
    assert flaky("network") == "done" and calls == ["network", "network"], "a connection error is retried"


def test_the_artifact_holds_the_table_and_both_plots_as_png(tmp_path):
    report = eval_report(tmp_path)
    md = eval_markdown(report)
    assert "| loss | 2.2900 | 8.4800 | -6.1900 |" in md and "| eos_rate | 0.5000 | 0.0000 | +0.5000 |" in md
    images = re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert {name for name, _ in images} == {"comparison", "loss_curves"}
    for name, encoded in images:
        png = base64.b64decode(encoded)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (tmp_path / "eval" / f"{name}.png").read_bytes()
