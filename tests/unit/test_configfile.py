"""vss_core.configfile: one reader of small JSON / YAML config files that collects problems."""

from __future__ import annotations

import pytest

from vss_core.configfile import read_mapping


@pytest.mark.parametrize("name", ["config.json", "codec.yaml", "codec.yml"])
def test_reads_a_mapping_by_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"a": 1, "b": {"c": [2, 3]}}' if name.endswith(".json") else "a: 1\nb:\n  c: [2, 3]\n")
    problems: list[str] = []
    assert read_mapping(path, problems) == {"a": 1, "b": {"c": [2, 3]}}
    assert problems == []


def test_missing_file_names_what_it_is(tmp_path):
    problems: list[str] = []
    path = tmp_path / "config.json"
    assert read_mapping(path, problems, what="a checkpoint holds it") is None
    assert problems == [f"{path}: file missing (a checkpoint holds it)"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("config.json", '{"a": ', "not readable JSON"),
        ("c.yaml", "a: [1, 2", "not readable YAML"),
        ("config.json", "\xff", "not readable JSON"),
    ],
)
def test_unparsable_file_says_format_and_fix(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    problems: list[str] = []
    assert read_mapping(path, problems, fix="re-download it") is None
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: {expected} (")
    assert problems[0].endswith("; re-download it")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("config.json", "[1, 2]", "must hold a JSON object, got list"),
        ("c.yaml", "- a\n", "must hold a YAML mapping, got list"),
    ],
)
def test_not_a_mapping(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    problems: list[str] = ["earlier problem"]
    assert read_mapping(path, problems) is None
    assert problems == ["earlier problem", f"{path}: {expected}"]


def test_problems_accumulate_across_files(tmp_path):
    (tmp_path / "ok.json").write_text("{}")
    (tmp_path / "bad.yaml").write_text("a: [")
    problems: list[str] = []
    got = [read_mapping(tmp_path / n, problems) for n in ("ok.json", "bad.yaml", "gone.json")]
    assert got == [{}, None, None]
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == ["not readable YAML", "file missing"]
