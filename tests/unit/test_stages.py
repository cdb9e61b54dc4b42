"""Every Prefect task of the flow says what it does: the UI shows the docstring on the task's page."""

from prefect import Task

import tasks.stages as stages


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
