"""Weights in, adapter out: the real huggingface_hub client against the project's Hub server on 127.0.0.1.

The server (devtools/hubserver) serves the tiny omni checkpoint (`model.write_tiny_checkpoint`) and the tiny
LongCat-Audio-Codec (`codec.write_tiny_codec`, plus 24 kHz decoders vss must leave on the Hub) as two repos,
and counts the bytes it serves per file, so "not fetched again" is measured on the wire. It never advertises
Xet, so downloads take the client's plain HTTP path.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from devtools.hubserver import Blob, HubServer
from devtools.hubserver.kill import download_and_kill
from vss_core import codec, hardware, hub
from vss_core.codec.decoder import DecoderConfig
from vss_core.config import ModelConfig, UploadConfig
from vss_core.errors import HubError, ModelError, PreflightError
from vss_core.settings import Settings

pytestmark = pytest.mark.integration

REPO = "org/tiny-omni"
CODEC = "org/tiny-codec"
PRIVATE = "org/private-omni"
NO_ENCODER = "org/codec-without-encoder"
GELU = "org/omni-gelu-vision"
# Repos serving a file name outside the snapshot: from <cache>/models--org--x/snapshots/<commit>/ four `..`
# climb to the cache's parent (matches `*.safetensors`, so a vss without the check would fetch and discard it).
DOTDOT, DOTDOT_NAME = "org/omni-dotdot", "../../../../victim.safetensors"
ABSOLUTE, ABSOLUTE_NAME = "org/omni-absolute", "/tmp/vss-absolute-victim/victim.safetensors"
BIG = "audio_codec/big_dummy.bin"  # matches ALLOW_PATTERNS; LFS-stored (>= 10 MB)
BIG_SIZE = 24 << 20
UNWANTED = "original/consolidated.pth"  # matches no allow pattern: must never be fetched
DECODERS_24K = (
    "ckpts/LongCatAudioCodec_decoder_24k_4codebooks.pt",
    "ckpts/LongCatAudioCodec_decoder_24k_2codebooks.pt",
)
WRITE_TOKEN = "hf_test_write_SECRETVALUE_1234567890"
READ_TOKEN = "hf_test_read_SECRETVALUE_0987654321"
BAD_TOKEN = "hf_test_bad_SECRETVALUE_5555555555"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_codec_dir):
    big = (hashlib.sha256(b"vss").digest() * (BIG_SIZE // 32))[:BIG_SIZE]
    with HubServer(tokens={WRITE_TOKEN: "write", READ_TOKEN: "read"}) as srv:
        srv.add_repo_from_dir(REPO, tiny_model_dir, extra={BIG: big, UNWANTED: b"u" * 500_000})
        srv.add_repo_from_dir(
            CODEC,
            tiny_codec_dir,
            extra={**{p: os.urandom(200_000) for p in DECODERS_24K}, "README.md": b"# LongCat-Audio-Codec\n"},
        )
        srv.add_repo_from_dir(PRIVATE, tiny_model_dir, private=True)
        srv.add_repo_from_dir(NO_ENCODER, tiny_codec_dir)
        srv.commit(NO_ENCODER, {codec.ENCODER_CKPT.as_posix(): None}, message="drop the encoder")
        vision = json.loads((tiny_model_dir / "vision" / "config.json").read_text())
        srv.add_repo_from_dir(DOTDOT, tiny_model_dir, extra={DOTDOT_NAME: b"evil" * 10})
        srv.add_repo_from_dir(ABSOLUTE, tiny_model_dir, extra={ABSOLUTE_NAME: b"evil" * 10})
        srv.add_repo_from_dir(GELU, tiny_model_dir)
        srv.commit(
            GELU,
            {"vision/config.json": Blob.from_bytes(json.dumps(dict(vision, hidden_act="GELU")).encode(), lfs=False)},
        )
        yield srv


@pytest.fixture()
def hubsrv(server):
    server.reset_counters()
    server.faults.fail.clear()
    server.faults.drop_after.clear()
    server.faults.pause_after.clear()
    server.faults.corrupt_at.clear()
    server.faults.release.set()
    return server


def settings_for(srv: HubServer, token: str | None = None, source: str = "environment variable HF_TOKEN") -> Settings:
    return Settings(
        hf_endpoint=srv.url, hf_token=SecretStr(token) if token else None, hf_token_source=source if token else None
    )


def model_cfg(cache: Path, **kw) -> ModelConfig:
    return ModelConfig(**{"source": REPO, "codec_source": CODEC, "cache_dir": str(cache), **kw})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _wanted(srv: HubServer, repo: str = REPO, patterns=None) -> dict[str, int]:
    """What vss must fetch of `repo`: every file its allow patterns match."""
    patterns = patterns or (hub.CODEC_ALLOW_PATTERNS if "codec" in repo else hub.ALLOW_PATTERNS)
    files = srv.head(repo).files
    return {p: b.size for p, b in files.items() if any(fnmatch.fnmatch(p, pat) for pat in patterns)}


def _configs(srv: HubServer, repo: str) -> set[str]:
    """The small files preflight reads of `repo`."""
    if "codec" in repo:
        return {p for p in srv.head(repo).files if any(fnmatch.fnmatch(p, pat) for pat in hub.CODEC_CONFIG_PATTERNS)}
    return set(srv.head(repo).files) & hub._model_config_files()


def _no_weight_served(srv: HubServer, *repos: str) -> None:
    for repo in repos:
        served = set(srv.served_by_file(repo))
        assert served <= _configs(srv, repo), (
            f"{repo}: weights served before the refusal: {served - _configs(srv, repo)}"
        )


def _no_partials(cache: Path) -> bool:
    return not list(cache.rglob("*.incomplete"))


# --- download -------------------------------------------------------------------------------------


def test_full_download_pins_both_repos_and_fetches_only_needed_files(hubsrv, tmp_path, tiny_model_dir, tiny_codec_dir):
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))

    for repo, path, revision, requested in (
        (REPO, report.path, report.revision, report.requested_revision),
        (CODEC, report.codec_path, report.codec_revision, report.codec_requested_revision),
    ):
        head = hubsrv.head(repo)
        storage = tmp_path / f"models--{repo.replace('/', '--')}"
        assert revision == head.oid and requested == "main"
        assert Path(path) == storage / "snapshots" / head.oid
        assert (storage / "refs" / "main").read_text() == head.oid
        assert hubsrv.served_by_file(repo) == _wanted(hubsrv, repo), f"{repo}: each needed file once, nothing else"
    assert report.downloaded and report.codec_downloaded and report.codec_source == CODEC
    assert UNWANTED not in hubsrv.served_by_file(REPO)
    assert not set(DECODERS_24K) & set(hubsrv.served_by_file(CODEC)), "the 24 kHz decoders stay on the Hub"
    assert "README.md" in hubsrv.served_by_file(CODEC)
    assert report.bytes_downloaded == report.bytes_total == sum(_wanted(hubsrv, REPO).values())
    assert report.codec.bytes_downloaded == report.codec.bytes_total == sum(_wanted(hubsrv, CODEC).values())
    assert report.total().bytes_downloaded == hubsrv.served_bytes(REPO) + hubsrv.served_bytes(CODEC)
    for src, dst in ((tiny_model_dir, report.path), (tiny_codec_dir, report.codec_path)):
        for f in src.rglob("*"):
            if f.is_file():
                assert (Path(dst) / f.relative_to(src)).read_bytes() == f.read_bytes()
    codec.load_encoder(Path(report.codec_path))  # the downloaded codec loads, every key checked
    assert codec.decoder_files(Path(report.path), Path(report.codec_path)).checkpoint.is_file()

    hubsrv.reset_counters()
    again = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert hubsrv.served_bytes(REPO) == hubsrv.served_bytes(CODEC) == 0
    assert again.total().bytes_cached == again.total().bytes_total and again.total().files_fetched == 0


def test_each_repo_is_pinned_to_its_own_revision(hubsrv, tmp_path, tiny_model_dir, tiny_codec_dir):
    model_repo, codec_repo = "org/omni-pinned", "org/codec-pinned"
    model_v1 = hubsrv.add_repo_from_dir(model_repo, tiny_model_dir)
    hubsrv.repos[model_repo].branches["v1"] = model_v1  # a tag
    codec_v1 = hubsrv.add_repo_from_dir(codec_repo, tiny_codec_dir, extra={"README.md": b"v1\n"})
    model_v2 = hubsrv.commit(
        model_repo,
        {
            "tokenizer_config.json": Blob.from_bytes(
                (tiny_model_dir / "tokenizer_config.json").read_bytes() + b"\n", lfs=False
            )
        },
    )
    codec_v2 = hubsrv.commit(codec_repo, {"README.md": Blob.from_bytes(b"v2\n", lfs=False)})

    old = hub.download_weights(
        model_cfg(tmp_path, source=model_repo, revision="v1", codec_source=codec_repo, codec_revision=codec_v1),
        settings_for(hubsrv),
    )
    assert (old.revision, old.requested_revision) == (model_v1, "v1")
    assert (old.codec_revision, old.codec_requested_revision) == (codec_v1, codec_v1)
    assert (Path(old.codec_path) / "README.md").read_text() == "v1\n"
    assert (tmp_path / "models--org--omni-pinned" / "refs" / "v1").read_text() == model_v1
    assert not (tmp_path / "models--org--codec-pinned" / "refs").exists(), "a commit needs no ref"

    hubsrv.reset_counters()
    new = hub.download_weights(model_cfg(tmp_path, source=model_repo, codec_source=codec_repo), settings_for(hubsrv))
    assert (new.revision, new.codec_revision) == (model_v2, codec_v2)
    assert (Path(new.codec_path) / "README.md").read_text() == "v2\n"
    assert hubsrv.served_by_file(model_repo) == {
        "tokenizer_config.json": _wanted(hubsrv, model_repo)["tokenizer_config.json"]
    }
    assert hubsrv.served_by_file(codec_repo) == {"README.md": 3}, "files unchanged between commits share their blobs"


def test_kill_mid_file_then_vss_resumes_it(hubsrv, tmp_path):
    pause_at = 12 * (1 << 20) + 12_345
    before = download_and_kill(hubsrv, "vss", REPO, tmp_path, BIG, pause_at, codec_repo=CODEC)
    assert before >= pause_at
    assert hubsrv.served_by_file(CODEC) == _wanted(hubsrv, CODEC), "the codec completed before the kill"

    hubsrv.reset_counters()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    served = hubsrv.served_by_file(REPO)
    assert set(served) == {BIG}, f"completed files must not be fetched again: {served}"
    assert hubsrv.served_by_file(CODEC) == {} and report.codec.bytes_cached == report.codec.bytes_total
    refetched = before + served[BIG] - BIG_SIZE
    print(
        f"\nkill at {before} B of a {BIG_SIZE} B file: vss re-fetched {refetched} B "
        f"({refetched / BIG_SIZE:.2%} of the file); resumed {report.bytes_resumed} B"
    )
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
    print(
        f"\nkill at {before} B of a {BIG_SIZE} B file: plain snapshot_download re-fetched {refetched} B "
        f"({refetched / BIG_SIZE:.2%} of the file)"
    )
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
    encoder = (Path(first.codec_path) / codec.ENCODER_CKPT).resolve()
    encoder.write_bytes(encoder.read_bytes()[:-1])

    hubsrv.reset_counters()
    by_size = hub.download_weights(model_cfg(tmp_path, verify="size"), settings_for(hubsrv))
    assert by_size.damaged == ["vision/vision_model.pt"]
    assert by_size.codec.damaged == [codec.ENCODER_CKPT.as_posix()]
    assert hubsrv.served_by_file(REPO) == {"vision/vision_model.pt": _wanted(hubsrv)["vision/vision_model.pt"]}
    assert hubsrv.served_by_file(CODEC) == {codec.ENCODER_CKPT.as_posix(): encoder.stat().st_size}

    hubsrv.reset_counters()
    full = hub.download_weights(model_cfg(tmp_path, verify="full"), settings_for(hubsrv))
    assert full.damaged == [BIG]
    assert hubsrv.served_by_file(REPO) == {BIG: BIG_SIZE}
    assert hashlib.sha256(big.read_bytes()).hexdigest() == hubsrv.head(REPO).files[BIG].sha256


def test_files_are_hashed_as_they_arrive_without_a_second_read(hubsrv, tmp_path, monkeypatch):
    """A byte flipped in transit (same size) is caught by the hash computed while the file streams, under
    the default verify=size, and the file is fetched again; no downloaded large file is read back to hash it."""
    hubsrv.faults.corrupt_at[BIG] = 7_000_001
    reads = []
    real = hub._hash_ok
    monkeypatch.setattr(hub, "_hash_ok", lambda path, f: reads.append((f.path, f.size)) or real(path, f))
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert report.damaged == [BIG]
    assert hubsrv.served_by_file(REPO)[BIG] == 2 * BIG_SIZE, "fetched once damaged, once whole"
    assert hashlib.sha256((Path(report.path) / BIG).read_bytes()).hexdigest() == hubsrv.head(REPO).files[BIG].sha256
    assert all(size < hub.RESUME_MIN_BYTES for _, size in reads), f"a large download was read again: {reads}"
    assert _no_partials(tmp_path)


def test_small_files_damaged_in_transit_are_caught_too(hubsrv, tmp_path):
    small = "vision/config.json"
    size = hubsrv.head(REPO).files[small].size
    hubsrv.faults.corrupt_at[small] = size // 2
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    snap = Path(report.path)
    assert json.loads((snap / small).read_text()) and small in report.damaged


def test_a_file_damaged_on_every_try_fails_naming_it(hubsrv, tmp_path, monkeypatch):
    monkeypatch.setattr(hub._Digest, "matches", lambda self: False)
    with pytest.raises(HubError, match="arrived damaged twice"):
        hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert _no_partials(tmp_path)


def test_a_resumed_file_is_hashed_over_its_kept_bytes(hubsrv, tmp_path):
    pause_at = 12 * (1 << 20) + 12_345
    download_and_kill(hubsrv, "vss", REPO, tmp_path, BIG, pause_at, codec_repo=CODEC)
    blob = next(tmp_path.rglob("*.incomplete"))
    data = bytearray(blob.read_bytes())
    data[1_000] ^= 0xFF  # damaged before the kill: the resumed file must not be trusted
    blob.write_bytes(bytes(data))
    hubsrv.reset_counters()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert report.damaged == [BIG]
    assert hashlib.sha256((Path(report.path) / BIG).read_bytes()).hexdigest() == hubsrv.head(REPO).files[BIG].sha256


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


def test_disk_check_counts_both_repos_minus_cache(hubsrv, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_free_bytes", lambda path: 1_000_000)  # a nearly full disk cannot exist here
    weights = {
        repo: {p: n for p, n in _wanted(hubsrv, repo).items() if p not in _configs(hubsrv, repo)}
        for repo in (REPO, CODEC)
    }
    need = hub._fmt(sum(sum(w.values()) for w in weights.values()))
    with pytest.raises(
        PreflightError,
        match=rf"{REPO}@main .* and {CODEC}@main .* needs {need} more in .* "
        r"only 1\.0 MB is free",
    ):
        hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    _no_weight_served(hubsrv, REPO, CODEC)
    monkeypatch.undo()
    hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    monkeypatch.setattr(hub, "_free_bytes", lambda path: 0)
    hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))  # all cached: needs nothing


def test_missing_repo_and_revision_are_config_errors(hubsrv, tmp_path):
    with pytest.raises(ModelError, match="org/nope@main: the repo was not found"):
        hub.download_weights(model_cfg(tmp_path, source="org/nope"), settings_for(hubsrv))
    with pytest.raises(ModelError, match="revision does not exist. Set model.revision"):
        hub.download_weights(model_cfg(tmp_path, revision="v9"), settings_for(hubsrv))
    with pytest.raises(ModelError) as both:
        hub.download_weights(model_cfg(tmp_path, revision="v9", codec_source="org/no-codec"), settings_for(hubsrv))
    assert "model.revision" in str(
        both.value
    ) and "model.codec_source org/no-codec@main: the repo was not found" in str(both.value), (
        "both problems in one error"
    )
    with pytest.raises(ModelError, match="Set model.codec_revision"):
        hub.download_weights(model_cfg(tmp_path, codec_revision="v9"), settings_for(hubsrv))


def test_codec_without_encoder_is_refused_before_any_weight_byte(hubsrv, tmp_path):
    for call in (hub.model_configs, hub.download_weights):
        with pytest.raises(ModelError) as err:
            call(model_cfg(tmp_path, codec_source=NO_ENCODER), settings_for(hubsrv))
        msg = str(err.value)
        assert f"model.codec_source {NO_ENCODER}@main" in msg and codec.ENCODER_CKPT.as_posix() in msg
        assert "LongCat-Audio-Codec" in msg and "model.codec_source at" in msg  # the fix
        _no_weight_served(hubsrv, REPO, NO_ENCODER)
    assert not (tmp_path / f"models--{NO_ENCODER.replace('/', '--')}" / "refs").exists()


def test_preflight_refuses_a_vision_config_vss_cannot_run(hubsrv, tmp_path):
    for call in (hub.model_configs, hub.download_weights):
        with pytest.raises(ModelError) as err:
            call(model_cfg(tmp_path, source=GELU), settings_for(hubsrv))
        msg = str(err.value)
        assert f"model.source {GELU}@main" in msg and "vision/config.json" in msg
        assert "'hidden_act' = 'GELU'" in msg and "SwiGLU" in msg
        _no_weight_served(hubsrv, GELU, CODEC)


def test_preflight_reads_only_configs_and_gives_the_planner_both_sizes(hubsrv, tmp_path, tiny_model_dir):
    configs_dir, total = hub.model_configs(model_cfg(tmp_path), settings_for(hubsrv))
    assert configs_dir == tmp_path / "models--org--tiny-omni" / "snapshots" / hubsrv.head(REPO).oid
    assert total == sum(_wanted(hubsrv, REPO).values()) + sum(_wanted(hubsrv, CODEC).values())
    assert set(hubsrv.served_by_file(REPO)) == _configs(hubsrv, REPO)
    assert set(hubsrv.served_by_file(CODEC)) == _configs(hubsrv, CODEC)
    # What the planner does with it: the same shape as the checkpoint itself.
    from_hub = hardware.model_shape(model_cfg(tmp_path), configs_dir)
    assert from_hub.model_dump(exclude={"source"}) == hardware.model_shape(
        ModelConfig(source=str(tiny_model_dir))
    ).model_dump(exclude={"source"})

    hubsrv.reset_counters()
    report = hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv))
    assert not set(hubsrv.served_by_file(REPO)) & _configs(hubsrv, REPO), "configs are not fetched twice"
    assert report.total().bytes_total == total


def test_a_decoder_the_checkpoint_names_is_fetched_even_at_24k(hubsrv, tmp_path, tiny_model_dir):
    repo = "org/omni-24k"
    hubsrv.add_repo_from_dir(repo, tiny_model_dir)
    named = tmp_path / "config.yaml"
    codec.write_decoder_config(named, DecoderConfig.tiny("24k"), ckpt_path=DECODERS_24K[0])
    hubsrv.commit(repo, {"audio_codec/config.yaml": Blob.from_file(named, lfs=False)})

    report = hub.download_weights(model_cfg(tmp_path / "cache", source=repo), settings_for(hubsrv))
    served = hubsrv.served_by_file(CODEC)
    assert DECODERS_24K[0] in served and DECODERS_24K[1] not in served
    assert codec.decoder_files(Path(report.path), Path(report.codec_path)).checkpoint.name == Path(DECODERS_24K[0]).name


def test_a_local_codec_is_used_in_place_next_to_a_hub_model(hubsrv, tmp_path, tiny_codec_dir):
    report = hub.download_weights(model_cfg(tmp_path, codec_source=str(tiny_codec_dir)), settings_for(hubsrv))
    assert report.codec_path == str(tiny_codec_dir.absolute()) and report.codec_revision is None
    assert not report.codec_downloaded and report.codec.bytes_total == 0
    assert report.downloaded and report.revision == hubsrv.head(REPO).oid
    assert hubsrv.served_by_file(CODEC) == {}


def test_private_repo_needs_a_valid_token_and_never_shows_it(hubsrv, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = model_cfg(tmp_path, source=PRIVATE)
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
    hub.upload_adapter(
        adapter, UploadConfig(repo_id="org/adapter-public", private=False), settings_for(hubsrv, WRITE_TOKEN)
    )
    assert hubsrv.repos["org/adapter-public"].private is False


def test_upload_retries_5xx_then_succeeds(hubsrv, adapter):
    hubsrv.faults.fail_route("create_repo", status=502, times=2)
    sleeps = Sleeps()
    report = hub.upload_adapter(
        adapter, UploadConfig(repo_id="org/adapter-b"), settings_for(hubsrv, WRITE_TOKEN), sleep=sleeps
    )
    assert report.uploaded and sleeps == [2.0, 4.0]


def test_upload_survives_a_dropped_commit(hubsrv, adapter):
    hubsrv.faults.fail_route("commit", status=503, times=1)  # huggingface_hub retries its commit POST itself
    report = hub.upload_adapter(adapter, UploadConfig(repo_id="org/adapter-c"), settings_for(hubsrv, WRITE_TOKEN))
    assert report.uploaded and report.commit == hubsrv.head("org/adapter-c").oid


def test_upload_gives_up_after_max_attempts(hubsrv, adapter):
    hubsrv.faults.fail_route("create_repo", status=503, times=99)
    sleeps = Sleeps()
    with pytest.raises(HubError, match=r"upload.repo_id org/adapter-d: the Hub .* failed: HTTP 503") as err:
        hub.upload_adapter(
            adapter,
            UploadConfig(repo_id="org/adapter-d", max_attempts=3),
            settings_for(hubsrv, WRITE_TOKEN),
            sleep=sleeps,
        )
    assert sleeps == [2.0, 4.0] and err.value.retryable
    assert str(adapter) in str(err.value)


def test_upload_401_is_clear_and_never_shows_the_token(hubsrv, adapter, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubError) as err:
        hub.upload_adapter(
            adapter,
            UploadConfig(repo_id="org/adapter-e"),
            settings_for(hubsrv, BAD_TOKEN, source="token file /root/.cache/huggingface/token"),
        )
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


# --- retries and file names the Hub sends -----------------------------------------------------------


@pytest.mark.parametrize("repo, name", [(DOTDOT, DOTDOT_NAME), (ABSOLUTE, ABSOLUTE_NAME)])
def test_a_file_name_outside_the_snapshot_refuses_the_repo_before_any_file(hubsrv, tmp_path, repo, name):
    cache = tmp_path / "cache"
    victim = tmp_path / "victim.safetensors"  # where DOTDOT_NAME points: a file of another size, kept
    victim.write_bytes(b"precious")
    sleeps = Sleeps()
    with pytest.raises(ModelError, match="point outside its directory") as err:
        hub.download_weights(model_cfg(cache, source=repo), settings_for(hubsrv), sleep=sleeps)
    assert repr(name) in str(err.value) and f"model.source {repo}@main" in str(err.value)
    assert err.value.retryable is False and sleeps == []
    assert victim.read_bytes() == b"precious"
    assert not Path(ABSOLUTE_NAME).exists()
    refused = cache / f"models--{repo.replace('/', '--')}"
    assert not refused.exists(), "nothing of the refused repo written, even in the cache"
    assert {p.name for p in tmp_path.iterdir()} <= {"victim.safetensors", "cache"}
    assert hubsrv.served_by_file(repo) == {}, "not a byte fetched of the refused repo"


def test_a_429_is_retried_and_a_404_is_not(hubsrv, tmp_path):
    hubsrv.faults.fail_route("model_info", status=429, times=1)
    sleeps = Sleeps()
    hub.download_weights(model_cfg(tmp_path), settings_for(hubsrv), sleep=sleeps)
    assert sleeps == [2.0]
    sleeps.clear()
    with pytest.raises(ModelError):
        hub.download_weights(model_cfg(tmp_path, source="org/nope"), settings_for(hubsrv), sleep=sleeps)
    assert sleeps == []


def test_a_bad_upload_repo_id_is_not_retried(hubsrv, adapter):
    sleeps = Sleeps()
    with pytest.raises(HubError, match=r"not a valid Hub repo id .* Set upload.repo_id") as err:
        # model_copy skips UploadConfig's own check of the id: the Hub layer refuses it too, without a retry
        bad = UploadConfig(repo_id="org/ok").model_copy(update={"repo_id": "org/../bad name"})
        hub.upload_adapter(adapter, bad, settings_for(hubsrv, WRITE_TOKEN), sleep=sleeps)
    assert err.value.retryable is False and sleeps == []
