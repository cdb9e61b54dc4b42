"""The `vss.data.updated` event: emitted by the vss-watch-data flow and `vss notify-data-updated`. The
train deployments' triggers on it are defined in prefect.yaml (built by deployments/serve.py): each
matches the event's `vss.profile` label, so one event starts the one deployment of that profile."""

from __future__ import annotations

import hashlib

from prefect.events import emit_event

DATA_UPDATED = "vss.data.updated"


def dataset_resource_id(root: str) -> str:
    return f"vss.dataset.{hashlib.sha256(root.encode()).hexdigest()[:16]}"


def emit_data_updated(root: str, profile: str, fingerprint: str | None = None, samples: int | None = None):
    """Emit vss.data.updated for the dataset at `root` (an absolute path), for the deployment of `profile`."""
    return emit_event(
        event=DATA_UPDATED,
        resource={
            "prefect.resource.id": dataset_resource_id(root),
            "prefect.resource.name": root,
            "vss.data.root": root,
            "vss.profile": profile,
        },
        payload={"fingerprint": fingerprint, "samples": samples},
    )
