"""vss_core.infer and `vss infer`: end to end to a WAV + transcript with the adapter loaded from disk, the
model and codec taken from the run's config unless given, and clear errors for missing or mismatched inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from deployments import cli
from tests.helpers import INFER_DATA, lora_model
from vss_core import codec as codec_lib
from vss_core import generate, infer
from vss_core import model as omni
from vss_core.config import load_config
from vss_core.errors import DatasetError, ModelError


def _save_run(peft_model, run_dir, model_dir, codec_dir):
    """A run directory as `vss run` leaves it: config.json + adapter/ written the way train.save_adapter does."""
    adapter = run_dir / "adapter"
    adapter.mkdir(parents=True)
    state = get_peft_model_state_dict(peft_model)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(adapter / infer.ADAPTER_WEIGHTS), metadata={"format": "pt"}
    )
    peft_model.peft_config["default"].save_pretrained(str(adapter))
    cfg = load_config(
        "cpu-demo",
        [
            f"model.source={model_dir}",
            f"model.codec_source={codec_dir}",
            *(f"data.{k}={v}" for k, v in INFER_DATA.items()),
        ],
    )
    (run_dir / "config.json").write_text(cfg.model_dump_json())
    return adapter


def _infer_argv(adapter, sample, out, model=None, codec=None, max_seconds=None) -> list[str]:
    """`vss infer`'s argv: --adapter, --sample, --out, then --model, --codec and --max-seconds where given."""
    argv = ["infer", "--adapter", str(adapter), "--sample", str(sample), "--out", str(out)]
    for flag, value in (("--model", model), ("--codec", codec), ("--max-seconds", max_seconds)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


# --- vss infer --------------------------------------------------------------------------------------------------


def test_vss_infer_writes_wav_and_text_and_the_adapter_changes_the_speech(
    tiny_model_dir, tiny_codec_dir, infer_sample, infer_prompt, special_ids, tmp_path, capsys
):
    peft_model = lora_model(tiny_model_dir, seed=1)
    adapter = _save_run(peft_model, tmp_path / "run", tiny_model_dir, tiny_codec_dir)
    out = tmp_path / "speech" / "out.wav"

    assert cli.main(_infer_argv(adapter, infer_sample, out, max_seconds="1")) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and str(out.with_suffix(".txt")) in printed
    decoder = codec_lib.load_decoder(tiny_model_dir, tiny_codec_dir)
    wave, rate = sf.read(str(out), always_2d=True)
    assert rate == decoder.sample_rate and sf.info(str(out)).channels == 1
    assert np.isfinite(wave).all()
    assert out.with_suffix(".txt").is_file()

    # The adapter loaded from disk is the one saved, and it changes what the model says.
    max_steps = int(np.ceil(1 * codec_lib.FRAME_RATE)) + 1
    adapted = infer.load_adapter(omni.load_omni(tiny_model_dir), adapter).get_base_model()
    g = generate.generate(adapted, infer_prompt, special_ids, max_steps)
    in_memory = generate.generate(peft_model.get_base_model(), infer_prompt, special_ids, max_steps)
    base = generate.generate(omni.load_omni(tiny_model_dir).eval(), infer_prompt, special_ids, max_steps)
    assert torch.equal(g.codes, in_memory.codes) and g.text_ids == in_memory.text_ids
    assert g.steps != base.steps and not (g.codes.shape == base.codes.shape and torch.equal(g.codes, base.codes))
    # The WAV is the decoder's decoding of those codes (ids beyond the decoder's codebooks clamped into
    # them: the tiny codec has 64 semantic / 25 acoustic codes, the heads 8192); out.txt is the text stream.
    fitted = infer.fit_codes(g.codes, decoder)
    sizes = [decoder.config.semantic_token_nums, *[decoder.config.codec_codebook_size**2] * 3]
    assert (fitted < torch.tensor(sizes)).all() and torch.equal(
        fitted[g.codes < torch.tensor(sizes)], g.codes[g.codes < torch.tensor(sizes)]
    )
    expected = codec_lib.decode_codes(decoder, fitted).numpy()
    assert wave.shape[0] == expected.shape[0]
    np.testing.assert_allclose(wave[:, 0], expected.clip(-1, 1), atol=1 / 32767 + 1e-6)
    tokenizer = omni.CheckpointConfigs(tiny_model_dir).tokenizer
    assert out.with_suffix(".txt").read_text(encoding="utf-8") == infer.clean_text(tokenizer, g.text_ids) + "\n"

    report = infer.run_inference(adapter, infer_sample, tmp_path / "again.wav", max_seconds=1)
    assert report.codes == g.codes.tolist() and report.frames == g.codes.shape[0] and report.segments == g.segments
    assert report.sample_rate == decoder.sample_rate and report.text_out == str(tmp_path / "again.txt")
    assert report.stopped_at_eos == g.stopped_at_eos


def test_model_and_codec_default_to_the_run_config_and_otherwise_must_be_given(
    tiny_model_dir, tiny_codec_dir, infer_sample, tmp_path, capsys
):
    lone = _save_run(lora_model(tiny_model_dir), tmp_path / "run", tiny_model_dir, tiny_codec_dir)
    (tmp_path / "run" / "config.json").unlink()
    out = tmp_path / "out.wav"
    assert cli.main(_infer_argv(lone, infer_sample, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--model is required" in err and "config.json" in err
    # --model alone: the tiny checkpoint's decoder weights live in the codec repository, not found
    assert cli.main(_infer_argv(lone, infer_sample, out, model=tiny_model_dir, max_seconds="0.3")) == 2
    assert "ckpt_path" in capsys.readouterr().err and not out.exists()
    argv = _infer_argv(lone, infer_sample, out, model=tiny_model_dir, codec=tiny_codec_dir, max_seconds="0.3")
    assert cli.main(argv) == 0
    assert sf.info(str(out)).samplerate == codec_lib.load_decoder(tiny_model_dir, tiny_codec_dir).sample_rate
    assert out.with_suffix(".txt").is_file()


def test_missing_adapter_and_sample_files_and_bad_settings_are_clear_errors(
    tiny_model_dir, tiny_codec_dir, infer_sample, tmp_path, capsys
):
    out = tmp_path / "out.wav"
    given = {"model": tiny_model_dir, "codec": tiny_codec_dir}

    assert cli.main(_infer_argv(tmp_path / "nope", infer_sample, out, **given)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope: not a directory" in err and "RUN/adapter" in err

    empty = tmp_path / "run" / "adapter"
    empty.mkdir(parents=True)
    (empty / infer.ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA"}))
    assert cli.main(_infer_argv(empty, infer_sample, out, **given)) == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors is missing" in err and "adapter_config.json is missing" not in err

    adapter = _save_run(lora_model(tiny_model_dir), tmp_path / "good", tiny_model_dir, tiny_codec_dir)
    bad_sample = tmp_path / "01"
    bad_sample.mkdir()
    (bad_sample / "in.wav").write_bytes((infer_sample / "in.wav").read_bytes())
    assert cli.main(_infer_argv(adapter, bad_sample, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in.mp4 is missing" in err and str(bad_sample) in err
    assert not out.exists()
    with pytest.raises(DatasetError, match="not a directory"):
        infer.run_inference(adapter, tmp_path / "no-sample", out)
    # Problems of several inputs are reported together.
    with pytest.raises(ModelError) as exc:
        infer.run_inference(empty, bad_sample, out, model_dir=tiny_model_dir, codec_dir=tiny_codec_dir)
    assert "adapter_model.safetensors is missing" in str(exc.value) and "in.mp4 is missing" in str(exc.value)
    # Sampling and length settings are validated up front, all at once.
    with pytest.raises(ModelError) as exc:
        infer.run_inference(adapter, infer_sample, out, max_seconds=-1, temperature=-0.5, top_k=-2)
    msg = str(exc.value)
    assert "--max-seconds -1" in msg and "temperature=-0.5" in msg and "top_k=-2" in msg
    assert not out.exists()


def test_an_adapter_for_another_model_is_rejected(tiny_model_dir, tiny_codec_dir, tmp_path):
    adapter = _save_run(lora_model(tiny_model_dir), tmp_path / "run", tiny_model_dir, tiny_codec_dir)
    cfg = json.loads((adapter / infer.ADAPTER_CONFIG).read_text())
    cfg["target_modules"] = ["llm.model.layers.7.self_attn.0.q_a_proj"]
    (adapter / infer.ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not fit the base model"):
        infer.load_adapter(omni.load_omni(tiny_model_dir), adapter)


def test_vss_core_infer_does_not_import_prefect():
    import subprocess
    import sys

    code = "import sys, vss_core.infer; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
