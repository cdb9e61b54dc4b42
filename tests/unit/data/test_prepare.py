"""vss_core.data.prepare: samples to model inputs. Preparation writes exact tensors and reuses them
while nothing changed; prepared data belongs to its settings (issue 13 item 4): folders keyed by every
setting that shapes a file, a lock around writing, stale temp files cleaned (item 5); frames are
reached by seeking; other rates, channels, codecs and sizes are converted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import audio_frames, data_config, prepare_all, uncached_config
from vss_core import codec, data, demo
from vss_core.data import prepare as data_prepare
from vss_core.errors import DatasetError, ModelError


def test_two_preparations_with_different_settings_never_mix(dataset_of_two, tiny_model_dir, tiny_codec_dir, tmp_path):
    base = tmp_path / "prepared"
    fingerprint = data.validate_dataset(uncached_config(dataset_of_two)).fingerprint
    eight, four = uncached_config(dataset_of_two, video_frames=8), uncached_config(dataset_of_two, video_frames=4)
    dir8 = data.prepared_dir(base, fingerprint, tiny_model_dir, tiny_codec_dir, eight)
    dir4 = data.prepared_dir(base, fingerprint, tiny_model_dir, tiny_codec_dir, four)
    assert dir8 != dir4 and dir8.name.startswith(fingerprint[:16]) and dir4.parent == base
    assert dir8 == data.prepared_dir(
        base, fingerprint, tiny_model_dir, tiny_codec_dir, uncached_config(dataset_of_two, video_frames=8)
    )
    assert (
        data.prepared_dir(
            base, fingerprint, tiny_model_dir, tiny_codec_dir, uncached_config(dataset_of_two, audio_seconds=1.0)
        )
        != dir8
    )

    prepare_all(dataset_of_two, eight, tiny_model_dir, tiny_codec_dir, dir8)
    prepare_all(dataset_of_two, four, tiny_model_dir, tiny_codec_dir, dir4)
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
    prepare_all(dataset_of_two, four, tiny_model_dir, tiny_codec_dir, dir8)
    assert [int(s["grid_shapes"][:, 0].sum()) for s in data.load_prepared(dir8)] == [2, 2]
    assert json.loads((dir8 / "manifest.json").read_text())["settings_key"] == data.prepared_key(
        tiny_model_dir, tiny_codec_dir, four
    )


def test_a_second_preparation_of_a_folder_waits_for_the_lock_or_fails_clearly(
    dataset_of_two, tiny_model_dir, tiny_codec_dir, tmp_path
):
    out = tmp_path / "prep"
    out.mkdir()
    cfg = uncached_config(dataset_of_two)
    with data_prepare._prepare_lock(out, None):
        with pytest.raises(DatasetError) as err:
            prepare_all(dataset_of_two, cfg, tiny_model_dir, tiny_codec_dir, out, lock_timeout_s=0.3)
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
    prepared = prepare_all(dataset_of_two, cfg, tiny_model_dir, tiny_codec_dir, out)  # waits, then prepares
    holder.join()
    assert time.monotonic() - started >= 0.9 and prepared.samples == ["01", "02"]


def test_stale_temp_files_of_dead_preparations_are_cleaned(dataset_of_two, tiny_model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [out / f".01.pt.tmp-{dead_pid}", out / f".manifest.json.tmp-{dead_pid}-140000"]
    live = out / f".02.pt.tmp-{os.getppid()}"  # a live writer's file is left alone
    for path in [*stale, live]:
        path.write_bytes(b"half a file")
    prepare_all(dataset_of_two, uncached_config(dataset_of_two), tiny_model_dir, tiny_codec_dir, out)
    assert not any(p.exists() for p in stale) and live.exists()


SIZE = 56


def test_prepare_writes_exact_tensors(dataset, model_dir, tiny_codec_dir, tmp_path):
    from vss_core import model, sequence
    from vss_core.model import audio, vision

    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    prepared = data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    assert prepared.samples == ["01", "02", "03"]
    assert prepared.files == [str(tmp_path / "prep" / f"{n}.pt") for n in prepared.samples]
    assert prepared.skipped == [] and prepared.reused == []
    assert (tmp_path / "prep" / "manifest.json").is_file()
    items = data.load_prepared(tmp_path / "prep")
    assert len(items) == 3
    configs = model.CheckpointConfigs(model_dir)
    for item in items:
        assert set(item) == {"pixel_values", "grid_shapes", "audio_features", "codes", *sequence.SEQUENCE_KEYS}
        # 8 frames -> 4 frame pairs, each (1, h, w) patches of 2 x 3 x 14 x 14
        assert item["grid_shapes"].shape == (4, 3) and (item["grid_shapes"][:, 0] == 1).all()
        assert item["pixel_values"].shape == (int(item["grid_shapes"].prod(1).sum()), 1176)
        # 2 s of audio: official features, 1200-d at 80 ms; codec: ceil(32000/960) = 34 frames of 4 codes.
        assert item["audio_features"].shape == (audio_frames(2.0), 1200)
        assert item["codes"].shape == (34, 4) and item["codes"].dtype == torch.int64
        assert torch.isfinite(item["audio_features"]).all() and torch.isfinite(item["pixel_values"]).all()
        # the sequence holds one <|image_pad|> per projected vision token and one <|audio_pad|> per frame
        ids = configs.special_ids
        assert int((item["input_ids"] == ids.image_pad).sum()) == int(item["grid_shapes"].prod(1).sum()) // 2
        assert int((item["input_ids"] == ids.audio_pad).sum()) == item["audio_features"].shape[0]
        assert int((item["codec_labels"][:, 0] == 2).sum()) == 1  # one segment: one codec EOS target
    # The codes are the codec's ids of out.wav; the features the official features of in.wav.
    wave, _ = sf.read(dataset / "01" / "out.wav", dtype="float32")
    assert torch.equal(items[0]["codes"], codec.load_encoder(tiny_codec_dir).encode(torch.from_numpy(wave)))
    wave_in, _ = sf.read(dataset / "01" / "in.wav", dtype="float32")
    feats, mask = audio.FeatureExtractor.from_dir(model_dir / "audio")(
        torch.from_numpy(wave_in)[None], torch.tensor([len(wave_in)])
    )
    assert torch.equal(items[0]["audio_features"], feats[0][mask[0]])
    # 8 frames at 2 fps do not fit in a 2 s clip: they are spread over it, so the frames move.
    n = int(item["grid_shapes"][0].prod())
    assert not torch.equal(items[0]["pixel_values"][:n], items[0]["pixel_values"][-n:])
    assert vision.VisionConfig.from_json(vision.TINY_VISION_CONFIG, "x").patch_dim == 1176


def test_audio_is_cropped_and_frames_follow_fps(dataset, model_dir, tiny_codec_dir, tmp_path):
    cfg = data_config(dataset, audio_seconds=1.0, video_frames=2, video_fps=1.0)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples[:1], cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    (item,) = data.load_prepared(tmp_path / "prep")
    assert item["audio_features"].shape == (13, 1200)  # the official 13 pads for 1 s
    assert item["codes"].shape == (17, 4)
    assert item["grid_shapes"].shape == (1, 3)  # one frame pair


def test_prepare_reuses_the_cache_and_redoes_on_change(dataset, model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    first = data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, out)
    mtimes = {f: os.stat(f).st_mtime_ns for f in first.files}

    again = data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, out)
    assert again.reused == ["01", "02", "03"]
    assert again.settings_key == first.settings_key
    assert {f: os.stat(f).st_mtime_ns for f in again.files} == mtimes

    # A run that stopped before writing the manifest resumes from the keys inside the files.
    (out / "manifest.json").unlink()
    resumed = data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, out)
    assert resumed.reused == ["01", "02", "03"]
    assert {f: os.stat(f).st_mtime_ns for f in resumed.files} == mtimes

    # A changed sample file redoes that sample only.
    wav = dataset / "02" / "in.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    touched = data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, out)
    assert touched.reused == ["01", "03"]

    # A changed setting redoes everything.
    changed = data_config(dataset, video_frames=4)
    redone = data.prepare_dataset(samples, changed, model_dir, tiny_codec_dir, out)
    assert redone.reused == [] and redone.settings_key != first.settings_key
    assert all(os.stat(f).st_mtime_ns != mtimes[f] for f in redone.files)
    assert data.load_prepared(out)[0]["grid_shapes"].shape == (2, 3)

    # So does a changed model preprocessing config.
    from vss_core.model import audio

    audio.write_kaldi_cmvn(model_dir / "audio" / "global_cmvn", mean=[1.0] * 80, var=[2.0] * 80, count=10.0)
    assert data.prepare_dataset(samples, changed, model_dir, tiny_codec_dir, out).reused == []


def test_worker_processes_give_the_same_result(dataset, model_dir, tiny_codec_dir, tmp_path, monkeypatch):
    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, tmp_path / "one")
    # This process prepares nothing: every sample is prepared by a spawned worker.
    real = data_prepare._run_jobs
    monkeypatch.setattr(data_prepare, "_run_jobs", lambda jobs, workers, failures: real(jobs, 3, failures, share=False))
    data.prepare_dataset(samples, data_config(dataset, workers=2), model_dir, tiny_codec_dir, tmp_path / "two")
    for a, b in zip(data.load_prepared(tmp_path / "one"), data.load_prepared(tmp_path / "two"), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k])


def test_a_small_dataset_waits_for_no_worker_to_start(dataset, model_dir, tiny_codec_dir, tmp_path, monkeypatch):
    # Workers start in seconds; three tiny samples take less: this process prepares them all and
    # returns without waiting for a worker.
    cfg = data_config(dataset, workers=2)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    done_by = []
    real = data_prepare._prepare_one
    monkeypatch.setattr(data_prepare, "_prepare_one", lambda job: done_by.append(os.getpid()) or real(job))
    data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, tmp_path / "p")
    assert done_by == [os.getpid()] * 3


def test_invalid_samples_are_skipped_not_prepared(dataset, model_dir, tiny_codec_dir, tmp_path):
    (dataset / "02" / "out.wav").unlink()
    cfg = data_config(dataset, on_invalid="skip")
    report = data.validate_dataset(cfg)
    prepared = data.prepare_dataset(report.samples, cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    assert prepared.samples == ["01", "03"] and prepared.skipped == ["02"]


def test_incomplete_model_dir_names_every_problem(dataset, model_dir, tiny_codec_dir, tmp_path):
    (model_dir / "vision" / "config.json").unlink()
    (model_dir / "audio_codec" / "config.yaml").unlink()
    cfg = data_config(dataset, sample_rate=22050)
    samples = data.validate_dataset(cfg).samples
    with pytest.raises(ModelError) as err:
        data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    msg = str(err.value)
    assert str(model_dir / "vision" / "config.json") in msg
    assert str(model_dir / "audio_codec" / "config.yaml") in msg
    assert "data.sample_rate=16000" in msg


def test_transcript_trains_the_text_stream_and_no_transcript_trains_speech_only(
    dataset, model_dir, tiny_codec_dir, tmp_path
):
    from vss_core import model, sequence

    (dataset / "02" / "out.txt").unlink()
    cfg = data_config(dataset)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    with_text, without, _ = data.load_prepared(tmp_path / "prep")
    ids = model.CheckpointConfigs(model_dir).special_ids
    tok = sequence.load_tokenizer(model_dir)
    # the text targets are the transcript's tokens then EOS, in order
    expected = sequence.encode_text(tok, (dataset / "01" / "out.txt").read_text().strip()) + [ids.text_eos]
    assert with_text["text_labels"][with_text["text_labels"] != -100].tolist() == expected
    assert (without["text_labels"] == -100).all()
    for item in (with_text, without):  # speech targets either way: every frame, then codec EOS
        sem = item["codec_labels"][:, 0]
        assert sem[sem != -100].tolist() == (item["codes"][:, 0] + 32).tolist() + [2]


def test_a_transcript_too_long_for_its_audio_fails_preparation_naming_the_sample(
    dataset, model_dir, tiny_codec_dir, tmp_path
):
    # 70 characters of rare letters: within the rough check (4 per position) but more tokens than positions
    (dataset / "02" / "out.txt").write_text("Qzx9 " * 14)
    cfg = data_config(dataset, audio_seconds=1.0)
    samples = data.select_samples(data.validate_dataset(cfg), "fail")
    with pytest.raises(DatasetError) as err:
        data.prepare_dataset(samples, cfg, model_dir, tiny_codec_dir, tmp_path / "prep")
    assert "02:" in str(err.value) and "positions" in str(err.value)


def _all_frames_at(path, times, size):
    """The baseline: decode every frame, then pick the one shown at each time (as _read_frames does)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    picked = []
    for t in times:
        later = [f for f in frames if f.time >= t - 0.05 / 2]
        picked.append(data_prepare._frame_to_array(later[0] if later else frames[-1]))
    return picked, len(frames)


def test_frames_are_reached_by_seeking_not_by_decoding_everything(tmp_path):
    (d,) = demo.write_demo_dataset(tmp_path / "long", samples=1, seconds=20.0, fps=20)  # 400 frames, GOP 20
    for times in ([0.0, 5.0, 10.0, 15.0], [2.0, 2.5, 3.0, 3.5], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]):
        frames, decoded = data_prepare._read_frames(d / "in.mp4", times)
        expected, total = _all_frames_at(d / "in.mp4", times, SIZE)
        assert len(frames) == len(expected) and all(np.array_equal(a, b) for a, b in zip(frames, expected))
        assert total == 400
        # At most one GOP (20 frames) per wanted frame, and never past the last one.
        assert decoded <= 20 * len(times) and decoded <= 80


def test_frame_plan_decodes_from_the_keyframe_before_each_wanted_frame_only():
    # Decode order of two GOPs with B-frames (pts in frames, time base 1/10 s): I0 P3 B1 B2 P6 B4 B5 | I7 P9 B8
    packets = [(0, True), (3, False), (1, False), (2, False), (6, False), (4, False), (5, False)]
    packets += [(7, True), (9, False), (8, False)]
    tb = Fraction(1, 10)
    chosen, needed = data_prepare._frame_plan(packets, [0.15, 0.75, 5.0], tb)
    assert chosen == [2, 8, 9]  # the first frame at or past each threshold; past the end, the last
    # B2 needs I0 P3 B1 (its refs come before it in decode order); B8 and P9 need I7 only, not GOP 1
    assert needed == [0, 1, 2, 3, 7, 8, 9]


@pytest.mark.parametrize(
    "options",
    [
        {"video_codec": "libx264", "fps": 30, "size": (320, 180)},  # B-frames: skipped unless wanted
        {"video_codec": "mpeg4", "fps": 25, "size": (160, 120)},
        {"video_codec": "libvpx-vp9", "fps": 24, "size": (160, 128)},
    ],
)
def test_frames_read_by_plan_equal_decoding_every_frame(tmp_path, options):
    (d,) = demo.write_demo_dataset(tmp_path / "v", samples=1, seconds=6.0, **options)
    rate = options["fps"]
    # sorted runs of close and far timestamps, jumps over GOPs, B-frame times, and past the end
    for times in ([0.0, 0.5, 1.0, 1.5], [0.1, 2.07, 4.9, 5.5], [1.0 / rate * k for k in (3, 5, 7, 40, 41)], [3.0, 9.0]):
        frames, decoded = data_prepare._read_frames(d / "in.mp4", times)
        with av.open(str(d / "in.mp4")) as c:
            every = list(c.decode(video=0))
        expected = []
        for t in times:
            later = [f for f in every if f.time >= t - 0.5 / rate]
            expected.append(data_prepare._frame_to_array(later[0] if later else every[-1]))
        assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True)), (options, times)
        assert decoded <= len(every)
        # the fallback for streams without timestamps picks the same frames
        linear, _ = data_prepare._read_frames_linear(d / "in.mp4", [t - 0.5 / rate for t in times])
        assert all(np.array_equal(a, b) for a, b in zip(linear, expected, strict=True)), (options, times)


def test_b_frames_that_are_not_wanted_are_not_decoded(tmp_path):
    (d,) = demo.write_demo_dataset(tmp_path / "b", samples=1, seconds=4.0, fps=30, size=(320, 180))  # GOP 30
    times = [0.0, 0.5, 1.0, 1.5]  # 45 frames span them, all within decode-on distance
    _, decoded = data_prepare._read_frames(d / "in.mp4", times)
    assert decoded < 45  # the non-reference B-frames in between were skipped by the decoder


def test_other_rates_channels_codecs_and_sizes_are_converted(tmp_path, model_dir, tiny_codec_dir):
    reference = tmp_path / "ref"
    demo.write_demo_dataset(reference, samples=1, seconds=2.0, seed=3)
    variants = {
        "mpeg4": {"video_codec": "mpeg4", "size": (64, 48), "in_rate": 44100, "in_channels": 2},
        "vp9": {"video_codec": "libvpx-vp9", "size": (160, 128), "fps": 25, "in_rate": 22050},
    }
    ref_cfg = data_config(reference)
    data.prepare_dataset(
        data.validate_dataset(ref_cfg).samples, ref_cfg, model_dir, tiny_codec_dir, tmp_path / "prep-ref"
    )
    (ref,) = data.load_prepared(tmp_path / "prep-ref")
    for name, kwargs in variants.items():
        root = tmp_path / name
        demo.write_demo_dataset(root, samples=1, seconds=2.0, seed=3, **kwargs)
        cfg = data_config(root)
        report = data.validate_dataset(cfg)
        assert report.invalid == [], report.table()
        (s,) = report.samples
        assert s.video.codec == {"mpeg4": "mpeg4", "vp9": "vp9"}[name]
        assert (s.video.width, s.video.height) == kwargs["size"]
        assert (s.in_audio.sample_rate, s.in_audio.channels) == (kwargs["in_rate"], kwargs.get("in_channels", 1))
        data.prepare_dataset(report.samples, cfg, model_dir, tiny_codec_dir, tmp_path / f"prep-{name}")
        (item,) = data.load_prepared(tmp_path / f"prep-{name}")
        assert item["audio_features"].shape == ref["audio_features"].shape == (audio_frames(2.0), 1200)
        assert torch.equal(item["codes"], ref["codes"])  # out.wav is the same 16 kHz mono file
        # The same speech, converted: close to the reference, not equal. (Frames of other sizes
        # resize to other native-resolution grids, so their patches are not comparable one to one.)
        corr = torch.corrcoef(torch.stack([item["audio_features"].flatten(), ref["audio_features"].flatten()]))[0, 1]
        assert corr > 0.95
