"""The one place vss reads (and, for hf_xet, writes) the process environment.

Secrets are `SecretStr` and never leave this object as plain text except to the library that needs
them (huggingface_hub); they are never flow parameters, never logged, never written to a run.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_token
from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from vss_core.errors import ConfigError, bullet_list


class Settings(BaseModel):
    """What vss takes from the environment (`load_settings`); built by hand in tests, where it reads nothing."""

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


class _Environment(BaseSettings):
    """The variables vss reads, by their own names (pydantic-settings: case-insensitive; an empty
    variable counts as unset; booleans read 1/0, true/false, yes/no, on/off)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore")

    hf_endpoint: str | None = None
    hf_home: str | None = None
    xdg_cache_home: str | None = None
    hf_hub_cache: str | None = Field(None, validation_alias=AliasChoices("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"))
    hf_hub_enable_hf_transfer: bool = False
    hf_xet_high_performance: bool = False
    wandb_api_key: SecretStr | None = None


def _token() -> tuple[str | None, str | None]:
    """The Hub token huggingface_hub itself would send (`get_token`: an OIDC exchange where
    HF_OIDC_RESOURCE is set, HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the `hf auth login` file, with
    OAuth refresh), and where it came from, for messages (the token itself is never shown)."""
    token = get_token()
    if not token:
        return None, None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name, "").strip() == token:
            return token, f"environment variable {name}"
    if os.environ.get("HF_OIDC_RESOURCE"):
        return token, "an OIDC token exchange (HF_OIDC_RESOURCE)"
    return token, f"token file {hf_constants.HF_TOKEN_PATH} (hf auth login)"


def load_settings() -> Settings:
    """Read vss's settings from the environment (pydantic-settings) and the Hub token as
    huggingface_hub finds it (`huggingface_hub.get_token`). Only the token's source is ever shown.

    Raises:
        ConfigError: a variable vss reads has a value it cannot read (e.g. HF_HUB_ENABLE_HF_TRANSFER=maybe).
    """
    try:
        env = _Environment()
    except ValidationError as exc:
        bad = [f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"environment variables vss cannot read:\n{bullet_list(bad)}\nFix or unset them.") from None
    home = env.hf_home or (str(Path(env.xdg_cache_home) / "huggingface") if env.xdg_cache_home else None)
    token, source = _token()
    return Settings(
        hf_token=SecretStr(token) if token else None,
        hf_token_source=source,
        hf_endpoint=(env.hf_endpoint or "").rstrip("/") or None,
        hf_home=str(Path(home).expanduser()) if home else None,
        hf_hub_cache=env.hf_hub_cache,
        hf_transfer_requested=env.hf_hub_enable_hf_transfer,
        hf_xet_high_performance=env.hf_xet_high_performance,
        wandb_api_key=env.wandb_api_key,
    )


def enable_xet_high_performance() -> None:
    """Turn on hf_xet's high-performance mode for this process's large downloads.

    hf_xet reads HF_XET_HIGH_PERFORMANCE from the environment when its session starts; there is no API
    argument for it, so vss sets the variable (without overriding a value the user chose).
    """
    os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")
