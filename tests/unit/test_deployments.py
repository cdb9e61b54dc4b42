"""The deployments have one definition (prefect.yaml): what `vss serve` serves is built from it and agrees
with it field by field; one data event starts one deployment; silent runs have an automation."""

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prefect.events.schemas.events import Resource

from deployments import serve
from tasks.events import DATA_UPDATED, dataset_resource_id
from vss_core import config

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
NAMES = {"train-2xb200", "train-8xh100", "demo-cpu", "watch-data"}


def _served(**opts):
    return {d.name: d for d in serve.build_deployments(serve.ServeOptions(**opts))}


def test_served_deployments_are_prefect_yaml_field_by_field():
    served = _served()
    assert set(served) == NAMES == {d["name"] for d in SPEC["deployments"]}
    for d in SPEC["deployments"]:
        s = served[d["name"]]
        flow = serve.load_flow(d["entrypoint"])
        assert s.flow_name == flow.name
        assert s.parameters == {"overrides": None, **d["parameters"]}
        flow.validate_parameters(s.parameters)
        config.load_config(d["parameters"]["profile"])
        assert s.description == d["description"] and s.tags == d["tags"]
        assert s.concurrency_limit == d.get("concurrency_limit")
        assert len(s.triggers) == len(d.get("triggers", []))
        for raw, trig in zip(d.get("triggers", []), s.triggers):
            assert trig.expect == set(raw["expect"]) == {DATA_UPDATED}
            assert trig.within == trig.schedule_after == timedelta(seconds=raw["within"])
            assert trig.parameters == raw["parameters"]
            flow.validate_parameters(trig.parameters)
            # serve adds the dataset of the profile to prefect.yaml's match; everything else is as written
            root = str(Path(config.load_config(raw["parameters"]["profile"]).data.root).absolute())
            assert trig.match.root == {**raw["match"], "prefect.resource.id": dataset_resource_id(root)}
        intervals = [x["interval"] for x in d.get("schedules", []) if "interval" in x]
        assert [
            sch.schedule.interval.total_seconds() for sch in s.schedules if hasattr(sch.schedule, "interval")
        ] == intervals


def test_watch_data_is_its_own_flow_and_the_training_flow_is_vss():
    served = _served()
    assert served["watch-data"].flow_name == "vss-watch-data"
    assert {served[n].flow_name for n in NAMES - {"watch-data"}} == {"vss"}


def test_serve_options_change_only_what_they_name():
    served = _served(watch_profile="conservative-2xb200", watch_interval_s=60, debounce_s=3, backstop_cron="0 3 * * *")
    assert served["watch-data"].parameters["profile"] == "conservative-2xb200"
    assert served["watch-data"].schedules[0].schedule.interval.total_seconds() == 60
    for name in ("train-2xb200", "train-8xh100", "demo-cpu"):
        (trig,) = served[name].triggers
        assert trig.within.total_seconds() == trig.schedule_after.total_seconds() == 3
        assert "0 3 * * *" in str(served[name].schedules[0].schedule)
    with pytest.raises(Exception, match="no-such-profile"):
        _served(watch_profile="no-such-profile")


@pytest.mark.parametrize(
    "profile,expected",
    [("conservative-2xb200", "train-2xb200"), ("standard-8xh100", "train-8xh100"), ("cpu-demo", "demo-cpu")],
)
def test_one_data_event_starts_one_deployment(profile, expected, monkeypatch):
    """The event `vss-watch-data` or `vss notify-data-updated` sends, matched by Prefect's own resource
    matching against every trigger, in prefect.yaml and as served."""
    from tasks import events

    root = str(Path(config.load_config(profile).data.root).absolute())
    monkeypatch.setattr(events, "emit_event", lambda **kw: kw)
    sent = events.emit_data_updated(root, profile, "f" * 16, 8)
    assert sent["event"] == DATA_UPDATED
    resource = Resource(sent["resource"])
    from prefect.events import DeploymentEventTrigger

    written = {
        d["name"]
        for d in SPEC["deployments"]
        for t in d.get("triggers", [])
        if DeploymentEventTrigger.model_validate({k: v for k, v in t.items() if k != "type"}).match.matches(resource)
    }
    served = {name for name, d in _served().items() for t in d.triggers if t.match.matches(resource)}
    assert written == served == {expected}


def test_the_crash_automation_watches_heartbeats_of_vss_runs_only():
    from prefect.client.schemas.objects import StateType

    (automation,) = serve.automations()
    trig = automation.trigger
    assert trig.posture == "Proactive" and trig.after == {"prefect.flow-run.heartbeat"}
    assert {
        "prefect.flow-run.heartbeat",
        "prefect.flow-run.Completed",
        "prefect.flow-run.Failed",
        "prefect.flow-run.Cancelled",
        "prefect.flow-run.Crashed",
    } <= trig.expect
    assert trig.for_each == {"prefect.resource.id"}
    flows = {"vss", "vss-watch-data"}
    assert (
        set(trig.match_related.root["prefect.resource.name"])
        == flows
        == {serve.load_flow(d["entrypoint"]).name for d in SPEC["deployments"]}
    )
    (action,) = automation.actions
    assert action.type == "change-flow-run-state" and action.state == StateType.CRASHED
    # a run is declared silent only after several heartbeats were missed
    beat = serve.heartbeat_seconds(SPEC)
    assert beat is not None and trig.within.total_seconds() >= 3 * beat
    (changed,) = serve.automations(serve.ServeOptions(crash_after_s=45))
    assert changed.trigger.within.total_seconds() == 45


def test_every_deployment_gets_the_heartbeat_frequency():
    beats = {
        d["name"]: d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
        for d in SPEC["deployments"]
    }
    assert set(beats) == NAMES and len(set(beats.values())) == 1 and int(next(iter(beats.values()))) >= 30


def test_prefect_validates_prefect_yaml_as_prefect_deploy_reads_it():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(SPEC)
    assert {d.name for d in model.deployments} == NAMES
