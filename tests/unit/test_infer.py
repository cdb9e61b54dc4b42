"""vss_core.generate / vss_core.infer and `vss infer`: the official two-stage state machine, generation read
against the training forward, end to end to a WAV + transcript."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from deployments import cli
from vss_core import codec as codec_lib
from vss_core import data, generate, infer, lora
from vss_core import model as omni
from vss_core.config import DataConfig, LoraConfig, load_config
from vss_core.errors import ConfigError, DatasetError, ModelError
from vss_core.model import embeddings as emb

DATA = {"video_frames": 4, "video_fps": 2.0, "audio_seconds": 2.0, "workers": 1}
BIG = 1e4  # a forced logit: survives the repetition penalty (1e4 / 1.1**30 >> 0)


@pytest.fixture(scope="module")
def sample(demo_data_dir):
    return sorted(p for p in demo_data_dir.iterdir() if p.is_dir())[0]


@pytest.fixture(scope="module")
def prompt(sample, tiny_model_dir):
    return data.prepare_inputs(sample, DataConfig(**DATA), tiny_model_dir)


@pytest.fixture(scope="module")
def special(tiny_model_dir):
    return omni.CheckpointConfigs(tiny_model_dir).special_ids


def _lora_model(model_dir, seed: int = 0):
    peft_model = lora.apply_lora(
        omni.load_omni(model_dir),
        LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "projectors", "audio_heads"]),
    )
    gen = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter matter
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    return peft_model.eval()


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
        [f"model.source={model_dir}", f"model.codec_source={codec_dir}", *(f"data.{k}={v}" for k, v in DATA.items())],
    )
    (run_dir / "config.json").write_text(cfg.model_dump_json())
    return adapter


class Forcer:
    """Forward hooks that force the picks of the text head and the 4 speech heads, step by step.

    `text(t)` / `audio(t, i)` give the id to force at generation step t (head i); the real logits of
    every call are recorded before they are replaced by a one-hot of BIG.
    """

    def __init__(self, model, text, audio):
        self.t, self.text, self.audio = 0, text, audio
        self.text_logits: list[torch.Tensor] = []
        self.audio_logits: list[list[torch.Tensor]] = []
        heads = model.audio_output_layer.audio_output_layers
        self.hooks = [h.register_forward_hook(self._head(i)) for i, h in enumerate(heads)]
        self.hooks.append(model.llm.lm_head.register_forward_hook(self._lm_head))

    @staticmethod
    def _one_hot(like: torch.Tensor, idx: int) -> torch.Tensor:
        out = torch.zeros_like(like)
        out[..., idx] = BIG
        return out

    def _head(self, i):
        def hook(_m, _inp, out):
            if i == 0:
                self.audio_logits.append([])
            self.audio_logits[-1].append(out.detach().clone())
            return self._one_hot(out, self.audio(self.t, i))

        return hook

    def _lm_head(self, _m, _inp, out):  # the last call of a step
        self.text_logits.append(out.detach().clone())
        forced = self._one_hot(out, self.text(self.t))
        self.t += 1
        return forced

    def remove(self):
        for h in self.hooks:
            h.remove()


# --- the state machine ----------------------------------------------------------------------------------


def _scripted(model, prompt, special, text_script, eos_steps, max_steps):
    """Generate with the text head forced to text_script[t] (then 400) and the semantic head to codec EOS
    at eos_steps (else 132 + t); acoustic head i emits 32 + 10 t + i at step t."""

    def text(t):
        return text_script[t] if t < len(text_script) else 400

    def audio(t, i):
        if i == 0:
            return emb.AUDIO_EOS if t in eos_steps else 132 + t
        return 32 + 10 * t + i

    forcer = Forcer(model, text, audio)
    try:
        return generate.generate(model, prompt, special, max_steps)
    finally:
        forcer.remove()


def _frame(t):  # the codec frame the semantic of step t and the acoustics of step t + 1 make (offset removed)
    return [100 + t, 10 * (t + 1) + 1, 10 * (t + 1) + 2, 10 * (t + 1) + 3]


def test_generation_follows_the_two_stage_state_machine(tiny_model_dir, prompt, special):
    model = omni.load_omni(tiny_model_dir).eval()
    pad, free, final = special.text_pad, special.free_end, special.final_end
    # segment 1: text 300 301 </pause> (steps 0-2), audio only 3-4, semantic EOS at 4 -> segment 2;
    # segment 2: text 302 EOS (steps 5-6), audio only 7-8, semantic EOS at 8 -> the answer ends.
    script = [300, 301, free, 310, 311, 302, final, 320, 321, 322]
    g = _scripted(model, prompt, special, script, eos_steps={4, 8}, max_steps=50)
    assert g.stopped_at_eos and g.segments == 2
    assert len(g.steps) == 9  # nothing after the final segment's semantic EOS
    # text is kept up to and including each end token; masked (text PAD) while audio only
    assert g.text_ids == [300, 301, free, 302, final]
    assert [s[0] for s in g.steps] == [300, 301, free, pad, pad, 302, final, pad, pad]
    # the first step of each segment has its acoustic ids discarded; the others are as the heads picked them
    D = generate.DISCARDED
    for t, step in enumerate(g.steps):
        assert step[1] == (emb.AUDIO_EOS if t in (4, 8) else 132 + t)
        assert step[2:] == ([D] * 3 if t in (0, 5) else [32 + 10 * t + i for i in (1, 2, 3)])
    # official shift_codec_back: semantic of step j with acoustics of step j + 1, EOS steps dropped, minus 32
    expected = torch.tensor([_frame(t) for t in (0, 1, 2, 3, 5, 6, 7)])
    assert torch.equal(g.codes, expected)
    assert torch.equal(generate.shift_codec_back([s[1:] for s in g.steps]), expected)

    # A first segment ending with EOS ends the answer at its semantic EOS: one segment.
    g = _scripted(model, prompt, special, [300, final], eos_steps={3, 6}, max_steps=50)
    assert g.stopped_at_eos and g.segments == 1 and len(g.steps) == 4
    assert g.text_ids == [300, final]
    assert torch.equal(g.codes, torch.tensor([_frame(t) for t in (0, 1, 2)]))

    # A semantic EOS while text is still coming (stage 1) does not end the segment.
    g = _scripted(model, prompt, special, [300, 301, 302, final], eos_steps={1, 5}, max_steps=50)
    assert g.stopped_at_eos and g.segments == 1 and len(g.steps) == 6
    assert g.text_ids == [300, 301, 302, final]

    # The cap: max_steps reached before the end -> stopped_at_eos False, exactly max_steps steps.
    g = _scripted(model, prompt, special, script, eos_steps={4, 8}, max_steps=6)
    assert not g.stopped_at_eos and len(g.steps) == 6 and g.segments == 2
    assert g.text_ids == [300, 301, free, 302]
    assert torch.equal(g.codes, torch.tensor([_frame(t) for t in (0, 1, 2, 3)]))


def test_generation_validates_its_settings_and_sampling_is_seeded(tiny_model_dir, prompt, special):
    model = omni.load_omni(tiny_model_dir).eval()
    for bad in ({"max_steps": 0}, {"max_steps": 3, "temperature": -1.0}, {"max_steps": 3, "top_k": -1}):
        with pytest.raises(ConfigError, match="generation"):
            generate.generate(model, prompt, special, **bad)
    greedy = generate.generate(model, prompt, special, 6)
    assert greedy.codes.shape[1] == 4 and greedy.codes.dtype == torch.int64 and (greedy.codes >= 0).all()
    assert len(greedy.steps) <= 6 and (greedy.stopped_at_eos or len(greedy.steps) == 6)
    a, b, c = (
        generate.generate(model, prompt, special, 6, temperature=1.5, top_k=0, seed=s).text_ids for s in (3, 3, 4)
    )
    assert a == b and a != c


# --- generation read against the training forward ------------------------------------------------------------


def test_kv_cached_generation_steps_give_the_training_forward_logits(
    tiny_model_dir, tiny_codec_dir, demo_data_dir, sample, prompt, special, tmp_path
):
    cfg = DataConfig(root=str(demo_data_dir), **DATA)
    report = data.validate_dataset(cfg)
    chosen = [s for s in report.samples if s.name == sample.name]
    prepared = data.prepare_dataset(chosen, cfg, tiny_model_dir, tiny_codec_dir, tmp_path / "prepared")
    (item,) = data.load_prepared(prepared.dir)
    P = prompt["input_ids"].shape[0]
    # Inference prepares the prompt with the very code training used: the training sequence starts with it.
    assert torch.equal(item["input_ids"][:P], prompt["input_ids"]) and torch.equal(
        item["codec_ids"][:P], prompt["codec_ids"]
    )
    for key in ("pixel_values", "grid_shapes", "audio_features"):
        assert torch.equal(item[key], prompt[key])
    body = (item["role_flags"] == 3).nonzero()[:, 0]
    T = body.shape[0]
    assert body.tolist() == list(range(P, P + T))  # the voice-assistant body follows the prompt

    model = _lora_model(tiny_model_dir).get_base_model()
    batch = omni.collate([item])
    # The training forward's internals (OmniModel.forward): hidden -> lm_head / teacher-forced speech heads.
    with torch.no_grad():
        embeds = model.embed(
            batch["input_ids"],
            batch["codec_ids"],
            batch["pixel_values"],
            batch["grid_shapes"],
            batch["audio_features"],
            batch["audio_mask"],
        )
        hidden = model.llm.model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state[0]
        labels, codec_ids = item["codec_labels"], item["codec_ids"]
        next_ids = torch.cat([codec_ids[1:], torch.full_like(codec_ids[:1], omni.IGNORE)])
        teacher = torch.where(labels != omni.IGNORE, labels, next_ids.clamp(min=0))
        span = slice(P - 1, P - 1 + T)  # the hidden state at p predicts position p + 1
        ref_text = model.llm.lm_head(hidden[span]).float()
        ref_audio = [lg.float() for lg in model.audio_output_layer.teacher_forced_logits(hidden[span], teacher[span])]
        out = model(**batch)
    # ... which are what the training loss scores.
    csel = (labels[span] != omni.IGNORE).any(-1)
    for i in range(4):
        lab = labels[span][csel][:, i]
        keep = lab != omni.IGNORE
        ce = torch.nn.functional.cross_entropy(ref_audio[i][csel][keep], lab[keep])
        torch.testing.assert_close(ce, out.codebook_losses[i], atol=1e-5, rtol=1e-5)

    # The generation loop, fed the training ids (the picks forced to them): same logits at every step.
    forcer = Forcer(model, text=lambda t: int(item["input_ids"][P + t]), audio=lambda t, i: int(teacher[P - 1 + t, i]))
    try:
        g = generate.generate(model, prompt, special, max_steps=T + 5)
    finally:
        forcer.remove()
    assert g.stopped_at_eos and len(g.steps) == T
    # float32, one step at a time through the KV cache vs the whole sequence at once: the same math in
    # another reduction order (seen here at ~1e-5 on some runs); a wrong position would differ by O(1).
    gen_text = torch.stack(forcer.text_logits).float()
    torch.testing.assert_close(gen_text, ref_text, atol=1e-4, rtol=1e-4)
    for i in range(4):
        gen_audio = torch.stack([step[i] for step in forcer.audio_logits]).float()
        torch.testing.assert_close(gen_audio, ref_audio[i], atol=1e-4, rtol=1e-4)
    # The state machine fed back exactly the training inputs, and shift_codec_back recovers the training codes.
    fed = torch.tensor(g.steps)
    assert torch.equal(fed[:-1, 0], item["input_ids"][P : P + T - 1])
    codec_fed = fed[:-1, 1:].clamp(min=0).masked_fill(fed[:-1, 1:] < 0, emb.PADDING_IDX)
    assert torch.equal(codec_fed, codec_ids[P : P + T - 1])
    assert torch.equal(g.codes, item["codes"])
    text = item["input_ids"][P : P + T]
    assert g.text_ids == text[: int((text == special.final_end).nonzero()[0]) + 1].tolist()


# --- vss infer --------------------------------------------------------------------------------------------------


def test_vss_infer_writes_wav_and_text_and_the_adapter_changes_the_speech(
    tiny_model_dir, tiny_codec_dir, sample, prompt, special, tmp_path, capsys
):
    peft_model = _lora_model(tiny_model_dir, seed=1)
    adapter = _save_run(peft_model, tmp_path / "run", tiny_model_dir, tiny_codec_dir)
    out = tmp_path / "speech" / "out.wav"

    assert (
        cli.main(["infer", "--adapter", str(adapter), "--sample", str(sample), "--out", str(out), "--max-seconds", "1"])
        == 0
    )
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
    g = generate.generate(adapted, prompt, special, max_steps)
    in_memory = generate.generate(peft_model.get_base_model(), prompt, special, max_steps)
    base = generate.generate(omni.load_omni(tiny_model_dir).eval(), prompt, special, max_steps)
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

    report = infer.run_inference(adapter, sample, tmp_path / "again.wav", max_seconds=1)
    assert report.codes == g.codes.tolist() and report.frames == g.codes.shape[0] and report.segments == g.segments
    assert report.sample_rate == decoder.sample_rate and report.text_out == str(tmp_path / "again.txt")
    assert report.stopped_at_eos == g.stopped_at_eos


def test_model_and_codec_default_to_the_run_config_and_otherwise_must_be_given(
    tiny_model_dir, tiny_codec_dir, sample, tmp_path, capsys
):
    lone = _save_run(_lora_model(tiny_model_dir), tmp_path / "run", tiny_model_dir, tiny_codec_dir)
    (tmp_path / "run" / "config.json").unlink()
    out = tmp_path / "out.wav"
    assert cli.main(["infer", "--adapter", str(lone), "--sample", str(sample), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--model is required" in err and "config.json" in err
    # --model alone: the tiny checkpoint's decoder weights live in the codec repository, not found
    assert (
        cli.main(
            [
                "infer",
                "--adapter",
                str(lone),
                "--sample",
                str(sample),
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--max-seconds",
                "0.3",
            ]
        )
        == 2
    )
    assert "ckpt_path" in capsys.readouterr().err and not out.exists()
    argv = [
        "infer",
        "--adapter",
        str(lone),
        "--sample",
        str(sample),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--codec",
        str(tiny_codec_dir),
        "--max-seconds",
        "0.3",
    ]
    assert cli.main(argv) == 0
    assert sf.info(str(out)).samplerate == codec_lib.load_decoder(tiny_model_dir, tiny_codec_dir).sample_rate
    assert out.with_suffix(".txt").is_file()


def test_missing_adapter_and_sample_files_and_bad_settings_are_clear_errors(
    tiny_model_dir, tiny_codec_dir, sample, tmp_path, capsys
):
    out = tmp_path / "out.wav"
    base = ["--sample", str(sample), "--out", str(out), "--model", str(tiny_model_dir), "--codec", str(tiny_codec_dir)]

    assert cli.main(["infer", "--adapter", str(tmp_path / "nope"), *base]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope: not a directory" in err and "RUN/adapter" in err

    empty = tmp_path / "run" / "adapter"
    empty.mkdir(parents=True)
    (empty / infer.ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA"}))
    assert cli.main(["infer", "--adapter", str(empty), *base]) == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors is missing" in err and "adapter_config.json is missing" not in err

    adapter = _save_run(_lora_model(tiny_model_dir), tmp_path / "good", tiny_model_dir, tiny_codec_dir)
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
        infer.run_inference(empty, bad_sample, out, model_dir=tiny_model_dir, codec_dir=tiny_codec_dir)
    assert "adapter_model.safetensors is missing" in str(exc.value) and "in.mp4 is missing" in str(exc.value)
    # Sampling and length settings are validated up front, all at once.
    with pytest.raises(ModelError) as exc:
        infer.run_inference(adapter, sample, out, max_seconds=-1, temperature=-0.5, top_k=-2)
    msg = str(exc.value)
    assert "--max-seconds -1" in msg and "temperature=-0.5" in msg and "top_k=-2" in msg
    assert not out.exists()


def test_an_adapter_for_another_model_is_rejected(tiny_model_dir, tiny_codec_dir, tmp_path):
    adapter = _save_run(_lora_model(tiny_model_dir), tmp_path / "run", tiny_model_dir, tiny_codec_dir)
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
