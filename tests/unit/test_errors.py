"""vss_core.errors: one exception family, whose `retryable` flag the flow's retry condition reads, and the
one list format every collected-problems message uses."""

from __future__ import annotations

import pytest

from vss_core import errors, train
from vss_core.errors import (
    ConfigError,
    DatasetError,
    HubError,
    ModelError,
    PreflightError,
    TrainingDivergedError,
    TrainingError,
    VSSError,
)


@pytest.mark.parametrize(
    "cls", [ConfigError, PreflightError, DatasetError, ModelError, TrainingError, TrainingDivergedError, HubError]
)
def test_every_error_is_a_vss_error_and_keeps_its_message(cls):
    err = cls("data.root=/x: does not exist")
    assert isinstance(err, VSSError) and isinstance(err, Exception)
    assert str(err) == "data.root=/x: does not exist"
    with pytest.raises(VSSError, match="does not exist"):
        raise err


def test_only_a_training_failure_is_retryable_and_a_diverged_loss_is_not():
    assert VSSError.retryable is False
    retryable = {cls.__name__ for cls in VSSError.__subclasses__() if cls.retryable}
    assert retryable == {"TrainingError"}
    assert issubclass(TrainingDivergedError, TrainingError) and TrainingDivergedError.retryable is False
    # a Hub failure is marked transient where it is raised, on the instance only
    transient = HubError("the Hub answered 503")
    transient.retryable = True
    assert transient.retryable and HubError.retryable is False and HubError("x").retryable is False


def test_bullet_list_indents_each_problem_on_its_own_line():
    assert errors.bullet_list(["a is missing", "b is empty"]) == "  - a is missing\n  - b is empty"
    assert errors.bullet_list([]) == ""


def test_the_nonfinite_mark_is_what_training_logs_for_a_nan_loss():
    # the launcher finds a diverged run by this text in the training output
    err = train.nonfinite_loss_error(3, 10, 0, ["01"])
    assert errors.NONFINITE_MARK in str(err)
