"""vss_core.generate: the official two-stage state machine (the heads' picks forced step by step), its
settings, KV-cached generation read against the training forward, and a tiny model trained on one sample
answering it as trained: the official two-stage generation reproduces the transcript and the codec frames,
in step, and stops at EOS before the cap."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import INFER_DATA, Forcer, forward_hidden, lora_model, prepare_demo_sample
from vss_core import data, generate, model
from vss_core import model as omni
from vss_core.config import DataConfig
from vss_core.errors import ConfigError
from vss_core.model import embeddings as emb


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    item, cfg, sample = prepare_demo_sample(
        demo_data_dir, tiny_model_dir, tiny_codec_dir, tmp_path_factory.mktemp("prep"), frames=4, seconds=1.0
    )
    torch.manual_seed(0)
    m = model.load_omni(tiny_model_dir)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    batch = model.collate([item])
    for _ in range(100):  # the whole tiny model, so one sample is learned by heart in seconds
        loss = m(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2
    prompt = data.prepare_inputs(sample, cfg, tiny_model_dir)
    return m.eval(), item, prompt, model.CheckpointConfigs(tiny_model_dir).special_ids


def test_trained_model_speaks_its_answer_and_stops_at_eos(overfit):
    m, item, prompt, ids = overfit
    cap = item["codes"].shape[0] * 3
    g = generate.generate(m, prompt, ids, max_steps=cap)
    assert g.stopped_at_eos and g.segments == 1 and len(g.steps) < cap
    # the text stream: the transcript's tokens then EOS, exactly the training targets
    assert g.text_ids == item["text_labels"][item["text_labels"] != -100].tolist()
    assert g.text_ids[-1] == ids.text_eos
    # the speech: every frame of out.wav's codes, in order, none extra (EOS ended it)
    assert torch.equal(g.codes, item["codes"])
    # aligned streams: the fed-back steps are the training sequence's voice-assistant body
    body = item["role_flags"] == 3
    assert torch.equal(torch.tensor([s[0] for s in g.steps]), item["input_ids"][body])
    fed_codecs = torch.tensor([[c if c >= 0 else 3 for c in s[1:]] for s in g.steps])
    assert torch.equal(fed_codecs, item["codec_ids"][body])


def test_the_cap_cuts_an_answer_that_does_not_end(overfit):
    m, item, prompt, ids = overfit
    g = generate.generate(m, prompt, ids, max_steps=5)
    assert not g.stopped_at_eos and len(g.steps) == 5
    assert torch.equal(g.codes, item["codes"][:4])  # the 5th step's acoustics complete frame 4


def _scripted(model, infer_prompt, special_ids, text_script, eos_steps, max_steps):
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
        return generate.generate(model, infer_prompt, special_ids, max_steps)
    finally:
        forcer.remove()


def _frame(t):  # the codec frame the semantic of step t and the acoustics of step t + 1 make (offset removed)
    return [100 + t, 10 * (t + 1) + 1, 10 * (t + 1) + 2, 10 * (t + 1) + 3]


def test_generation_follows_the_two_stage_state_machine(tiny_model_dir, infer_prompt, special_ids):
    model = omni.load_omni(tiny_model_dir).eval()
    pad, free, final = special_ids.text_pad, special_ids.free_end, special_ids.final_end
    # segment 1: text 300 301 </pause> (steps 0-2), audio only 3-4, semantic EOS at 4 -> segment 2;
    # segment 2: text 302 EOS (steps 5-6), audio only 7-8, semantic EOS at 8 -> the answer ends.
    script = [300, 301, free, 310, 311, 302, final, 320, 321, 322]
    g = _scripted(model, infer_prompt, special_ids, script, eos_steps={4, 8}, max_steps=50)
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
    g = _scripted(model, infer_prompt, special_ids, [300, final], eos_steps={3, 6}, max_steps=50)
    assert g.stopped_at_eos and g.segments == 1 and len(g.steps) == 4
    assert g.text_ids == [300, final]
    assert torch.equal(g.codes, torch.tensor([_frame(t) for t in (0, 1, 2)]))

    # A semantic EOS while text is still coming (stage 1) does not end the segment.
    g = _scripted(model, infer_prompt, special_ids, [300, 301, 302, final], eos_steps={1, 5}, max_steps=50)
    assert g.stopped_at_eos and g.segments == 1 and len(g.steps) == 6
    assert g.text_ids == [300, 301, 302, final]

    # The cap: max_steps reached before the end -> stopped_at_eos False, exactly max_steps steps.
    g = _scripted(model, infer_prompt, special_ids, script, eos_steps={4, 8}, max_steps=6)
    assert not g.stopped_at_eos and len(g.steps) == 6 and g.segments == 2
    assert g.text_ids == [300, 301, free, 302]
    assert torch.equal(g.codes, torch.tensor([_frame(t) for t in (0, 1, 2, 3)]))


def test_generation_validates_its_settings_and_sampling_is_seeded(tiny_model_dir, infer_prompt, special_ids):
    model = omni.load_omni(tiny_model_dir).eval()
    for bad in ({"max_steps": 0}, {"max_steps": 3, "temperature": -1.0}, {"max_steps": 3, "top_k": -1}):
        with pytest.raises(ConfigError, match="generation"):
            generate.generate(model, infer_prompt, special_ids, **bad)
    greedy = generate.generate(model, infer_prompt, special_ids, 6)
    assert greedy.codes.shape[1] == 4 and greedy.codes.dtype == torch.int64 and (greedy.codes >= 0).all()
    assert len(greedy.steps) <= 6 and (greedy.stopped_at_eos or len(greedy.steps) == 6)
    a, b, c = (
        generate.generate(model, infer_prompt, special_ids, 6, temperature=1.5, top_k=0, seed=s).text_ids
        for s in (3, 3, 4)
    )
    assert a == b and a != c


def test_kv_cached_generation_steps_give_the_training_forward_logits(
    tiny_model_dir, tiny_codec_dir, demo_data_dir, infer_sample, infer_prompt, special_ids, tmp_path
):
    cfg = DataConfig(root=str(demo_data_dir), **INFER_DATA)
    report = data.validate_dataset(cfg)
    chosen = [s for s in report.samples if s.name == infer_sample.name]
    prepared = data.prepare_dataset(chosen, cfg, tiny_model_dir, tiny_codec_dir, tmp_path / "prepared")
    (item,) = data.load_prepared(prepared.dir)
    P = infer_prompt["input_ids"].shape[0]
    # Inference prepares the prompt with the very code training used: the training sequence starts with it.
    assert torch.equal(item["input_ids"][:P], infer_prompt["input_ids"]) and torch.equal(
        item["codec_ids"][:P], infer_prompt["codec_ids"]
    )
    for key in ("pixel_values", "grid_shapes", "audio_features"):
        assert torch.equal(item[key], infer_prompt[key])
    body = (item["role_flags"] == 3).nonzero()[:, 0]
    T = body.shape[0]
    assert body.tolist() == list(range(P, P + T))  # the voice-assistant body follows the prompt

    model = lora_model(tiny_model_dir).get_base_model()
    batch = omni.collate([item])
    # The training forward's internals (OmniModel.forward): hidden -> lm_head / teacher-forced speech heads.
    with torch.no_grad():
        hidden = forward_hidden(model, batch)
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
        g = generate.generate(model, infer_prompt, special_ids, max_steps=T + 5)
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
    assert g.text_ids == text[: int((text == special_ids.final_end).nonzero()[0]) + 1].tolist()
