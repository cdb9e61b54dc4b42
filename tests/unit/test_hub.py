"""vss_core.hub without a server: local sources, patterns, retries (the allow-list of transient
failures, with the exceptions huggingface_hub and httpx really raise, which the flow's retry condition
follows), messages."""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from pathlib import Path

import httpx2
import pytest
import requests
from huggingface_hub.errors import HfHubHTTPError
from pydantic import SecretStr

from tasks import stages
from tests.helpers import URL, bad_repo_id_error, connect_error, hub_error, hub_http_error
from vss_core import codec, hub
from vss_core.config import ModelConfig, UploadConfig
from vss_core.errors import ConfigError, DatasetError, HubError, ModelError
from vss_core.model import checkpoint
from vss_core.settings import Settings


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _matches(path: str, patterns) -> bool:
    return any(fnmatch.fnmatch(path, pat) for pat in patterns)


def test_local_sources_are_used_in_place_after_validation(tiny_model_dir, tiny_codec_dir):
    report = hub.download_weights(ModelConfig(source=str(tiny_model_dir), codec_source=str(tiny_codec_dir)), Settings())
    assert report.path == str(tiny_model_dir.absolute()) and not report.downloaded and report.revision is None
    assert report.codec_path == str(tiny_codec_dir.absolute()) and not report.codec_downloaded
    assert report.codec_revision is None and report.total().bytes_total == 0
    configs_dir, total = hub.model_configs(
        ModelConfig(source=str(tiny_model_dir), codec_source=str(tiny_codec_dir)), Settings()
    )
    assert configs_dir == tiny_model_dir.absolute() and total == 0


def test_incomplete_local_sources_list_every_problem_at_once(tmp_path, tiny_codec_dir):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    codec_dir = _copy(tiny_codec_dir, tmp_path / "codec")
    (codec_dir / codec.ENCODER_CKPT).unlink()
    with pytest.raises(ModelError) as err:
        hub.download_weights(ModelConfig(source=str(model_dir), codec_source=str(codec_dir)), Settings())
    msg = str(err.value)
    assert "language_model_embedding.pt" in msg and "audio_codec/config.yaml" in msg and "*.safetensors" in msg
    assert "vision/config.json" in msg and "tokenizer" in msg
    assert str(codec_dir / codec.ENCODER_CKPT) in msg and "model.codec_source" in msg
    assert "vss tiny-model" in msg


def test_missing_local_directories_are_named(tmp_path):
    with pytest.raises(ModelError) as err:
        hub.download_weights(
            ModelConfig(source=str(tmp_path / "nope"), codec_source=str(tmp_path / "nocodec")), Settings()
        )
    assert f"model.source: {tmp_path / 'nope'} does not exist" in str(err.value)
    assert f"model.codec_source: {tmp_path / 'nocodec'} does not exist" in str(err.value)


def test_local_checkpoint_with_a_vision_config_vss_cannot_run_is_refused(tmp_path, tiny_model_dir, tiny_codec_dir):
    model_dir = _copy(tiny_model_dir, tmp_path / "model")
    vision = json.loads((model_dir / "vision" / "config.json").read_text())
    (model_dir / "vision" / "config.json").write_text(json.dumps(dict(vision, hidden_act="GELU")))
    with pytest.raises(ModelError) as err:
        hub.download_weights(ModelConfig(source=str(model_dir), codec_source=str(tiny_codec_dir)), Settings())
    msg = str(err.value)
    assert str(model_dir / "vision" / "config.json") in msg and "'hidden_act' = 'GELU'" in msg


def test_a_decoder_named_nowhere_is_refused_naming_the_key(tmp_path, tiny_model_dir, tiny_codec_dir):
    model_dir = _copy(tiny_model_dir, tmp_path / "model")
    cfg_path = model_dir / checkpoint.CODEC_CONFIG
    codec.write_decoder_config(cfg_path, codec.TINY_DECODER, ckpt_path="ckpts/nope.pt")
    with pytest.raises(ModelError, match=r"codec_config.ckpt_path 'ckpts/nope.pt' .* is neither in the checkpoint"):
        hub.download_weights(ModelConfig(source=str(model_dir), codec_source=str(tiny_codec_dir)), Settings())
    cfg_path.write_text(
        "codec_config:\n  decoder_type: 48k\n  ckpt_path: ckpts/LongCatAudioCodec_decoder_16k_4codebooks.pt\n"
    )
    with pytest.raises(ModelError, match=r"codec_config.decoder_type: '48k'"):
        hub.download_weights(ModelConfig(source=str(model_dir), codec_source=str(tiny_codec_dir)), Settings())


def test_allow_patterns_cover_the_layouts_and_leave_the_rest(tiny_model_dir, tiny_codec_dir):
    for f in tiny_model_dir.rglob("*"):
        if f.is_file():
            assert _matches(f.relative_to(tiny_model_dir).as_posix(), hub.ALLOW_PATTERNS), f
    for rel in [
        *checkpoint.PT_FILES,
        checkpoint.GLOBAL_CMVN.as_posix(),
        hub.INDEX_FILE,
        "model-00001-of-00071.safetensors",
    ]:
        assert _matches(rel, hub.ALLOW_PATTERNS), rel
    assert hub._model_config_files() >= {
        checkpoint.VISION_CONFIG.as_posix(),
        checkpoint.CODEC_CONFIG.as_posix(),
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert not _matches("original/consolidated.pth", hub.ALLOW_PATTERNS)
    for f in tiny_codec_dir.rglob("*"):
        if f.is_file():
            assert _matches(f.relative_to(tiny_codec_dir).as_posix(), hub.CODEC_ALLOW_PATTERNS), f
    for rel in (codec.ENCODER_CKPT.as_posix(), codec.ENCODER_CMVN.as_posix(), codec.DECODER_16K):
        assert _matches(rel, hub.CODEC_ALLOW_PATTERNS)
    for rel in (
        "ckpts/LongCatAudioCodec_decoder_24k_4codebooks.pt",
        "ckpts/LongCatAudioCodec_decoder_24k_2codebooks.pt",
        "networks/semantic_codec.py",
    ):
        assert not _matches(rel, hub.CODEC_ALLOW_PATTERNS), rel


def test_weights_report_totals_both_repos():
    report = hub.WeightsReport(
        path="/m",
        source="org/m",
        revision="a" * 40,
        downloaded=True,
        files=3,
        bytes_total=30,
        bytes_downloaded=20,
        damaged=["x.pt"],
        codec_path="/c",
        codec_source="org/c",
        codec_revision="b" * 40,
        codec=hub.DownloadTally(files=2, bytes_total=5, bytes_downloaded=5, damaged=["ckpts/e.pt"]),
    )
    total = report.total()
    assert (total.files, total.bytes_total, total.bytes_downloaded) == (5, 35, 25)
    assert total.damaged == ["model.source:x.pt", "model.codec_source:ckpts/e.pt"]
    assert hub.WeightsReport.model_validate_json(report.model_dump_json()) == report


def test_hf_transfer_warns_once(tmp_path, caplog, monkeypatch):
    hub._warn_hf_transfer_once.cache_clear()
    monkeypatch.setattr(hub, "is_local_source", lambda source: False)
    s = Settings(hf_transfer_requested=True, hf_endpoint="http://127.0.0.1:9")  # nothing listens on port 9
    cfg = ModelConfig(source="org/x", codec_source="org/c", cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="vss_core.hub"):
        for _ in range(2):
            with pytest.raises(HubError):  # nothing answers: the download fails, after the warning
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
    assert (
        "upload.enabled=false" in hub.upload_adapter(tmp_path, UploadConfig(enabled=False, repo_id="me/x"), s).message
    )


def test_redaction_never_lets_the_token_through():
    from vss_core.errors import HubError

    s = Settings(hf_token=SecretStr("hf_SECRET"), hf_token_source="environment variable HF_TOKEN")
    err = hub._redacted(HubError("server echoed hf_SECRET back"), s)
    assert "hf_SECRET" not in str(err) and "***" in str(err)


def test_an_unreadable_or_non_mapping_codec_config_is_a_problem_named_by_its_path(tmp_path):
    bad = tmp_path / "config.yaml"
    for text, expected in [("a: [1, 2", "not readable YAML"), ("- just\n- a list\n", "must hold a YAML mapping")]:
        bad.write_text(text)
        problems: list[str] = []
        hub._check_decoder(bad, set(), None, None, problems)
        assert len(problems) == 1 and problems[0].startswith(f"{bad}: {expected}")
    bad.write_text("codec_config: 3\n")
    problems = []
    hub._check_decoder(bad, set(), None, None, problems)
    assert problems == [f"{bad}: must hold a YAML mapping `codec_config:` (the speech decoder's config)"]


RETRIED = {
    "HTTP 503": lambda: hub_http_error(503),
    "HTTP 500": lambda: hub_http_error(500),
    "HTTP 429": lambda: hub_http_error(429),
    "httpx ConnectError": connect_error,
    "httpx ReadTimeout": lambda: httpx2.ReadTimeout("read timed out", request=httpx2.Request("GET", URL)),
    "ConnectionError": lambda: ConnectionResetError("reset by peer"),
    "TimeoutError": lambda: TimeoutError("timed out"),
    "requests ConnectionError": lambda: requests.ConnectionError("refused"),
    "HubError marked retryable": lambda: hub_error(True),
}


NOT_RETRIED = {
    "TypeError": lambda: TypeError("unsupported operand"),
    "bad repo id (HFValidationError)": bad_repo_id_error,
    "HTTP 404": lambda: hub_http_error(404),
    "HTTP 401": lambda: hub_http_error(401),
    "HTTP 400": lambda: hub_http_error(400),
    "httpx ProxyError": lambda: httpx2.ProxyError("bad proxy", request=httpx2.Request("GET", URL)),
    "HubError not retryable": lambda: hub_error(False),
    "refused file name (ModelError)": lambda: ModelError("model.source org/x@main: '../x' points outside"),
    "ConfigError": lambda: ConfigError("bad"),
    "DatasetError": lambda: DatasetError("bad"),
    "ValueError": lambda: ValueError("bad"),
    "FileNotFoundError": lambda: FileNotFoundError("gone"),
}


@pytest.mark.parametrize("name", RETRIED)
def test_transient_failures_are_retried(name):
    exc = RETRIED[name]()
    assert hub.is_transient(exc) and stages.is_retryable(exc)


@pytest.mark.parametrize("name", NOT_RETRIED)
def test_everything_else_is_not_retried(name):
    exc = NOT_RETRIED[name]()
    assert not hub.is_transient(exc) and not stages.is_retryable(exc)


def test_hub_retries_a_transient_call_alone_and_nothing_else():
    sleeps, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise hub_http_error(503)
        return "ok"

    assert hub._retrying(flaky, "model info", 5, sleeps.append) == "ok" and sleeps == [2.0, 4.0]
    for make in (lambda: TypeError("bug"), bad_repo_id_error, lambda: hub_http_error(404)):
        calls.clear()

        def failing():
            calls.append(1)
            raise make()

        with pytest.raises((TypeError, ValueError, HfHubHTTPError)):  # the error itself, on the first try
            hub._retrying(failing, "x", 5, sleeps.append)
        assert len(calls) == 1


@pytest.mark.parametrize("name", ["path", "../x", "/abs/x", "a/../../x", "a\\..\\x", "C:/x", "a//b", "./x", ""])
def test_hub_file_names_must_stay_inside(name):
    assert hub._safe_relative(name) is (name == "path")
