"""The one place vss reads the process environment.

Secrets are `SecretStr` and never leave this object as plain text except to the library that needs
them (huggingface_hub); they are never flow parameters, never logged, never written to a run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, SecretStr


class Settings(BaseModel):
    hf_token: SecretStr | None = None
    hf_token_source: str | None = None
    hf_endpoint: str | None = None
    hf_home: str | None = None
    hf_transfer_requested: bool = False
    wandb_api_key: SecretStr | None = None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read vss's settings from the environment (or the mapping given, for tests)."""
    env = os.environ if environ is None else environ
    token, source = None, None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name):
            token, source = env[name], f"environment variable {name}"
            break
    return Settings(
        hf_token=SecretStr(token) if token else None,
        hf_token_source=source,
        hf_endpoint=env.get("HF_ENDPOINT") or None,
        hf_home=env.get("HF_HOME") or None,
        hf_transfer_requested=env.get("HF_HUB_ENABLE_HF_TRANSFER", "").lower() in {"1", "true", "yes"},
        wandb_api_key=SecretStr(env["WANDB_API_KEY"]) if env.get("WANDB_API_KEY") else None,
    )
