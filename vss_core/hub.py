"""Weights in, adapter out, through the real huggingface_hub client.

A local directory as the model source is used in place after a layout check. A Hub repo id is
resolved to a commit and downloaded with allow patterns into the configured cache. Upload creates the
repo (private by default) and uploads the adapter folder; with no token it is skipped, and the
adapter stays in the run directory. The token comes from `Settings`, never from a parameter, and is
never logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel

from vss_core.config import ModelConfig, UploadConfig
from vss_core.errors import HubError, ModelError, bullet_list
from vss_core.settings import Settings

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


class WeightsReport(BaseModel):
    path: str
    source: str
    revision: str | None
    downloaded: bool


class UploadReport(BaseModel):
    uploaded: bool
    message: str
    repo_id: str | None = None
    url: str | None = None


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


def download_weights(cfg: ModelConfig, settings: Settings) -> WeightsReport:
    """Resolve the model source to a local directory.

    Raises:
        ModelError: a local source with a wrong layout.
        HubError: the Hub could not be reached or the repo/revision does not exist.
    """
    local = Path(cfg.source).expanduser()
    if local.exists() or cfg.source.startswith((".", "/", "~")):
        if not local.is_dir():
            raise ModelError(
                f"model.source: {local} does not exist or is not a directory. "
                "Write the tiny model with `vss tiny-model DIR` or give a Hub repo id."
            )
        check_layout(local)
        return WeightsReport(path=str(local.absolute()), source=cfg.source, revision=None, downloaded=False)

    if settings.hf_transfer_requested:
        log.warning(
            "HF_HUB_ENABLE_HF_TRANSFER is set, but it does nothing since huggingface_hub 1.0; "
            "vss downloads through hf_xet (HF_XET_HIGH_PERFORMANCE=1)."
        )
    os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")  # hf_xet reads it at transfer time
    import huggingface_hub as hf

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        info = hf.model_info(cfg.source, revision=cfg.revision, token=token)
        path = hf.snapshot_download(
            cfg.source,
            revision=info.sha,
            allow_patterns=ALLOW_PATTERNS,
            cache_dir=cfg.cache_dir,
            token=token,
        )
    except (hf.errors.RepositoryNotFoundError, hf.errors.RevisionNotFoundError) as exc:
        raise ModelError(f"model.source: {cfg.source}@{cfg.revision} not found on the Hub: {exc}") from exc
    except Exception as exc:
        raise HubError(f"downloading {cfg.source}@{cfg.revision} failed: {exc}") from exc
    check_layout(Path(path))
    return WeightsReport(path=path, source=cfg.source, revision=info.sha, downloaded=True)


def upload_adapter(adapter_dir: Path, cfg: UploadConfig, settings: Settings) -> UploadReport:
    """Upload the adapter folder (with its model card) to the Hub, or say why not.

    Raises:
        HubError: the upload failed (auth failures name the repo and the token's source, never the token).
    """
    if not cfg.enabled:
        return UploadReport(uploaded=False, message=f"upload disabled (upload.enabled=false); adapter kept at {adapter_dir}")
    if not settings.hf_token or not cfg.repo_id:
        why = "no Hub token (set HF_TOKEN)" if not settings.hf_token else "no upload.repo_id set"
        return UploadReport(uploaded=False, message=f"upload skipped: {why}; adapter kept at {adapter_dir}")
    import huggingface_hub as hf

    api = hf.HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token.get_secret_value())
    try:
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        commit = api.upload_folder(repo_id=cfg.repo_id, folder_path=str(adapter_dir), commit_message="vss adapter")
    except hf.errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise HubError(
                f"upload to {cfg.repo_id} refused ({status}): the token from {settings.hf_token_source} "
                "lacks write access to it. Use a write token or change upload.repo_id."
            ) from None
        raise HubError(f"upload to {cfg.repo_id} failed: {exc}") from exc
    return UploadReport(uploaded=True, message=f"uploaded to {commit.commit_url}", repo_id=cfg.repo_id, url=commit.commit_url)
