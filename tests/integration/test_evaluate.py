"""The evaluate stage on the tiny model: an adapter whose LoRA is zero scores exactly as the base model
(the base is the same load with the adapter disabled), a deliberately damaged adapter scores worse and
the gate blocks its upload, the report is reused for the same weights and settings, and the model card
carries the table. The pause gate resumes on approval against a real local Prefect server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from devtools import prefect_server
from flows.vss import _gate
from vss_core import data, evaluate, lora, split, summary
from vss_core import model as omni
from vss_core.config import LoraConfig, load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    cfg = load_config(
        "cpu-demo",
        [
            f"data.root={demo_data_dir}",
            f"model.source={tiny_model_dir}",
            f"model.codec_source={tiny_codec_dir}",
            "eval.max_seconds=1.0",
        ],
    )
    report = data.validate_dataset(cfg.data)
    prepared = data.prepare_dataset(
        report.valid, cfg.data, tiny_model_dir, tiny_codec_dir, tmp_path_factory.mktemp("prepared")
    )
    samples = evaluate.held_out_samples(report, prepared, cfg.data.eval_fraction)
    assert samples and [s.name for s in samples] == split.held_out(prepared.samples, cfg.data.eval_fraction)
    return cfg, samples


def _adapter(folder: Path, model_dir: Path, noise: float) -> Path:
    peft_model = lora.apply_lora(
        omni.load_omni(model_dir),
        LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "audio_heads", "text_head"]),
    )
    gen = torch.Generator().manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name and noise:
            p.data = torch.randn(p.shape, generator=gen) * noise
    folder.mkdir(parents=True)
    state = get_peft_model_state_dict(peft_model)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    peft_model.peft_config["default"].save_pretrained(str(folder))
    (folder / "README.md").write_text("# adapter\n")
    return folder


def _evaluate(cfg, samples, adapter, model_dir, codec_dir, out):
    return evaluate.evaluate(
        adapter, model_dir, codec_dir, samples, cfg, out, with_base=True, tensorboard_dir=out / "tb", step=3
    )


def test_a_zero_adapter_scores_as_the_base_model(setup, tmp_path, tiny_model_dir, tiny_codec_dir):
    cfg, samples = setup
    adapter = _adapter(tmp_path / "adapter", tiny_model_dir, noise=0.0)
    report = _evaluate(cfg, samples, adapter, tiny_model_dir, tiny_codec_dir, tmp_path / "eval")
    by = {(s.model, s.sample): s for s in report.scores}
    for s in samples:
        a, b = by[("adapter", s.name)], by[("base", s.name)]
        assert a.loss == pytest.approx(b.loss, abs=1e-6) and a.text == b.text and a.frames == b.frames
    assert evaluate.gate(report, "loss").passed
    for s in report.scores:  # every figure present and sane
        assert s.loss > 0 and s.mcd is not None and s.mcd >= 0 and set(s.stream_losses) == set(evaluate.STREAMS)
        assert s.text_wer is not None  # the demo samples carry out.txt
        assert (tmp_path / "eval" / "answers" / s.model / f"{s.sample}.wav").is_file()
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.png")) == ["comparison.png"]
    assert list((tmp_path / "eval" / "tb").glob("events.out.tfevents.*"))


def test_the_gate_blocks_a_worse_adapter_and_the_card_and_report_say_why(
    setup, tmp_path, tiny_model_dir, tiny_codec_dir
):
    cfg, samples = setup
    adapter = _adapter(tmp_path / "adapter", tiny_model_dir, noise=2.0)
    out = tmp_path / "eval"
    report = _evaluate(cfg, samples, adapter, tiny_model_dir, tiny_codec_dir, out)
    worse = report.value("adapter", "loss") - report.value("base", "loss")
    assert worse > 0.5, report.summary
    decision = evaluate.gate(report, "loss")
    assert not decision.passed and f"+{worse:.4f}" in decision.message

    result = summary.RunResult(profile="cpu-demo")
    with pytest.raises(evaluate.EvalGateError, match=r"upload blocked \(eval.gate=block\).*worse than the base"):
        _gate(cfg, report, result)
    assert result.stages[-1].status == "blocked"
    _gate(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"gate": "off"})}), report, result)  # off: no gate
    lenient = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"tolerance": worse + 0.01})})
    _gate(lenient, report, result)
    assert result.stages[-1].status == "passed"

    evaluate.add_to_model_card(adapter, report)
    evaluate.add_to_model_card(adapter, report)  # replaced, not appended twice
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "\n# adapter\n" in card
    assert card.count(evaluate.CARD_SECTION) == 1
    assert f"| loss | {report.value('adapter', 'loss'):.4f} | {report.value('base', 'loss'):.4f} |" in card

    saved = json.loads((out / evaluate.REPORT).read_text())
    assert saved["summary"] == json.loads(report.model_dump_json())["summary"]
    stamp = (out / evaluate.REPORT).stat().st_mtime_ns
    again = _evaluate(cfg, samples, adapter, tiny_model_dir, tiny_codec_dir, out)
    assert again == report and (out / evaluate.REPORT).stat().st_mtime_ns == stamp  # reused
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_seconds": 0.5})})
    assert _evaluate(other, samples, adapter, tiny_model_dir, tiny_codec_dir, out).settings["max_seconds"] == 0.5


def _tiny_asr(folder: Path) -> Path:
    """A random-weight wav2vec2 CTC model with its processor: a real transformers ASR model directory."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True)
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(0)
    Wav2Vec2ForCTC(
        Wav2Vec2Config(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 8),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            pad_token_id=0,
        )
    ).save_pretrained(folder)
    return folder


def test_asr_word_error_rate_with_a_local_asr_model(setup, tmp_path, tiny_model_dir, tiny_codec_dir):
    cfg, samples = setup
    adapter = _adapter(tmp_path / "adapter", tiny_model_dir, noise=0.0)
    asr_cfg = cfg.model_copy(
        update={"eval": cfg.eval.model_copy(update={"asr_model": str(_tiny_asr(tmp_path / "asr"))})}
    )
    report = evaluate.evaluate(
        adapter, tiny_model_dir, tiny_codec_dir, samples[:1], asr_cfg, tmp_path / "eval", with_base=False
    )
    (score,) = report.scores
    assert score.asr_text is not None and score.asr_wer is not None and score.asr_wer >= 0
    assert report.value("adapter", "asr_wer") == score.asr_wer and "asr_wer" in report.table()
    missing = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"asr_model": str(tmp_path / "nope")})})
    with pytest.raises(evaluate.VSSError, match="eval.asr_model=.*is not a directory"):
        evaluate.evaluate(adapter, tiny_model_dir, tiny_codec_dir, samples[:1], missing, tmp_path / "eval2")


_PAUSED_FLOW = textwrap.dedent("""
    import sys
    from prefect import flow
    from tasks import stages
    from vss_core import evaluate

    report = evaluate.EvalReport.model_validate_json(open(sys.argv[1]).read())

    @flow(name="vss-gate-pause")
    def gated():
        decision = evaluate.gate(report, "loss")
        stages.wait_for_approval(report, decision, timeout_s=300)
        return "uploaded"

    print("RESULT", gated())
""")


def test_the_pause_gate_waits_and_resumes_on_approval_on_a_real_server(tmp_path):
    report = evaluate.EvalReport(
        adapter_dir=str(tmp_path),
        adapter_sha256="0" * 64,
        samples=["03"],
        settings={},
        scores=[],
        summary={"adapter": {"loss": 3.0}, "base": {"loss": 2.5}},
    )
    (tmp_path / "report.json").write_text(report.model_dump_json())
    script = tmp_path / "gated.py"
    script.write_text(_PAUSED_FLOW)
    with prefect_server.local_server(tmp_path / "prefect", tmp_path / "server.log") as env:
        flow_proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "report.json")],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            paused = lambda: [r for r in prefect_server.flow_runs(env) if r["state"] == "PAUSED"]
            prefect_server.wait(lambda: paused(), 120, "the flow to pause", [flow_proc])
            (run,) = paused()
            resume = (
                "import sys; from prefect.flow_runs import resume_flow_run\n"
                "resume_flow_run(sys.argv[1], run_input={'approve': True, 'note': 'looks fine'})"
            )
            subprocess.run([sys.executable, "-c", resume, run["id"]], env=env, check=True, timeout=60)
            out, _ = flow_proc.communicate(timeout=120)
            assert flow_proc.returncode == 0 and "RESULT uploaded" in out, out[-3000:]
            assert "Upload approved: looks fine" in out
        finally:
            prefect_server.stop(flow_proc)
