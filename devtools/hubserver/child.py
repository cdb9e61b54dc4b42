"""A download in its own process, to be killed mid-file by tests and benches.

    HF_ENDPOINT=http://127.0.0.1:PORT python -m devtools.hubserver.child vss|plain REPO_ID CACHE_DIR [CODEC_REPO_ID]

`vss` runs vss_core.hub.download_weights (settings from the environment) of the model REPO_ID and the
codec CODEC_REPO_ID (default: ModelConfig's); `plain` runs huggingface_hub.snapshot_download of REPO_ID
with the same allow patterns, as the baseline.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    mode, repo_id, cache_dir, *codec = argv
    from vss_core import hub

    if mode == "vss":
        from vss_core.config import ModelConfig
        from vss_core.settings import load_settings

        extra = {"codec_source": codec[0]} if codec else {}
        hub.download_weights(ModelConfig(source=repo_id, cache_dir=cache_dir, **extra), load_settings())
    elif mode == "plain":
        import huggingface_hub as hf

        hf.snapshot_download(
            repo_id,
            cache_dir=cache_dir,
            endpoint=os.environ["HF_ENDPOINT"],
            token=False,
            allow_patterns=hub.ALLOW_PATTERNS,
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}: use vss or plain")


if __name__ == "__main__":
    main(sys.argv[1:])
