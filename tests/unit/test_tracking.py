"""vss_core.tracking: training scalars go to TensorBoard always, to W&B when enabled; a W&B that cannot
start or log costs a warning, never the training (wandb is faked: no network)."""

from __future__ import annotations

import logging
import sys
import types

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vss_core.tracking import Scalars


def _scalars(run_root):
    acc = EventAccumulator(str(run_root / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class FakeRun:
    def __init__(self, fail_log=False):
        self.logged, self.finished, self.fail_log = [], False, fail_log

    def log(self, values, step):
        if self.fail_log:
            raise ConnectionError("network gone")
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def _fake_wandb(monkeypatch, init):
    module = types.SimpleNamespace(init=init, Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", module)


def test_tensorboard_gets_every_scalar_and_wandb_is_off_unless_enabled(tmp_path):
    s = Scalars(tmp_path, {"lr": 0.1}, wandb_enabled=False)
    s.log(1, {"loss": 2.5, "lr": 0.1})
    s.log(2, {"loss": 1.25})
    s.close()
    assert s.wandb is None
    assert _scalars(tmp_path) == {"loss": [(1, 2.5), (2, 1.25)], "lr": [(1, 0.1)]}


def test_wandb_run_is_named_and_resumed_by_the_run_directory(tmp_path, monkeypatch):
    calls, run = [], FakeRun()
    _fake_wandb(monkeypatch, lambda **kw: calls.append(kw) or run)
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    root = tmp_path / "cpu-demo-2026 01:02"
    s = Scalars(root, {"profile": "cpu-demo"}, wandb_enabled=True)
    s.log(3, {"loss": 1.5})
    s.close()
    (kw,) = calls
    assert kw["project"] == "mine" and kw["name"] == "cpu-demo-2026 01:02" and kw["resume"] == "allow"
    assert kw["id"] == "cpu-demo-2026-01-02"  # W&B ids: letters, digits, - and _ only
    assert kw["dir"] == str(root) and kw["config"] == {"profile": "cpu-demo"}
    assert run.logged == [(3, {"loss": 1.5})] and run.finished
    assert _scalars(root) == {"loss": [(3, 1.5)]}


def test_a_wandb_that_cannot_start_or_log_costs_a_warning_not_the_training(tmp_path, monkeypatch, caplog):
    def refuse(**kw):
        raise RuntimeError("api key invalid\nmore detail")

    _fake_wandb(monkeypatch, refuse)
    with caplog.at_level(logging.WARNING, logger="vss_core.tracking"):
        s = Scalars(tmp_path / "a", {}, wandb_enabled=True)
    assert s.wandb is None and "did not start (RuntimeError: api key invalid)" in caplog.text
    s.close()

    caplog.clear()
    failing = FakeRun(fail_log=True)
    _fake_wandb(monkeypatch, lambda **kw: failing)
    s = Scalars(tmp_path / "b", {}, wandb_enabled=True)
    with caplog.at_level(logging.WARNING, logger="vss_core.tracking"):
        s.log(1, {"loss": 3.0})
        s.log(2, {"loss": 2.0})  # W&B dropped after its first failure: no second warning
    s.close()
    assert s.wandb is None and caplog.text.count("W&B logging failed (ConnectionError)") == 1
    assert not failing.finished
    assert _scalars(tmp_path / "b") == {"loss": [(1, 3.0), (2, 2.0)]}
