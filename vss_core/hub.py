"""Weights in, adapter out, through the real huggingface_hub client (2.x).

Download brings two repos: the omni checkpoint (`model.source`, ALLOW_PATTERNS) and the speech codec
LongCat-Audio-Codec (`model.codec_source`, CODEC_ALLOW_PATTERNS plus the decoder the checkpoint's
`audio_codec/config.yaml` names; the 24 kHz decoders are not fetched unless named). Each goes through
the same steps; a local directory as source is used in place.

1. Preflight, before any weight byte: each Hub repo is resolved to a commit (recorded in the report),
   its file list is read with sizes from the Hub's metadata, and only its small config files are
   fetched (omni: config.json, vision/config.json, audio/config.json, audio/preprocessor_config.json,
   audio/global_cmvn, audio_codec/config.yaml, the tokenizer files; codec: configs/*.yaml and
   semantic_tokenizer_general/configs/*.yaml when present). They are read by the code that will run
   them (`vss_core.model.checkpoint.CheckpointConfigs`, which owns the checkpoint layout rule;
   `vss_core.codec`; `codec.decoder.DecoderConfig`), the weight files they imply are looked up in
   the file list, and everything vss cannot run is refused at once, naming repo, file and key.
   `model_configs` is this step alone, for the planner.
2. The disk is checked for what the cache does not hold yet, of both repos together.
3. The files are fetched one by one into the huggingface_hub cache, so that every completed file
   survives a kill. huggingface_hub writes each download to a process-unique `<etag>.<uuid>.incomplete`
   file and, after a kill, starts that file again from byte 0, orphaning the partial file
   (file_download._download_to_tmp_and_move). vss fetches large plain-HTTP files itself into
   `<etag>.incomplete` with Range requests, adopting such a partial (its own or huggingface_hub's)
   after a kill, so a kill costs at most the last chunk in flight; the file then goes through
   hf_hub_download, which links it into the snapshot. Files the server offers through Xet go through
   hf_hub_download's Xet path (HF_XET_HIGH_PERFORMANCE=1). Every file that arrives is checked against the Hub's hash
   (sha256 for LFS files, the git blob id for the others): a large file as it streams (no second read; a
   resumed partial's kept bytes are read once), a small one after it is written. A file already in the cache
   before the run is checked by size (`model.verify=size`, the default) or hashed too (`model.verify=full`).
   Xet downloads are hf_xet's stream, not vss's: hashed under verify=full only. A damaged file is deleted and
   fetched again, once.

Upload: creates the repo (private unless configured), adds a model card if the adapter has none, and
uploads the folder with upload_folder (unchanged files are not committed again). An auth failure names the
repo and the token's source. With no token the upload is skipped and the adapter stays in the run directory.
The token comes from `Settings`, never from a parameter, and never appears in a message.

Retries: this module is the one retry layer for Hub calls. Each Hub request (model info, file list,
metadata, each file, each upload step) is retried here, alone, on what a second try can fix (`is_transient`:
connection errors, timeouts, HTTP 5xx/408/429), with backoff, up to DOWNLOAD_ATTEMPTS (download) or
upload.max_attempts (upload). Here because a retry then repeats only the failed request: no second preflight,
no re-hash of the cached files under model.verify=full, a dropped stream resumed at its byte, and every
caller (the Prefect flow, `vss infer`, a script) gets the same. The Prefect tasks therefore do not retry
these stages (tasks/stages.py). Everything else (a bad repo id, 4xx, a refused file name, a bug) fails on the
first try.

Path safety: every file name, commit and blob name the Hub sends is checked before it becomes a path; a
name that is absolute or climbs out of its directory (`..`) refuses the repo, naming the file, before
anything is written or removed.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from vss_core.config import ModelConfig, UploadConfig, is_local_source
from vss_core.configfile import read_mapping
from vss_core.errors import HubError, ModelError, PreflightError, bullet_list
from vss_core.settings import Settings, enable_xet_high_performance, hub_cache

log = logging.getLogger(__name__)

# Tokenizer files: the three the official checkpoint's tokenizer needs, and the optional ones of other
# tokenizer kinds (all small).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
INDEX_FILE = "model.safetensors.index.json"
# What vss downloads of the omni checkpoint: the layout of vss_core.model.checkpoint (which owns the rule
# of what a complete checkpoint is; tests/unit/test_hub.py checks these patterns cover it).
# fnmatch's `*` crosses `/`, as in huggingface_hub's allow_patterns; `audio/*` takes global_cmvn (no suffix).
ALLOW_PATTERNS = [
    "config.json",
    *TOKENIZER_FILES,
    "*.safetensors",
    INDEX_FILE,
    "language_model_embedding.pt",
    "vision/*",
    "audio/*",
    "audio_codec/*",
]
# What vss downloads of LongCat-Audio-Codec (vss_core.codec's layout): the encoder, its CMVN stats, the
# 16 kHz 4-codebook decoder and the optional configs. The 24 kHz decoders are left on the Hub unless the
# checkpoint's audio_codec/config.yaml names one (then that one is fetched too).
CODEC_ALLOW_PATTERNS = [
    "ckpts/LongCatAudioCodec_encoder.pt",
    "ckpts/LongCatAudioCodec_encoder_cmvn.npy",
    "ckpts/LongCatAudioCodec_decoder_16k_4codebooks.pt",
    "configs/*.yaml",
    "semantic_tokenizer_general/configs/*.yaml",
    "README.md",
    "LICENSE*",
]
# The codec's small files that preflight reads before any weight is downloaded.
CODEC_CONFIG_PATTERNS = ("configs/*.yaml", "semantic_tokenizer_general/configs/*.yaml")

# Files at least this big are fetched by vss with Range resume (below it a restart costs little).
RESUME_MIN_BYTES = 1 << 20
# Bytes written to the partial file at a time: a kill loses at most this much of the file in flight.
STREAM_CHUNK = 1 << 20
TRANSIENT_STATUS = {408, 429}  # and every 5xx (`is_transient`)
DOWNLOAD_ATTEMPTS = 5  # per file, without progress; a chunk received resets the count (like huggingface_hub)

T = TypeVar("T")
Sleep = Callable[[float], None]

_FIX = (
    "Point model.source at a LongCat-Flash-Omni checkpoint and model.codec_source at LongCat-Audio-Codec "
    "(Hub repo ids such as meituan-longcat/LongCat-Flash-Omni and meituan-longcat/LongCat-Audio-Codec with "
    "model.revision / model.codec_revision, or local directories in their layouts; `vss tiny-model DIR` writes "
    "a tiny checkpoint and codec)."
)


class DownloadTally(BaseModel):
    """What the download of one repo did (all zero for a local source)."""

    files: int = Field(0, description="Files of the repo vss needs.")
    files_fetched: int = Field(0, description="Files received from the Hub by this call.")
    bytes_total: int = Field(0, description="Bytes of the files vss needs.")
    bytes_cached: int = Field(0, description="Bytes of complete files the cache already held.")
    bytes_resumed: int = Field(0, description="Bytes of partial files kept from an interrupted download.")
    bytes_downloaded: int = Field(0, description="Bytes received from the Hub by this call.")
    bytes_refetched: int = Field(0, description="Bytes fetched before that had to be fetched again (orphans, damage).")
    damaged: list[str] = Field(default_factory=list, description="Files found damaged in the cache and fetched again.")
    orphans_removed: int = 0


class WeightsReport(DownloadTally):
    """Where the model and the codec are loaded from, and what their download did.

    The tally fields at the top level (files, bytes_*, damaged, orphans_removed) count the model repo
    (model.source), as before; `codec` holds the codec repo's; `total()` adds them up.
    """

    path: str = Field(description="Directory the model is loaded from (a snapshot of the cache, or the local source).")
    source: str
    revision: str | None = Field(description="Commit the download is pinned to (None for a local source).")
    requested_revision: str | None = None
    downloaded: bool = Field(description="True when the weights came from the Hub (even if all were cached).")
    codec_path: str = Field(
        description="Directory of LongCat-Audio-Codec (a snapshot of the cache, or the local source)."
    )
    codec_source: str
    codec_revision: str | None = Field(description="Commit the codec download is pinned to (None for a local source).")
    codec_requested_revision: str | None = None
    codec_downloaded: bool = False
    codec: DownloadTally = Field(default_factory=DownloadTally, description="The codec repo's download tallies.")

    def total(self) -> DownloadTally:
        """The tallies of both repos together (damaged files prefixed by their repo's key)."""
        counts = {k: getattr(self, k) + getattr(self.codec, k) for k in DownloadTally.model_fields if k != "damaged"}
        damaged = [f"model.source:{p}" for p in self.damaged] + [f"model.codec_source:{p}" for p in self.codec.damaged]
        return DownloadTally(**counts, damaged=damaged)


class UploadReport(BaseModel):
    uploaded: bool
    message: str
    repo_id: str | None = None
    url: str | None = None
    commit: str | None = None
    new_commit: bool = False


# --- download: the two repos and their preflight --------------------------------------------------


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


@dataclass(frozen=True)
class _Spec:
    """One source of the run as configured: the omni checkpoint or the codec."""

    key: str  # the config key as the user writes it: model.source | model.codec_source
    revision_key: str  # model.revision | model.codec_revision
    source: str
    revision: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class _Client:
    """Everything a Hub call needs, built once per download (the token never leaves it but to huggingface_hub)."""

    api: Any
    settings: Settings
    token: str | bool
    cache_dir: Path
    verify: str
    workers: int
    sleep: Sleep

    @property
    def endpoint(self) -> str | None:
        return self.settings.hf_endpoint


@dataclass(eq=False)
class _Repo:
    """A Hub source resolved to a commit: its files (all, and those vss needs) with the Hub's sizes and hashes."""

    spec: _Spec
    commit: str
    listing: dict[str, _RemoteFile]
    files: list[_RemoteFile]
    storage: Path
    tally: _Tally = field(default_factory=_Tally)
    done: set[str] = field(default_factory=set)  # fetched (or found complete) by this call's preflight

    @property
    def where(self) -> str:
        return f"{self.spec.key} {self.spec.source}@{self.spec.revision}"

    @property
    def label(self) -> str:
        return f"{self.where} (commit {self.commit[:12]})"

    @property
    def snapshot(self) -> Path:
        return self.storage / "snapshots" / self.commit

    def names(self) -> set[str]:
        return {f.path for f in self.files}

    def want(self, path: str) -> bool:
        """Add `path` to the files to download if the repo has it; False when it has not."""
        if path in self.names():
            return True
        if path not in self.listing:
            return False
        self.files = sorted([*self.files, self.listing[path]], key=lambda f: f.path)
        return True


_Opened = Path | _Repo | None  # a local source, a resolved Hub repo, or None when it could not be opened


def _specs(cfg: ModelConfig) -> tuple[_Spec, _Spec]:
    return (
        _Spec("model.source", "model.revision", cfg.source, cfg.revision, tuple(ALLOW_PATTERNS)),
        _Spec(
            "model.codec_source",
            "model.codec_revision",
            cfg.codec_source,
            cfg.codec_revision,
            tuple(CODEC_ALLOW_PATTERNS),
        ),
    )


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(path, pat) for pat in patterns)


def _dir(opened: _Opened) -> Path:
    return opened.snapshot if isinstance(opened, _Repo) else opened


def _label(spec: _Spec, opened: _Opened) -> str:
    return opened.label if isinstance(opened, _Repo) else f"{spec.key} {opened}"


@functools.cache
def _warn_hf_transfer_once() -> None:
    log.warning(
        "HF_HUB_ENABLE_HF_TRANSFER is set, but it does nothing since huggingface_hub 1.0 (hf_transfer is no longer "
        "used); vss downloads through hf_xet with HF_XET_HIGH_PERFORMANCE=1. Unset the variable to silence this."
    )


def _client(cfg: ModelConfig, settings: Settings, sleep: Sleep) -> _Client:
    import huggingface_hub as hf

    if settings.hf_transfer_requested:
        _warn_hf_transfer_once()
    enable_xet_high_performance()
    token = settings.hf_token.get_secret_value() if settings.hf_token else False
    return _Client(
        api=hf.HfApi(endpoint=settings.hf_endpoint, token=token, library_name="vss"),
        settings=settings,
        token=token,
        cache_dir=hub_cache(cfg.cache_dir, settings),
        verify=cfg.verify,
        workers=cfg.download_workers,
        sleep=sleep,
    )


def download_weights(cfg: ModelConfig, settings: Settings, *, sleep: Sleep = time.sleep) -> WeightsReport:
    """Resolve model.source and model.codec_source to local directories, downloading from the Hub what the
    cache lacks; a local directory is used in place once it is validated.

    Both Hub repos are pinned to a commit, preflighted (their config files read, their weight files
    looked up) before a byte of weights is fetched, then downloaded resumably and checked.

    Raises:
        ModelError: a source vss cannot run (every problem of both listed: missing files, config keys vss
            cannot run, a repo or revision that does not exist or cannot be read).
        PreflightError: the cache's disk lacks room for what must be downloaded.
        HubError: the Hub could not be reached, refused the token, or a file stayed damaged.
    """
    model, codec, client = _preflight(cfg, settings, sleep)
    repos = [r for r in (model, codec) if isinstance(r, _Repo)]
    if repos:
        _check_disk([(r, _inventory(r)) for r in repos], client.cache_dir)
        for repo in reversed(repos):  # the codec first: it is small, and complete early
            _download_repo(repo, client)
    _check_complete(_dir(model), _dir(codec))

    (model_commit, model_requested), (codec_commit, codec_requested) = _pin(model), _pin(codec)
    report = WeightsReport(
        path=str(_dir(model)),
        source=cfg.source,
        revision=model_commit,
        requested_revision=model_requested,
        downloaded=isinstance(model, _Repo),
        **_tallies(model),
        codec_path=str(_dir(codec)),
        codec_source=cfg.codec_source,
        codec_revision=codec_commit,
        codec_requested_revision=codec_requested,
        codec_downloaded=isinstance(codec, _Repo),
        codec=DownloadTally(**_tallies(codec)),
    )
    for repo, t in ((model, report), (codec, report.codec)):
        if isinstance(repo, _Repo):
            log.info(
                "%s pinned to commit %s: %d files, %s downloaded, %s already cached, %s resumed, %s fetched again",
                repo.where,
                repo.commit,
                t.files,
                _fmt(t.bytes_downloaded),
                _fmt(t.bytes_cached),
                _fmt(t.bytes_resumed),
                _fmt(t.bytes_refetched),
            )
    return report


def model_configs(cfg: ModelConfig, settings: Settings, *, sleep: Sleep = time.sleep) -> tuple[Path, int]:
    """The preflight of `download_weights` alone: fetch only the config files of both repos (a few KB),
    refuse what vss cannot run, and read the download size from the Hub's file metadata, so preflight
    can plan memory and disk before a byte of weights is downloaded.

    Returns the directory holding the model's configs (its snapshot in the cache, or the local
    model.source) and the bytes the download of both repos (model and codec) needs in all, what the
    cache already holds included (0 for local sources).

    Raises:
        ModelError: a source vss cannot run, or a repo or revision that does not exist (all problems listed).
        HubError: the Hub could not be reached or refused the token.
    """
    model, codec, _ = _preflight(cfg, settings, sleep)
    return _dir(model), sum(f.size for r in (model, codec) if isinstance(r, _Repo) for f in r.files)


def _pin(opened: _Opened) -> tuple[str | None, str | None]:
    """(commit, requested revision) of a Hub source; (None, None) for a local one."""
    return (opened.commit, opened.spec.revision) if isinstance(opened, _Repo) else (None, None)


def _tallies(opened: _Opened) -> dict[str, Any]:
    if not isinstance(opened, _Repo):
        return {}
    v = opened.tally.values
    return dict(
        files=len(opened.files),
        files_fetched=v["fetched"],
        bytes_total=sum(f.size for f in opened.files),
        bytes_cached=v["cached"],
        bytes_resumed=v["resumed"],
        bytes_downloaded=v["downloaded"],
        bytes_refetched=v["refetched"],
        damaged=sorted(opened.tally.damaged),
        orphans_removed=v["orphans"],
    )


def _preflight(cfg: ModelConfig, settings: Settings, sleep: Sleep) -> tuple[_Opened, _Opened, _Client | None]:
    """Open both sources (local dirs checked for existence, Hub repos resolved to a commit and listed), fetch
    the Hub repos' config files, and check everything vss will run; raise once with every problem."""
    specs = _specs(cfg)
    problems: list[str] = []
    opened: dict[str, _Opened] = {}
    for spec in specs:  # local sources first: their problems stand even when the Hub is unreachable
        if is_local_source(spec.source):
            local = Path(spec.source).expanduser().absolute()
            opened[spec.key] = local if local.is_dir() else None
            if not local.is_dir():
                problems.append(f"{spec.key}: {local} does not exist or is not a directory")
    client = None
    for spec in specs:
        if spec.key in opened:
            continue
        client = client or _client(cfg, settings, sleep)
        try:
            opened[spec.key] = _resolve(spec, client)
        except ModelError as exc:
            opened[spec.key] = None
            problems.append(str(exc))
        except HubError as exc:
            if not problems:
                raise
            problems.append(f"{spec.key} {spec.source}: not checked ({exc})")
            raise _refusal(problems) from None
    model, codec = opened["model.source"], opened["model.codec_source"]
    if model is not None:
        _check_model(specs, model, codec, client, problems)
    if codec is not None:
        _check_codec(specs[1], codec, client, problems)
    if problems:
        raise _refusal(problems)
    return model, codec, client


def _nested(label: str, exc: Exception) -> str:
    """A problem from another checker's error (after `label`, if any), its own list indented under it."""
    first, *rest = str(exc).splitlines() or [type(exc).__name__]
    return "\n".join([f"{label}: {first}" if label else first, *(f"    {line}" for line in rest)])


def _refusal(problems: list[str]) -> ModelError:
    return ModelError(
        "model: vss cannot run these weights; found before downloading any weight file:\n"
        f"{bullet_list(problems)}\n{_FIX}"
    )


def _resolve(spec: _Spec, client: _Client) -> _Repo:
    """Resolve a Hub source at its revision to a commit, with every file's size and hashes from the Hub's metadata."""
    where = f"{spec.source}@{spec.revision}"
    with _hub_errors(f"{spec.key} {where}", client.settings, kind="download", revision_key=spec.revision_key):
        info = _retrying(
            lambda: client.api.model_info(spec.source, revision=spec.revision, files_metadata=True),
            f"model info of {where}",
            DOWNLOAD_ATTEMPTS,
            client.sleep,
        )
        if not _is_commit(info.sha):
            raise ModelError(
                f"{spec.key} {where}: the Hub answered the commit {info.sha!r}, not a 40-hex git commit; "
                "vss refuses to use it as a cache path. Check the mirror (HF_ENDPOINT)."
            )
        listing = _listing(client.api, spec.source, info.sha, info.siblings or [], client.sleep)
    unsafe = sorted(f.path for f in listing.values() if not _safe_relative(f.path)) + sorted(
        f"{f.path} (blob {f.etag!r})" for f in listing.values() if f.etag is not None and not _safe_name(f.etag)
    )
    if unsafe:
        raise ModelError(
            f"{spec.key} {where}: the repo lists file names that point outside its directory (absolute, or with "
            f"'..'): {', '.join(repr(u) for u in unsafe)}. vss refused the repo before writing or deleting any file; "
            "use another repo or revision, or check the mirror (HF_ENDPOINT)."
        )
    return _Repo(
        spec=spec,
        commit=info.sha,
        listing=listing,
        files=[f for p, f in sorted(listing.items()) if _matches(p, spec.patterns)],
        storage=client.cache_dir / f"models--{spec.source.replace('/', '--')}",
    )


def _listing(api, repo_id: str, commit: str, siblings, sleep: Sleep) -> dict[str, _RemoteFile]:
    """Every file of the repo at `commit`, with sizes and hashes from the Hub's metadata."""
    if any(s.size is None for s in siblings):  # a server that omits sizes in model info: ask the tree
        entries = _retrying(
            lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)),
            f"file list of {repo_id}@{commit}",
            DOWNLOAD_ATTEMPTS,
            sleep,
        )
        rows = [(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id) for e in entries if hasattr(e, "size")]
    else:
        rows = [
            (s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None, s.blob_id) for s in siblings
        ]
    return {p: _RemoteFile(path=p, size=size, sha256=sha, blob_id=blob) for p, size, sha, blob in rows}


def _safe_relative(name: str) -> bool:
    """A repo file name that stays inside its directory: relative, no '..' part, no backslash or NUL, not empty."""
    if not name or "\\" in name or "\0" in name or name.startswith("/") or PurePosixPath(name).is_absolute():
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts) and not (len(parts[0]) >= 2 and parts[0][1] == ":")


def _safe_name(name: str) -> bool:
    """A single path component (a blob name): no separator, not '.' or '..'."""
    return bool(name) and "/" not in name and "\\" not in name and "\0" not in name and name not in (".", "..")


def _is_commit(sha: object) -> bool:
    return isinstance(sha, str) and len(sha) == 40 and all(c in "0123456789abcdef" for c in sha)


def _fetch_configs(repo: _Repo, paths: Iterable[str], client: _Client) -> None:
    """Fetch the repo's small files among `paths` (those it has) into its snapshot; they count in its tally."""
    wanted = set(paths)
    _fetch_all(repo, [f for f in repo.files if f.path in wanted and f.path not in repo.done], client)
    repo.done.update(wanted & repo.names())


def _model_config_files() -> set[str]:
    from vss_core.model import checkpoint

    layout = (
        checkpoint.VISION_CONFIG,
        checkpoint.AUDIO_CONFIG,
        checkpoint.PREPROCESSOR_CONFIG,
        checkpoint.GLOBAL_CMVN,
        checkpoint.CODEC_CONFIG,
    )
    return {"config.json", INDEX_FILE, *TOKENIZER_FILES, *(p.as_posix() for p in layout)}


def _local_names(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _check_model(
    specs: tuple[_Spec, _Spec], model: Path | _Repo, codec: _Opened, client: _Client | None, problems: list[str]
) -> None:
    """The omni checkpoint's configs, read by vss_core.model.checkpoint, and the weight files they imply."""
    from vss_core.model import checkpoint

    if isinstance(model, _Repo):
        _fetch_configs(model, _model_config_files(), client)
        names = model.names()
    else:
        names = _local_names(model)
    where, label = _dir(model), _label(specs[0], model)
    missing = [rel for rel in checkpoint.PT_FILES if rel not in names]
    if not any(fnmatch.fnmatch(n, "*.safetensors") for n in names):
        missing.append("*.safetensors (the LLM weights)")
    elif (where / INDEX_FILE).is_file():
        try:
            shards = set(json.loads((where / INDEX_FILE).read_text())["weight_map"].values())
            missing += [f"{s} (listed in {INDEX_FILE})" for s in sorted(shards - names)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{label}: {INDEX_FILE} has no readable weight_map ({type(exc).__name__}: {exc})")
    if missing:
        problems.append(f"{label}: missing {', '.join(missing)}")
    try:
        checkpoint.CheckpointConfigs(where)
    except ModelError as exc:
        problems.append(_nested(label, exc))
    _check_decoder(where / checkpoint.CODEC_CONFIG, names, specs[1], codec, problems)


def _check_decoder(path: Path, model_names: set[str], codec_spec: _Spec, codec: _Opened, problems: list[str]) -> None:
    """The decoder the checkpoint's audio_codec/config.yaml names: its config, and where its weights come from.

    A decoder in the codec repo becomes one of the codec files to download (the 16 kHz one is anyway).
    """
    from vss_core.codec.decoder import DecoderConfig

    if not path.is_file():
        return  # CheckpointConfigs names it
    raw = read_mapping(path, problems)
    if raw is None:
        return
    section = raw.get("codec_config", raw)
    if not isinstance(section, dict):
        problems.append(f"{path}: must hold a YAML mapping `codec_config:` (the speech decoder's config)")
        return
    try:
        DecoderConfig.from_yaml(section, str(path))
    except ModelError as exc:
        problems.append(_nested("", exc))  # it names the file
    ckpt = section.get("ckpt_path")
    if not isinstance(ckpt, str) or not ckpt:
        problems.append(f"{path}: codec_config.ckpt_path must name the decoder's .pt file")
        return
    # Where vss_core.codec.decoder_files looks: the checkpoint's audio_codec/, the checkpoint, the codec.
    if PurePosixPath(ckpt).is_absolute():
        found = Path(ckpt).is_file()
    elif {f"audio_codec/{PurePosixPath(ckpt).name}", ckpt} & model_names:
        found = True
    elif isinstance(codec, _Repo):
        found = codec.want(ckpt)
    else:
        found = codec is None or (codec / ckpt).is_file()  # None: the codec's own problem is listed
    if not found:
        where = _label(codec_spec, codec) if codec is not None else codec_spec.key
        problems.append(
            f"{path}: codec_config.ckpt_path {ckpt!r} (the speech decoder's weights) is neither in the checkpoint "
            f"(audio_codec/{PurePosixPath(ckpt).name} or {ckpt}) nor in {where}"
        )


def _check_codec(spec: _Spec, codec: Path | _Repo, client: _Client | None, problems: list[str]) -> None:
    """LongCat-Audio-Codec: its encoder files, and its configs read by vss_core.codec."""
    from vss_core import codec as codec_lib

    if not isinstance(codec, _Repo):
        try:
            codec_lib.encoder_fingerprint(codec)
        except ModelError as exc:
            problems.append(_nested(spec.key, exc))
        return
    required = [p.as_posix() for p in (codec_lib.ENCODER_CKPT, codec_lib.ENCODER_CMVN)]
    missing = [p for p in required if p not in codec.names()]
    if missing:
        problems.append(
            f"{codec.label}: missing {', '.join(missing)}; this is not LongCat-Audio-Codec "
            "(the Hub repo meituan-longcat/LongCat-Audio-Codec holds them)"
        )
    _fetch_configs(codec, [p for p in codec.names() if _matches(p, CODEC_CONFIG_PATTERNS)], client)
    try:
        # The codec's own reader of its configs (official values where the repo has none).
        codec_lib.encoder_configs(codec.snapshot)
    except ModelError as exc:
        problems.append(_nested(codec.label, exc))


def _check_complete(model_dir: Path, codec_dir: Path) -> None:
    """After the download: the codec's encoder files and the decoder the checkpoint names are all there."""
    from vss_core import codec

    problems = []
    for check in (lambda: codec.encoder_fingerprint(codec_dir), lambda: codec.decoder_files(model_dir, codec_dir)):
        try:
            check()
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise ModelError(
            f"model: the weights are incomplete after the download:\n{bullet_list(problems)}\nRun the download "
            "again; if it persists, check model.codec_source and the mirror (HF_ENDPOINT)."
        )


# --- download: fetching one repo ------------------------------------------------------------------


def _download_repo(repo: _Repo, client: _Client) -> None:
    """Fetch what the cache lacks of one resolved repo (the model's or the codec's) into its snapshot, resumably."""
    _write_ref(repo.storage, repo.spec.revision, repo.commit)
    _fetch_all(repo, [f for f in repo.files if f.path not in repo.done], client)
    _sweep_orphans(repo.storage, client.cache_dir, {f.etag for f in repo.files}, repo.tally)


def _fetch_all(repo: _Repo, files: list[_RemoteFile], client: _Client) -> None:
    if not files:
        return
    fetch = functools.partial(_fetch_file, repo=repo, client=client)
    with _hub_errors(repo.where, client.settings, kind="download", revision_key=repo.spec.revision_key):
        with ThreadPoolExecutor(max_workers=client.workers, thread_name_prefix="vss-download") as pool:
            list(pool.map(fetch, files))  # re-raises the first failure


def _inventory(repo: _Repo) -> list[tuple[_RemoteFile, int]]:
    """Count what the cache holds (size check); delete damaged files. Returns (file, partial bytes) to fetch."""
    todo = []
    for f in repo.files:
        if f.path in repo.done:
            continue
        pointer = repo.snapshot / f.path
        if pointer.exists():
            if pointer.stat().st_size == f.size:
                continue  # complete (hashed later if verify=full)
            _discard(pointer, f, repo.tally)
        partial = max((p.stat().st_size for p in _partials(repo.storage, f)), default=0)
        todo.append((f, partial if f.size >= RESUME_MIN_BYTES and partial <= f.size else 0))
    return todo


def _check_disk(todos: list[tuple[_Repo, list[tuple[_RemoteFile, int]]]], cache_dir: Path) -> None:
    need = missing = 0
    for repo, todo in todos:
        missing += len(todo)
        for f, partial in todo:
            blob = repo.storage / "blobs" / (f.etag or "")
            if f.etag and blob.is_file() and blob.stat().st_size == f.size:
                continue  # only a link is missing
            need += f.size - partial
    free = _free_bytes(cache_dir)
    if need > free:
        what = " and ".join(f"{r.spec.source}@{r.spec.revision} (commit {r.commit[:12]})" for r, _ in todos)
        raise PreflightError(
            f"model: downloading {what} needs {_fmt(need)} more in {cache_dir} ({missing} file(s) missing), but only "
            f"{_fmt(free)} is free there. Free space, or set model.cache_dir (or HF_HOME / HF_HUB_CACHE) to a disk "
            "with room."
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


def _fetch_file(f: _RemoteFile, *, repo: _Repo, client: _Client) -> None:
    """Bring one file into the snapshot, checked: a file already present by size (and its hash under
    verify=full), a file that arrives by its hash (large ones while they stream, small ones once written)."""
    import huggingface_hub as hf

    pointer, tally, storage = repo.snapshot / f.path, repo.tally, repo.storage
    for attempt in (1, 2):
        if pointer.exists() and pointer.stat().st_size == f.size:
            if client.verify == "full" and not _hash_ok(pointer, f):
                _discard(pointer, f, tally)
            else:
                if attempt == 1:
                    tally.add(cached=f.size)
                return
        checked = False  # hashed as it arrived
        if f.size >= RESUME_MIN_BYTES:
            arrived = _resumable_download(f, repo, client)
            if arrived == "damaged":
                continue
            checked = arrived == "verified"
            fresh = arrived != "cached"
        else:
            _drop_partials(storage, f, client.cache_dir, tally)
            fresh = not (storage / "blobs" / (f.etag or "-")).is_file()
        _retrying(
            lambda: hf.hf_hub_download(
                repo.spec.source,
                f.path,
                revision=repo.commit,
                cache_dir=str(client.cache_dir),
                endpoint=client.endpoint,
                token=client.token,
                library_name="vss",
            ),
            f.path,
            DOWNLOAD_ATTEMPTS,
            client.sleep,
        )
        if f.size < RESUME_MIN_BYTES:
            tally.add(**({"downloaded": f.size, "fetched": 1} if fresh else {"cached": f.size}))
        # A small file just written is hashed here (one read of < RESUME_MIN_BYTES, from the page cache); a
        # blob that was in the cache before (only its link was missing) or a Xet download is hashed under
        # verify=full only: hf_xet streams it, not vss.
        hash_now = not checked and (client.verify == "full" or (fresh and f.size < RESUME_MIN_BYTES))
        if pointer.stat().st_size == f.size and (not hash_now or _hash_ok(pointer, f)):
            return
        _discard(pointer, f, tally)
    raise HubError(
        f"{repo.spec.key} {repo.spec.source}@{repo.commit}: {f.path} arrived damaged twice (size or hash differs "
        "from the Hub's metadata); it was deleted. Run the download again; if it persists, the mirror (HF_ENDPOINT) "
        "serves bad data."
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


def _resumable_download(f: _RemoteFile, repo: _Repo, client: _Client) -> str:
    """Fetch a large file into its blob with Range requests, resuming any partial left by a killed process,
    hashing it as it streams. Returns "verified" (its hash matched the Hub's), "damaged" (it did not: deleted),
    "cached" (the blob was already there) or "xet" (hf_xet fetches it)."""
    import huggingface_hub as hf
    from huggingface_hub.utils import WeakFileLock, build_hf_headers
    from huggingface_hub.utils._runtime import is_xet_available  # not re-exported in 2.x

    repo_id, commit, endpoint, token = repo.spec.source, repo.commit, client.endpoint, client.token
    storage, cache_dir, tally, sleep = repo.storage, client.cache_dir, repo.tally, client.sleep
    where = f"{repo.spec.key} {repo_id}@{commit}"
    url = hf.hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint)
    meta = _retrying(
        lambda: hf.get_hf_file_metadata(url, token=token, endpoint=endpoint),
        f"metadata of {f.path}",
        DOWNLOAD_ATTEMPTS,
        sleep,
    )
    if meta.xet_file_data is not None and is_xet_available():
        _drop_partials(storage, f, cache_dir, tally)  # hf_xet fetches it; its chunk cache is its own business
        tally.add(downloaded=f.size, fetched=1)
        return "xet"
    if meta.size is not None and meta.size != f.size:
        raise HubError(
            f"{where}: the Hub's metadata disagree on the size of {f.path} "
            f"(model info {f.size}, resolve {meta.size}). Run again; if it persists, check the mirror (HF_ENDPOINT)."
        )
    etag = meta.etag or f.etag
    if not etag or not _safe_name(etag):
        raise HubError(
            f"{where}: the Hub named the blob of {f.path} {etag!r}, not a plain file name; vss refused it "
            "before writing anything. Check the mirror (HF_ENDPOINT)."
        )
    blobs = storage / "blobs"
    blob = blobs / etag
    blobs.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(_lock_path(cache_dir, storage, etag)):
        if blob.is_file() and blob.stat().st_size == f.size:
            tally.add(cached=f.size)  # only the snapshot link is missing
            return "cached"
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
        digest = _Digest(f)
        received = _ranged_get(location, partial, f.size, headers, f.path, sleep, digest)
        tally.add(resumed=kept, downloaded=received, fetched=1)
        if not digest.matches():
            log.warning(
                "%s: %s does not match the Hub's %s after download (damaged in transit); deleted, fetching it again",
                where,
                f.path,
                digest.name,
            )
            tally.add(refetched=f.size)
            partial.unlink(missing_ok=True)
            with tally.lock:
                tally.damaged.append(f.path)
            return "damaged"
        partial.chmod(0o644)
        os.replace(partial, blob)
        return "verified"


def _ranged_get(url: str, partial: Path, size: int, headers: dict, name: str, sleep: Sleep, digest: _Digest) -> int:
    """Append the missing bytes of `partial` from `url` (Range), resuming dropped connections, feeding `digest`
    every byte as it is written. Returns bytes received."""
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
        digest.catch_up(partial, have)  # a resumed partial's kept bytes: read once, before the first new byte
        request_headers = dict(headers, Range=f"bytes={have}-") if have else dict(headers)
        progressed = False
        try:
            with get_session().stream(
                "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            ) as r:
                hf_raise_for_status(r)
                mode = "ab" if have and r.status_code == 206 else "wb"  # 200: the server ignored Range
                if mode == "wb":
                    digest.reset()
                with partial.open(mode) as out:
                    for chunk in r.iter_bytes(chunk_size=STREAM_CHUNK):
                        out.write(chunk)
                        out.flush()  # on disk (page cache) before the next chunk: a kill keeps it
                        digest.update(chunk)
                        received += len(chunk)
                        progressed = True
            if partial.stat().st_size != size:
                raise httpx2.RemoteProtocolError(
                    f"{name}: connection closed at {partial.stat().st_size} of {size} bytes"
                )
        except (httpx2.TransportError, HfHubHTTPError) as exc:
            if isinstance(exc, HfHubHTTPError) and exc.response.status_code not in TRANSIENT_STATUS:
                raise
            failures = 0 if progressed else failures + 1
            if failures >= DOWNLOAD_ATTEMPTS:
                raise
            delay = 1.0 if progressed else _backoff(failures)
            log.warning(
                "%s: %s; resuming at byte %d in %.0fs",
                name,
                _short(exc),
                partial.stat().st_size if partial.exists() else 0,
                delay,
            )
            sleep(delay)


class _Digest:
    """The hash the Hub gives for a file (sha256 for LFS files, the git blob id for the others), fed as the
    file's bytes arrive so that a download is checked without reading it again. Always matches when the Hub
    gives neither."""

    def __init__(self, f: _RemoteFile) -> None:
        self._file = f
        self.name = "sha256" if f.sha256 else "git blob id" if f.blob_id else "nothing"
        self.reset()

    def reset(self) -> None:
        f = self._file
        self.fed = 0
        self._h = hashlib.sha256() if f.sha256 else hashlib.sha1() if f.blob_id else None
        if self._h is not None and not f.sha256:
            self._h.update(b"blob %d\0" % f.size)

    def update(self, chunk: bytes) -> None:
        if self._h is not None:
            self._h.update(chunk)
        self.fed += len(chunk)

    def catch_up(self, path: Path, have: int) -> None:
        """Feed bytes [fed, have) of `path` from disk: the kept part of a resumed partial, read once."""
        if self.fed == have:
            return
        if self.fed > have:
            self.reset()
        with path.open("rb") as fh:
            fh.seek(self.fed)
            while self.fed < have and (chunk := fh.read(min(1 << 22, have - self.fed))):
                self.update(chunk)

    def matches(self) -> bool:
        if self._h is None:
            return True
        return self.fed == self._file.size and self._h.hexdigest() == (self._file.sha256 or self._file.blob_id)


def _hash_ok(path: Path, f: _RemoteFile) -> bool:
    """Hash a file already on disk (one full read): for files present before the run, under verify=full."""
    digest = _Digest(f)
    digest.catch_up(path, path.stat().st_size)
    return digest.matches()


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


def upload_adapter(
    adapter_dir: Path,
    cfg: UploadConfig,
    settings: Settings,
    *,
    sleep: Sleep = time.sleep,
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
        err = HubError(
            f"upload: {adapter_dir} does not exist or is empty; there is no adapter to upload to {cfg.repo_id}."
        )
        err.retryable = False
        raise err
    if not (adapter_dir / "README.md").is_file():
        from vss_core import card

        card.save(card.minimal_card(base_model), adapter_dir / "README.md")

    import huggingface_hub as hf

    api = hf.HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token.get_secret_value(), library_name="vss")
    repo = cfg.repo_id
    with _hub_errors(f"upload.repo_id {repo}", settings, kind="upload", kept=kept):
        _retrying(
            lambda: api.create_repo(repo, private=cfg.private, exist_ok=True),
            f"creating {repo}",
            cfg.max_attempts,
            sleep,
        )
        before = _retrying(lambda: api.model_info(repo).sha, f"reading {repo}", cfg.max_attempts, sleep)
        commit = _retrying(
            lambda: api.upload_folder(repo_id=repo, folder_path=str(adapter_dir), commit_message=cfg.commit_message),
            f"uploading {adapter_dir} to {repo}",
            cfg.max_attempts,
            sleep,
        )
    new = commit.oid != before
    what = "uploaded to" if new else "unchanged since the last upload; latest commit"
    return UploadReport(
        uploaded=True,
        message=f"adapter {what} {commit.commit_url}",
        repo_id=repo,
        url=commit.commit_url,
        commit=commit.oid,
        new_commit=new,
    )


# --- errors and retries ---------------------------------------------------------------------------


def _backoff(attempt: int, base: float = 2.0, cap: float = 60.0) -> float:
    return min(cap, base * 2 ** (attempt - 1))


def is_transient(exc: BaseException) -> bool:
    """True for a failure a second try can fix, and only those (an allow-list): an HTTP 5xx, 408 or 429 answer,
    a refused or dropped connection, a timeout, or a vss HubError marked retryable (raised for one of those).

    Everything else is not transient: 4xx answers, an invalid repo id (HFValidationError), a refused file name,
    vss config/data/model errors, and programming errors such as TypeError.
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, HubError):
        return bool(exc.retryable)
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is not None and (status >= 500 or status in TRANSIENT_STATUS)
    if isinstance(exc, LocalEntryNotFoundError):  # hf_hub_download's wrapper of a failed request
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    if isinstance(exc, httpx2.ProxyError):  # a misconfigured proxy stays misconfigured
        return False
    transient: tuple[type[BaseException], ...] = (httpx2.TransportError, ConnectionError, TimeoutError)
    try:
        import requests

        transient += (requests.ConnectionError, requests.Timeout)
    except ImportError:  # requests is optional for huggingface_hub 2.x
        pass
    return isinstance(exc, transient)


def _retrying(fn: Callable[[], T], what: str, attempts: int, sleep: Sleep) -> T:
    """Call fn, retrying transient failures with exponential backoff (2, 4, 8 ... 60 s) up to `attempts` calls."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
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

    def __init__(self, where: str, settings: Settings, kind: str, kept: str = "", revision_key: str = "model.revision"):
        self.where, self.settings, self.kind, self.kept = where, settings, kind, kept
        self.revision_key = revision_key

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (HubError, ModelError, PreflightError)) or not isinstance(exc, Exception):
            return False
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        source = self.settings.hf_token_source or "none configured"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        tail = f"; {self.kept}" if self.kept else ""
        invalid_token = (
            status == 401 and self.settings.hf_token is not None and not isinstance(exc, RepositoryNotFoundError)
        )
        if invalid_token or (status == 403 and self.kind == "upload"):
            err: Exception = HubError(
                f"{self.where}: the Hub refused the token from {source} (HTTP {status}): it is invalid, expired "
                f"or lacks {'write' if self.kind == 'upload' else 'read'} access to this repo. Set HF_TOKEN to a "
                f"token with that access (https://huggingface.co/settings/tokens){tail}."
            )
            err.retryable = False
        elif isinstance(exc, RevisionNotFoundError):
            err = ModelError(
                f"{self.where}: the revision does not exist. "
                f"Set {self.revision_key} to a branch, tag or commit of the repo."
            )
        elif isinstance(exc, (RepositoryNotFoundError, GatedRepoError)):
            err = ModelError(
                f"{self.where}: the repo was not found, or it is private/gated and the token ({source}) cannot read "
                f"it. Check the repo id, or set HF_TOKEN to a token with access{tail}."
            )
            if self.kind == "upload":
                err = HubError(str(err))
                err.retryable = False
        elif isinstance(exc, HFValidationError):  # refused by huggingface_hub before any request
            key = "upload.repo_id" if self.kind == "upload" else self.where.split(" ")[0]
            err = (HubError if self.kind == "upload" else ModelError)(
                f"{self.where}: not a valid Hub repo id or revision ({exc}). Set {key} to 'owner/name' "
                f"(letters, digits, '-', '_', '.'){tail}."
            )
            err.retryable = False
        elif is_transient(exc):
            err = HubError(
                f"{self.where}: the Hub ({self.settings.hf_endpoint or 'huggingface.co'}) failed: {_short(exc)}. "
                f"Transient errors were retried; run again later (completed files are kept){tail}."
            )
            err.retryable = True
        elif isinstance(exc, HfHubHTTPError | OSError):
            err = HubError(
                f"{self.where}: the Hub ({self.settings.hf_endpoint or 'huggingface.co'}) failed: {_short(exc)}. "
                f"A second try would fail the same way; check the repo, the file and the mirror (HF_ENDPOINT){tail}."
            )
            err.retryable = False
        else:
            return False
        raise _redacted(err, self.settings) from None


def _redacted(err: Exception, settings: Settings) -> Exception:
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    if token and token in str(err):
        new = type(err)(str(err).replace(token, "***"))
        new.retryable = getattr(err, "retryable", False)
        return new
    return err


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
