"""vss_core.settings: what vss reads from the environment, the Hub token as huggingface_hub finds it
(only its source is ever shown), and the Hub cache."""

from __future__ import annotations

import os

import pytest

from vss_core.errors import ConfigError
from vss_core.settings import load_settings


def test_settings_token_sources_and_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants as hf_constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "token"))  # huggingface_hub's own lookup
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    s = load_settings()
    assert s.hf_token.get_secret_value() == "hf_abc" and s.hf_token_source == "environment variable HF_TOKEN"
    assert s.hf_endpoint == "http://127.0.0.1:9" and s.hub_cache_dir == str(tmp_path / "hub")
    assert "hf_abc" not in repr(s) and "hf_abc" not in s.model_dump_json()

    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "token").write_text("hf_from_file\n")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "c"))  # the older name still counts
    s = load_settings()
    assert s.hf_token.get_secret_value() == "hf_from_file" and "token file" in s.hf_token_source
    assert s.hub_cache_dir == str(tmp_path / "c")
    (tmp_path / "token").unlink()
    assert load_settings().hf_token is None

    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "maybe")
    with pytest.raises(ConfigError, match="HF_HUB_ENABLE_HF_TRANSFER"):
        load_settings()
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "yes")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret")
    s = load_settings()
    assert s.hf_transfer_requested and s.wandb_api_key.get_secret_value() == "wandb-secret"
    assert "wandb-secret" not in repr(s)


def test_the_hub_cache_is_model_cache_dir_then_hf_hub_cache_then_hf_home(tmp_path, monkeypatch):
    from vss_core.settings import Settings, hub_cache

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().hub_cache_dir == str(tmp_path / "home" / ".cache" / "huggingface" / "hub")
    assert Settings(hf_home=str(tmp_path / "hf")).hub_cache_dir == str(tmp_path / "hf" / "hub")
    both = Settings(hf_home=str(tmp_path / "hf"), hf_hub_cache=str(tmp_path / "c"))
    assert both.hub_cache_dir == str(tmp_path / "c")
    assert hub_cache(None, both) == tmp_path / "c"
    assert hub_cache("~/models", both) == tmp_path / "home" / "models"  # model.cache_dir wins, ~ expanded


def test_xdg_cache_home_places_hf_home_and_an_empty_variable_counts_as_unset(tmp_path, monkeypatch):
    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_ENDPOINT", "")
    s = load_settings()
    assert s.hf_home == str(tmp_path / "xdg" / "huggingface") and s.hf_endpoint is None
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert load_settings().hf_home == str(tmp_path / "hf")  # HF_HOME wins over XDG_CACHE_HOME


def test_xet_high_performance_is_turned_on_without_overriding_the_users_choice(monkeypatch):
    from vss_core.settings import enable_xet_high_performance

    monkeypatch.delenv("HF_XET_HIGH_PERFORMANCE", raising=False)
    enable_xet_high_performance()
    assert os.environ["HF_XET_HIGH_PERFORMANCE"] == "1"
    monkeypatch.setenv("HF_XET_HIGH_PERFORMANCE", "0")
    enable_xet_high_performance()
    assert os.environ["HF_XET_HIGH_PERFORMANCE"] == "0"
