"""The evaluate stage: the adapter against the base model on samples it never trained on.

    vss eval --adapter RUN/adapter --data DIR [--base]

For each held-out sample (`vss_core.split`, or every valid sample of `data.eval_root` / `--data`) and
each model (the adapter; the base = the same weights with the adapter disabled, one load for both):

- the eval loss of the sample's answer under teacher forcing, per stream (text, each codebook), from
  the prepared sample training would have used;
- a generation from the prompt (`data.prepare_inputs` + `vss_core.generate`, as `vss infer` does),
  whose end (codec EOS before the cap), text (WER against out.txt), decoded speech (mel-cepstral
  distance to out.wav) and, with `eval.asr_model`, ASR transcript (WER against out.txt) are scored.

`metrics.METHODS` says how each figure is computed; the report carries it. The report, the generated
answers (WAV + text) and the plots are written to `<run>/eval/`; the eval scalars and a few answers go to
TensorBoard; the adapter's model card gets the table. A report for the same adapter weights, samples and
settings is reused, not computed again. `gate` turns the comparison into the upload decision.

Where it runs: in the calling process, loading the model as `vss infer` does (one device). That is
what the demo and a single-GPU-sized checkpoint need; the full 560B checkpoint needs a sharded
inference load that vss does not have yet (see the README).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from vss_core import metrics, split
from vss_core import model as omni
from vss_core.atomic import write_atomic, write_json_atomic
from vss_core.config import VSSConfig
from vss_core.data.reports import SampleFiles, SampleReport
from vss_core.errors import VSSError

log = logging.getLogger(__name__)

REPORT = "report.json"
STREAMS = omni.STREAMS  # the loss streams of the model's output
SUMMARY_METRICS = ("loss", *[f"loss_{s}" for s in STREAMS], "eos_rate", "text_wer", "mcd", "asr_wer")


class EvalGateError(VSSError):
    """The adapter is worse than the base model on the gated metric (eval.gate=block), or was rejected."""


class EvalSample(BaseModel):
    name: str
    where: str = Field(description="The sample folder, or `<manifest>:<line>`.")
    parts: SampleFiles = Field(description="Its in.mp4, in.wav, out.wav and optional texts.")
    prepared_file: str | None = Field(None, description="Its prepared .pt (for the eval loss); None: no loss.")


class SampleScore(BaseModel):
    sample: str
    model: Literal["adapter", "base"]
    loss: float | None
    stream_losses: dict[str, float] = Field(default_factory=dict)
    ended_with_eos: bool
    frames: int
    seconds: float
    text: str
    text_wer: float | None = None
    mcd: float | None = None
    asr_wer: float | None = None
    asr_text: str | None = None


class EvalReport(BaseModel):
    adapter_dir: str
    adapter_sha256: str
    samples: list[str]
    settings: dict[str, Any]
    scores: list[SampleScore]
    summary: dict[str, dict[str, float | None]] = Field(description="model -> metric -> mean over samples.")
    methods: dict[str, str] = Field(default_factory=lambda: dict(metrics.METHODS))
    plots: dict[str, str] = Field(default_factory=dict, description="name -> PNG path.")

    def value(self, model: str, metric: str) -> float | None:
        return self.summary.get(model, {}).get(metric)

    def headline(self) -> str:
        """One line: the held-out loss of each model and how many adapter answers end with EOS before the cap."""
        n = len(self.samples)
        eos = sum(s.ended_with_eos for s in self.scores if s.model == "adapter")
        base = self.value("base", "loss")
        return (
            f"{n} held-out: loss {_fmt(self.value('adapter', 'loss'))}"
            + (f" (base {_fmt(base)})" if base is not None else "")
            + f"; {eos}/{n} answers end with EOS before the cap"
        )

    def table(self, how: bool = True) -> str:
        """Markdown: one row per metric, adapter and base side by side and the change; then (how=True) how
        each figure is computed."""
        models = [m for m in ("adapter", "base") if m in self.summary]
        pair = len(models) == 2
        rows = [
            "| metric | " + " | ".join(models) + (" | change |" if pair else " |"),
            "|" + "---|" * (len(models) + (2 if pair else 1)),
        ]
        shown = []
        for metric in SUMMARY_METRICS:
            values = [self.value(m, metric) for m in models]
            if all(v is None for v in values):
                continue
            shown.append(metric)
            cells = [_fmt(v) for v in values]
            if pair:
                a, b = values
                cells.append(_fmt(a - b, signed=True) if a is not None and b is not None else "—")
            rows.append(f"| {metric} | " + " | ".join(cells) + " |")
        table = "\n".join(rows) + f"\n\n{len(self.samples)} evaluation sample(s): {', '.join(self.samples)}"
        if not how:
            return table
        notes = [
            f"- **{m}**: {self.methods[m]}"
            for m in ("loss", "eos_rate", "text_wer", "mcd", "asr_wer")
            if m in shown and m in self.methods
        ]
        if any(m.startswith("loss_") for m in shown):
            notes.insert(1, "- **loss_text .. loss_acoustic3**: the same loss for one stream alone")
        return table + "\n\nHow each figure is computed:\n\n" + "\n".join(notes)


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


class GateDecision(BaseModel):
    passed: bool
    metric: str
    adapter: float | None
    base: float | None
    message: str


# --- which samples --------------------------------------------------------------------------------


def held_out_samples(dataset, prepared, fraction: float) -> list[EvalSample]:
    """The held-out samples of a validated + prepared dataset (data.eval_fraction)."""
    by_name = {s.name: s for s in dataset.samples}
    files = dict(zip(prepared.samples, prepared.files))
    return [_eval_sample(by_name[n], files[n]) for n in split.held_out(prepared.samples, fraction)]


def all_samples(dataset, prepared) -> list[EvalSample]:
    """Every prepared sample of a dataset used only for evaluation (data.eval_root, `vss eval --data`)."""
    by_name = {s.name: s for s in dataset.samples}
    return [_eval_sample(by_name[n], f) for n, f in zip(prepared.samples, prepared.files)]


def _eval_sample(report: SampleReport, prepared_file: str) -> EvalSample:
    return EvalSample(name=report.name, where=report.path, parts=report.parts(), prepared_file=prepared_file)


# --- scoring --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _settings(cfg: VSSConfig, samples: list[EvalSample], with_base: bool) -> dict[str, Any]:
    e, d, t = cfg.eval, cfg.data, cfg.training
    return {
        "samples": [s.model_dump() for s in samples],
        "base": with_base,
        "max_seconds": e.max_seconds,
        "asr_model": e.asr_model,
        "audio_seconds": d.audio_seconds,
        "video_frames": d.video_frames,
        "video_fps": d.video_fps,
        "max_seconds_data": d.max_seconds,
        "text_loss_weight": t.text_loss_weight,
        "codebook_loss_weights": list(t.codebook_loss_weights) if t.codebook_loss_weights else None,
    }


def _asr(model_dir: str | None):
    if not model_dir:
        return None
    from transformers import pipeline

    if not Path(model_dir).expanduser().is_dir():
        raise VSSError(
            f"eval.asr_model={model_dir!r} is not a directory: point it at a local transformers ASR "
            "model (e.g. a downloaded whisper or wav2vec2 checkpoint), or unset it"
        )
    return pipeline("automatic-speech-recognition", model=str(Path(model_dir).expanduser()), device="cpu")


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(kept) / len(kept)) if kept else None


def summarise(scores: list[SampleScore]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for model in ("adapter", "base"):
        mine = [s for s in scores if s.model == model]
        if not mine:
            continue
        row = {
            "loss": _mean([s.loss for s in mine]),
            "eos_rate": _mean([float(s.ended_with_eos) for s in mine]),
            "text_wer": _mean([s.text_wer for s in mine]),
            "mcd": _mean([s.mcd for s in mine]),
            "asr_wer": _mean([s.asr_wer for s in mine]),
        }
        for stream in STREAMS:
            row[f"loss_{stream}"] = _mean([s.stream_losses.get(stream) for s in mine])
        out[model] = row
    return out


def evaluate(
    adapter_dir: Path,
    model_dir: Path,
    codec_dir: Path | None,
    samples: list[EvalSample],
    cfg: VSSConfig,
    out_dir: Path,
    *,
    with_base: bool = True,
    tensorboard_dir: Path | None = None,
    step: int = 0,
    metrics_file: Path | None = None,
) -> EvalReport:
    """Score the adapter (and the base model) on `samples`; write `out_dir`/report.json, the answers and plots.

    Raises:
        DatasetError / ModelError: a sample, the adapter, the checkpoint or the decoder cannot be used.
        VSSError: no samples, or eval.asr_model is not a directory.
    """
    from vss_core import codec as codec_lib
    from vss_core import data, generate, infer

    adapter_dir, model_dir, out_dir = Path(adapter_dir), Path(model_dir), Path(out_dir)
    if not samples:
        raise VSSError(
            "evaluate: no held-out samples. Set data.eval_fraction (e.g. 0.1) or data.eval_root, "
            "or pass --data with at least one valid sample"
        )
    sha = _sha256(adapter_dir / infer.ADAPTER_WEIGHTS)
    settings = _settings(cfg, samples, with_base)
    previous = _load_report(out_dir)
    if previous is not None and previous.adapter_sha256 == sha and previous.settings == settings:
        log.info("Evaluation of these adapter weights on these samples already exists: %s", out_dir / REPORT)
        return previous

    asr = _asr(cfg.eval.asr_model)
    decoder = codec_lib.load_decoder(model_dir, codec_dir)
    configs = omni.CheckpointConfigs(model_dir)
    peft_model = infer.load_adapter(omni.load_omni(model_dir, dtype=torch.float32), adapter_dir)
    net = peft_model.get_base_model().eval()
    seconds = cfg.eval.max_seconds or cfg.data.audio_seconds
    max_steps = infer.step_cap(seconds)
    prompts = {s.name: data.prepare_inputs(s.parts, cfg.data, model_dir) for s in samples}
    targets = {s.name: data.read_target(s.parts, decoder.sample_rate, cfg.data) for s in samples}
    scores: list[SampleScore] = []
    answers: dict[tuple[str, str], np.ndarray] = {}
    variants = [("adapter", contextlib.nullcontext)] + ([("base", peft_model.disable_adapter)] if with_base else [])
    for model_name, context in variants:
        with context():
            for s in samples:
                loss, streams = _eval_loss(net, s, cfg)
                gen = generate.generate(net, prompts[s.name], configs.special_ids, max_steps)
                wave, text = infer.decode_answer(gen, decoder, configs.tokenizer)
                target_wave, transcript = targets[s.name]
                score = SampleScore(
                    sample=s.name,
                    model=model_name,
                    loss=loss,
                    stream_losses=streams,
                    ended_with_eos=gen.stopped_at_eos,
                    frames=int(gen.codes.shape[0]),
                    seconds=len(wave) / decoder.sample_rate,
                    text=text,
                    text_wer=metrics.word_error_rate(text, transcript) if transcript else None,
                    mcd=metrics.mel_cepstral_distance(wave, target_wave.numpy(), decoder.sample_rate),
                )
                if asr is not None and transcript and len(wave):
                    score.asr_text = str(
                        asr({"raw": wave.astype(np.float32), "sampling_rate": decoder.sample_rate})["text"]
                    )
                    score.asr_wer = metrics.word_error_rate(score.asr_text, transcript)
                scores.append(score)
                answers[(model_name, s.name)] = wave
                infer.write_answer(out_dir / "answers" / model_name / f"{s.name}.wav", wave, decoder.sample_rate, text)
    report = EvalReport(
        adapter_dir=str(adapter_dir),
        adapter_sha256=sha,
        samples=[s.name for s in samples],
        settings=settings,
        scores=scores,
        summary=summarise(scores),
    )
    report.plots = plot_all(report, out_dir, metrics_file)
    if tensorboard_dir is not None:
        _log_tensorboard(report, answers, Path(tensorboard_dir), step, decoder.sample_rate, cfg.eval.audio_samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / REPORT, report.model_dump(mode="json"))
    return report


@torch.no_grad()
def _eval_loss(net, sample: EvalSample, cfg: VSSConfig) -> tuple[float | None, dict[str, float]]:
    if not sample.prepared_file:
        return None, {}
    from vss_core.data import decode_item

    tensors = decode_item(torch.load(sample.prepared_file, weights_only=True, map_location="cpu"))
    out = net(
        **omni.collate([tensors]),
        text_weight=cfg.training.text_loss_weight,
        codebook_weights=cfg.training.codebook_loss_weights,
    )
    parts = [float(out.text_loss), *[float(x) for x in out.codebook_losses]]
    return float(out.loss), dict(zip(STREAMS, parts))


def _load_report(out_dir: Path) -> EvalReport | None:
    try:
        return EvalReport.model_validate_json((out_dir / REPORT).read_text())
    except (OSError, ValueError):
        return None


def _log_tensorboard(report: EvalReport, answers, folder: Path, step: int, rate: int, audio_samples: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for model, row in report.summary.items():
            for metric, value in row.items():
                if value is not None:
                    writer.add_scalar(f"eval/{model}/{metric}", value, step)
        for name in report.samples[:audio_samples]:
            for model in report.summary:
                wave = answers.get((model, name))
                if wave is not None and len(wave):
                    writer.add_audio(
                        f"eval/{model}/{name}", torch.as_tensor(wave).reshape(1, -1), step, sample_rate=rate
                    )
    finally:
        writer.close()


# --- pictures ---------------------------------------------------------------------------------------


def plot_all(report: EvalReport, out_dir: Path, metrics_file: Path | None) -> dict[str, str]:
    """PNG files: the loss curves of training (each stream) and the base-vs-adapter comparison."""
    plots = {"comparison": str(plot_comparison(report, out_dir / "comparison.png"))}
    if metrics_file is not None and Path(metrics_file).is_file():
        curves = plot_loss_curves(Path(metrics_file), out_dir / "loss_curves.png")
        if curves is not None:
            plots["loss_curves"] = str(curves)
    return plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or on a training box
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(metrics_file: Path, path: Path) -> Path | None:
    """Training loss per step, total and each stream, from metrics.jsonl."""
    records = []
    for line in metrics_file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    records = [r for r in records if isinstance(r, dict) and "step" in r and "loss" in r]
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], label="loss (weighted total)", linewidth=2, color="black")
    for stream in STREAMS:
        key = f"loss_{stream}"
        if all(key in r for r in records):
            ax.plot(steps, [r[key] for r in records], label=stream, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Training loss by stream")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_comparison(report: EvalReport, path: Path) -> Path:
    """Bars: base vs adapter on each metric of the summary (lower is better except eos_rate)."""
    plt = _pyplot()
    names = [m for m in SUMMARY_METRICS if any(report.value(x, m) is not None for x in report.summary)]
    models = list(report.summary)
    cols = min(5, max(1, len(names)))
    rows = math.ceil(max(1, len(names)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), dpi=100, squeeze=False)
    colors = {"adapter": "#1f77b4", "base": "#aaaaaa"}
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, names):
        vals = [report.value(m, metric) or 0.0 for m in models]
        ax.bar(models, vals, color=[colors[m] for m in models])
        ax.set_title(metric + (" (higher better)" if metric == "eos_rate" else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Held-out evaluation ({len(report.samples)} sample(s)): adapter vs base", fontsize=9)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


# --- the gate and the model card ------------------------------------------------------------------------


def gate(report: EvalReport, metric: str, tolerance: float = 0.0) -> GateDecision:
    """Is the adapter no worse than the base on `metric` (lower is better), within `tolerance`?"""
    adapter, base = report.value("adapter", metric), report.value("base", metric)
    if adapter is None or base is None:
        return GateDecision(
            passed=False,
            metric=metric,
            adapter=adapter,
            base=base,
            message=f"eval.metric={metric} could not be computed for both models ({metrics.METHODS.get(metric, '')}); "
            "choose another eval.metric (loss always exists) or add what it needs",
        )
    worse = adapter - base
    if worse > tolerance:
        return GateDecision(
            passed=False,
            metric=metric,
            adapter=adapter,
            base=base,
            message=(
                f"the adapter is worse than the base model on {metric}: {adapter:.4f} vs {base:.4f} (+{worse:.4f}, "
                f"eval.tolerance {tolerance:g}) on {len(report.samples)} held-out sample(s)"
            ),
        )
    return GateDecision(
        passed=True,
        metric=metric,
        adapter=adapter,
        base=base,
        message=(
            f"the adapter is {'better than' if worse < 0 else 'as good as'} the base model on {metric}: {adapter:.4f} vs "
            f"{base:.4f} ({worse:+.4f})"
        ),
    )


CARD_SECTION = "## Evaluation (vss)"


def add_to_model_card(adapter_dir: Path, report: EvalReport) -> None:
    """Put the eval table in the adapter's README.md (replacing an earlier one), atomically."""
    from vss_core import card

    card.set_section(
        Path(adapter_dir) / "README.md",
        CARD_SECTION,
        f"On held-out samples never trained on (adapter vs the base model):\n\n{report.table()}",
    )


# --- `vss eval` -------------------------------------------------------------------------------------


def evaluate_folder(
    adapter_dir: Path,
    data_dir: Path,
    *,
    out_dir: Path | None = None,
    model_dir: Path | None = None,
    codec_dir: Path | None = None,
    with_base: bool = False,
) -> EvalReport:
    """`vss eval`: every valid sample of `data_dir` (validated and prepared with the run's data settings,
    from adapter_dir/../config.json) scored with the adapter, and with the base model when `with_base`.
    The report goes to `out_dir` (default: the run's eval-<folder name>/).

    Raises:
        ModelError / DatasetError: as `vss infer`, or the folder has no valid sample.
    """
    from vss_core import data, infer
    from vss_core.config import DataConfig
    from vss_core.errors import DatasetError, ModelError, bullet_list

    adapter_dir, data_dir = Path(adapter_dir), Path(data_dir)
    model_dir, codec_dir, cfg, problems = infer.resolve_model_dir(adapter_dir, model_dir, codec_dir)
    if problems or model_dir is None:
        raise ModelError(
            f"vss eval cannot run:\n{bullet_list(problems or ['the base checkpoint is unknown: pass --model'])}"
        )
    cfg = cfg or VSSConfig()
    codec_dir = codec_dir or model_dir / "audio_codec"
    data_cfg = DataConfig.model_validate(
        {**cfg.data.model_dump(), "root": str(data_dir), "eval_fraction": 0.0, "on_invalid": "skip"}
    )
    report = data.validate_dataset(data_cfg)
    valid = data.select_samples(report, "skip")
    if not valid:
        raise DatasetError(f"--data {data_dir}: no valid sample to evaluate on:\n{report.table()}")
    out_dir = Path(out_dir) if out_dir else adapter_dir.parent / f"eval-{data_dir.resolve().name}"
    prepared_dir = data.prepared_dir(out_dir / "prepared", report.fingerprint, model_dir, codec_dir, data_cfg)
    prepared = data.prepare_dataset(valid, data_cfg, model_dir, codec_dir, prepared_dir)
    cfg = cfg.model_copy(update={"data": data_cfg})
    metrics_file = adapter_dir.parent / "metrics.jsonl"
    return evaluate(
        adapter_dir,
        model_dir,
        codec_dir,
        all_samples(report, prepared),
        cfg,
        out_dir,
        with_base=with_base,
        metrics_file=metrics_file if metrics_file.is_file() else None,
    )
