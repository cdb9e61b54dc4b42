"""vss_core.infer and `vss infer`: generation reads the sequence as training writes it, end to end to a WAV."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from deployments import cli
from vss_core import codec as codec_lib, data, demo, infer, lora, model as omni
from vss_core.config import DataConfig, LoraConfig, load_config
from vss_core.errors import DatasetError, ModelError

DATA = {"video_frames": 4, "video_fps": 2.0, "audio_seconds": 2.0, "workers": 1}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    model_dir = omni.write_tiny_checkpoint(root / "tiny")
    (sample,) = demo.write_demo_dataset(root / "data", samples=1, seed=0, seconds=2.0)
    return model_dir, sample


def _lora_model(model_dir, seed: int = 0):
    peft_model = lora.apply_lora(
        omni.load_omni(model_dir), LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "projectors", "audio_heads"])
    )
    gen = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter matter
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    return peft_model.eval()


def _save_run(peft_model, run_dir, model_dir):
    """A run directory as `vss run` leaves it: config.json + adapter/ written the way train.save_adapter does."""
    adapter = run_dir / "adapter"
    adapter.mkdir(parents=True)
    state = get_peft_model_state_dict(peft_model)
    save_file({k: v.contiguous() for k, v in state.items()}, str(adapter / infer.ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(str(adapter))
    cfg = load_config("cpu-demo", [f"model.source={model_dir}", *(f"data.{k}={v}" for k, v in DATA.items())])
    (run_dir / "config.json").write_text(cfg.model_dump_json())
    return adapter


def test_generator_step_logits_equal_the_training_forward_logits(assets, tmp_path):
    model_dir, sample = assets
    cfg = DataConfig(root=str(sample.parent), **DATA)
    prepared = data.prepare_dataset(data.validate_dataset(cfg).samples, cfg, model_dir, tmp_path / "prepared")
    (item,) = data.load_prepared(prepared.dir)
    # Inference prepares the inputs with the very code training used.
    inputs = data.prepare_inputs(sample, cfg, model_dir)
    assert torch.equal(inputs["frames"], item["frames"]) and torch.equal(inputs["fbank"], item["fbank"])

    model = _lora_model(model_dir).get_base_model()
    captured = {}
    hooks = [
        head.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out.detach().float()))
        for k, head in enumerate(model.audio_heads)
    ]
    with torch.no_grad():
        model(**omni.collate([item]))
    for h in hooks:
        h.remove()

    codes = item["codes"]
    special = model.audio_config.num_special_ids
    with torch.inference_mode():
        cached = infer.teacher_forced_logits(model, inputs["frames"], inputs["fbank"], codes)
        recomputed = infer.teacher_forced_logits(model, inputs["frames"], inputs["fbank"], codes, use_cache=False)
    ids, labels = model._speech_targets(codes[None], torch.tensor([codes.shape[0]]))
    for k in range(omni.NUM_CODEBOOKS):
        train = captured[k][0]  # [Fc+1, V]: SPEECH_START and every speech step
        assert cached[k].shape == train.shape == (codes.shape[0] + 1, model.audio_heads[k].out_features)
        torch.testing.assert_close(cached[k], train, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(recomputed[k], train, atol=1e-4, rtol=1e-4)
        # The generator's greedy pick at each step is the training forward's argmax (over the ids it may emit).
        picks = [infer.sampler(model)(t, k, cached[k][t]) for t in range(1, codes.shape[0])]
        allowed = train[1:-1].clone()
        allowed[:, :special] = -math.inf
        if k == 0:
            allowed[:, omni.AUDIO_EOS] = train[1:-1, omni.AUDIO_EOS]
        assert picks == allowed.argmax(-1).tolist()
    # The labels the training loss scores are the ids the teacher-forced generator was fed.
    assert torch.equal(labels[0, :, 0], ids[0, :, 0]) and ids[0, -1, 0] == omni.AUDIO_EOS


def test_generation_stops_at_max_frames_and_sampling_is_seeded(assets):
    model_dir, sample = assets
    model = omni.load_omni(model_dir).eval()
    inputs = data.prepare_inputs(sample, DataConfig(**DATA), model_dir)
    greedy = infer.generate_codes(model, inputs["frames"], inputs["fbank"], max_frames=5)
    assert 1 <= greedy.codes.shape[0] <= 5 and greedy.codes.shape[1] == 4
    if not greedy.stopped_at_eos:
        assert greedy.codes.shape[0] == 5
    sizes = torch.tensor(model.audio_config.codebook_sizes)
    assert (greedy.codes >= 0).all() and (greedy.codes < sizes).all()
    a, b, c = (
        infer.generate_codes(model, inputs["frames"], inputs["fbank"], 5, temperature=1.5, top_k=8, seed=s)
        for s in (3, 3, 4)
    )
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, c.codes)
    with pytest.raises(Exception, match="temperature"):
        infer.generate_codes(model, inputs["frames"], inputs["fbank"], 5, temperature=-1.0)


def test_vss_infer_writes_a_wav_and_the_adapter_changes_the_speech(assets, tmp_path, capsys):
    model_dir, sample = assets
    peft_model = _lora_model(model_dir, seed=1)
    adapter = _save_run(peft_model, tmp_path / "run", model_dir)
    out = tmp_path / "speech" / "out.wav"

    assert cli.main(["infer", "--adapter", str(adapter), "--sample", str(sample), "--out", str(out), "--max-seconds", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    wave, rate = sf.read(str(out), always_2d=True)
    info = sf.info(str(out))
    hop = codec_lib.TINY_CONFIG["hop_samples"]
    max_frames = math.ceil(1 * rate / hop)
    assert rate == 16000 and info.channels == 1
    assert hop <= wave.shape[0] <= max_frames * hop and wave.shape[0] % hop == 0
    assert np.isfinite(wave).all()

    # The adapter changes what the model says: same sample, base alone vs base + adapter (loaded from disk).
    inputs = data.prepare_inputs(sample, DataConfig(**DATA), model_dir)
    with_adapter = infer.load_adapter(omni.load_omni(model_dir), adapter).get_base_model()
    base = omni.load_omni(model_dir).eval()
    frames, fbank = inputs["frames"], inputs["fbank"]
    codes_adapted = infer.generate_codes(with_adapter, frames, fbank, max_frames).codes
    codes_base = infer.generate_codes(base, frames, fbank, max_frames).codes
    assert not torch.equal(codes_adapted, codes_base)
    # ... and the adapter loaded from disk is the one that was saved: same codes as the in-memory model.
    assert torch.equal(codes_adapted, infer.generate_codes(peft_model.get_base_model(), frames, fbank, max_frames).codes)
    # The WAV is the codec's decoding of those codes.
    expected = codec_lib.load_codec(model_dir).decode(codes_adapted).numpy()
    np.testing.assert_allclose(wave[:, 0], expected, atol=1 / 32767 + 1e-6)


def test_model_defaults_to_the_run_config_and_otherwise_must_be_given(assets, tmp_path, capsys):
    model_dir, sample = assets
    lone = _save_run(_lora_model(model_dir), tmp_path / "run", model_dir)
    (tmp_path / "run" / "config.json").unlink()
    out = tmp_path / "out.wav"
    assert cli.main(["infer", "--adapter", str(lone), "--sample", str(sample), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--model is required" in err and "config.json" in err
    argv = ["infer", "--adapter", str(lone), "--sample", str(sample), "--out", str(out), "--model", str(model_dir),
            "--max-seconds", "0.3"]
    assert cli.main(argv) == 0
    assert sf.info(str(out)).samplerate == 16000


def test_missing_adapter_and_sample_files_are_clear_errors(assets, tmp_path, capsys):
    model_dir, sample = assets
    out = tmp_path / "out.wav"
    base = ["--sample", str(sample), "--out", str(out), "--model", str(model_dir)]

    assert cli.main(["infer", "--adapter", str(tmp_path / "nope"), *base]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope: not a directory" in err and "RUN/adapter" in err

    empty = tmp_path / "run" / "adapter"
    empty.mkdir(parents=True)
    (empty / infer.ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA"}))
    assert cli.main(["infer", "--adapter", str(empty), *base]) == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors is missing" in err and "adapter_config.json is missing" not in err

    adapter = _save_run(_lora_model(model_dir), tmp_path / "good", model_dir)
    bad_sample = tmp_path / "01"
    bad_sample.mkdir()
    (bad_sample / "in.wav").write_bytes((sample / "in.wav").read_bytes())
    assert cli.main(["infer", "--adapter", str(adapter), "--sample", str(bad_sample), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in.mp4 is missing" in err and str(bad_sample) in err
    assert not out.exists()
    with pytest.raises(DatasetError, match="not a directory"):
        infer.run_inference(adapter, tmp_path / "no-sample", out)
    # Problems of several inputs are reported together.
    with pytest.raises(ModelError) as exc:
        infer.run_inference(empty, bad_sample, out, model_dir=model_dir)
    assert "adapter_model.safetensors is missing" in str(exc.value) and "in.mp4 is missing" in str(exc.value)


def test_an_adapter_for_another_model_is_rejected(assets, tmp_path):
    model_dir, _ = assets
    adapter = _save_run(_lora_model(model_dir), tmp_path / "run", model_dir)
    cfg = json.loads((adapter / infer.ADAPTER_CONFIG).read_text())
    cfg["target_modules"] = ["llm.model.layers.7.self_attn.0.q_a_proj"]
    (adapter / infer.ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not fit the base model"):
        infer.load_adapter(omni.load_omni(model_dir), adapter)


def test_vss_core_infer_does_not_import_prefect():
    import subprocess
    import sys

    code = "import sys, vss_core.infer; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
