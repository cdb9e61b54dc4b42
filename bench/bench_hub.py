"""Download throughput and the cost of a kill mid-file, vss vs plain huggingface_hub, on a loopback Hub.

    .venv/bin/python bench/bench_hub.py [--size-mb 256] [--kill-at 0.5]

Serves the tiny checkpoint plus one large LFS file, and the tiny codec as a second repo, from devtools/hubserver
on 127.0.0.1 (vss downloads both; the plain baseline only the checkpoint), then:
  1. throughput of a full download: vss download_weights vs huggingface_hub.snapshot_download;
  2. a download SIGKILLed once the server has sent `kill-at` of the large file, then run again:
     bytes re-fetched (sent twice) as a fraction of the file, vss resume vs plain snapshot_download.
The server never advertises Xet, so both take the plain HTTP path (Xet cannot be served here).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import huggingface_hub as hf  # noqa: E402

from devtools.hubserver import HubServer  # noqa: E402
from devtools.hubserver.kill import download_and_kill  # noqa: E402
from vss_core import codec, hub, model  # noqa: E402
from vss_core.config import ModelConfig  # noqa: E402
from vss_core.settings import Settings  # noqa: E402

REPO = "bench/big"
CODEC = "bench/codec"
BIG = "model-00001-of-00001.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="size of the large file (MiB)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the large file sent before the kill")
    args = parser.parse_args()
    size = args.size_mb << 20
    data = (hashlib.sha256(b"bench").digest() * (size // 32 + 1))[:size]

    with HubServer() as srv, tempfile.TemporaryDirectory() as tmp:
        _add(srv, data, Path(tmp))
        settings = Settings(hf_endpoint=srv.url)
        print(f"loopback Hub at {srv.url}; file {BIG}: {size / 2**20:.0f} MiB")

        for name, run in (
            ("vss download_weights", lambda c: hub.download_weights(_cfg(c), settings)),
            (
                "huggingface_hub.snapshot_download",
                lambda c: hf.snapshot_download(
                    REPO, cache_dir=c, endpoint=srv.url, token=False, allow_patterns=hub.ALLOW_PATTERNS
                ),
            ),
        ):
            cache = Path(tempfile.mkdtemp(dir=tmp))
            t = time.perf_counter()
            run(cache)
            dt = time.perf_counter() - t
            print(f"throughput  {name:36s} {size / dt / 2**20:8.1f} MiB/s ({dt:.2f} s)")

        pause_at = int(size * args.kill_at) + 12_345  # off any chunk boundary, like a real kill
        results = {}
        for mode in ("vss", "plain"):
            cache = Path(tempfile.mkdtemp(dir=tmp))
            srv.reset_counters()
            before = download_and_kill(
                srv, mode, REPO, cache, BIG, pause_at, codec_repo=CODEC if mode == "vss" else None
            )
            srv.reset_counters()
            if mode == "vss":
                hub.download_weights(_cfg(cache), settings)
            else:
                hf.snapshot_download(
                    REPO, cache_dir=cache, endpoint=srv.url, token=False, allow_patterns=hub.ALLOW_PATTERNS
                )
            after = srv.served_bytes(REPO, BIG)
            refetched = before + after - size
            orphans = sum(p.stat().st_size for p in cache.rglob("*.incomplete"))
            results[mode] = refetched
            print(
                f"kill at {before / size:.0%}  {mode:5s}: re-fetched {refetched:>11,d} B = {refetched / size:.4f} of "
                f"the file; partial files left behind: {orphans:,d} B"
            )
        if results["vss"]:
            print(f"re-fetched after a kill, plain / vss: {results['plain'] / results['vss']:,.0f}x")
        print("(both sides share this machine's CPUs; the Python server bounds the throughput figures)")


def _cfg(cache: Path) -> ModelConfig:
    return ModelConfig(source=REPO, codec_source=CODEC, cache_dir=str(cache))


def _add(srv: HubServer, data: bytes, tmp: Path) -> None:
    # The large file next to a real tiny checkpoint (vss preflights its configs and checks it after the download).
    srv.add_repo_from_dir(REPO, model.write_tiny_checkpoint(tmp / "tiny-model"), extra={BIG: data})
    srv.add_repo_from_dir(CODEC, codec.write_tiny_codec(tmp / "tiny-codec"))


if __name__ == "__main__":
    main()
