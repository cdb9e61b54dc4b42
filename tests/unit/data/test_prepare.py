"""Prepared data belongs to its settings (issue 13 item 4), and what touches it at the edges (item 5):
folders keyed by every setting that shapes a file, shapes checked on load, a lock around writing,
stale temp files cleaned, and a non-finite loss stopping training with the sample named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.helpers import data_config
from vss_core import data, demo, train
from vss_core.data import prepare as data_prepare
from vss_core.errors import DatasetError, TrainingError


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "train"
    demo.write_demo_dataset(root, samples=2, seconds=2.0)
    return root


def _cfg(root, **kw):
    return data_config(root, **({"validation_cache": None} | kw))


def _prepare(root, cfg, model_dir, codec_dir, out, **kw):
    report = data.validate_dataset(cfg)
    return data.prepare_dataset(report.samples, cfg, model_dir, codec_dir, out, **kw)


def test_two_preparations_with_different_settings_never_mix(dataset, tiny_model_dir, tiny_codec_dir, tmp_path):
    base = tmp_path / "prepared"
    fingerprint = data.validate_dataset(_cfg(dataset)).fingerprint
    eight, four = _cfg(dataset, video_frames=8), _cfg(dataset, video_frames=4)
    dir8 = data.prepared_dir(base, fingerprint, tiny_model_dir, tiny_codec_dir, eight)
    dir4 = data.prepared_dir(base, fingerprint, tiny_model_dir, tiny_codec_dir, four)
    assert dir8 != dir4 and dir8.name.startswith(fingerprint[:16]) and dir4.parent == base
    assert dir8 == data.prepared_dir(base, fingerprint, tiny_model_dir, tiny_codec_dir, _cfg(dataset, video_frames=8))
    assert (
        data.prepared_dir(base, fingerprint, tiny_model_dir, tiny_codec_dir, _cfg(dataset, audio_seconds=1.0)) != dir8
    )

    _prepare(dataset, eight, tiny_model_dir, tiny_codec_dir, dir8)
    _prepare(dataset, four, tiny_model_dir, tiny_codec_dir, dir4)
    frames8 = [int(s["grid_shapes"][:, 0].sum()) for s in data.load_prepared(dir8)]
    frames4 = [int(s["grid_shapes"][:, 0].sum()) for s in data.load_prepared(dir4)]
    assert frames8 == [4, 4] and frames4 == [2, 2]  # frame pairs: 8 frames -> 4 temporal patches

    # A file of the other preparation slipped into a folder is caught on load, naming the file.
    shutil.copy(dir4 / "01.pt", dir8 / "01.pt")
    with pytest.raises(DatasetError) as err:
        data.load_prepared(dir8)
    msg = str(err.value)
    assert f"{dir8 / '01.pt'}: was made with other inputs or settings" in msg and "does not match the manifest" in msg
    assert "02.pt" not in msg and "Prepare the dataset again" in msg

    # Preparing other settings into the same folder replaces it whole: never a manifest of both.
    _prepare(dataset, four, tiny_model_dir, tiny_codec_dir, dir8)
    assert [int(s["grid_shapes"][:, 0].sum()) for s in data.load_prepared(dir8)] == [2, 2]
    assert json.loads((dir8 / "manifest.json").read_text())["settings_key"] == data.prepared_key(
        tiny_model_dir, tiny_codec_dir, four
    )


def test_load_checks_every_shape_and_lists_every_bad_file(dataset, tiny_model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    _prepare(dataset, _cfg(dataset), tiny_model_dir, tiny_codec_dir, out)
    one, two = out / "01.pt", out / "02.pt"
    item = torch.load(one, weights_only=True)
    torch.save(
        {**item, "pixel_values": item["pixel_values"][:-3], "audio_features": item["audio_features"][:, :-1]}, one
    )
    item = torch.load(two, weights_only=True)
    del item["codes"]
    torch.save({**item, "input_ids": item["input_ids"][:-1]}, two)
    with pytest.raises(DatasetError) as err:
        data.load_prepared(out)
    msg = str(err.value)
    assert f"{one}: pixel_values has" in msg and "rows but grid_shapes describe" in msg
    assert "audio_features is" in msg and "wide, the manifest says" in msg
    assert f"{two}: lacks codes" in msg

    item = {**torch.load(two, weights_only=True), "codes": torch.zeros(3, 4, dtype=torch.int64)}
    torch.save({**item, "input_ids": item["input_ids"][:-1]}, two)
    with pytest.raises(DatasetError, match=r"02.pt: sequence tensors differ in length \(input_ids"):
        data.load_prepared(out)


def test_a_second_preparation_of_a_folder_waits_for_the_lock_or_fails_clearly(
    dataset, tiny_model_dir, tiny_codec_dir, tmp_path
):
    out = tmp_path / "prep"
    out.mkdir()
    cfg = _cfg(dataset)
    with data_prepare._prepare_lock(out, None):
        with pytest.raises(DatasetError) as err:
            _prepare(dataset, cfg, tiny_model_dir, tiny_codec_dir, out, lock_timeout_s=0.3)
        assert f"prepared data folder {out} is being written by pid {os.getpid()}" in str(err.value)
        assert not (out / "manifest.json").exists()  # nothing was written beside the holder

    held = threading.Event()

    def hold_briefly():
        with data_prepare._prepare_lock(out, None):
            held.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait()
    started = time.monotonic()
    prepared = _prepare(dataset, cfg, tiny_model_dir, tiny_codec_dir, out)  # waits, then prepares
    holder.join()
    assert time.monotonic() - started >= 0.9 and prepared.samples == ["01", "02"]


def test_stale_temp_files_of_dead_preparations_are_cleaned(dataset, tiny_model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [out / f".01.pt.tmp-{dead_pid}", out / f".manifest.json.tmp-{dead_pid}-140000"]
    live = out / f".02.pt.tmp-{os.getppid()}"  # a live writer's file is left alone
    for path in [*stale, live]:
        path.write_bytes(b"half a file")
    _prepare(dataset, _cfg(dataset), tiny_model_dir, tiny_codec_dir, out)
    assert not any(p.exists() for p in stale) and live.exists()


def test_a_non_finite_loss_names_the_step_and_the_samples(dataset, tiny_model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    _prepare(dataset, _cfg(dataset), tiny_model_dir, tiny_codec_dir, out)
    names = data.prepared_names(out)
    reduce_calls = []

    def all_reduce(t):  # one rank of two; the other rank (rank 1) found sample 1 bad
        reduce_calls.append(t.clone())
        t[1] += 2

    fine = train.nonfinite_samples(torch.tensor(0.5), [0], rank=0, world=2, micro_batch=1, all_reduce=lambda t: None)
    assert fine == []
    bad = train.nonfinite_samples(
        torch.tensor(float("nan")), [0], rank=0, world=2, micro_batch=1, all_reduce=all_reduce
    )
    assert bad == [0, 1] and reduce_calls[0].tolist() == [1.0, 0.0]
    err = train.nonfinite_loss_error(7, 12, 0, [names[i] for i in bad])
    assert isinstance(err, TrainingError)
    assert "not finite (NaN/Inf) at step 7/12" in str(err) and "sample(s) 01, 02" in str(err)
    assert "no adapter" in str(err)
