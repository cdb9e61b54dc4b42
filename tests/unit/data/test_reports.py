"""vss_core.data.reports: where a sample's parts are (a folder's files or a manifest line's paths and
inline texts), the validation report's valid / invalid / skipped samples and the table a person reads."""

from __future__ import annotations

import hashlib

from vss_core.data import reports
from vss_core.data.reports import AudioInfo, DatasetReport, SampleFiles, SampleReport, VideoInfo


def test_a_folder_names_every_role_and_texts_are_read_only_where_present(tmp_path):
    parts = SampleFiles.in_folder(tmp_path)
    assert set(parts.files) == set(reports.SAMPLE_FILES + reports.TEXT_FILES)
    assert parts.file("in.mp4") == tmp_path / "in.mp4" and parts.texts == {}
    assert parts.text("out.txt") is None  # absent file
    (tmp_path / "out.txt").write_text("  Hello there.\n", encoding="utf-8")
    assert parts.text("out.txt") == "Hello there." and parts.text_digest("out.txt") is None


def test_a_manifest_sample_has_inline_texts_keyed_by_their_digest(tmp_path):
    parts = SampleFiles(files={"in.mp4": str(tmp_path / "v.mp4")}, texts={"out.txt": " Hi \n"})
    assert parts.text("out.txt") == "Hi" and parts.file("out.wav") is None and parts.text("in.txt") is None
    assert parts.text_digest("out.txt") == hashlib.sha256(b" Hi \n").hexdigest()
    report = SampleReport(name="01", path="list.jsonl:2", problems=["x"], **parts.model_dump())
    assert type(report.parts()) is SampleFiles and report.parts() == parts


def _report(on_invalid="fail"):
    video = VideoInfo(frames=20, fps=10.0, width=96, height=80, duration_s=2.0, codec="h264")
    audio = AudioInfo(sample_rate=16000, channels=1, duration_s=2.0, rms_dbfs=-20.0)
    good = SampleReport(name="01", path="/d/01", video=video, in_audio=audio, out_audio=audio, warnings=["cropped"])
    bad = SampleReport(name="02", path="/d/02", problems=["in.wav is empty (0 bytes)", "a | b"])
    return DatasetReport(root="/d", samples=[good, bad], fingerprint="f" * 64, on_invalid=on_invalid, warnings=["w1"])


def test_valid_invalid_and_skipped_follow_the_problems_and_the_policy():
    fail, skip = _report(), _report("skip")
    assert [s.name for s in fail.valid] == ["01"] and [s.name for s in fail.invalid] == ["02"]
    assert fail.skipped == [] and skip.skipped == ["02"]
    assert DatasetReport.model_validate_json(skip.model_dump_json()).skipped == ["02"]


def test_the_table_has_one_row_per_sample_and_says_what_the_policy_does():
    table = _report().table()
    assert table.splitlines() == [
        "1 of 2 samples valid in /d; data.on_invalid=fail stops the run until they are fixed",
        "",
        "| sample | ok | video frames | fps | resolution | in.wav s | out.wav s | problems |",
        "|---|---|---|---|---|---|---|---|",
        "| 01 | yes | 20 | 10 | 96x80 | 2.00 | 2.00 | warning: cropped |",
        "| 02 | **no** | - | - | - | - | - | in.wav is empty (0 bytes); a \\| b |",
        "",
        "warning: w1",
    ]
    assert _report("skip").table().startswith("1 of 2 samples valid in /d; skipped (data.on_invalid=skip): 02\n")


def test_long_lists_are_summarised():
    names = [f"{i:02d}" for i in range(12)]
    assert reports._summarise(names) == "00, 01, 02, 03, 04, 05, 06, 07 (+4 more)"
    assert reports._summarise(names[:3]) == "00, 01, 02"
    assert reports._error_text(OSError("first line\nsecond")) == "first line"
    assert reports._error_text(ValueError()) == "ValueError"
