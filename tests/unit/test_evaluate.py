"""What the flow's `vss-eval` artifact shows: the comparison table and the plots, embedded as PNG images
the Prefect UI renders inline; the plots draw the report's own numbers."""

import base64
import json
import re

from tasks.stages import eval_markdown
from vss_core import evaluate


def _report(tmp_path):
    report = evaluate.EvalReport(
        adapter_dir=str(tmp_path),
        adapter_sha256="0" * 64,
        samples=["03", "07"],
        settings={},
        scores=[],
        summary={
            "adapter": {"loss": 2.29, "loss_text": 3.18, "eos_rate": 0.5, "mcd": 90.0, "text_wer": 1.0},
            "base": {"loss": 8.48, "loss_text": 6.28, "eos_rate": 0.0, "mcd": 95.0, "text_wer": 6.6},
        },
    )
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(json.dumps({"step": i, "loss": 9.0 - i, "loss_text": 6.0 - i / 2}) for i in range(1, 6))
        + "\nnot json\n"
    )
    report.plots = evaluate.plot_all(report, tmp_path / "eval", metrics)
    return report


def test_the_artifact_holds_the_table_and_both_plots_as_png(tmp_path):
    report = _report(tmp_path)
    md = eval_markdown(report)
    assert "| loss | 2.2900 | 8.4800 | -6.1900 |" in md and "| eos_rate | 0.5000 | 0.0000 | +0.5000 |" in md
    images = re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert {name for name, _ in images} == {"comparison", "loss_curves"}
    for name, encoded in images:
        png = base64.b64decode(encoded)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (tmp_path / "eval" / f"{name}.png").read_bytes()


def test_the_gate_message_says_by_how_much(tmp_path):
    report = _report(tmp_path)
    worse = report.model_copy(update={"summary": {"adapter": {"loss": 3.0}, "base": {"loss": 2.5}}})
    decision = evaluate.gate(worse, "loss")
    assert not decision.passed and "3.0000 vs 2.5000 (+0.5000" in decision.message
    assert evaluate.gate(worse, "loss", tolerance=0.6).passed
    missing = evaluate.gate(report, "asr_wer")
    assert not missing.passed and "could not be computed" in missing.message
