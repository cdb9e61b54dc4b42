"""What is retried, and by which layer: the allow-list of transient failures (vss_core.hub.is_transient) and
the flow's retry condition (tasks.stages), with the exceptions huggingface_hub and httpx really raise."""

from __future__ import annotations

import httpx2
import pytest
import requests
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import hf_raise_for_status, validate_repo_id
from prefect import task

from tasks import stages
from vss_core import hub
from vss_core.errors import ConfigError, DatasetError, HubError, ModelError, TrainingError
from vss_core.launch import TrainingStoppedError

URL = "https://huggingface.co/api/models/org/repo"


def hub_http_error(status: int) -> HfHubHTTPError:
    """The error huggingface_hub raises for an HTTP answer, built as it builds it (hf_raise_for_status)."""
    response = httpx2.Response(status, request=httpx2.Request("GET", URL), json={"error": "injected"})
    with pytest.raises(HfHubHTTPError) as err:
        hf_raise_for_status(response)
    return err.value


def bad_repo_id_error() -> HFValidationError:
    with pytest.raises(HFValidationError) as err:
        validate_repo_id("org/../bad name")
    return err.value


def connect_error() -> httpx2.ConnectError:
    return httpx2.ConnectError("connection refused", request=httpx2.Request("GET", URL))


def hub_error(retryable: bool) -> HubError:
    err = HubError("upload.repo_id org/x: the Hub failed")
    err.retryable = retryable
    return err


RETRIED = {
    "HTTP 503": lambda: hub_http_error(503),
    "HTTP 500": lambda: hub_http_error(500),
    "HTTP 429": lambda: hub_http_error(429),
    "httpx ConnectError": connect_error,
    "httpx ReadTimeout": lambda: httpx2.ReadTimeout("read timed out", request=httpx2.Request("GET", URL)),
    "ConnectionError": lambda: ConnectionResetError("reset by peer"),
    "TimeoutError": lambda: TimeoutError("timed out"),
    "requests ConnectionError": lambda: requests.ConnectionError("refused"),
    "HubError marked retryable": lambda: hub_error(True),
}
NOT_RETRIED = {
    "TypeError": lambda: TypeError("unsupported operand"),
    "bad repo id (HFValidationError)": bad_repo_id_error,
    "HTTP 404": lambda: hub_http_error(404),
    "HTTP 401": lambda: hub_http_error(401),
    "HTTP 400": lambda: hub_http_error(400),
    "httpx ProxyError": lambda: httpx2.ProxyError("bad proxy", request=httpx2.Request("GET", URL)),
    "HubError not retryable": lambda: hub_error(False),
    "refused file name (ModelError)": lambda: ModelError("model.source org/x@main: '../x' points outside"),
    "ConfigError": lambda: ConfigError("bad"),
    "DatasetError": lambda: DatasetError("bad"),
    "ValueError": lambda: ValueError("bad"),
    "FileNotFoundError": lambda: FileNotFoundError("gone"),
}


@pytest.mark.parametrize("name", RETRIED)
def test_transient_failures_are_retried(name):
    exc = RETRIED[name]()
    assert hub.is_transient(exc) and stages.is_retryable(exc)


@pytest.mark.parametrize("name", NOT_RETRIED)
def test_everything_else_is_not_retried(name):
    exc = NOT_RETRIED[name]()
    assert not hub.is_transient(exc) and not stages.is_retryable(exc)


def test_training_errors_retry_only_when_they_say_so():
    assert stages.is_retryable(TrainingError("rank 1 died")) and not hub.is_transient(TrainingError("x"))
    assert not stages.is_retryable(TrainingStoppedError("swap grew; stopped cleanly"))


def test_hub_retries_a_transient_call_alone_and_nothing_else():
    sleeps, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise hub_http_error(503)
        return "ok"

    assert hub._retrying(flaky, "model info", 5, sleeps.append) == "ok" and sleeps == [2.0, 4.0]
    for make in (lambda: TypeError("bug"), bad_repo_id_error, lambda: hub_http_error(404)):
        calls.clear()

        def failing():
            calls.append(1)
            raise make()

        with pytest.raises((TypeError, ValueError, HfHubHTTPError)):  # the error itself, on the first try
            hub._retrying(failing, "x", 5, sleeps.append)
        assert len(calls) == 1


def test_one_retry_layer_the_hub_stages_have_no_task_retries():
    # vss_core.hub retries each Hub request; a task retry would repeat them (the 4 x 5 attempts of before).
    assert stages.download_weights.retries == 0 and stages.upload_adapter.retries == 0
    assert stages.run_training.retries == 1 and stages.run_training.retry_condition_fn is stages._retry_transient


@pytest.mark.parametrize("name", ["path", "../x", "/abs/x", "a/../../x", "a\\..\\x", "C:/x", "a//b", "./x", ""])
def test_hub_file_names_must_stay_inside(name):
    assert hub._safe_relative(name) is (name == "path")


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
