"""vss_core.sequence: the official LongCat-Flash-Omni voice-chat sequence and the tiny tokenizer.

The golden reference below is written from the official converter rules
(data/multimodal_tokenizer.py, data/converters/audio_converter.py, image_converter.py, constants.py)
and uses only the raw tokenizer, never the helpers under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vss_core import sequence as seq
from vss_core.errors import DatasetError, ModelError

# Official constants.py, written out independently of vss_core.sequence.
OFFICIAL_MASKS = {
    "<|audio|>": "<mask_110>",
    "<|/audio|>": "<mask_111>",
    "<|audio_pad|>": "<mask_112>",
    "</pause>": "<mask_113>",
    "<begin-of-system>": "<mask_114>",
    "<begin-of-user>": "<mask_115>",
    "<begin-of-assistant>": "<mask_116>",
    "<begin-of-voice-assistant>": "<mask_117>",
    "<|image_pad|>": "<mask_118>",
    "<image>": "<mask_119>",
}
IGNORE = -100
CODEC_PAD, CODEC_EOS, OFFSET = 3, 2, 32


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tiny"
    seq.write_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def ids(tok):
    return seq.special_ids(tok)


def _codes(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.randint(0, 8192, (frames,), generator=g)]
        + [torch.randint(0, 8100, (frames,), generator=g) for _ in range(3)],
        dim=1,
    )


def _sample(tok, ids, **over):
    kwargs = dict(
        frame_pairs=[(0.0, 4), (1.25, 4)],
        n_audio_tokens=3,
        codes=_codes(9),
        transcript="Hi there.</pause>Yes.",
        system="Be kind.",
        instruction="Answer briefly.",
        segment_frames=[5, 4],
    )
    kwargs.update(over)
    return seq.build_voice_chat_sample(tok, ids, **kwargs)


# --- 1. golden --------------------------------------------------------------------------------


def _reference(tok, codes, frames):
    """Independent re-computation of the official voice-chat sample for `_sample`'s inputs."""

    def enc(text):
        for special, mask in OFFICIAL_MASKS.items():
            text = text.replace(special, mask)
        return tok.encode(text, add_special_tokens=False)

    eos, pad = tok.eos_token, tok.pad_token_id
    text, roles, codec, body = [], [], [], []

    def add(piece, role, is_body=False, rows=None):
        text.extend(piece)
        roles.extend([role] * len(piece))
        codec.extend(rows if rows is not None else [[CODEC_PAD] * 4] * len(piece))
        body.extend([is_body] * len(piece))

    # system message (else-branch): "SYSTEM:" | text + conversation_eos | "\n"
    add(enc("SYSTEM:"), 0)
    add(enc("Be kind.") + enc(eos), 1)
    add(enc("\n"), 0)
    # user message: all flags 2; video pads after literal timestamps, audio run, text
    user = enc("USER:")
    user += enc("second{0.0}:" + "<|image_pad|>" * 4 + "second{1.3}:" + "<|image_pad|>" * 4)
    user += enc("<|audio|>" + "<|audio_pad|>" * 3 + "<|/audio|>")
    user += enc("Answer briefly.")
    user += enc("\n")
    add(user, 2)
    # voice assistant: prefix flag 0, segments flag 3, suffix flag 0
    add(enc("VOICE ASSISTANT:"), 0)
    parts = "Hi there.</pause>Yes.".split("</pause>")
    start = 0
    for k, (part, n) in enumerate(zip(parts, frames)):
        seg = codes[start : start + n].tolist()
        start += n
        part_ids = enc(part + ("</pause>" if k < len(parts) - 1 else eos))
        assert len(part_ids) <= n + 1
        semantic = [c[0] + OFFSET for c in seg] + [CODEC_EOS]
        acoustic = [[CODEC_PAD] * 3] + [[c[i] + OFFSET for i in (1, 2, 3)] for c in seg]
        rows = [[semantic[j]] + acoustic[j] for j in range(n + 1)]
        add(part_ids + [pad] * (n + 1 - len(part_ids)), 3, True, rows)
    add(enc("\n"), 0)

    pause_id = tok.convert_tokens_to_ids("<mask_113>")
    types = []
    for t, b in zip(text, body):
        if not b:
            types.append(4)
        elif t == pause_id:
            types.append(1)
        elif t == tok.eos_token_id:
            types.append(2)
        elif t == pad:
            types.append(3)
        else:
            types.append(5)

    n_pos = len(text)
    text_labels, codec_labels = [IGNORE] * n_pos, [[IGNORE] * 4 for _ in range(n_pos)]
    for p in range(n_pos - 1):
        q = p + 1
        if not body[q]:
            continue
        text_labels[p] = text[q] if text[q] != pad else IGNORE
        codec_labels[p] = [codec[q][0]] + [c if c != CODEC_PAD else IGNORE for c in codec[q][1:]]
    return {
        "input_ids": text,
        "codec_ids": codec,
        "token_types": types,
        "role_flags": roles,
        "text_labels": text_labels,
        "codec_labels": codec_labels,
    }


def test_golden_sample_matches_the_official_rules(tok, ids):
    codes = _codes(9)
    got = _sample(tok, ids, codes=codes)
    want = _reference(tok, codes, [5, 4])
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == torch.long, key
        assert got[key].tolist() == value, key
    # a few readable facts about the layout
    va_body = (got["role_flags"] == 3).nonzero().flatten()
    assert len(va_body) == (5 + 1) + (4 + 1)
    first, second = va_body[0].item(), va_body[6].item()
    assert got["codec_ids"][first].tolist()[1:] == [CODEC_PAD] * 3
    assert got["codec_ids"][first + 5, 0] == CODEC_EOS and got["codec_ids"][second + 4, 0] == CODEC_EOS
    assert (got["input_ids"] == ids.pause).sum() == 1 and (got["input_ids"] == ids.image_pad).sum() == 8
    assert (got["input_ids"] == ids.audio_pad).sum() == 3
    assert got["text_labels"][first - 1] == got["input_ids"][first]  # ":" of VOICE ASSISTANT: predicts it
    assert got["codec_labels"][-1].tolist() == [IGNORE] * 4


# --- 2. tokenizer -------------------------------------------------------------------------------


def test_tiny_tokenizer_loads_and_carries_the_official_reserved_tokens(tok_dir, tok, ids):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert "auto_map" not in config
    assert json.loads((tok_dir / "special_tokens_map.json").read_text())["eos_token"] == "</longcat_s>"
    assert len(tok) == seq.TINY_VOCAB_SIZE <= 1024
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token) == ("</longcat_s>", 2, 3, "<longcat_s>")
    for special, mask in OFFICIAL_MASKS.items():
        token_id = tok.convert_tokens_to_ids(mask)
        assert tok.encode(mask, add_special_tokens=False) == [token_id], mask
        assert seq.encode_text(tok, f"a{special}b") == tok.encode(f"a{mask}b", add_special_tokens=False)
    by_name = {
        "audio_bos": "<mask_110>",
        "audio_eos": "<mask_111>",
        "audio_pad": "<mask_112>",
        "pause": "<mask_113>",
        "system_bos": "<mask_114>",
        "user_bos": "<mask_115>",
        "assistant_bos": "<mask_116>",
        "voice_assistant_bos": "<mask_117>",
        "image_pad": "<mask_118>",
        "image": "<mask_119>",
    }
    for name, mask in by_name.items():
        assert getattr(ids, name) == tok.convert_tokens_to_ids(mask), name
    assert (ids.text_eos, ids.text_pad, ids.text_bos) == (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    assert ids.free_end == ids.pause == 137  # the default layout mirrors the official vocabulary
    assert ids.final_end == ids.text_eos == 2
    text = "Hello, 你好! second{0.5}:"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tiny_tokenizer_is_deterministic(tmp_path, tok_dir):
    seq.write_tiny_tokenizer(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()


def test_ids_follow_the_tokenizer_not_constants(tmp_path, tok, ids):
    size = seq.write_tiny_tokenizer(tmp_path / "other", vocab_size=640, mask_start_id=40)
    other = AutoTokenizer.from_pretrained(tmp_path / "other")
    assert size == len(other) == 640
    oid = seq.special_ids(other)
    assert oid.pause == other.convert_tokens_to_ids("<mask_113>") == 153 != ids.pause
    assert oid.audio_pad == other.convert_tokens_to_ids("<mask_112>") != ids.audio_pad
    sample = _sample(other, oid)
    assert (sample["input_ids"] == oid.pause).sum() == 1 and (sample["input_ids"] == ids.pause).sum() == 0
    assert (sample["input_ids"] == oid.image_pad).sum() == 8 and (sample["input_ids"] == oid.audio_pad).sum() == 3
    assert sample["input_ids"].max() < len(other)
    codes = _codes(9)
    want = _reference(other, codes, [5, 4])
    assert _sample(other, oid, codes=codes)["input_ids"].tolist() == want["input_ids"]


def test_missing_reserved_tokens_raise_model_error():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "a": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(ModelError) as err:
        seq.special_ids(bare)
    text = str(err.value)
    assert "<mask_112>" in text and "<|audio_pad|>" in text and "</pause>" in text and "pad_token" in text


# --- 3. edge cases --------------------------------------------------------------------------------


def test_no_transcript_follows_the_official_empty_text(tok, ids):
    one = _sample(tok, ids, transcript=None, segment_frames=None)
    body = (one["role_flags"] == 3).nonzero().flatten()
    assert len(body) == 10
    assert one["input_ids"][body].tolist() == [ids.text_eos] + [ids.text_pad] * 9
    assert (one["text_labels"] != IGNORE).sum() == 0
    assert (one["codec_labels"][:, 0] != IGNORE).sum() == 10  # 9 semantic codes + EOS
    assert (one["codec_labels"][:, 1:] != IGNORE).sum() == 9 * 3
    assert one["token_types"][body].tolist() == [2] + [3] * 9

    two = _sample(tok, ids, transcript="")
    body = (two["role_flags"] == 3).nonzero().flatten()
    assert two["input_ids"][body].tolist() == [ids.pause] + [ids.text_pad] * 5 + [ids.text_eos] + [ids.text_pad] * 4
    assert (two["text_labels"] != IGNORE).sum() == 0


def test_transcript_too_long_says_by_how_much(tok, ids):
    with pytest.raises(DatasetError) as err:
        long_text = "This sentence is far too long for three frames."
        _sample(tok, ids, transcript=long_text, codes=_codes(3), segment_frames=None)
    text = str(err.value)
    assert "too many" in text and "</pause>" in text and "4 positions" in text


def test_segment_count_and_codes_are_checked(tok, ids):
    with pytest.raises(DatasetError, match="segment"):
        _sample(tok, ids, segment_frames=None)  # one </pause> but one segment
    with pytest.raises(DatasetError, match="add up"):
        _sample(tok, ids, segment_frames=[5, 5])
    with pytest.raises(DatasetError, match="8192"):
        _sample(tok, ids, codes=_codes(9) + 8192)
    with pytest.raises(DatasetError, match="shape"):
        _sample(tok, ids, codes=torch.zeros(9, 3, dtype=torch.long))
    with pytest.raises(DatasetError, match="special token"):
        _sample(tok, ids, transcript="Hi</longcat_s>.</pause>Yes.")


def test_generation_prompt_ends_with_the_voice_assistant_prefix(tok, ids):
    prompt = _sample(tok, ids, codes=None, transcript=None, segment_frames=None)
    full = _sample(tok, ids)
    n = prompt["input_ids"].shape[0]
    assert full["input_ids"][:n].tolist() == prompt["input_ids"].tolist()
    assert tok.decode(prompt["input_ids"][-len(tok.encode("VOICE ASSISTANT:", add_special_tokens=False)) :]) == (
        "VOICE ASSISTANT:"
    )
    assert (prompt["text_labels"] != IGNORE).sum() == 0 and (prompt["codec_labels"] != IGNORE).sum() == 0


def test_no_video_and_no_audio(tok, ids):
    sample = _sample(tok, ids, frame_pairs=[], n_audio_tokens=0, system=None, instruction=None)
    assert not torch.isin(sample["input_ids"], torch.tensor([ids.image_pad, ids.audio_bos, ids.audio_pad])).any()
    assert sample["role_flags"][0] == 2  # starts with the user turn


@pytest.mark.parametrize(
    "t, text",
    [
        (0, "second{0.0}:"),
        (0.5, "second{0.5}:"),
        (2.0, "second{2.0}:"),
        (0.25, "second{0.3}:"),  # exact binary tie -> half-up
        (0.35, "second{0.3}:"),  # 0.35 is 0.34999... in binary: Decimal(x) sees that
        (1 / 3, "second{0.3}:"),
        (12.96, "second{13.0}:"),
        (61.05, "second{61.0}:"),
    ],
)
def test_format_timestamp_matches_the_official_rounding(t, text):
    assert seq.format_timestamp(t) == text


def test_format_timestamp_rejects_bad_values():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(DatasetError):
            seq.format_timestamp(bad)


def test_collate_pads_to_the_longest(tok, ids):
    a = _sample(tok, ids)
    b = _sample(tok, ids, frame_pairs=[(0.0, 2)], system=None, transcript=None, segment_frames=None)
    batch = seq.collate_sequences([a, b])
    la, lb = a["input_ids"].shape[0], b["input_ids"].shape[0]
    assert la > lb
    assert batch["input_ids"].shape == (2, la) and batch["codec_ids"].shape == (2, la, 4)
    assert batch["attention_mask"].tolist() == [[1] * la, [1] * lb + [0] * (la - lb)]
    assert (batch["input_ids"][1, lb:] == ids.text_pad).all()
    assert (batch["codec_ids"][1, lb:] == CODEC_PAD).all()
    assert (batch["text_labels"][1, lb:] == IGNORE).all() and (batch["codec_labels"][1, lb:] == IGNORE).all()
    assert (batch["role_flags"][1, lb:] == 0).all()
    for key in seq.SEQUENCE_KEYS:
        assert torch.equal(batch[key][0], a[key]) and torch.equal(batch[key][1, :lb], b[key])
    with pytest.raises(DatasetError, match="lacks"):
        seq.collate_sequences([{"input_ids": a["input_ids"]}])
