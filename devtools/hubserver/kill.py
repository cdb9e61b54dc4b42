"""Kill a download mid-file, deterministically: the server stalls the file at a byte offset, the child is
SIGKILLed once every other file (of the model repo, and of the codec repo when one is given) is complete and
in the cache."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import time
from pathlib import Path

from devtools.hubserver.server import HubServer
from vss_core.hub import ALLOW_PATTERNS, CODEC_ALLOW_PATTERNS

ROOT = Path(__file__).resolve().parents[2]


def child_env(hub: HubServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")}
    env.update(
        HF_ENDPOINT=hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1"
    )
    return env


def _snapshot_files(hub: HubServer, repo_id: str, cache_dir: Path, patterns: list[str], skip: str) -> list[Path]:
    commit = hub.head(repo_id)
    snapshot = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit.oid
    return [snapshot / p for p in commit.files if p != skip and any(fnmatch.fnmatch(p, pat) for pat in patterns)]


def download_and_kill(
    hub: HubServer,
    mode: str,
    repo_id: str,
    cache_dir: Path,
    big: str,
    pause_at: int,
    timeout: float = 120.0,
    codec_repo: str | None = None,
) -> int:
    """Run `python -m devtools.hubserver.child mode` and SIGKILL it mid-`big` (a file of `repo_id`); return bytes of
    `big` served to it. With `codec_repo` (mode vss), the child downloads that codec too, and the kill waits for it."""
    others = _snapshot_files(hub, repo_id, cache_dir, ALLOW_PATTERNS, big)
    if codec_repo is not None:
        others += _snapshot_files(hub, codec_repo, cache_dir, CODEC_ALLOW_PATTERNS, big)
    hub.faults.release.clear()
    hub.faults.pause_after[big] = pause_at
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.hubserver.child",
            mode,
            repo_id,
            str(cache_dir),
            *([codec_repo] if codec_repo else []),
        ],
        cwd=ROOT,
        env=child_env(hub),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"download child exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"download child did not reach byte {pause_at} of {big} in {timeout}s")
            served = hub.served_by_file(repo_id)
            others_done = all(p.is_file() for p in others)  # complete and linked into the snapshot
            if served.get(big, 0) >= pause_at and others_done:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # let the child write out what it has received
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
        hub.faults.pause_after.pop(big, None)
        hub.faults.release.set()
    return hub.served_bytes(repo_id, big)
