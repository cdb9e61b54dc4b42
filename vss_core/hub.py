"""Weights in, adapter out, through the real huggingface_hub client (2.x).

Download: a local directory as model.source is used in place after a layout check. A Hub repo id is
resolved to a commit first (recorded in the report), the files the model needs (ALLOW_PATTERNS) are listed
with their sizes from the Hub's metadata, the disk is checked for what the cache does not hold yet, and
the files are fetched one by one into the huggingface_hub cache, so that every completed file survives a
kill. huggingface_hub writes each download to a process-unique `<etag>.<uuid>.incomplete` file and, after a
kill, starts that file again from byte 0, orphaning the partial file (file_download._download_to_tmp_and_move).
vss fetches large plain-HTTP files itself into `<etag>.incomplete` with Range requests, adopting such a
partial (its own or huggingface_hub's) after a kill, so a kill costs at most the last chunk in flight; the
file then goes through hf_hub_download, which links it into the snapshot. Files the server offers through
Xet go through hf_hub_download's Xet path (HF_XET_HIGH_PERFORMANCE=1). Sizes are checked against the
metadata; `model.verify=full` also hashes every file; a damaged file is deleted and fetched again.

Upload: creates the repo (private unless configured), adds a model card if the adapter has none, and
uploads the folder with upload_folder (unchanged files are not committed again). Transient errors (5xx,
dropped connections) are retried with backoff; an auth failure names the repo and the token's source.
With no token the upload is skipped and the adapter stays in the run directory. The token comes from
`Settings`, never from a parameter, and never appears in a message.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from vss_core.config import ModelConfig, UploadConfig
from vss_core.errors import HubError, ModelError, PreflightError, bullet_list
from vss_core.settings import Settings, enable_xet_high_performance

log = logging.getLogger(__name__)

# Files the omni model needs (MODEL_FACTS.md): the LLM, tokenizer, and the modality parts.
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.pt",
    "vision/*",
    "audio/*",
    "audio_codec/*",
]
REQUIRED_FILES = [
    "config.json",
    "language_model_embedding.pt",
    "vision/config.json",
    "audio/config.json",
    "audio/preprocessor_config.json",
    "audio_codec/config.yaml",
]

# Files at least this big are fetched by vss with Range resume (below it a restart costs little).
RESUME_MIN_BYTES = 1 << 20
# Bytes written to the partial file at a time: a kill loses at most this much of the file in flight.
STREAM_CHUNK = 1 << 20
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
DOWNLOAD_ATTEMPTS = 5  # per file, without progress; a chunk received resets the count (like huggingface_hub)

T = TypeVar("T")
Sleep = Callable[[float], None]


class WeightsReport(BaseModel):
    path: str = Field(description="Directory the model is loaded from (a snapshot of the cache, or the local source).")
    source: str
    revision: str | None = Field(description="Commit the download is pinned to (None for a local source).")
    requested_revision: str | None = None
    downloaded: bool = Field(description="True when the weights came from the Hub (even if all were cached).")
    files: int = 0
    files_fetched: int = 0
    bytes_total: int = 0
    bytes_cached: int = Field(0, description="Bytes of complete files the cache already held.")
    bytes_resumed: int = Field(0, description="Bytes of partial files kept from an interrupted download.")
    bytes_downloaded: int = Field(0, description="Bytes received from the Hub by this call.")
    bytes_refetched: int = Field(0, description="Bytes fetched before that had to be fetched again (orphans, damage).")
    damaged: list[str] = Field(default_factory=list, description="Files found damaged in the cache and fetched again.")
    orphans_removed: int = 0


class UploadReport(BaseModel):
    uploaded: bool
    message: str
    repo_id: str | None = None
    url: str | None = None
    commit: str | None = None
    new_commit: bool = False


def check_layout(model_dir: Path) -> None:
    """Check the checkpoint layout of MODEL_FACTS.md is present.

    Raises:
        ModelError: listing every missing file.
    """
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if not any(model_dir.glob("*.safetensors")):
        missing.append("*.safetensors (LLM weights)")
    if missing:
        raise ModelError(
            f"model.source: {model_dir} is not a LongCat-Flash-Omni checkpoint; missing:\n{bullet_list(missing)}\n"
            "Point model.source at a complete checkpoint, or write the tiny one with `vss tiny-model DIR`."
        )


# --- download -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob id (of the LFS pointer, for LFS files)

    @property
    def etag(self) -> str | None:
        # The Hub's ETag, which names the cache blob: the sha256 for LFS files, the git blob id otherwise.
        return self.sha256 or self.blob_id


class _Tally:
    """Byte counters shared by the download threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"cached": 0, "resumed": 0, "downloaded": 0, "refetched": 0, "orphans": 0, "fetched": 0}
        self.damaged: list[str] = []

    def add(self, **amounts: int) -> None:
        with self.lock:
            for key, n in amounts.items():
                self.values[key] += n


def _is_local_source(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


@functools.cache
def _warn_hf_transfer_once() -> None:
    log.warning(
        "HF_HUB_ENABLE_HF_TRANSFER is set, but it does nothing since huggingface_hub 1.0 (hf_transfer is no longer "
        "used); vss downloads through hf_xet with HF_XET_HIGH_PERFORMANCE=1. Unset the variable to silence this."
    )


def download_weights(cfg: ModelConfig, settings: Settings, *, sleep: Sleep = time.sleep) -> WeightsReport:
    """Resolve the model source to a local directory, downloading from the Hub what the cache lacks.

    Raises:
        ModelError: a local source with a wrong layout; a repo or revision that does not exist or cannot be read.
        PreflightError: the cache's disk lacks room for what must be downloaded.
        HubError: the Hub could not be reached, refused the token, or a file stayed damaged.
    """
    if _is_local_source(cfg.source):
        local = Path(cfg.source).expanduser()
        if not local.is_dir():
            raise ModelError(
                f"model.source: {local} does not exist or is not a directory. "
                "Write the tiny model with `vss tiny-model DIR` or give a Hub repo id."
            )
        check_layout(local)
        return WeightsReport(path=str(local.absolute()), source=cfg.source, revision=None, downloaded=False)

    if settings.hf_transfer_requested:
        _warn_hf_transfer_once()
    enable_xet_high_performance()
    token, cache_dir, where, commit, files = _resolve(cfg, settings, sleep)
    if not files:
        raise ModelError(f"model.source: {where} (commit {commit}) has no files matching {ALLOW_PATTERNS}.")

    storage = cache_dir / f"models--{cfg.source.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    tally = _Tally()
    todo = _inventory(files, storage, snapshot, tally)
    _check_disk(todo, storage, cache_dir, where, commit)
    _write_ref(storage, cfg.revision, commit)

    fetch = functools.partial(
        _fetch_file, repo_id=cfg.source, commit=commit, cache_dir=cache_dir, storage=storage, snapshot=snapshot,
        endpoint=settings.hf_endpoint, token=token, verify=cfg.verify, tally=tally, sleep=sleep,
    )
    with _hub_errors(f"model.source {where}", settings, kind="download"):
        with ThreadPoolExecutor(max_workers=cfg.download_workers, thread_name_prefix="vss-download") as pool:
            list(pool.map(fetch, files))  # re-raises the first failure
    _sweep_orphans(storage, cache_dir, {f.etag for f in files}, tally)
    check_layout(snapshot)

    v = tally.values
    report = WeightsReport(
        path=str(snapshot), source=cfg.source, revision=commit, requested_revision=cfg.revision, downloaded=True,
        files=len(files), files_fetched=v["fetched"], bytes_total=sum(f.size for f in files),
        bytes_cached=v["cached"], bytes_resumed=v["resumed"], bytes_downloaded=v["downloaded"],
        bytes_refetched=v["refetched"], damaged=sorted(tally.damaged), orphans_removed=v["orphans"],
    )
    log.info(
        "%s pinned to commit %s: %d files, %s downloaded, %s already cached, %s resumed, %s fetched again",
        where, commit, report.files, _fmt(report.bytes_downloaded), _fmt(report.bytes_cached),
        _fmt(report.bytes_resumed), _fmt(report.bytes_refetched),
    )
    return report


CONFIG_FILES = ("config.json", "vision/config.json", "audio/config.json")


def _resolve(cfg: ModelConfig, settings: Settings, sleep: Sleep) -> tuple[str | bool, Path, str, str, list[_RemoteFile]]:
    """Resolve model.source@revision to a commit and the files the model needs at it (with sizes and
    hashes from the Hub's metadata): (token, cache_dir, where, commit, files)."""
    import huggingface_hub as hf

    token = settings.hf_token.get_secret_value() if settings.hf_token else False
    api = hf.HfApi(endpoint=settings.hf_endpoint, token=token, library_name="vss")
    cache_dir = Path(cfg.cache_dir or settings.hub_cache_dir).expanduser().absolute()
    where = f"{cfg.source}@{cfg.revision}"
    with _hub_errors(f"model.source {where}", settings, kind="download"):
        info = _retrying(
            lambda: api.model_info(cfg.source, revision=cfg.revision, files_metadata=True),
            f"model info of {where}", DOWNLOAD_ATTEMPTS, sleep,
        )
        files = _wanted_files(api, cfg.source, info.sha, info.siblings or [], sleep)
    return token, cache_dir, where, info.sha, files


def model_configs(cfg: ModelConfig, settings: Settings, *, sleep: Sleep = time.sleep) -> tuple[Path, int]:
    """Fetch only the model's config files (a few KB) and read the download size from the Hub's file
    metadata, so preflight can plan memory and disk before a byte of weights is downloaded.

    Returns the directory holding the configs and the bytes the weights download would need in all.

    Raises:
        ModelError: the repo or revision does not exist or lacks a config file.
        HubError: the Hub could not be reached or refused the token.
    """
    import huggingface_hub as hf

    token, cache_dir, where, commit, files = _resolve(cfg, settings, sleep)
    with _hub_errors(f"model.source {where}", settings, kind="download"):
        paths = [
            _retrying(
                lambda name=name: hf.hf_hub_download(
                    cfg.source, name, revision=commit, cache_dir=str(cache_dir), endpoint=settings.hf_endpoint,
                    token=token, library_name="vss",
                ),
                f"{name} of {where}", DOWNLOAD_ATTEMPTS, sleep,
            )
            for name in CONFIG_FILES
        ]
    return Path(paths[0]).parent, sum(f.size for f in files)


def _wanted_files(api, repo_id: str, commit: str, siblings, sleep: Sleep) -> list[_RemoteFile]:
    """The files matching ALLOW_PATTERNS at `commit`, with sizes and hashes from the Hub's metadata."""
    if any(s.size is None for s in siblings):  # a server that omits sizes in model info: ask the tree
        entries = _retrying(
            lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)),
            f"file list of {repo_id}@{commit}", DOWNLOAD_ATTEMPTS, sleep,
        )
        rows = [(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id) for e in entries if hasattr(e, "size")]
    else:
        rows = [(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
                for s in siblings]
    return [
        _RemoteFile(path=p, size=size, sha256=sha, blob_id=blob)
        for p, size, sha, blob in sorted(rows)
        if any(fnmatch.fnmatch(p, pat) for pat in ALLOW_PATTERNS)
    ]


def _inventory(files: list[_RemoteFile], storage: Path, snapshot: Path, tally: _Tally) -> list[tuple[_RemoteFile, int]]:
    """Count what the cache holds (size check); delete damaged files. Returns (file, partial bytes) to fetch."""
    todo = []
    for f in files:
        pointer = snapshot / f.path
        if pointer.exists():
            if pointer.stat().st_size == f.size:
                continue  # complete (hashed later if verify=full)
            _discard(pointer, f, tally)
        partial = max((p.stat().st_size for p in _partials(storage, f)), default=0)
        todo.append((f, partial if f.size >= RESUME_MIN_BYTES and partial <= f.size else 0))
    return todo


def _check_disk(todo: list[tuple[_RemoteFile, int]], storage: Path, cache_dir: Path, where: str, commit: str) -> None:
    need = 0
    for f, partial in todo:
        blob = storage / "blobs" / (f.etag or "")
        if f.etag and blob.is_file() and blob.stat().st_size == f.size:
            continue  # only a link is missing
        need += f.size - partial
    free = _free_bytes(cache_dir)
    if need > free:
        raise PreflightError(
            f"model: downloading {where} (commit {commit[:12]}) needs {_fmt(need)} more in {cache_dir} "
            f"({len(todo)} file(s) missing), but only {_fmt(free)} is free there. Free space, or set model.cache_dir "
            "(or HF_HOME / HF_HUB_CACHE) to a disk with room."
        )


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _partials(storage: Path, f: _RemoteFile) -> list[Path]:
    """Partial downloads of this file: huggingface_hub's `<etag>.<uuid>.incomplete` and vss's `<etag>.incomplete`."""
    if not f.etag:
        return []
    return sorted((storage / "blobs").glob(f"{f.etag}*.incomplete"))


def _discard(pointer: Path, f: _RemoteFile, tally: _Tally) -> None:
    """Delete a damaged file (its blob and snapshot link) so that it is fetched again, never trusted."""
    blob = pointer.resolve()
    log.warning("%s in the cache does not match the Hub's metadata (damaged); fetching it again", f.path)
    blob.unlink(missing_ok=True)
    pointer.unlink(missing_ok=True)
    tally.add(refetched=f.size)
    with tally.lock:
        tally.damaged.append(f.path)


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    """Record branch/tag -> commit like huggingface_hub, so offline loads of `revision` find the snapshot."""
    if revision == commit:
        return
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def _fetch_file(
    f: _RemoteFile, *, repo_id: str, commit: str, cache_dir: Path, storage: Path, snapshot: Path,
    endpoint: str | None, token: str | bool, verify: str, tally: _Tally, sleep: Sleep,
) -> None:
    import huggingface_hub as hf

    pointer = snapshot / f.path
    for attempt in (1, 2):
        if pointer.exists() and pointer.stat().st_size == f.size:
            if verify == "full" and not _hash_ok(pointer, f):
                _discard(pointer, f, tally)
            else:
                if attempt == 1:
                    tally.add(cached=f.size)
                return
        if f.size >= RESUME_MIN_BYTES:
            _resumable_download(f, repo_id, commit, cache_dir, storage, endpoint, token, verify, tally, sleep)
        else:
            _drop_partials(storage, f, cache_dir, tally)
        blob = storage / "blobs" / (f.etag or "-")
        had_blob = blob.is_file()
        hf.hf_hub_download(
            repo_id, f.path, revision=commit, cache_dir=str(cache_dir), endpoint=endpoint, token=token,
            library_name="vss",
        )
        if f.size < RESUME_MIN_BYTES:
            tally.add(**({"cached": f.size} if had_blob else {"downloaded": f.size, "fetched": 1}))
        if pointer.stat().st_size == f.size and (verify != "full" or _hash_ok(pointer, f)):
            return
        _discard(pointer, f, tally)
    raise HubError(
        f"model.source {repo_id}@{commit}: {f.path} arrived damaged twice (size or hash differs from the Hub's "
        "metadata); it was deleted. Run the download again; if it persists, the mirror (HF_ENDPOINT) serves bad data."
    )


def _drop_partials(storage: Path, f: _RemoteFile, cache_dir: Path, tally: _Tally) -> None:
    partials = _partials(storage, f)
    if not partials:
        return
    from huggingface_hub.utils import WeakFileLock

    with WeakFileLock(_lock_path(cache_dir, storage, f.etag)):  # held by a live download of the same file
        for p in _partials(storage, f):
            tally.add(refetched=p.stat().st_size, orphans=1)
            p.unlink(missing_ok=True)


def _lock_path(cache_dir: Path, storage: Path, etag: str | None) -> Path:
    # The same lock huggingface_hub takes for this blob, so a live download of it is never touched.
    return cache_dir / ".locks" / storage.name / f"{etag}.lock"


def _resumable_download(
    f: _RemoteFile, repo_id: str, commit: str, cache_dir: Path, storage: Path, endpoint: str | None,
    token: str | bool, verify: str, tally: _Tally, sleep: Sleep,
) -> None:
    """Fetch a large file into its blob with Range requests, resuming any partial left by a killed process."""
    import huggingface_hub as hf
    from huggingface_hub.utils import WeakFileLock, build_hf_headers
    from huggingface_hub.utils._runtime import is_xet_available  # not re-exported in 2.x

    url = hf.hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint)
    meta = _retrying(lambda: hf.get_hf_file_metadata(url, token=token, endpoint=endpoint),
                     f"metadata of {f.path}", DOWNLOAD_ATTEMPTS, sleep)
    if meta.xet_file_data is not None and is_xet_available():
        _drop_partials(storage, f, cache_dir, tally)  # hf_xet fetches it; its chunk cache is its own business
        tally.add(downloaded=f.size, fetched=1)
        return
    if meta.size is not None and meta.size != f.size:
        raise HubError(
            f"model.source {repo_id}@{commit}: the Hub's metadata disagree on the size of {f.path} "
            f"(model info {f.size}, resolve {meta.size}). Run again; if it persists, check the mirror (HF_ENDPOINT)."
        )
    etag = meta.etag or f.etag
    blobs = storage / "blobs"
    blob = blobs / etag
    blobs.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(_lock_path(cache_dir, storage, etag)):
        if blob.is_file() and blob.stat().st_size == f.size:
            tally.add(cached=f.size)  # only the snapshot link is missing
            return
        partial = blobs / f"{etag}.incomplete"
        candidates = sorted(blobs.glob(f"{etag}*.incomplete"), key=lambda p: p.stat().st_size, reverse=True)
        for i, p in enumerate(candidates):  # adopt the largest partial, drop the others
            if i == 0 and p.stat().st_size <= f.size:
                if p != partial:
                    os.replace(p, partial)
                continue
            tally.add(refetched=p.stat().st_size, orphans=1)
            p.unlink(missing_ok=True)
        kept = partial.stat().st_size if partial.exists() else 0
        headers = build_hf_headers(token=token, library_name="vss")
        headers["Accept-Encoding"] = "identity"
        location = meta.location or url
        if urlsplit(location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # a CDN gets a signed URL, never the Hub token
        received = _ranged_get(location, partial, f.size, headers, f.path, sleep)
        tally.add(resumed=kept, downloaded=received, fetched=1)
        if verify == "full" and not _hash_ok(partial, f):
            tally.add(refetched=f.size)
            partial.unlink(missing_ok=True)
            raise HubError(
                f"model.source {repo_id}@{commit}: {f.path} does not match its sha256 after download; it was deleted. "
                "Run the download again."
            )
        partial.chmod(0o644)
        os.replace(partial, blob)


def _ranged_get(url: str, partial: Path, size: int, headers: dict, name: str, sleep: Sleep) -> int:
    """Append the missing bytes of `partial` from `url` (Range), resuming dropped connections. Returns bytes received."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_session, hf_raise_for_status

    received, failures = 0, 0
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if have == size:
            return received
        if have > size:  # not this file: start over
            partial.unlink()
            have = 0
        request_headers = dict(headers, Range=f"bytes={have}-") if have else dict(headers)
        progressed = False
        try:
            with get_session().stream("GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                hf_raise_for_status(r)
                mode = "ab" if have and r.status_code == 206 else "wb"  # 200: the server ignored Range
                with partial.open(mode) as out:
                    for chunk in r.iter_bytes(chunk_size=STREAM_CHUNK):
                        out.write(chunk)
                        out.flush()  # on disk (page cache) before the next chunk: a kill keeps it
                        received += len(chunk)
                        progressed = True
            if partial.stat().st_size != size:
                raise httpx2.RemoteProtocolError(f"{name}: connection closed at {partial.stat().st_size} of {size} bytes")
        except (httpx2.TransportError, HfHubHTTPError) as exc:
            if isinstance(exc, HfHubHTTPError) and exc.response.status_code not in TRANSIENT_STATUS:
                raise
            failures = 0 if progressed else failures + 1
            if failures >= DOWNLOAD_ATTEMPTS:
                raise
            delay = 1.0 if progressed else _backoff(failures)
            log.warning("%s: %s; resuming at byte %d in %.0fs", name, _short(exc), partial.stat().st_size
                        if partial.exists() else 0, delay)
            sleep(delay)


def _hash_ok(path: Path, f: _RemoteFile) -> bool:
    """sha256 for LFS files, git blob id for the others; True when there is nothing to compare with."""
    if f.sha256:
        digest, want = hashlib.sha256(), f.sha256
    elif f.blob_id:
        digest, want = hashlib.sha1(), f.blob_id
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        return True
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == want


def _sweep_orphans(storage: Path, cache_dir: Path, wanted: set[str | None], tally: _Tally) -> None:
    """Delete partial files no live download holds (e.g. of files no longer wanted, or left by a kill)."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    for p in sorted((storage / "blobs").glob("*.incomplete")):
        etag = p.name.split(".")[0]
        try:
            with WeakFileLock(_lock_path(cache_dir, storage, etag), timeout=0.2):
                if p.exists():
                    tally.add(refetched=p.stat().st_size if etag in wanted else 0, orphans=1)
                    p.unlink()
        except Timeout:
            continue  # another process is downloading it right now


# --- upload ---------------------------------------------------------------------------------------

MODEL_CARD = """---
library_name: peft
tags:
- lora
- longcat-flash-omni
- video-speech-to-speech
{base}---

# LoRA adapter for LongCat-Flash-Omni

Trained with vss (LoRA under DeepSpeed ZeRO-3) for video-speech-to-speech. Load it with
`peft.PeftModel.from_pretrained(base_model, "<this repo>")`.
"""


def upload_adapter(
    adapter_dir: Path, cfg: UploadConfig, settings: Settings, *, sleep: Sleep = time.sleep,
    base_model: str | None = None,
) -> UploadReport:
    """Upload the adapter folder (with its model card) to the Hub, or say why not.

    Raises:
        HubError: the adapter folder is missing, the token was refused (naming the repo and the token's source,
            never the token), or the Hub kept failing after upload.max_attempts tries.
    """
    adapter_dir = Path(adapter_dir)
    kept = f"adapter kept at {adapter_dir}"
    if not cfg.enabled:
        return UploadReport(uploaded=False, message=f"upload disabled (upload.enabled=false); {kept}")
    if not cfg.repo_id:
        return UploadReport(uploaded=False, message=f"upload skipped: no upload.repo_id set; {kept}")
    if not settings.hf_token:
        return UploadReport(
            uploaded=False,
            message=f"upload skipped: no Hub token (set HF_TOKEN or run `hf auth login`); {kept}",
            repo_id=cfg.repo_id,
        )
    if not adapter_dir.is_dir() or not any(adapter_dir.iterdir()):
        err = HubError(f"upload: {adapter_dir} does not exist or is empty; there is no adapter to upload to {cfg.repo_id}.")
        err.retryable = False
        raise err
    if not (adapter_dir / "README.md").is_file():
        base = f"base_model: {base_model}\n" if base_model else ""
        (adapter_dir / "README.md").write_text(MODEL_CARD.format(base=base))

    import huggingface_hub as hf

    api = hf.HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token.get_secret_value(), library_name="vss")
    repo = cfg.repo_id
    with _hub_errors(f"upload.repo_id {repo}", settings, kind="upload", kept=kept):
        _retrying(lambda: api.create_repo(repo, private=cfg.private, exist_ok=True), f"creating {repo}",
                  cfg.max_attempts, sleep)
        before = _retrying(lambda: api.model_info(repo).sha, f"reading {repo}", cfg.max_attempts, sleep)
        commit = _retrying(
            lambda: api.upload_folder(repo_id=repo, folder_path=str(adapter_dir), commit_message=cfg.commit_message),
            f"uploading {adapter_dir} to {repo}", cfg.max_attempts, sleep,
        )
    new = commit.oid != before
    what = "uploaded to" if new else "unchanged since the last upload; latest commit"
    return UploadReport(uploaded=True, message=f"adapter {what} {commit.commit_url}", repo_id=repo,
                        url=commit.commit_url, commit=commit.oid, new_commit=new)


# --- errors and retries ---------------------------------------------------------------------------


def _backoff(attempt: int, base: float = 2.0, cap: float = 60.0) -> float:
    return min(cap, base * 2 ** (attempt - 1))


def _is_transient(exc: BaseException) -> bool:
    """A failure a second try can fix: 5xx/408/429 answers, dropped or refused connections, timeouts."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code in TRANSIENT_STATUS
    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)) and not isinstance(
        exc, httpx2.ProxyError
    )


def _retrying(fn: Callable[[], T], what: str, attempts: int, sleep: Sleep) -> T:
    """Call fn, retrying transient failures with exponential backoff (2, 4, 8 ... 60 s) up to `attempts` calls."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not _is_transient(exc):
                raise
            delay = _backoff(attempt)
            log.warning("%s failed (%s), attempt %d/%d; retrying in %.0fs", what, _short(exc), attempt, attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def _short(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"HTTP {status}: {first}" if status else f"{type(exc).__name__}: {first}"


class _hub_errors:
    """Turn huggingface_hub/httpx failures into vss errors that say what, where and the fix, never the token."""

    def __init__(self, where: str, settings: Settings, kind: str, kept: str = ""):
        self.where, self.settings, self.kind, self.kept = where, settings, kind, kept

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (HubError, ModelError, PreflightError)) or not isinstance(exc, Exception):
            return False
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        source = self.settings.hf_token_source or "none configured"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        tail = f"; {self.kept}" if self.kept else ""
        invalid_token = status == 401 and self.settings.hf_token is not None and not isinstance(exc, RepositoryNotFoundError)
        if invalid_token or (status == 403 and self.kind == "upload"):
            err: Exception = HubError(
                f"{self.where}: the Hub refused the token from {source} (HTTP {status}): it is invalid, expired "
                f"or lacks {'write' if self.kind == 'upload' else 'read'} access to this repo. Set HF_TOKEN to a "
                f"token with that access (https://huggingface.co/settings/tokens){tail}."
            )
            err.retryable = False
        elif isinstance(exc, RevisionNotFoundError):
            err = ModelError(f"{self.where}: the revision does not exist. Set model.revision to a branch, tag or commit of the repo.")
        elif isinstance(exc, (RepositoryNotFoundError, GatedRepoError)):
            err = ModelError(
                f"{self.where}: the repo was not found, or it is private/gated and the token ({source}) cannot read "
                f"it. Check the repo id, or set HF_TOKEN to a token with access{tail}."
            )
            if self.kind == "upload":
                err = HubError(str(err))
                err.retryable = False
        elif _is_transient(exc) or isinstance(exc, HfHubHTTPError | OSError):
            err = HubError(
                f"{self.where}: the Hub ({self.settings.hf_endpoint or 'huggingface.co'}) failed: {_short(exc)}. "
                f"Transient errors were retried; run again later (completed files are kept){tail}."
            )
        else:
            return False
        raise _redacted(err, self.settings) from None


def _redacted(err: Exception, settings: Settings) -> Exception:
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    if token and token in str(err):
        new = type(err)(str(err).replace(token, "***"))
        new.retryable = getattr(err, "retryable", True)
        return new
    return err


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
