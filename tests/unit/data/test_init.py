"""vss_core.data (the package's own code): what the rest of vss uses is re-exported, each name the very
object of the submodule that owns it."""

from __future__ import annotations

import importlib

from vss_core import data

OWNERS = {
    "dataset": {"Indexed", "Packed", "PreparedSamples", "RankBatches", "decode_item", "load_prepared"},
    "prepare": {"prepare_dataset", "prepare_inputs", "prepared_dir", "prepared_key", "read_target"},
    "reports": {"MANIFEST", "PREPARE_FORMAT", "SAMPLE_FILES", "TEXT_FILES", "DatasetReport", "SampleReport"},
    "validate": {"select_samples", "validate_dataset"},
    "watch": {"DataChange", "check_data_changed"},
}


def test_every_exported_name_is_its_submodules_object():
    assert sorted(data.__all__) == sorted(set(data.__all__))
    for name in data.__all__:
        owners = [
            m
            for m in ("dataset", "prepare", "reports", "validate", "watch")
            if hasattr(importlib.import_module(f"vss_core.data.{m}"), name)
        ]
        assert owners, name
        assert all(getattr(importlib.import_module(f"vss_core.data.{m}"), name) is getattr(data, name) for m in owners)
    for module, names in OWNERS.items():
        sub = importlib.import_module(f"vss_core.data.{module}")
        assert names <= set(data.__all__)
        assert all(getattr(data, n) is getattr(sub, n) for n in names), module
    assert data.MANIFEST == "manifest.json" and data.SAMPLE_FILES == ("in.mp4", "in.wav", "out.wav")
