"""vss_core.evaluate: the gate's message says by how much the adapter missed (the report's
artifact: tests/unit/test_stages.py)."""

from tests.helpers import eval_report
from vss_core import evaluate


def test_the_gate_message_says_by_how_much(tmp_path):
    report = eval_report(tmp_path)
    worse = report.model_copy(update={"summary": {"adapter": {"loss": 3.0}, "base": {"loss": 2.5}}})
    decision = evaluate.gate(worse, "loss")
    assert not decision.passed and "3.0000 vs 2.5000 (+0.5000" in decision.message
    assert evaluate.gate(worse, "loss", tolerance=0.6).passed
    missing = evaluate.gate(report, "asr_wer")
    assert not missing.passed and "could not be computed" in missing.message
