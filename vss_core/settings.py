"""The one place vss reads (and, for hf_xet, writes) the process environment.

Secrets are `SecretStr` and never leave this object as plain text except to the library that needs
them (huggingface_hub); they are never flow parameters, never logged, never written to a run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, SecretStr


class Settings(BaseModel):
    hf_token: SecretStr | None = None
    hf_token_source: str | None = None
    hf_endpoint: str | None = None
    hf_home: str | None = None
    hf_hub_cache: str | None = None
    hf_transfer_requested: bool = False
    hf_xet_high_performance: bool = False
    wandb_api_key: SecretStr | None = None

    @property
    def hub_cache_dir(self) -> str:
        """The huggingface_hub cache vss downloads into when model.cache_dir is unset."""
        if self.hf_hub_cache:
            return self.hf_hub_cache
        return str(Path(self.hf_home or Path("~/.cache/huggingface").expanduser()) / "hub")


def hub_cache(model_cache_dir: str | None = None, settings: Settings | None = None) -> Path:
    """The huggingface_hub cache vss downloads into (model.cache_dir, else HF_HUB_CACHE / HF_HOME's hub/):
    the one answer the download and the disk check share."""
    settings = settings or load_settings()
    return Path(model_cache_dir or settings.hub_cache_dir).expanduser().absolute()


_TRUE = {"1", "true", "yes", "on"}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read vss's settings from the environment (or the mapping given, for tests).

    The Hub token is looked up where huggingface_hub looks: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the
    file `hf auth login` writes (HF_TOKEN_PATH, default $HF_HOME/token). Only its source is ever shown.
    """
    env = os.environ if environ is None else environ
    home = env.get("HF_HOME") or (
        str(Path(env["XDG_CACHE_HOME"]) / "huggingface") if env.get("XDG_CACHE_HOME") else None
    )
    home = str(Path(home).expanduser()) if home else None
    token, source = None, None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name, "").strip():
            token, source = env[name].strip(), f"environment variable {name}"
            break
    if token is None:
        token_path = Path(env.get("HF_TOKEN_PATH") or Path(home or "~/.cache/huggingface") / "token").expanduser()
        try:
            stored = token_path.read_text().strip()
        except OSError:
            stored = ""
        if stored:
            token, source = stored, f"token file {token_path} (hf auth login)"
    return Settings(
        hf_token=SecretStr(token) if token else None,
        hf_token_source=source,
        hf_endpoint=(env.get("HF_ENDPOINT") or "").rstrip("/") or None,
        hf_home=home,
        hf_hub_cache=env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or None,
        hf_transfer_requested=env.get("HF_HUB_ENABLE_HF_TRANSFER", "").lower() in _TRUE,
        hf_xet_high_performance=env.get("HF_XET_HIGH_PERFORMANCE", "").lower() in _TRUE,
        wandb_api_key=SecretStr(env["WANDB_API_KEY"]) if env.get("WANDB_API_KEY") else None,
    )


def enable_xet_high_performance() -> None:
    """Turn on hf_xet's high-performance mode for this process's large downloads.

    hf_xet reads HF_XET_HIGH_PERFORMANCE from the environment when its session starts; there is no API
    argument for it, so vss sets the variable (without overriding a value the user chose).
    """
    os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")
