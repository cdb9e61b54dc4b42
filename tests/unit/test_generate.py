"""A tiny model trained on one sample answers it as trained: the official two-stage generation
reproduces the transcript and the codec frames, in step, and stops at EOS before the cap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vss_core import data, generate, model
from vss_core.config import DataConfig


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, tiny_model_dir, tiny_codec_dir, demo_data_dir):
    cfg = DataConfig(
        root=str(demo_data_dir),
        video_frames=4,
        video_fps=2,
        audio_seconds=1.0,
        workers=1,
        validation_cache=str(tmp_path_factory.mktemp("vcache")),
    )
    samples = data.select_samples(data.validate_dataset(cfg), "fail")[:1]
    out = tmp_path_factory.mktemp("prep")
    data.prepare_dataset(samples, cfg, tiny_model_dir, tiny_codec_dir, out)
    (item,) = data.load_prepared(out)
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
    prompt = data.prepare_inputs(Path(samples[0].path), cfg, tiny_model_dir)
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
