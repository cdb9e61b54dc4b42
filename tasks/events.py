"""The `vss.data.updated` event: emitted by the watch-data deployment and `vss notify-data-updated`,
and the trigger the train deployments carry on it."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from prefect.events import DeploymentEventTrigger, emit_event

DATA_UPDATED = "vss.data.updated"


def dataset_resource_id(root: str) -> str:
    return f"vss.dataset.{hashlib.sha256(root.encode()).hexdigest()[:16]}"


def emit_data_updated(root: str, fingerprint: str | None = None, samples: int | None = None):
    """Emit vss.data.updated for the dataset at `root` (an absolute path)."""
    return emit_event(
        event=DATA_UPDATED,
        resource={"prefect.resource.id": dataset_resource_id(root), "prefect.resource.name": root, "vss.data.root": root},
        payload={"fingerprint": fingerprint, "samples": samples},
    )


def data_updated_trigger(root: str, parameters: dict, debounce: timedelta = timedelta(minutes=5)) -> DeploymentEventTrigger:
    """Start the deployment when the dataset at `root` changes; several changes within `debounce`
    start one run, scheduled after the window so it sees all of them (Prefect's debouncing pattern:
    a reactive trigger with `within` and `schedule_after`, docs.prefect.io/v3/advanced/debouncing-events)."""
    return DeploymentEventTrigger(
        name=f"retrain when {root} changes",
        expect={DATA_UPDATED},
        match={"prefect.resource.id": dataset_resource_id(root)},
        posture="Reactive",
        threshold=1,
        within=debounce,
        schedule_after=debounce,
        parameters=parameters,
    )
