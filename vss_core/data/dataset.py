"""Reading prepared samples back: a torch `Dataset` over a prepared folder that holds only its index in
memory and loads one sample file per item, and the sampler that gives each rank its micro batches.

Memory does not grow with the dataset: a rank holds the manifest's entries (names, files, shapes: a
few hundred bytes each) and the batches in flight (`DataLoader` workers x `data.prefetch_batches`).
Frames are stored as uint8 patches (resized, not yet normalised) and normalised when read
(`vision.normalize_patches`, bit-identical to normalising before patching).

What is checked when:
- opening a folder (`PreparedSamples(dir)`): the manifest (format, one audio width) and every
  listed file present with the size the preparation recorded - all problems at once, before a step;
- reading a sample (`dataset[i]`): the file against itself and its manifest entry (every tensor
  present, patches == what the grid shapes describe, the recorded shapes, the preparation key);
- `load_prepared(dir)`: every file read and checked, all problems at once (evaluation, tools).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.utils.data

from vss_core import sequence
from vss_core.data.reports import MANIFEST, PREPARE_FORMAT, _error_text
from vss_core.errors import DatasetError, bullet_list

# The tensors of a prepared file besides the sequence; pixel_mean / pixel_std are how its uint8
# frames are normalised (the checkpoint's image_mean / image_std), so a file is read without the model.
MEDIA_KEYS = ("pixel_values", "grid_shapes", "audio_features", "codes")
NORM_KEYS = ("pixel_mean", "pixel_std")
SHAPE_KEYS = ("patches", "audio_frames", "audio_width", "code_frames", "tokens")
_PREPARE_AGAIN = "Prepare the dataset again (delete {dir} and re-run; the prepare data stage rewrites it)."


def shapes_of(item: dict[str, torch.Tensor]) -> dict[str, int]:
    """The sizes a manifest entry records for a prepared sample."""
    return {
        "patches": item["pixel_values"].shape[0],
        "audio_frames": item["audio_features"].shape[0],
        "audio_width": item["audio_features"].shape[1],
        "code_frames": item["codes"].shape[0],
        "tokens": item["input_ids"].shape[0],
    }


def decode_item(item: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A prepared file's tensors as the model reads them: uint8 frames normalised to float32 with the
    file's own pixel_mean / pixel_std (an older float file is returned as it is)."""
    from vss_core.model.vision import normalize_patches

    out = {k: v for k, v in item.items() if isinstance(v, torch.Tensor) and k not in NORM_KEYS}
    if out["pixel_values"].dtype == torch.uint8:
        out["pixel_values"] = normalize_patches(
            out["pixel_values"], item["pixel_mean"].tolist(), item["pixel_std"].tolist()
        )
    return out


def item_problems(item: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """What is wrong with one loaded sample file, against itself and its manifest entry."""
    required = (*MEDIA_KEYS, *sequence.SEQUENCE_KEYS)
    missing = [k for k in required if not isinstance(item.get(k), torch.Tensor)]
    if item.get("pixel_values") is not None and getattr(item["pixel_values"], "dtype", None) == torch.uint8:
        missing += [k for k in NORM_KEYS if not isinstance(item.get(k), torch.Tensor)]
    if missing:
        return [f"lacks {', '.join(missing)}"]
    problems = []
    key = item.get("key")
    if entry.get("key") is not None and key != entry.get("key"):
        problems.append(
            f"was made with other inputs or settings (key {str(key)[:12]}, manifest {str(entry['key'])[:12]})"
        )
    grids = item["grid_shapes"]
    if grids.ndim != 2 or grids.shape[1] != 3:
        problems.append(f"grid_shapes has shape {tuple(grids.shape)}, not [frames, 3]")
    else:
        patches = int(grids.prod(dim=1).sum())
        if item["pixel_values"].shape[0] != patches:
            problems.append(f"pixel_values has {item['pixel_values'].shape[0]} rows but grid_shapes describe {patches}")
    feats = item["audio_features"]
    if feats.ndim != 2:
        problems.append(f"audio_features has shape {tuple(feats.shape)}, not [frames, width]")
    elif "audio_width" in entry and feats.shape[1] != int(entry["audio_width"]):
        problems.append(f"audio_features is {feats.shape[1]} wide, the manifest says {entry['audio_width']}")
    lengths = {k: item[k].shape[0] for k in sequence.SEQUENCE_KEYS}
    if len(set(lengths.values())) > 1:
        problems.append("sequence tensors differ in length (" + ", ".join(f"{k} {n}" for k, n in lengths.items()) + ")")
    try:
        shapes = shapes_of(item)
    except (IndexError, RuntimeError):
        return problems
    differ = [f"{k} {shapes[k]} (manifest {entry[k]})" for k in SHAPE_KEYS if k in entry and shapes[k] != entry[k]]
    if differ:
        problems.append("does not match the manifest: " + ", ".join(differ))
    return problems


def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared folder.

    Raises:
        DatasetError: it is missing or unreadable.
    """
    path = Path(prepared_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["samples"]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and "file" in e and "name" in e for e in entries
        ):
            raise ValueError("'samples' must be a list of entries with a 'name' and a 'file'")
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist: prepare the dataset first (the prepare data stage).") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is unreadable ({_error_text(exc)}): prepare the dataset again.") from None
    return manifest


def prepared_names(prepared_dir: Path) -> list[str]:
    """The sample names of a prepared folder, in manifest order (the order `PreparedSamples` reads).

    Raises:
        DatasetError: the manifest is missing or unreadable.
    """
    return [str(e["name"]) for e in read_manifest(prepared_dir)["samples"]]


class PreparedSamples(torch.utils.data.Dataset):
    """The samples of a prepared folder (only those named in `only`, when given), read one per item.

    Item i is the decoded sample dict (frames, features, codes, the sequence). Opening checks the
    manifest and that every file is there at its recorded size (all problems at once); each item is
    checked when read and a bad one raises DatasetError naming its file.

    Raises:
        DatasetError: the manifest is missing, unreadable or of another format, or files are missing
            or of another size than prepared (all listed).
    """

    def __init__(self, prepared_dir: Path, only: set[str] | None = None, *, strict: bool = True) -> None:
        self.dir = Path(prepared_dir)
        manifest = read_manifest(self.dir)
        entries = manifest["samples"]
        problems = []
        if manifest.get("format") != PREPARE_FORMAT:
            problems.append(
                f"{self.dir / MANIFEST} is of format {manifest.get('format')!r}, this vss reads {PREPARE_FORMAT}"
            )
        widths = {int(e["audio_width"]) for e in entries if isinstance(e.get("audio_width"), int)}
        if len(widths) > 1:
            problems.append(f"{self.dir / MANIFEST} records audio_features of different widths {sorted(widths)}")
        self.entries = [e for e in entries if only is None or str(e["name"]) in only]
        for entry in self.entries:
            path = self.dir / entry["file"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"{path} is missing")
                continue
            except OSError as exc:
                problems.append(f"{path} is unreadable ({_error_text(exc)})")
                continue
            if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
                problems.append(f"{path} is {size} bytes, it was prepared as {entry['bytes']}")
        self.open_problems = problems  # strict=False: kept for read_all, which adds each file's own
        if problems and strict:
            raise DatasetError(
                f"prepared data in {self.dir} is incomplete or inconsistent:\n{bullet_list(problems)}\n"
                + _PREPARE_AGAIN.format(dir=self.dir)
            )
        self.names = [str(e["name"]) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, i: int) -> tuple[dict[str, torch.Tensor] | None, list[str]]:
        entry = self.entries[i]
        path = self.dir / entry["file"]
        try:
            item = torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            return None, [f"{path} is missing"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            return None, [f"{path} is unreadable ({_error_text(exc)})"]
        if not isinstance(item, dict):
            return None, [f"{path} holds a {type(item).__name__}, not a prepared sample"]
        problems = [f"{path}: {p}" for p in item_problems(item, entry)]
        return (None if problems else decode_item(item)), problems

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item, problems = self._read(i)
        if problems:
            raise DatasetError(
                f"prepared sample {self.names[i]} cannot be used:\n{bullet_list(problems)}\n"
                + _PREPARE_AGAIN.format(dir=self.dir)
            )
        return item

    def read_all(self) -> list[dict[str, torch.Tensor]]:
        """Every sample, each file read and checked (all problems at once). Holds them all: for small sets."""
        out, problems = [], list(self.open_problems)
        for i in range(len(self)):
            item, bad = self._read(i)
            problems += [p for p in bad if p not in problems]
            if item is not None:
                out.append(item)
        if problems:
            raise DatasetError(
                f"prepared data in {self.dir} is incomplete or inconsistent:\n{bullet_list(problems)}\n"
                + _PREPARE_AGAIN.format(dir=self.dir)
            )
        return out


def load_prepared(prepared_dir: Path, only: set[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """The prepared samples in manifest order (only those named in `only`, when given), all in memory,
    each file checked against itself and the manifest first. A folder mixing files of different
    preparations fails here. Training reads `PreparedSamples` lazily instead.

    Raises:
        DatasetError: the manifest or a sample file is missing, unreadable or inconsistent (all listed).
    """
    return PreparedSamples(prepared_dir, only, strict=False).read_all()


# --- which samples each rank reads ----------------------------------------------------------------


def rank_order(num_samples: int, epoch: int, seed: int, rank: int, world_size: int, length: int) -> list[int]:
    """This rank's sample indices for one epoch: a seeded shuffle, sharded, wrapped to `length`."""
    order = list(range(num_samples))
    random.Random(seed + epoch).shuffle(order)
    shard = order[rank::world_size] or order
    return [shard[i % len(shard)] for i in range(length)]


class RankBatches(torch.utils.data.Sampler):
    """The micro batches (lists of sample indices) one rank reads, epoch after epoch, from a start.

    Each epoch gives every rank `micro_batches` of them (its shard of the epoch's seeded shuffle,
    wrapped round), so all ranks take the same number of steps. One iteration runs from the start
    position (`start(epoch, micro)`) to the end of epoch `epochs - 1`, so loader workers read across
    epoch boundaries without a pause, and a resumed run reads exactly what the interrupted one would
    have read next. The batches are drawn in the main process; `DataLoader` workers only load them.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int,
        world_size: int,
        micro_batch: int,
        micro_batches: int,
        seed: int,
        epochs: int = 1,
    ) -> None:
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.micro_batch, self.micro_batches, self.seed, self.epochs = micro_batch, micro_batches, seed, epochs
        self.epoch, self.first = 0, 0

    def start(self, epoch: int, micro: int = 0) -> None:
        self.epoch, self.first = epoch, micro

    def __len__(self) -> int:
        return max(0, (self.epochs - self.epoch) * self.micro_batches - self.first)

    def __iter__(self):
        first = self.first
        for epoch in range(self.epoch, self.epochs):
            order = rank_order(
                self.num_samples, epoch, self.seed, self.rank, self.world_size, self.micro_batches * self.micro_batch
            )
            for m in range(first, self.micro_batches):
                yield order[m * self.micro_batch : (m + 1) * self.micro_batch]
            first = 0


class Indexed(torch.utils.data.Dataset):
    """A dataset whose items carry their index: (i, dataset[i]), so a batch can name its samples."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


class Packed:
    """A batch of tensors packed into one uint8 buffer, for the trip from a loader worker to its rank.

    A DataLoader worker hands each tensor over through its own shared-memory segment and file
    descriptor; a batch of ten tensors costs the rank ~5 ms per step to receive (measured on the
    demo batch), one buffer ~2 ms. `unpack()` gives views of that buffer, no copy.
    """

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.layout: list[tuple[str, torch.dtype, tuple[int, ...], int, int]] = []
        parts, offset = [], 0
        for key, t in batch.items():
            raw = t.contiguous().reshape(-1).view(torch.uint8)
            self.layout.append((key, t.dtype, tuple(t.shape), offset, raw.numel()))
            parts.append(raw)
            offset += raw.numel()
        self.buffer = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)

    def unpack(self) -> dict[str, torch.Tensor]:
        return {
            key: self.buffer[offset : offset + n].view(dtype).view(shape)
            for key, dtype, shape, offset, n in self.layout
        }
