"""The vss deployments, served by `vss serve` (a long-running process that runs them):

    vss serve                         # in one terminal (after `prefect server start` in another)
    prefect deployment run vss/demo-cpu
    prefect deployment run vss/train-2xb200 --params '{"overrides": {"data": {"root": "/data/train"}}}'

prefect.yaml at the repo root is the one definition of the deployments and of the automation that marks
silent runs Crashed; `prefect deploy --all` reads it for a work pool, and this module builds the served
deployments and creates the automation from it, adding only what serving on this machine knows:

- each train trigger also matches its profile's dataset (`vss.dataset.<id>` of its data.root), so an
  event for another folder does not start it;
- `--watch-profile`, `--watch-interval`, `--debounce`, `--backstop-cron` and `--crash-after` change the
  values prefect.yaml gives;
- the heartbeat frequency prefect.yaml sets for the work pool's flow processes is set in this process's
  environment, which the served flow runs inherit.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from vss_core import config
from vss_core.errors import ConfigError

log = logging.getLogger(__name__)

SPEC_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


@dataclass(frozen=True)
class ServeOptions:
    """What `vss serve` may change of prefect.yaml's values (None: keep prefect.yaml's)."""

    watch_profile: str | None = None
    watch_interval_s: float | None = None
    debounce_s: float | None = None
    backstop_cron: str | None = None
    crash_after_s: float | None = None


def load_spec(path: Path = SPEC_FILE) -> dict[str, Any]:
    """prefect.yaml, read as `prefect deploy` reads it (anchors resolved)."""
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: `vss serve` builds its deployments from it. Run vss from a checkout "
            "of the repository (make install installs it in place)."
        )
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not spec.get("deployments"):
        raise ConfigError(f"{path}: no `deployments:` list; restore it from the repository.")
    return spec


def load_flow(entrypoint: str):
    """`flows/vss.py:vss` -> the flow object, imported as a module of this package (not as a loose script)."""
    path, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def heartbeat_seconds(spec: dict[str, Any]) -> int | None:
    """The heartbeat frequency prefect.yaml gives the flow processes (job_variables.env), if any."""
    for d in spec["deployments"]:
        value = (((d.get("work_pool") or {}).get("job_variables") or {}).get("env") or {}).get(HEARTBEAT_ENV)
        if value is not None:
            return int(value)
    return None


def _trigger(raw: dict[str, Any], opts: ServeOptions):
    from prefect.events import DeploymentEventTrigger

    from tasks.events import dataset_resource_id

    fields = {k: v for k, v in raw.items() if k != "type"}
    if opts.debounce_s is not None:
        fields["within"] = fields["schedule_after"] = timedelta(seconds=opts.debounce_s)
    trigger = DeploymentEventTrigger.model_validate(fields)
    profile = (trigger.parameters or {}).get("profile")
    if profile:  # this machine knows the profile's dataset: match it too
        root = str(Path(config.load_config(profile).data.root).absolute())
        trigger.match = type(trigger.match)({**trigger.match.root, "prefect.resource.id": dataset_resource_id(root)})
    return trigger


def build_deployments(opts: ServeOptions = ServeOptions(), spec: dict[str, Any] | None = None) -> list:
    """One RunnerDeployment per prefect.yaml deployment, with its parameters, triggers and schedules."""
    spec = spec or load_spec()
    built = []
    for d in spec["deployments"]:
        flow = load_flow(d["entrypoint"])
        params = {"overrides": None, **(d.get("parameters") or {})}
        triggers = [_trigger(t, opts) for t in d.get("triggers") or [] if t.get("type", "event") == "event"]
        interval = cron = None
        for schedule in d.get("schedules") or []:
            interval = schedule.get("interval", interval)
            cron = schedule.get("cron", cron)
        if d["name"] == "watch-data":
            if opts.watch_profile:
                config.load_config(opts.watch_profile)  # a bad profile fails here, not at the first watch
                params["profile"] = opts.watch_profile
            interval = opts.watch_interval_s or interval
        elif triggers:  # a train deployment
            cron = opts.backstop_cron or cron
        built.append(
            flow.to_deployment(
                name=d["name"],
                parameters=params,
                description=d.get("description"),
                tags=d.get("tags"),
                triggers=triggers or None,
                interval=interval,
                cron=cron,
                concurrency_limit=d.get("concurrency_limit"),
            )
        )
    return built


def automations(opts: ServeOptions = ServeOptions(), spec: dict[str, Any] | None = None) -> list:
    """prefect.yaml's automations as Prefect validates them (`prefect automation create` reads the same)."""
    from prefect.events.schemas.automations import AutomationCore

    spec = spec or load_spec()
    out = []
    for raw in spec.get("automations") or []:
        automation = AutomationCore.model_validate(raw)
        if opts.crash_after_s is not None and automation.trigger.posture == "Proactive":
            automation.trigger.within = timedelta(seconds=opts.crash_after_s)
        out.append(automation)
    return out


def ensure_automations(items: list) -> list[str]:
    """Create each automation on the Prefect server, or update the one of the same name. Returns the names."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in items:
            existing = client.read_automations_by_name(name=automation.name)
            if existing:
                client.update_automation(automation_id=existing[0].id, automation=automation)
            else:
                client.create_automation(automation)
    return [a.name for a in items]


def serve_deployments(opts: ServeOptions = ServeOptions()) -> None:
    """Create the automations, then serve every vss deployment until interrupted."""
    from prefect import serve

    spec = load_spec()
    beat = heartbeat_seconds(spec)
    if beat is not None:
        os.environ.setdefault(HEARTBEAT_ENV, str(beat))  # the served flow runs inherit it
    deployments = build_deployments(opts, spec)
    names = ensure_automations(automations(opts, spec))
    log.info(
        "automations on the server: %s; flow runs send a heartbeat every %s s",
        ", ".join(names) or "none",
        os.environ.get(HEARTBEAT_ENV, "180 (Prefect's default)"),
    )
    serve(*deployments)
