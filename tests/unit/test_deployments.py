"""Every shipped deployment definition loads and validates: the served ones and prefect.yaml."""

from pathlib import Path

import yaml

from vss_core import config

ROOT = Path(__file__).resolve().parents[2]


def test_served_deployments_cover_the_profiles_with_data_triggers():
    from deployments.serve import build_deployments

    deployments = {d.name: d for d in build_deployments(watch_interval_s=60, backstop_cron="0 3 * * *")}
    assert set(deployments) == {"train-2xb200", "train-8xh100", "demo-cpu", "watch-data"}
    assert {d.flow_name for d in deployments.values()} == {"vss"}
    for name, profile in [("train-2xb200", "conservative-2xb200"), ("train-8xh100", "standard-8xh100")]:
        d = deployments[name]
        assert d.parameters["profile"] == profile
        config.load_config(profile)
        (trigger,) = d.triggers
        assert trigger.expect == {"vss.data.updated"} and trigger.within.total_seconds() == 300
        assert trigger.schedule_after.total_seconds() == 300
        assert d.schedules and "0 3 * * *" in str(d.schedules[0].schedule)
    assert deployments["watch-data"].schedules[0].schedule.interval.total_seconds() == 60


def test_prefect_yaml_deployments_load_and_validate():
    from prefect.events import DeploymentEventTrigger
    from prefect.utilities.importtools import load_script_as_module

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {"train-2xb200", "train-8xh100", "demo-cpu", "watch-data"}
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        flow = getattr(load_script_as_module(str(ROOT / path)), func)
        assert flow.name == "vss"
        flow.validate_parameters(d["parameters"])
        config.load_config(d["parameters"]["profile"])
        for trigger in d.get("triggers", []):
            t = DeploymentEventTrigger.model_validate({k: v for k, v in trigger.items() if k != "type"})
            assert t.expect == {"vss.data.updated"}
            flow.validate_parameters(t.parameters)
