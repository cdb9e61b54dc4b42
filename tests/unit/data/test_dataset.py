"""Prepared samples read back lazily (vss_core.data.dataset, issue 14 item 1): uint8 frames decoded
bit-identically, one file read per item, problems found at open or at read naming the file, and the
rank sampler giving every rank the same micro batches a DataLoader with workers delivers; `load_prepared`
checks every shape and lists every bad file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers import prepare_all, uncached_config
from vss_core import data, demo, model
from vss_core.config import DataConfig
from vss_core.data import dataset as ds
from vss_core.errors import DatasetError
from vss_core.train import _collate_indexed


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, tiny_codec_dir):
    root = tmp_path_factory.mktemp("ds") / "train"
    demo.write_demo_dataset(root, samples=3, seconds=2.0)
    cfg = DataConfig(root=str(root), video_frames=4, audio_seconds=2.0, workers=1, validation_cache=None)
    report = data.validate_dataset(cfg)
    out = root.parent / "prepared"
    data.prepare_dataset(report.samples, cfg, tiny_model_dir, tiny_codec_dir, out)
    return root, cfg, out


def _copy(prepared, tmp_path):
    dst = tmp_path / "prep"
    shutil.copytree(prepared[2], dst)
    return dst


def test_frames_are_stored_as_uint8_and_decode_bit_identically(prepared, tiny_model_dir):
    root, cfg, out = prepared
    raw = torch.load(out / "01.pt", weights_only=True)
    assert raw["pixel_values"].dtype == torch.uint8
    # what inference prepares (normalised in one go) == what a training file decodes to, bit for bit
    prompt = data.prepare_inputs(root / "01", cfg, tiny_model_dir)
    decoded = data.PreparedSamples(out)[0]
    assert decoded["pixel_values"].dtype == torch.float32
    assert torch.equal(decoded["pixel_values"], prompt["pixel_values"])
    # and against the official formula written out here: (x / 255 - mean) / std per channel
    vision = model.CheckpointConfigs(tiny_model_dir).vision
    x = raw["pixel_values"].numpy().reshape(-1, 3, 2 * 14 * 14).astype(np.float64) / 255
    mean = np.asarray(vision.image_mean)[None, :, None]
    std = np.asarray(vision.image_std)[None, :, None]
    ref = torch.from_numpy(((x - mean) / std).reshape(raw["pixel_values"].shape[0], -1))
    assert torch.allclose(decoded["pixel_values"].double(), ref, atol=1e-6)
    assert set(decoded) >= {"audio_features", "codes", "input_ids"} and "pixel_mean" not in decoded


def test_opening_reads_no_sample_and_each_item_reads_one(prepared, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kw: loads.append(str(path)) or real(path, **kw))
    samples = data.PreparedSamples(prepared[2])
    assert len(samples) == 3 and samples.names == ["01", "02", "03"] and loads == []
    samples[1]
    assert loads == [str(prepared[2] / "02.pt")]
    only = data.PreparedSamples(prepared[2], only={"03"})
    assert only.names == ["03"] and len(only) == 1


def test_missing_and_resized_files_are_all_named_at_open(prepared, tmp_path):
    prep = _copy(prepared, tmp_path)
    (prep / "01.pt").unlink()
    with open(prep / "02.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(DatasetError) as err:
        data.PreparedSamples(prep)
    msg = str(err.value)
    assert f"{prep / '01.pt'} is missing" in msg and f"{prep / '02.pt'} is" in msg and "prepared as" in msg
    assert "Prepare the dataset again" in msg


def test_a_file_swapped_for_another_fails_when_read_naming_it(prepared, tmp_path):
    prep = _copy(prepared, tmp_path)
    shutil.copy(prep / "01.pt", prep / "02.pt")  # same size (same shapes), other key
    samples = data.PreparedSamples(prep)
    samples[0]
    with pytest.raises(DatasetError) as err:
        samples[1]
    assert "prepared sample 02" in str(err.value) and "was made with other inputs or settings" in str(err.value)
    with pytest.raises(DatasetError, match="02.pt"):
        data.load_prepared(prep)


def test_an_old_format_manifest_is_refused(prepared, tmp_path):
    prep = _copy(prepared, tmp_path)
    manifest = json.loads((prep / data.MANIFEST).read_text())
    (prep / data.MANIFEST).write_text(json.dumps(manifest | {"format": 4}))
    with pytest.raises(DatasetError, match="format 4, this vss reads"):
        data.PreparedSamples(prep)


def test_rank_batches_match_the_order_and_resume_mid_epoch():
    sampler = data.RankBatches(10, rank=1, world_size=2, micro_batch=2, micro_batches=4, seed=7, epochs=4)
    sampler.start(epoch=3)
    full = list(sampler)
    order = data.rank_order(10, 3, 7, 1, 2, length=8)
    assert full == [order[0:2], order[2:4], order[4:6], order[6:8]] and len(sampler) == 4
    sampler.start(epoch=3, micro=2)
    assert list(sampler) == full[2:] and len(sampler) == 2
    ranks = [data.RankBatches(5, rank=r, world_size=2, micro_batch=1, micro_batches=3, seed=0) for r in (0, 1)]
    assert [len(list(r)) for r in ranks] == [3, 3]  # every rank the same number of micro batches
    # across epochs in one pass: a resume in epoch 1 at micro 1 reads the rest of 1, then all of 2
    runs = data.RankBatches(10, rank=0, world_size=2, micro_batch=2, micro_batches=2, seed=7, epochs=3)
    runs.start(epoch=1, micro=1)
    epoch = [data.rank_order(10, e, 7, 0, 2, length=4) for e in (1, 2)]
    assert list(runs) == [epoch[0][2:4], epoch[1][0:2], epoch[1][2:4]] and len(runs) == 3


def test_a_loader_with_workers_delivers_the_sampler_order(prepared):
    samples = data.PreparedSamples(prepared[2])
    sampler = data.RankBatches(len(samples), rank=0, world_size=1, micro_batch=2, micro_batches=3, seed=1, epochs=2)
    loader = torch.utils.data.DataLoader(
        ds.Indexed(samples),
        batch_sampler=sampler,
        collate_fn=_collate_indexed,
        num_workers=2,
        prefetch_factor=1,
        persistent_workers=True,
    )
    for epoch in (0, 1):  # persistent workers, iterated again from another start
        sampler.start(epoch)
        got = list(loader)
        expected = list(sampler)
        assert [indices for indices, _ in got] == expected and len(got) == 3 * (2 - epoch)
        for indices, packed in got:
            assert isinstance(packed, data.Packed)  # made in a worker: one buffer to hand over
            batch, ref = packed.unpack(), model.collate([samples[i] for i in indices])
            assert batch.keys() == ref.keys()
            assert all(batch[k].dtype == ref[k].dtype and torch.equal(batch[k], ref[k]) for k in ref)


def test_load_checks_every_shape_and_lists_every_bad_file(dataset_of_two, tiny_model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    prepare_all(dataset_of_two, uncached_config(dataset_of_two), tiny_model_dir, tiny_codec_dir, out)
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


def test_load_prepared_without_manifest_raises(tmp_path):
    with pytest.raises(DatasetError, match="manifest.json does not exist"):
        data.load_prepared(tmp_path)
