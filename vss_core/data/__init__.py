"""Dataset validation and preparation, one concern per module:

- `reports`: the reports and the constants and helpers the others share;
- `probe`: one media file, as PyAV and soundfile see it;
- `manifest`: the JSONL manifest, read into the same sample parts (`SampleFiles`) a folder gives;
- `validate`: every sample checked, the probe cache, the fingerprint, the samples to train on;
- `prepare`: samples to model inputs, keyed by their settings;
- `dataset`: prepared samples read back, one file per item (a torch Dataset), and each rank's batches;
- `watch`: has the dataset changed since the last look.

What the rest of vss uses is re-exported here (`from vss_core import data; data.validate_dataset(...)`).

The user's contract: `<root>/<sample>/{in.mp4, in.wav, out.wav}`, or a JSONL manifest naming each
sample's files wherever they live (`manifest`: one sample per line, paths relative to it).

- `validate_dataset(cfg)` checks every sample and reports every problem of every sample; it never
  raises for a bad sample. Each file must be a regular, non-empty file inside the root (a symlink
  leading outside is refused). The video is opened with PyAV, its first frame decoded and its last
  second decoded after a seek (a truncated file stops short of its declared duration); each WAV is
  decoded whole (rate, channels, duration, RMS level, non-finite samples) and its RIFF header
  compared with the file's size. Durations are checked against data.min_seconds/max_seconds and,
  where asked, the levels against data.silence_dbfs. What a probe found is cached per sample, keyed
  by the files' size/mtime/inode (or content hashes), so re-validating an unchanged dataset only
  stats its files.
- `select_samples(report, on_invalid)` turns that report into the samples to train on, or one error
  listing every bad sample.
- `prepare_dataset(...)` turns each sample into the tensors the model eats (frames sampled by seeking,
  resized, normalised; CMVN-normalised fbank; codec tokens of the target speech), one `.pt` file per
  sample plus a manifest, cached by a key over the sample's files and every setting that shapes them.
- `PreparedSamples(dir)` reads them back lazily (a torch Dataset; memory independent of the dataset's
  size), `load_prepared(dir)` all at once (weights_only).
"""

from vss_core.data.dataset import (
    Indexed,
    Packed,
    PreparedSamples,
    RankBatches,
    decode_item,
    load_prepared,
    prepared_names,
    rank_order,
)
from vss_core.data.prepare import (
    prepare_dataset,
    prepare_inputs,
    prepared_dir,
    prepared_key,
    read_target,
)
from vss_core.data.reports import (
    MANIFEST,
    PREPARE_FORMAT,
    SAMPLE_FILES,
    TEXT_FILES,
    AudioInfo,
    DatasetReport,
    PreparedDataset,
    SampleFiles,
    SampleReport,
    VideoInfo,
)
from vss_core.data.validate import select_samples, validate_dataset
from vss_core.data.watch import DataChange, check_data_changed

__all__ = [
    "MANIFEST",
    "PREPARE_FORMAT",
    "SAMPLE_FILES",
    "TEXT_FILES",
    "AudioInfo",
    "DataChange",
    "DatasetReport",
    "Indexed",
    "Packed",
    "PreparedDataset",
    "PreparedSamples",
    "RankBatches",
    "SampleFiles",
    "SampleReport",
    "VideoInfo",
    "check_data_changed",
    "decode_item",
    "load_prepared",
    "prepare_dataset",
    "prepare_inputs",
    "prepared_dir",
    "prepared_key",
    "prepared_names",
    "rank_order",
    "read_target",
    "select_samples",
    "validate_dataset",
]
