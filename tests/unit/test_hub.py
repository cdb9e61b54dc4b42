"""vss_core.hub and the Hub settings without a server: layout, settings, retries, messages."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from vss_core import hub
from vss_core.config import ModelConfig, UploadConfig
from vss_core.errors import ModelError
from vss_core.settings import Settings, load_settings


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_local_source_is_used_in_place_after_layout_check(tiny_model_dir):
    report = hub.download_weights(ModelConfig(source=str(tiny_model_dir)), Settings())
    assert report.path == str(tiny_model_dir.absolute()) and not report.downloaded and report.revision is None


def test_incomplete_local_source_lists_every_missing_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError) as err:
        hub.download_weights(ModelConfig(source=str(tmp_path)), Settings())
    msg = str(err.value)
    assert "language_model_embedding.pt" in msg and "audio_codec/config.yaml" in msg and "*.safetensors" in msg
    assert "vss tiny-model" in msg


def test_settings_token_sources_and_cache(tmp_path):
    s = load_settings({"HF_TOKEN": "hf_abc", "HF_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9/"})
    assert s.hf_token.get_secret_value() == "hf_abc" and s.hf_token_source == "environment variable HF_TOKEN"
    assert s.hf_endpoint == "http://127.0.0.1:9" and s.hub_cache_dir == str(tmp_path / "hub")
    assert "hf_abc" not in repr(s) and "hf_abc" not in s.model_dump_json()

    (tmp_path / "token").write_text("hf_from_file\n")
    s = load_settings({"HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "c")})
    assert s.hf_token.get_secret_value() == "hf_from_file" and "token file" in s.hf_token_source
    assert s.hub_cache_dir == str(tmp_path / "c")
    assert load_settings({"HF_HOME": str(tmp_path / "empty")}).hf_token is None


def test_hf_transfer_warns_once(tmp_path, caplog, monkeypatch):
    hub._warn_hf_transfer_once.cache_clear()
    monkeypatch.setattr(hub, "_is_local_source", lambda source: False)
    s = Settings(hf_transfer_requested=True, hf_endpoint="http://127.0.0.1:9")  # nothing listens on port 9
    cfg = ModelConfig(source="org/x", cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="vss_core.hub"):
        for _ in range(2):
            with pytest.raises(Exception):
                hub.download_weights(cfg, s, sleep=lambda _: None)
    assert caplog.text.count("HF_HUB_ENABLE_HF_TRANSFER") == 1 and "hf_xet" in caplog.text


def test_retrying_retries_only_transient_errors():
    import httpx2

    calls, sleeps = [], Sleeps()

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise httpx2.ConnectError("refused")
        return "ok"

    assert hub._retrying(flaky, "x", 5, sleeps) == "ok" and sleeps == [2.0, 4.0]

    def broken():
        raise ValueError("a bug, not the network")

    sleeps.clear()
    with pytest.raises(ValueError):
        hub._retrying(broken, "x", 5, sleeps)
    assert sleeps == []


def test_backoff_is_bounded():
    assert [hub._backoff(a) for a in (1, 2, 3, 7, 20)] == [2.0, 4.0, 8.0, 60.0, 60.0]


def test_upload_skips_without_token_or_repo(tmp_path):
    no_token = hub.upload_adapter(tmp_path, UploadConfig(repo_id="me/x"), Settings())
    assert not no_token.uploaded and "HF_TOKEN" in no_token.message and str(tmp_path) in no_token.message
    s = Settings(hf_token=SecretStr("hf_x"), hf_token_source="environment variable HF_TOKEN")
    assert "upload.repo_id" in hub.upload_adapter(tmp_path, UploadConfig(), s).message
    assert "upload.enabled=false" in hub.upload_adapter(tmp_path, UploadConfig(enabled=False, repo_id="me/x"), s).message


def test_redaction_never_lets_the_token_through():
    from vss_core.errors import HubError

    s = Settings(hf_token=SecretStr("hf_SECRET"), hf_token_source="environment variable HF_TOKEN")
    err = hub._redacted(HubError("server echoed hf_SECRET back"), s)
    assert "hf_SECRET" not in str(err) and "***" in str(err)


def test_model_config_hub_fields_are_validated():
    assert ModelConfig().verify == "size"
    with pytest.raises(ValueError):
        ModelConfig(verify="sha1")
    with pytest.raises(ValueError):
        UploadConfig(max_attempts=0)
