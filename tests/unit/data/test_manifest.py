"""The JSONL manifest: samples whose files live anywhere, validated, fingerprinted and prepared as
sample folders are."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.helpers import data_config
from vss_core import data, demo, evaluate
from vss_core.data import manifest
from vss_core.errors import DatasetError


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def folders(tmp_path):
    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=3, seconds=2.0)
    return root


@pytest.fixture
def scattered(tmp_path, folders):
    """The same three samples as `folders`, their files spread over other folders with other names,
    listed by a manifest in a folder of its own (paths relative to it, one absolute)."""
    media = tmp_path / "shared" / "media"
    (media / "video").mkdir(parents=True)
    (media / "speech").mkdir()
    lines = []
    for sample in sorted(folders.iterdir()):
        n = sample.name
        shutil.copy2(sample / "in.mp4", media / "video" / f"clip-{n}.mp4")
        shutil.copy2(sample / "in.wav", media / "speech" / f"{n}-question.wav")
        shutil.copy2(sample / "out.wav", media / "speech" / f"{n}-answer.wav")
        lines.append(
            {
                "name": n,
                "video": f"../shared/media/video/clip-{n}.mp4",
                "input_speech": f"../shared/media/speech/{n}-question.wav",
                "target_speech": str(media / "speech" / f"{n}-answer.wav"),  # absolute works too
                "transcript": (sample / "out.txt").read_text(encoding="utf-8"),
            }
        )
    (tmp_path / "lists").mkdir()
    return _write(tmp_path / "lists" / "train.jsonl", ["# three samples", *lines, ""])


def test_a_manifest_validates_and_prepares_exactly_as_the_same_samples_in_folders(
    folders, scattered, tiny_model_dir, tiny_codec_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path / "shared")  # paths are relative to the manifest, not to the working directory
    listed = data.validate_dataset(data_config(scattered))
    assert [s.name for s in listed.samples] == ["01", "02", "03"] and not listed.invalid, listed.table()
    assert listed.samples[0].path == f"{scattered.resolve()}:2"
    by_folder = data.validate_dataset(data_config(folders))
    assert [s.video for s in listed.samples] == [s.video for s in by_folder.samples]

    a = data.prepare_dataset(
        listed.samples, data_config(scattered), tiny_model_dir, tiny_codec_dir, tmp_path / "p-manifest"
    )
    b = data.prepare_dataset(
        by_folder.samples, data_config(folders), tiny_model_dir, tiny_codec_dir, tmp_path / "p-folder"
    )
    for x, y in zip(data.load_prepared(a.dir), data.load_prepared(b.dir), strict=True):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x if k != "key"), "the same sample must prepare the same tensors"
    # the folders' out.txt shapes their text labels: equal tensors mean the inline transcript was used
    assert all(s.text("out.txt") for s in listed.samples)

    # the evaluate stage reads the target the same way
    (s,) = evaluate.all_samples(listed, a)[:1]
    wave, text = data.read_target(s.parts, 16000, data_config(scattered))
    wave_f, text_f = data.read_target(folders / "01", 16000, data_config(folders))
    assert torch.equal(wave, wave_f) and text == text_f and text


def test_the_fingerprint_and_the_cache_follow_the_listed_files_and_texts(scattered, tmp_path):
    cfg = data_config(scattered)
    first = data.validate_dataset(cfg)
    again = data.validate_dataset(cfg)
    assert again.reused == ["01", "02", "03"] and again.fingerprint == first.fingerprint

    wav = tmp_path / "shared" / "media" / "speech" / "02-question.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = data.validate_dataset(cfg)
    assert touched.fingerprint != first.fingerprint and touched.reused == ["01", "03"]

    lines = [json.loads(line) for line in scattered.read_text().splitlines() if line.startswith("{")]
    lines[2]["transcript"] = "Another answer."
    _write(scattered, lines)
    edited = data.validate_dataset(cfg)
    assert edited.fingerprint != touched.fingerprint
    assert edited.samples[2].text("out.txt") == "Another answer."


def test_every_bad_line_is_named_before_anything_runs(tmp_path):
    good = {"video": "a.mp4", "input_speech": "a.wav", "target_speech": "b.wav"}
    path = _write(
        tmp_path / "bad.jsonl",
        [
            good,
            "{not json",
            ["a", "list"],
            {"video": "v.mp4", "input_speech": "i.wav"},
            good | {"speaker": "x"},
            good | {"transcript": 3},
            good | {"name": "a"},  # the first line is named "a" after its video
            good | {"name": "../escape"},
            good | {"video": " ", "name": "blank"},
        ],
    )
    with pytest.raises(DatasetError) as err:
        data.validate_dataset(data_config(path))
    text = str(err.value)
    assert "8 bad line(s)" in text
    for expected in (
        "line 2: not JSON",
        "line 3: must be a JSON object",
        "line 4: missing target_speech",
        "line 5: unknown field(s) speaker",
        "line 6: transcript must be strings",
        "line 7: name 'a' is also line 1's",
        "line 8: name '../escape' must be",
        "line 9: video must not be empty",
    ):
        assert expected in text, (expected, text)

    with pytest.raises(DatasetError, match="lists no sample"):
        data.validate_dataset(data_config(_write(tmp_path / "empty.jsonl", ["# nothing yet"])))


def test_a_missing_or_broken_file_is_a_problem_of_its_sample_naming_the_path(scattered, tmp_path):
    missing = tmp_path / "shared" / "media" / "video" / "clip-02.mp4"
    missing.unlink()
    (tmp_path / "shared" / "media" / "speech" / "03-answer.wav").write_bytes(b"")
    report = data.validate_dataset(data_config(scattered, on_invalid="skip"))
    problems = {s.name: " ".join(s.problems) for s in report.samples}
    assert problems["01"] == ""
    assert f"in.mp4 ({missing}) is missing" in problems["02"]
    assert "03-answer.wav) is empty" in problems["03"]
    assert [s.name for s in data.select_samples(report, "skip")] == ["01"]
    with pytest.raises(DatasetError, match="2 of 3 samples"):
        data.select_samples(report, "fail")


def test_names_default_to_the_video_path_and_a_folder_named_jsonl_is_still_a_folder(folders, tmp_path):
    sample = folders / "01"
    path = _write(
        tmp_path / "m.jsonl",
        [
            {
                "video": str(sample / "in.mp4"),
                "input_speech": str(sample / "in.wav"),
                "target_speech": str(sample / "out.wav"),
            }
        ],
    )
    (only,) = data.validate_dataset(data_config(path)).samples
    assert only.name == str(sample / "in").strip("/").replace("/", "_") and only.ok
    assert only.text("out.txt") is None  # no transcript listed: the folder's out.txt is not looked for

    as_folder = tmp_path / "looks-like.jsonl"
    shutil.copytree(folders, as_folder)
    assert not manifest.is_manifest(as_folder)
    assert len(data.validate_dataset(data_config(as_folder)).samples) == 3


def test_the_planner_counts_a_manifests_samples(scattered, tmp_path):
    from vss_core import hardware

    assert hardware.count_samples(scattered) == 3
    assert hardware.count_samples(_write(tmp_path / "broken.jsonl", ["{oops"])) == 0  # validation names it
