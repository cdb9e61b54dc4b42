"""The JSONL manifest: samples whose files live anywhere, validated, fingerprinted and prepared as
sample folders are."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.helpers import data_config, write_jsonl
from vss_core import data, evaluate
from vss_core.data import manifest
from vss_core.errors import DatasetError


def test_a_manifest_validates_and_prepares_exactly_as_the_same_samples_in_folders(
    manifest_folders, scattered_manifest, tiny_model_dir, tiny_codec_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path / "shared")  # paths are relative to the manifest, not to the working directory
    listed = data.validate_dataset(data_config(scattered_manifest))
    assert [s.name for s in listed.samples] == ["01", "02", "03"] and not listed.invalid, listed.table()
    assert listed.samples[0].path == f"{scattered_manifest.resolve()}:2"
    by_folder = data.validate_dataset(data_config(manifest_folders))
    assert [s.video for s in listed.samples] == [s.video for s in by_folder.samples]

    a = data.prepare_dataset(
        listed.samples, data_config(scattered_manifest), tiny_model_dir, tiny_codec_dir, tmp_path / "p-manifest"
    )
    b = data.prepare_dataset(
        by_folder.samples, data_config(manifest_folders), tiny_model_dir, tiny_codec_dir, tmp_path / "p-folder"
    )
    for x, y in zip(data.load_prepared(a.dir), data.load_prepared(b.dir), strict=True):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x if k != "key"), "the same sample must prepare the same tensors"
    # the folders' out.txt shapes their text labels: equal tensors mean the inline transcript was used
    assert all(s.text("out.txt") for s in listed.samples)

    # the evaluate stage reads the target the same way
    (s,) = evaluate.all_samples(listed, a)[:1]
    wave, text = data.read_target(s.parts, 16000, data_config(scattered_manifest))
    wave_f, text_f = data.read_target(manifest_folders / "01", 16000, data_config(manifest_folders))
    assert torch.equal(wave, wave_f) and text == text_f and text


def test_the_fingerprint_and_the_cache_follow_the_listed_files_and_texts(scattered_manifest, tmp_path):
    cfg = data_config(scattered_manifest)
    first = data.validate_dataset(cfg)
    again = data.validate_dataset(cfg)
    assert again.reused == ["01", "02", "03"] and again.fingerprint == first.fingerprint

    wav = tmp_path / "shared" / "media" / "speech" / "02-question.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = data.validate_dataset(cfg)
    assert touched.fingerprint != first.fingerprint and touched.reused == ["01", "03"]

    lines = [json.loads(line) for line in scattered_manifest.read_text().splitlines() if line.startswith("{")]
    lines[2]["transcript"] = "Another answer."
    write_jsonl(scattered_manifest, lines)
    edited = data.validate_dataset(cfg)
    assert edited.fingerprint != touched.fingerprint
    assert edited.samples[2].text("out.txt") == "Another answer."


def test_every_bad_line_is_named_before_anything_runs(tmp_path):
    good = {"video": "a.mp4", "input_speech": "a.wav", "target_speech": "b.wav"}
    path = write_jsonl(
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
        data.validate_dataset(data_config(write_jsonl(tmp_path / "empty.jsonl", ["# nothing yet"])))


def test_a_missing_or_broken_file_is_a_problem_of_its_sample_naming_the_path(scattered_manifest, tmp_path):
    missing = tmp_path / "shared" / "media" / "video" / "clip-02.mp4"
    missing.unlink()
    (tmp_path / "shared" / "media" / "speech" / "03-answer.wav").write_bytes(b"")
    report = data.validate_dataset(data_config(scattered_manifest, on_invalid="skip"))
    problems = {s.name: " ".join(s.problems) for s in report.samples}
    assert problems["01"] == ""
    assert f"in.mp4 ({missing}) is missing" in problems["02"]
    assert "03-answer.wav) is empty" in problems["03"]
    assert [s.name for s in data.select_samples(report, "skip")] == ["01"]
    with pytest.raises(DatasetError, match="2 of 3 samples"):
        data.select_samples(report, "fail")


def test_names_default_to_the_video_path_and_a_folder_named_jsonl_is_still_a_folder(manifest_folders, tmp_path):
    sample = manifest_folders / "01"
    path = write_jsonl(
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
    shutil.copytree(manifest_folders, as_folder)
    assert not manifest.is_manifest(as_folder)
    assert len(data.validate_dataset(data_config(as_folder)).samples) == 3
