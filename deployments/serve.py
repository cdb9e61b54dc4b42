"""The vss deployments, served by `vss serve` (a long-running process that runs them):

    vss serve                         # in one terminal (after `prefect server start` in another)
    prefect deployment run vss/demo-cpu
    prefect deployment run vss/train-2xb200 --param overrides='{"data.root": "/data/train"}'
"""

from __future__ import annotations

from prefect import serve

from flows.vss import vss

# deployment name -> (profile, description)
DEPLOYMENTS: dict[str, tuple[str, str]] = {
    "train-2xb200": ("conservative-2xb200", "2x B200 192 GB, conservative settings, ZeRO-3 with CPU offload."),
    "train-8xh100": ("standard-8xh100", "8x H100 80 GB, standard settings, ZeRO-3 with CPU offload."),
    "demo-cpu": ("cpu-demo", "Tiny model of the real architecture on CPU, generated data (make demo)."),
}


def build_deployments() -> list:
    """One RunnerDeployment per profile; parameters are the profile name and an empty override map."""
    return [
        vss.to_deployment(
            name=name,
            parameters={"profile": profile, "overrides": {}},
            description=description,
            tags=["vss", profile],
        )
        for name, (profile, description) in DEPLOYMENTS.items()
    ]


def serve_deployments() -> None:
    """Serve every vss deployment until interrupted."""
    serve(*build_deployments())
