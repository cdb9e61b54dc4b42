"""One exception family for everything a user can act on.

Each message says what failed, the value, the key as the user writes it, and the fix.
"""

from __future__ import annotations


class VSSError(Exception):
    """Base of every error vss raises on purpose. Not retried by the flow unless a subclass says so."""

    retryable = False


class ConfigError(VSSError):
    """The configuration (profile, overrides, YAML) is invalid."""


class PreflightError(VSSError):
    """The machine does not meet what the profile needs."""


class DatasetError(VSSError):
    """The dataset is missing, empty, or has invalid samples."""


class ModelError(VSSError):
    """The model checkpoint is missing, incomplete or does not match the expected layout."""


class TrainingError(VSSError):
    """The training process failed or wrote incomplete outputs."""

    retryable = True


class TrainingDivergedError(TrainingError):
    """The loss became NaN/Inf: a retry would hit the same sample and the same loss."""

    retryable = False


# The training process logs this with the step and samples; the launcher turns it into TrainingDivergedError.
NONFINITE_MARK = "the loss is not finite (NaN/Inf)"


class HubError(VSSError):
    """Talking to the Hugging Face Hub (or a compatible server) failed.

    `retryable` is True only when the failure was transient (a 5xx/408/429 answer, a dropped connection, a
    timeout), set where the error is raised; vss_core.hub has already retried those per request.
    """

    retryable = False


def bullet_list(problems: list[str]) -> str:
    """Format collected problems as one indented list for a single raise."""
    return "\n".join(f"  - {p}" for p in problems)
