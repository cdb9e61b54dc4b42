"""Atomic writes: a reader sees the old file or the new one, never half of one, and nothing is left."""

import json
import os

import pytest

from vss_core.atomic import temp_path, write_atomic, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"ok": 1})

    def half(tmp):
        tmp.write_text('{"ok": ')  # a writer killed mid-way: this never becomes the target
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half)
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_json_is_sorted_indented_with_one_newline_and_parents_are_made(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    assert write_json_atomic(target, {"b": 1, "a": [1, 2]}) == target
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    write_json_atomic(target, {"b": 1}, indent=None)
    assert target.read_text() == '{"b": 1}\n'


def test_temp_names_are_hidden_unique_and_carry_pid_and_suffix(tmp_path):
    a, b = temp_path(tmp_path / "w.safetensors"), temp_path(tmp_path / "w.safetensors")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(f".w.safetensors.tmp-{os.getpid()}-") and a.suffix == ".safetensors"
