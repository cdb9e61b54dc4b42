"""A file's change stamp: what every vss cache keys on to notice a rewritten file."""

import os

from vss_core.stamps import size_mtime


def test_a_rewrite_changes_the_stamp_and_a_missing_file_has_its_own(tmp_path):
    f = tmp_path / "in.wav"
    f.write_bytes(b"RIFF" * 4)
    first = size_mtime(f)
    assert first == (16, f.stat().st_mtime_ns)
    os.utime(f, ns=(first[1] + 10**9, first[1] + 10**9))  # same size, rewritten a second later
    assert size_mtime(f) != first and size_mtime(f)[0] == 16
    assert size_mtime(tmp_path / "gone.wav") == (-1, -1)


def test_a_link_is_stamped_by_its_target(tmp_path):
    target = tmp_path / "real.mp4"
    target.write_bytes(b"x" * 7)
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    assert size_mtime(link) == size_mtime(target) == (7, target.stat().st_mtime_ns)
