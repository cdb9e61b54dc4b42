"""The reports of validation and preparation, and the constants every data module shares."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

SAMPLE_FILES = ("in.mp4", "in.wav", "out.wav")
# Optional texts: the transcript of out.wav, an instruction, a system prompt (UTF-8).
TEXT_FILES = ("out.txt", "in.txt", "system.txt")
MANIFEST = "manifest.json"
# Bump when the content of prepared files changes, so old caches are not reused.
PREPARE_FORMAT = 5  # 5: frames stored as uint8 patches + pixel_mean/std; entries record bytes
# Bump when what a probe reads or reports changes, so old validation caches are not reused.
PROBE_FORMAT = 2
MIN_FBANK_SECONDS = 0.025  # one 25 ms fbank window
# A file this much longer than the limit is "too long"; container durations are rounded to a frame.
DURATION_TOLERANCE_S = 0.05
FLOOR_DBFS = -120.0  # the level reported for digital silence (JSON has no -inf)
# A float WAV's full scale is 1.0. Far above it, the features overflow: the official front end scales
# samples by 32768 and squares them in float32 (1e20 x 32768 squared is inf), and the fbank turns NaN.
# 16 (+24 dBFS) is far beyond any clipping a real recording shows, and far below any overflow.
MAX_FLOAT_PEAK = 16.0
_DEMO_FIX = (
    "generate a demo dataset with `vss demo-data DIR`, or point data.root at a directory of sample folders "
    "or at a .jsonl manifest"
)


# --- helpers every data module uses ---------------------------------------------------------------


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# --- reports --------------------------------------------------------------------------------------


class VideoInfo(BaseModel):
    frames: int = Field(description="Frames the container declares (or duration x fps when it declares none).")
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str


class AudioInfo(BaseModel):
    sample_rate: int
    channels: int
    duration_s: float
    rms_dbfs: float = Field(FLOOR_DBFS, description="RMS level of the whole file over all channels (dBFS).")


class SampleFiles(BaseModel):
    """Where one sample's parts are, by the role file name of the folder layout (`SAMPLE_FILES`,
    `TEXT_FILES`): a sample folder's own files, or a manifest line's paths and inline texts."""

    files: dict[str, str] = Field(default_factory=dict, description="Role (in.mp4, in.wav, ...) -> file path.")
    texts: dict[str, str] = Field(default_factory=dict, description="Role (out.txt, ...) -> text, from a manifest.")

    @classmethod
    def in_folder(cls, folder: Path) -> SampleFiles:
        """The folder layout: `folder/in.mp4`, `folder/in.wav`, ... (the texts where present)."""
        return cls(files={name: str(Path(folder) / name) for name in SAMPLE_FILES + TEXT_FILES})

    def parts(self) -> SampleFiles:
        """Only where the parts are (a `SampleReport` without its report), e.g. to hand to a worker."""
        return SampleFiles(files=self.files, texts=self.texts)

    def text_digest(self, role: str) -> str | None:
        """sha256 of an inline text (what keys it in caches: it has no file to stat); None if not inline."""
        return hashlib.sha256(self.texts[role].encode()).hexdigest() if role in self.texts else None

    def file(self, role: str) -> Path | None:
        """The file of a role, or None when this sample has none for it."""
        return Path(self.files[role]) if role in self.files else None

    def text(self, role: str) -> str | None:
        """An optional text (out.txt, in.txt, system.txt), stripped: inline, or read from its file
        (UTF-8); None when absent."""
        if role in self.texts:
            return self.texts[role].strip()
        path = self.file(role)
        if path is None or not path.is_file():
            return None
        return path.read_text(encoding="utf-8").strip()


class SampleReport(SampleFiles):
    name: str
    path: str = Field(description="The sample folder, or `<manifest>:<line>` for a manifest's sample.")
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="Not fatal, e.g. a file cropped to data.max_seconds.")
    video: VideoInfo | None = None
    in_audio: AudioInfo | None = None
    out_audio: AudioInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class DatasetReport(BaseModel):
    root: str
    samples: list[SampleReport]
    warnings: list[str] = Field(default_factory=list)
    fingerprint: str
    fingerprint_mode: Literal["stat", "content"] = "stat"
    on_invalid: Literal["fail", "skip"] = Field("fail", description="The data.on_invalid policy validated under.")
    reused: list[str] = Field(default_factory=list, description="Samples whose probe came from the validation cache.")
    cache_path: str | None = Field(None, description="The validation cache file used, if any.")

    @property
    def valid(self) -> list[SampleReport]:
        return [s for s in self.samples if s.ok]

    @property
    def invalid(self) -> list[SampleReport]:
        return [s for s in self.samples if not s.ok]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def skipped(self) -> list[str]:
        """Invalid samples left out of training under data.on_invalid=skip (empty under 'fail')."""
        return [s.name for s in self.invalid] if self.on_invalid == "skip" else []

    def table(self) -> str:
        """A markdown table of the samples, one row each, for a person to read at a glance."""
        rows = [
            "| sample | ok | video frames | fps | resolution | in.wav s | out.wav s | problems |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in self.samples:
            v = s.video
            cells = [
                s.name,
                "yes" if s.ok else "**no**",
                str(v.frames) if v else "-",
                f"{v.fps:g}" if v else "-",
                f"{v.width}x{v.height}" if v else "-",
                f"{s.in_audio.duration_s:.2f}" if s.in_audio else "-",
                f"{s.out_audio.duration_s:.2f}" if s.out_audio else "-",
                "; ".join([*s.problems, *(f"warning: {w}" for w in s.warnings)]),
            ]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        summary = f"{len(self.valid)} of {len(self.samples)} samples valid in {self.root}"
        if self.skipped:
            summary += f"; skipped (data.on_invalid=skip): {_summarise(self.skipped, 20)}"
        elif self.invalid:
            summary += "; data.on_invalid=fail stops the run until they are fixed"
        lines = [summary, "", *rows]
        if self.warnings:
            lines += ["", *(f"warning: {w}" for w in self.warnings)]
        return "\n".join(lines)


class PreparedDataset(BaseModel):
    dir: str = Field(description="Directory holding one <sample>.pt per sample and manifest.json.")
    samples: list[str] = Field(description="Prepared sample names, in order.")
    files: list[str] = Field(description="The .pt file of each prepared sample, in the order of samples.")
    settings_key: str = Field(description="sha256 of the preparation settings and the model's preprocessing config.")
    skipped: list[str] = Field(default_factory=list, description="Samples given that were invalid, not prepared.")
    reused: list[str] = Field(default_factory=list, description="Samples whose cached .pt was reused.")
