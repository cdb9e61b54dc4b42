"""vss_core.data.watch: the dataset's fingerprint compared with the last look at the same root."""

from __future__ import annotations

import os

import pytest

from tests.helpers import data_config
from vss_core.data import watch
from vss_core.errors import DatasetError


def test_the_first_look_records_then_unchanged_then_changed(dataset, tmp_path):
    state = tmp_path / "state"
    cfg = data_config(dataset)
    first = watch.check_data_changed(cfg, state)
    assert not first.changed and first.previous is None and first.samples == 3
    assert first.message.endswith(f"first look, 3 samples (fingerprint {first.fingerprint[:12]} recorded)")
    assert first.root == str(dataset.absolute()) and len(list(state.iterdir())) == 1

    again = watch.check_data_changed(cfg, state)
    assert not again.changed and again.previous == first.fingerprint == again.fingerprint
    assert again.message == f"{dataset.absolute()}: unchanged (3 samples)"

    wav = dataset / "02" / "out.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = watch.check_data_changed(cfg, state)
    assert changed.changed and changed.previous == first.fingerprint != changed.fingerprint
    assert changed.message == (
        f"{dataset.absolute()}: changed ({first.fingerprint[:12]} -> {changed.fingerprint[:12]}, 3 samples)"
    )
    assert not watch.check_data_changed(cfg, state).changed  # the change is reported once


def test_each_root_has_its_own_state(dataset, tmp_path):
    from vss_core import demo

    other = tmp_path / "other"
    demo.write_demo_dataset(other, samples=1, seconds=2.0)
    state = tmp_path / "state"
    watch.check_data_changed(data_config(dataset), state)
    look = watch.check_data_changed(data_config(other), state)
    assert look.previous is None and not look.changed and look.samples == 1
    assert len(list(state.iterdir())) == 2


def test_a_missing_root_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="data.root="):
        watch.check_data_changed(data_config(tmp_path / "nowhere"), tmp_path / "state")
