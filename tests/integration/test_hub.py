"""Weights in, adapter out: the real huggingface_hub client against the project's Hub server on 127.0.0.1.

The server (tests/hubserver) counts the bytes it serves per file, so "not fetched again" is measured on the
wire. It never advertises Xet, so downloads take the client's plain HTTP path.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.hubserver import HubServer
from tests.hubserver.kill import download_and_kill
from vss_core import hub
from vss_core.config import ModelConfig, UploadConfig
from vss_core.errors import HubError, ModelError, PreflightError
from vss_core.settings import Settings

pytestmark = pytest.mark.integration

REPO = "org/tiny-omni"
PRIVATE = "org/private-omni"
BIG = "audio_codec/big_dummy.bin"  # matches ALLOW_PATTERNS; LFS-stored (>= 10 MB)
BIG_SIZE = 24 << 20
UNWANTED = "original/consolidated.pth"  # matches no allow pattern: must never be fetched
WRITE_TOKEN = "hf_test_write_SECRETVALUE_1234567890"
READ_TOKEN = "hf_test_read_SECRETVALUE_0987654321"
BAD_TOKEN = "hf_test_bad_SECRETVALUE_5555555555"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    big = (hashlib.sha256(b"vss").digest() * (BIG_SIZE // 32))[:BIG_SIZE]
    with HubServer(tokens={WRITE_TOKEN: "write", READ_TOKEN: "read"}) as srv:
        srv.add_repo_from_dir(REPO, tiny_model_dir, extra={BIG: big, UNWANTED: b"u" * 500_000})
        srv.add_repo_from_dir(PRIVATE, tiny_model_dir, private=True)
        yield srv


@pytest.fixture()
def hubsrv(server):
    server.reset_counters()
    server.faults.fail.clear()
    server.faults.drop_after.clear()
    server.faults.pause_after.clear()
    server.faults.release.set()
    return server


def settings_for(srv: HubServer, token: str | None = None, source: str = "environment variable HF_TOKEN") -> Settings:
    return Settings(hf_endpoint=srv.url, hf_token=SecretStr(token) if token else None,
                    hf_token_source=source if token else None)


def model_cfg(cache: Path, **kw) -> ModelConfig:
    return ModelConfig(source=REPO, cache_dir=str(cache), **kw)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _wanted(srv: HubServer, repo: str = REPO) -> dict[str, int]:
    files = srv.head(repo).files
    return {p: b.size for p, b in files.items() if p not in (UNWANTED, ".gitattributes")}


def _no_partials(cache: Path) -> bool:
    return not list(cache.rglob("*.incomplete"))


# --- download -------------------------------------------------------------------------------------


def test_full_download_pins_commit_and_fetches_only_needed_files(hubsrv, tmp_path, tiny_model_dir):
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))

    head = hubsrv.head(REPO)
    assert report.revision == head.oid and report.requested_revision == "main"
    assert Path(report.path) == tmp_path / "models--org--tiny-omni" / "snapshots" / head.oid
    assert (tmp_path / "models--org--tiny-omni" / "refs" / "main").read_text() == head.oid
    served = hubsrv.served_by_file(REPO)
    assert served == _wanted(hubsrv), "each needed file served exactly once, nothing else"
    assert UNWANTED not in served
    assert report.bytes_downloaded == report.bytes_total == sum(_wanted(hubsrv).values())
    for f in tiny_model_dir.rglob("*"):
        if f.is_file():
            assert (Path(report.path) / f.relative_to(tiny_model_dir)).read_bytes() == f.read_bytes()

    hubsrv.reset_counters()
    again = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert hubsrv.served_bytes(REPO) == 0
    assert again.bytes_cached == again.bytes_total and again.files_fetched == 0


def test_kill_mid_file_then_vss_resumes_it(hubsrv, tmp_path):
    pause_at = 12 * (1 << 20) + 12_345
    before = download_and_kill(hubsrv, "vss", REPO, tmp_path, BIG, pause_at)
    assert before >= pause_at

    hubsrv.reset_counters()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    served = hubsrv.served_by_file(REPO)
    assert set(served) == {BIG}, f"completed files must not be fetched again: {served}"
    refetched = before + served[BIG] - BIG_SIZE
    print(f"\nkill at {before} B of a {BIG_SIZE} B file: vss re-fetched {refetched} B "
          f"({refetched / BIG_SIZE:.2%} of the file); resumed {report.bytes_resumed} B")
    assert refetched <= hub.STREAM_CHUNK, "a kill costs at most the chunk in flight"
    assert report.bytes_resumed >= pause_at - hub.STREAM_CHUNK
    assert report.bytes_downloaded == served[BIG]
    assert hashlib.sha256((Path(report.path) / BIG).read_bytes()).hexdigest() == hubsrv.head(REPO).files[BIG].sha256
    assert _no_partials(tmp_path)


def test_kill_mid_file_plain_snapshot_download_restarts_and_vss_cleans_up(hubsrv, tmp_path):
    """The baseline vss improves on: huggingface_hub restarts a killed file from byte 0 and orphans its partial."""
    import huggingface_hub as hf

    pause_at = 12 * (1 << 20) + 12_345
    before = download_and_kill(hubsrv, "plain", REPO, tmp_path, BIG, pause_at)
    orphans = list(tmp_path.rglob("*.incomplete"))
    assert len(orphans) == 1 and orphans[0].stat().st_size == 10 << 20  # huggingface_hub writes 10 MB at a time

    hubsrv.reset_counters()
    hf.snapshot_download(REPO, cache_dir=tmp_path, endpoint=hubsrv.url, token=False, allow_patterns=hub.ALLOW_PATTERNS)
    served = hubsrv.served_by_file(REPO)
    assert served == {BIG: BIG_SIZE}, "huggingface_hub keeps completed files but restarts the killed one"
    refetched = before + served[BIG] - BIG_SIZE
    print(f"\nkill at {before} B of a {BIG_SIZE} B file: plain snapshot_download re-fetched {refetched} B "
          f"({refetched / BIG_SIZE:.2%} of the file)")
    assert refetched == before
    assert orphans[0].exists(), "and leaves the partial file behind"

    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert report.orphans_removed == 1 and report.bytes_refetched == 10 << 20
    assert _no_partials(tmp_path)


def test_vss_adopts_partial_left_by_huggingface_hub(hubsrv, tmp_path):
    pause_at = 12 * (1 << 20) + 12_345
    download_and_kill(hubsrv, "plain", REPO, tmp_path, BIG, pause_at)

    hubsrv.reset_counters()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert hubsrv.served_by_file(REPO) == {BIG: BIG_SIZE - (10 << 20)}
    assert report.bytes_resumed == 10 << 20 and report.bytes_refetched == 0
    assert _no_partials(tmp_path)


def test_damaged_files_are_detected_and_fetched_again(hubsrv, tmp_path):
    first = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    snap = Path(first.path)
    big = snap / BIG
    data = bytearray(big.read_bytes())
    data[5_000_000] ^= 0xFF  # same size, one flipped byte: only a hash can tell
    big.resolve().write_bytes(bytes(data))
    small = (snap / "vision" / "vision_model.pt").resolve()
    small.write_bytes(small.read_bytes()[:-10])  # truncated: the size check tells

    hubsrv.reset_counters()
    by_size = hub.download_weights(model_cfg(tmp_path, verify="size"), settings_for(hubsrv))
    assert by_size.damaged == ["vision/vision_model.pt"]
    assert hubsrv.served_by_file(REPO) == {"vision/vision_model.pt": _wanted(hubsrv)["vision/vision_model.pt"]}

    hubsrv.reset_counters()
    full = hub.download_weights(model_cfg(tmp_path, verify="full"), settings_for(hubsrv))
    assert full.damaged == [BIG]
    assert hubsrv.served_by_file(REPO) == {BIG: BIG_SIZE}
    assert hashlib.sha256(big.read_bytes()).hexdigest() == hubsrv.head(REPO).files[BIG].sha256


def test_dropped_connections_are_resumed_in_process(hubsrv, tmp_path):
    hubsrv.faults.drop_after[BIG] = 5 * (1 << 20) + 777  # vss's own ranged GET
    hubsrv.faults.drop_after["vision/vision_model.pt"] = 100_000  # huggingface_hub's http_get
    sleeps = Sleeps()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv), sleep=sleeps)
    served = hubsrv.served_by_file(REPO)
    assert BIG_SIZE <= served[BIG] <= BIG_SIZE + hub.STREAM_CHUNK
    # huggingface_hub resumes too, but from what it has written: it writes 10 MB at a time, so here from byte 0.
    assert served["vision/vision_model.pt"] == _wanted(hubsrv)["vision/vision_model.pt"] + 100_000
    assert sleeps == [1.0]
    assert report.bytes_total == sum(_wanted(hubsrv).values())


def test_transient_5xx_on_metadata_is_retried(hubsrv, tmp_path):
    hubsrv.faults.fail_route("model_info", status=503, times=2)
    sleeps = Sleeps()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv), sleep=sleeps)
    assert sleeps == [2.0, 4.0] and report.revision == hubsrv.head(REPO).oid


def test_disk_check_uses_hub_sizes_minus_cache(hubsrv, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_free_bytes", lambda path: 1_000_000)  # a nearly full disk cannot exist here
    need = hub._fmt(sum(_wanted(hubsrv).values()))
    with pytest.raises(PreflightError, match=rf"needs {need} more in .* only 1\.0 MB is free"):
        hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert hubsrv.served_by_file(REPO) == {}, "nothing fetched before the check"
    monkeypatch.undo()
    hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    monkeypatch.setattr(hub, "_free_bytes", lambda path: 0)
    hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))  # all cached: needs nothing


def test_missing_repo_and_revision_are_config_errors(hubsrv, tmp_path):
    with pytest.raises(ModelError, match="org/nope@main: the repo was not found"):
        hub.download_weights(ModelConfig(source="org/nope", cache_dir=str(tmp_path)), settings_for(hubsrv))
    with pytest.raises(ModelError, match="revision does not exist"):
        hub.download_weights(model_cfg(tmp_path, revision="v9"), settings_for(hubsrv))


def test_private_repo_needs_a_valid_token_and_never_shows_it(hubsrv, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = ModelConfig(source=PRIVATE, cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match="private/gated"):
        hub.download_weights(cfg, settings_for(hubsrv))
    with pytest.raises(HubError, match="refused the token from environment variable HF_TOKEN") as bad:
        hub.download_weights(cfg, settings_for(hubsrv, BAD_TOKEN))
    assert bad.value.retryable is False
    report = hub.download_weights(cfg, settings_for(hubsrv, READ_TOKEN))
    assert report.revision == hubsrv.head(PRIVATE).oid
    for secret in (BAD_TOKEN, READ_TOKEN):
        assert secret not in str(bad.value) and secret not in caplog.text


# --- upload ---------------------------------------------------------------------------------------


@pytest.fixture()
def adapter(tmp_path) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 16, "lora_alpha": 32}')
    (d / "adapter_model.safetensors").write_bytes(os.urandom(300_000))
    return d


def test_upload_creates_private_repo_then_reupload_makes_no_duplicate_commit(hubsrv, adapter, caplog):
    caplog.set_level(logging.DEBUG)
    repo = "org/adapter-a"
    cfg = UploadConfig(repo_id=repo)
    s = settings_for(hubsrv, WRITE_TOKEN)

    first = hub.upload_adapter(adapter, cfg, s)
    head = hubsrv.head(repo)
    assert first.uploaded and first.new_commit and first.commit == head.oid
    assert first.url == f"{hubsrv.url}/{repo}/commit/{head.oid}"
    assert hubsrv.repos[repo].private is True
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(head.files)
    assert "library_name: peft" in (adapter / "README.md").read_text()
    n_commits = len(hubsrv.repos[repo].commits)

    same = hub.upload_adapter(adapter, cfg, s)
    assert same.uploaded and not same.new_commit and same.commit == head.oid
    assert len(hubsrv.repos[repo].commits) == n_commits

    (adapter / "adapter_config.json").write_text('{"r": 16, "lora_alpha": 64}')
    second = hub.upload_adapter(adapter, cfg, s)
    assert second.new_commit and second.commit == hubsrv.head(repo).oid != head.oid
    assert len(hubsrv.repos[repo].commits) == n_commits + 1
    assert WRITE_TOKEN not in caplog.text and WRITE_TOKEN not in first.model_dump_json()


def test_upload_public_when_configured(hubsrv, adapter):
    hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-public", private=False),
                       settings_for(hubsrv, WRITE_TOKEN))
    assert hubsrv.repos["org/adapter-public"].private is False


def test_upload_retries_5xx_then_succeeds(hubsrv, adapter):
    hubsrv.faults.fail_route("create_repo", status=502, times=2)
    sleeps = Sleeps()
    report = hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-b"), settings_for(hubsrv, WRITE_TOKEN),
                                sleep=sleeps)
    assert report.uploaded and sleeps == [2.0, 4.0]


def test_upload_survives_a_dropped_commit(hubsrv, adapter):
    hubsrv.faults.fail_route("commit", status=503, times=1)  # huggingface_hub retries its commit POST itself
    report = hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-c"), settings_for(hubsrv, WRITE_TOKEN))
    assert report.uploaded and report.commit == hubsrv.head("org/adapter-c").oid


def test_upload_gives_up_after_max_attempts(hubsrv, adapter):
    hubsrv.faults.fail_route("create_repo", status=503, times=99)
    sleeps = Sleeps()
    with pytest.raises(HubError, match=r"upload.repo_id org/adapter-d: the Hub .* failed: HTTP 503") as err:
        hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-d", max_attempts=3),
                           settings_for(hubsrv, WRITE_TOKEN), sleep=sleeps)
    assert sleeps == [2.0, 4.0] and err.value.retryable
    assert str(adapter) in str(err.value)


def test_upload_401_is_clear_and_never_shows_the_token(hubsrv, adapter, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubError) as err:
        hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-e"),
                           settings_for(hubsrv, BAD_TOKEN, source="token file /root/.cache/huggingface/token"))
    msg = str(err.value)
    assert "org/adapter-e" in msg and "token file /root/.cache/huggingface/token" in msg and "HTTP 401" in msg
    assert err.value.retryable is False
    assert BAD_TOKEN not in msg and BAD_TOKEN not in caplog.text
    assert BAD_TOKEN not in repr(err.value.__cause__) and err.value.__suppress_context__


def test_upload_with_read_token_is_refused_with_the_fix(hubsrv, adapter):
    with pytest.raises(HubError, match="lacks write access") as err:
        hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-f"), settings_for(hubsrv, READ_TOKEN))
    assert READ_TOKEN not in str(err.value)


def test_upload_without_token_is_skipped_and_keeps_the_adapter(hubsrv, adapter):
    report = hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-g"), settings_for(hubsrv))
    assert not report.uploaded and "no Hub token" in report.message and str(adapter) in report.message
    assert "org/adapter-g" not in hubsrv.repos and (adapter / "adapter_model.safetensors").is_file()
