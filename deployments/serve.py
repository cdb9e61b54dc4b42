"""The vss deployments, served by `vss serve` (a long-running process that runs them):

    vss serve                         # in one terminal (after `prefect server start` in another)
    prefect deployment run vss/demo-cpu
    prefect deployment run vss/train-2xb200 --params '{"overrides": {"data": {"root": "/data/train"}}}'

The train deployments carry a trigger on `vss.data.updated` for their dataset (emitted by
vss/watch-data or `vss notify-data-updated`) and, optionally, a cron backstop. prefect.yaml at the
repo root defines the same deployments for a process work pool.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import serve

from flows.vss import vss, watch_data
from tasks.events import data_updated_trigger
from vss_core import config

# deployment name -> (profile, description)
DEPLOYMENTS: dict[str, tuple[str, str]] = {
    "train-2xb200": ("conservative-2xb200", "2x B200 192 GB, conservative settings, ZeRO-3 with CPU offload."),
    "train-8xh100": ("standard-8xh100", "8x H100 80 GB, standard settings, ZeRO-3 with CPU offload."),
    "demo-cpu": ("cpu-demo", "Tiny model of the real architecture on CPU, generated data (make demo)."),
}
WATCHED_PROFILE = "cpu-demo"  # the dataset vss/watch-data fingerprints unless given other parameters


def build_deployments(
    watch_interval_s: float = 300.0, backstop_cron: str | None = None, debounce_s: float = 300.0
) -> list:
    """One RunnerDeployment per profile (re-run when its dataset changes), plus vss/watch-data."""
    deployments = []
    for name, (profile, description) in DEPLOYMENTS.items():
        params = {"profile": profile, "overrides": None}
        root = str(Path(config.load_config(profile).data.root).absolute())
        deployments.append(
            vss.to_deployment(
                name=name,
                parameters=params,
                description=description,
                tags=["vss", profile],
                triggers=[data_updated_trigger(root, params, timedelta(seconds=debounce_s))],
                cron=backstop_cron,
            )
        )
    deployments.append(
        watch_data.to_deployment(
            name="watch-data",
            parameters={"profile": WATCHED_PROFILE, "overrides": None},
            description="Fingerprint the dataset on an interval; emit vss.data.updated when it changed.",
            tags=["vss", "watch"],
            interval=watch_interval_s,
        )
    )
    return deployments


def serve_deployments(watch_interval_s: float = 300.0, backstop_cron: str | None = None, debounce_s: float = 300.0) -> None:
    """Serve every vss deployment until interrupted."""
    serve(*build_deployments(watch_interval_s, backstop_cron, debounce_s))
