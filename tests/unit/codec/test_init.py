"""vss_core.codec (the package's own code): the codec's fingerprint."""

from __future__ import annotations

import os

from vss_core import codec


def test_the_codec_fingerprint_follows_its_files_stamps(tmp_path):
    d = tmp_path / "codec"
    codec.write_tiny_codec(d)
    before = codec.encoder_fingerprint(d)
    cmvn = d / codec.ENCODER_CMVN
    st = cmvn.stat()
    os.utime(cmvn, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert codec.encoder_fingerprint(d) != before
