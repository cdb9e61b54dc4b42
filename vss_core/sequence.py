"""The official LongCat-Flash-Omni voice-chat training sequence, built with the checkpoint's own tokenizer.

Everything here follows the official repository (meituan-longcat/LongCat-Flash-Omni, commit 5481889):
`data/multimodal_tokenizer.py` (`MultimodalTokenizer.__init__`, `encode`, `_content_convert`,
`apply_chat_template`), `data/converters/*.py`, `data/utils.py` (`refix_frame_index`, `round_decimal`),
`constants.py` and `longcat_omni_demo.py` (`init_global_config`: `use_text_instruction=True`,
`add_round_idx=False`, `is_voice_chat=True`, `has_sec_sep=True`, `padding_idx=3`, `audio_head_num=4`,
`audio_vocab_size=8224`, `token_type_*`). The code is ours; the rules are theirs.

Special strings
---------------
The official tokenizer adds no tokens: the ten extended special strings are rewritten, before
tokenization, to reserved vocabulary entries `<mask_110>`..`<mask_119>` in this order
(`MultimodalTokenizer.__init__`, `extended_special_tokens_list`, `MASK_START_IDX = 110`)::

    <|audio|> <|/audio|> <|audio_pad|> </pause> <begin-of-system> <begin-of-user>
    <begin-of-assistant> <begin-of-voice-assistant> <|image_pad|> <image>

`encode_text` does that rewrite (official `MultimodalTokenizer.encode`). BOS/EOS/PAD are the text
tokenizer's own (`<longcat_s>`, `</longcat_s>` per `post_process/unified_post_processor.py`; EOS id 2
per `constants.EOD_INDEX`/`EOS_ID_FOR_PREPROCESS`; PAD id 3 per `padding_idx=3`, the id the official
embedding zeroes). `encode_text` passes `add_special_tokens=False`: the official `encode` relies on
the tokenizer adding nothing (the audio converter pairs `num_audio_token + 2` codec rows with the ids
of `<|audio|>` + pads + `<|/audio|>`, which only line up without an added BOS).

Text ids 137, 101, 2, 3 (what we conclude)
------------------------------------------
* 2 = EOS `</longcat_s>` (`EOD_INDEX = 2`). In the voice turn it ends the LAST segment's text
  (`AudioCodecSftDataConverter.convert`: `text_part += self.conversation_eos_token`); SGLang's
  `CHAT_TEXT_FINALLY_END = 2` (finish after this segment's audio). The codec stream has its own
  EOS, codec id 2 (`CODEC_EOS_ID`), ending every segment's semantic column.
* 3 = text PAD (`padding_idx=3`): fills a segment's text stream after its end token
  (`token_id_part += [self.text_pad_token_id] * len_padding_token`); its embedding is zeroed where
  codecs are present. Codec PAD is also 3 (`CODEC_PAD_ID`).
* 137 = SGLang's `CHAT_TEXT_FREE_END`: the text token that ends a chat segment's text and hands over
  to audio-only decoding, after which a NEW segment follows. The converter ends every non-final
  segment's text with `</pause>` and the final one with EOS, so 137 is `</pause>` = `<mask_113>` in
  the official vocabulary. Inferred, not printed anywhere in the open code: it implies `<mask_k>` at
  id 24 + k (`<|audio|>` = 134 ... `<image>` = 143); the tiny tokenizer reproduces that layout.
  `SpecialIds.free_end` is the tokenizer's `</pause>` id.
* 101 = SGLang's `CONT_TEXT_END`/`TTS_TEXT_END` and `token_pause=101` of `init_global_config`
  (with `token_asr=102`): the forced end of "cont" (continuation/TTS) requests, inserted after
  punctuation. Under the id-24 offset it is `<mask_77>`, which is NOT one of the ten strings the
  open tokenizer code maps; the voice-chat layout never uses it, so `SpecialIds` does not carry it.

The sequence (voice chat, one round)
------------------------------------
``apply_chat_template`` with ``use_text_instruction=True``, ``add_round_idx=False`` gives, turn by
turn (role flags from `ROLE_FLAG_IDS`: pad 0, system 1, user 2, assistant / voice assistant 3)::

    SYSTEM:{system}</longcat_s>\\n              flags 0 (prefix), 1 (text + EOS), 0 ("\\n")
    USER:{video}{audio}{instruction}\\n          flags 2 on every position of the user turn
    VOICE ASSISTANT:{segments}\\n               flags 0 (prefix), 3 (segments), 0 ("\\n")

* video (`ImageSftDataConverter.convert`, `has_sec_sep`): per frame pair
  ``second{t}:`` + ``<|image_pad|>`` x n, concatenated, no separator (`format_timestamp`).
* audio (`AudioSftDataConverter.convert`): ``<|audio|>`` + ``<|audio_pad|>`` x n + ``<|/audio|>``.
* segments (`AudioCodecSftDataConverter.convert` / `encode_assistant_multi_codec_ids`): the transcript
  is split on ``</pause>``; segment k has N_k codec frames and takes N_k + 1 positions::

      text      : tok(part_k + "</pause>")  (EOS instead of </pause> on the last)  then text PAD
      semantic  : s_0+32 ... s_(N-1)+32, 2 (codec EOS)
      acoustic  : 3 (PAD), a_0+32 ... a_(N-1)+32            (each of the 3 acoustic columns)

  The text of a segment must fit in N_k + 1 positions (official `assert len_padding_token >= 0`).
* every non-segment position has codec ids PAD (3) in all four columns.

Empty transcript (official rule)
--------------------------------
The converter does not special-case empty text: ``"".split("</pause>") == [""]`` (one segment), and
the text of that segment is ``"" + conversation_eos_token``, so the text stream is EOS at the
segment's first position, then text PAD (`convert`, lines ``text_part = content_part`` /
``text_part += self.conversation_eos_token`` / ``token_id_part += [pad] * len_padding_token``).
All-PAD text is only produced for USER-side codec input (``is_text_pad=True`` in `_content_convert`).
With ``transcript=None`` (or ``""``) we build exactly that input: every segment's text is just its end
token (``</pause>``, EOS on the last), then PAD. ``segment_frames`` may still split the speech.

Labels (our decision; the official code publishes only role masks)
------------------------------------------------------------------
Position p predicts position p+1 (the hidden state at p emits the text and codec ids that are the
input at p+1, as in SGLang's decode loop). A target at p+1 is learned only when p+1 lies in the
voice-assistant body (role flag 3 of the voice turn), so the last prefix token (``:`` of
``VOICE ASSISTANT:``) predicts the first segment position and nothing predicts the turn suffix:

* text: the segment's text tokens up to and including its end token (``</pause>`` / EOS). Text PAD
  after it carries no text loss: at inference the text stream is masked during audio-only decoding
  (AT_ST1), so there is nothing to predict there.
* semantic: all N+1 positions of every segment, so codec EOS (2) is learned at each segment end
  (that is what moves generation from AT_ST1 back to AT_ST0 or to the end).
* acoustic: the N positions holding a real acoustic id; the leading PAD of a segment is not a
  target (SGLang discards the acoustic ids sampled at the first step of a new segment).
* no transcript: the text stream is the official empty-text layout above, but carries NO text loss.
  The EOS/``</pause>`` at each segment start is a placeholder for text we do not know, and learning it
  would teach the model to stop its text at once in every answer; the codec targets are kept.

`token_types` uses the values of `init_global_config` (the open code publishes the values, not where
they go; we assign them by name): voice-assistant body positions get ``token_type_pause`` (1) where
the text is ``</pause>``, ``token_type_end`` (2) where it is EOS, ``token_type_audio`` (3) where it is
PAD (audio only), ``token_type_audio_text`` (5) otherwise; every other position gets
``token_type_text`` (4). ``token_type_asr`` (6) is unused in voice chat.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch

from vss_core.errors import DatasetError, ModelError, bullet_list

# --- official constants (constants.py) ----------------------------------------------------------

AUDIO_BOS_TOKEN = "<|audio|>"
AUDIO_EOS_TOKEN = "<|/audio|>"
AUDIO_PAD_TOKEN = "<|audio_pad|>"
TMP_PAUSE_TOKEN = "</pause>"
SYSTEM_BOS_TOKEN = "<begin-of-system>"
USER_BOS_TOKEN = "<begin-of-user>"
ASSISTANT_BOS_TOKEN = "<begin-of-assistant>"
VOICE_ASSISTANT_BOS_TOKEN = "<begin-of-voice-assistant>"
IMAGE_PAD_TOKEN = "<|image_pad|>"
DEFAULT_IMAGE_TOKEN = "<image>"

# `MultimodalTokenizer.extended_special_tokens_list`, mapped in order onto <mask_110>...
EXTENDED_SPECIAL_TOKENS: tuple[str, ...] = (
    AUDIO_BOS_TOKEN,
    AUDIO_EOS_TOKEN,
    AUDIO_PAD_TOKEN,
    TMP_PAUSE_TOKEN,
    SYSTEM_BOS_TOKEN,
    USER_BOS_TOKEN,
    ASSISTANT_BOS_TOKEN,
    VOICE_ASSISTANT_BOS_TOKEN,
    IMAGE_PAD_TOKEN,
    DEFAULT_IMAGE_TOKEN,
)
MASK_START_IDX = 110
SPECIAL_TO_MASK: dict[str, str] = {
    token: f"<mask_{MASK_START_IDX + i}>" for i, token in enumerate(EXTENDED_SPECIAL_TOKENS)
}

# Role prefixes with use_text_instruction=True (`f"{role.upper()}:"`, VOICE_ASSISTANT_PREFIX) and the
# turn suffix (simplify_conversation_format=False).
SYSTEM_PREFIX = "SYSTEM:"
USER_PREFIX = "USER:"
VOICE_ASSISTANT_PREFIX = "VOICE ASSISTANT:"
TURN_SUFFIX = "\n"

# Role flags (ROLE_FLAG_IDS).
PAD_FLAG_ID = 0
SYSTEM_FLAG_ID = 1
USER_FLAG_ID = 2
ASSISTANT_FLAG_ID = 3

# Codec stream (constants.py; audio_id_offset=32, audio_vocab_size=8224, audio_head_num=4).
CODEC_EOS_ID = 2
CODEC_PAD_ID = 3
CODEC_OFFSET = 32  # NUM_CODEC_PLACEHOLDERS
NUM_CODEBOOKS = 4
AUDIO_VOCAB_SIZE = 8224
MAX_RAW_CODE = AUDIO_VOCAB_SIZE - CODEC_OFFSET  # raw codec ids must be < 8192

# Text id the official embedding treats as padding (init_global_config padding_idx=3).
PADDING_IDX = 3
IGNORE_INDEX = -100

# Token types (init_global_config token_type_*).
TOKEN_TYPE_PAUSE = 1
TOKEN_TYPE_END = 2
TOKEN_TYPE_AUDIO = 3
TOKEN_TYPE_TEXT = 4
TOKEN_TYPE_AUDIO_TEXT = 5
TOKEN_TYPE_ASR = 6

SEQUENCE_KEYS = ("input_ids", "codec_ids", "token_types", "role_flags", "text_labels", "codec_labels")


# --- special ids ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialIds:
    """Every text id the sequence and generation need, read from the tokenizer (see `special_ids`)."""

    text_bos: int
    text_eos: int
    text_pad: int
    audio_bos: int
    audio_eos: int
    audio_pad: int
    pause: int
    system_bos: int
    user_bos: int
    assistant_bos: int
    voice_assistant_bos: int
    image_pad: int
    image: int

    @property
    def free_end(self) -> int:
        """Text id that ends a segment's text and leads to the next segment (SGLang CHAT_TEXT_FREE_END)."""
        return self.pause

    @property
    def final_end(self) -> int:
        """Text id that ends the answer after this segment's audio (SGLang CHAT_TEXT_FINALLY_END)."""
        return self.text_eos

    def as_dict(self) -> dict[str, int]:
        """All ids by field name, plus the two aliases generation uses."""
        return {**asdict(self), "free_end": self.free_end, "final_end": self.final_end}

    def all_ids(self) -> list[int]:
        return list(asdict(self).values())


_SPECIAL_FIELDS: dict[str, str] = {
    "audio_bos": AUDIO_BOS_TOKEN,
    "audio_eos": AUDIO_EOS_TOKEN,
    "audio_pad": AUDIO_PAD_TOKEN,
    "pause": TMP_PAUSE_TOKEN,
    "system_bos": SYSTEM_BOS_TOKEN,
    "user_bos": USER_BOS_TOKEN,
    "assistant_bos": ASSISTANT_BOS_TOKEN,
    "voice_assistant_bos": VOICE_ASSISTANT_BOS_TOKEN,
    "image_pad": IMAGE_PAD_TOKEN,
    "image": DEFAULT_IMAGE_TOKEN,
}


def load_tokenizer(model_dir: Path) -> Any:
    """The checkpoint's text tokenizer through transformers (no checkpoint code runs).

    Raises:
        ModelError: the directory holds no tokenizer transformers can load.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(
            f"{model_dir}: no tokenizer transformers can load ({type(exc).__name__}: {exc}); the checkpoint "
            "must carry its tokenizer files (tokenizer.json / tokenizer_config.json)"
        ) from None


def rewrite_special_tokens(text: str) -> str:
    """Replace the extended special strings by their reserved mask tokens.

    Follows `MultimodalTokenizer.convert_extented_special_tokens_to_mask_tokens` (plain `str.replace`
    in list order).
    """
    for special, mask in SPECIAL_TO_MASK.items():
        text = text.replace(special, mask)
    return text


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Tokenize `text` the official way: special strings -> mask tokens, then the text tokenizer.

    Follows `MultimodalTokenizer.encode`; `add_special_tokens=False` because the official sequence
    never receives tokenizer-added BOS/EOS (see the module docstring).
    """
    return list(tokenizer.encode(rewrite_special_tokens(text), add_special_tokens=False))


def special_ids(tokenizer: Any) -> SpecialIds:
    """Look up every id of `SpecialIds` in `tokenizer` (a transformers tokenizer).

    The extended special strings are found through their reserved mask tokens (official rewrite,
    `<|audio_pad|>` -> `<mask_112>`); BOS/EOS/PAD are the tokenizer's own (BOS falls back to EOS as in
    `MultimodalTokenizer.__init__`). Raises `ModelError` naming everything that is missing.
    """
    problems: list[str] = []
    vocab = tokenizer.get_vocab()
    found: dict[str, int] = {}
    for name, special in _SPECIAL_FIELDS.items():
        mask = SPECIAL_TO_MASK[special]
        if mask not in vocab:
            problems.append(f"{mask} (the reserved token for {special}) is not in the vocabulary")
            continue
        token_id = int(vocab[mask])
        pieces = tokenizer.encode(mask, add_special_tokens=False)
        if list(pieces) != [token_id]:
            problems.append(
                f"{mask} (for {special}) is in the vocabulary as id {token_id} but is not an added/special "
                f"token: the tokenizer splits it into {list(pieces)}"
            )
            continue
        found[name] = token_id
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        problems.append("the tokenizer has no eos_token (the official EOS is </longcat_s>, id 2)")
    if pad is None:
        problems.append("the tokenizer has no pad_token (the official text PAD is id 3)")
    if problems:
        path = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise ModelError(
            f"{path} lacks ids the LongCat-Flash-Omni voice-chat sequence needs:\n{bullet_list(problems)}\n"
            "Use the checkpoint's own tokenizer (tokenizer.json / tokenizer_config.json of the omni model)."
        )
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    clashes = sorted(name for name, value in found.items() if value in (eos, pad))
    if clashes or eos == pad:
        raise ModelError(
            f"tokenizer ids overlap: eos={eos}, pad={pad}, and {', '.join(clashes) or 'eos == pad'}; "
            "the sequence needs distinct ids. Use the checkpoint's own tokenizer."
        )
    return SpecialIds(text_bos=int(bos), text_eos=int(eos), text_pad=int(pad), **found)


# --- timestamps -----------------------------------------------------------------------------------


def format_timestamp(t: float) -> str:
    """The text written before a frame pair's image pads, e.g. ``second{0.5}:``.

    Follows `data/utils.py` `refix_frame_index`: ``f"second{{{round_decimal(t, '0.1')}}}:"``, where
    `round_decimal` quantizes `Decimal(t)` (the float's exact binary value) half-up to one decimal and
    prints the resulting float (``1.0``, ``12.3``).
    """
    value = float(t)
    if not math.isfinite(value) or value < 0:
        raise DatasetError(f"frame timestamp {t!r} must be a finite number of seconds >= 0")
    try:
        sec = float(Decimal(value).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    except InvalidOperation as exc:
        raise DatasetError(f"frame timestamp {t!r} is out of range ({exc})") from exc
    return f"second{{{sec}}}:"


# --- the sample -----------------------------------------------------------------------------------


@dataclass
class _Piece:
    text: list[int]
    roles: list[int]
    codec: torch.Tensor | None = None  # [n, 4] offset ids; None = all PAD
    body: bool = False  # part of the voice-assistant body (the trained span)


def _plain(ids: list[int], role: int) -> _Piece:
    return _Piece(text=ids, roles=[role] * len(ids))


def _check_codes(codes: Any) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor):
        raise DatasetError(f"codes must be a torch.LongTensor [frames, 4], got {type(codes).__name__}")
    if codes.dim() != 2 or codes.shape[1] != NUM_CODEBOOKS:
        raise DatasetError(
            f"codes must have shape [frames, {NUM_CODEBOOKS}] (semantic, 3 acoustic), got {list(codes.shape)}"
        )
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise DatasetError(f"codes must be integer codec ids, got dtype {codes.dtype}")
    codes = codes.detach().to("cpu", torch.long)
    if codes.numel() and (codes.min() < 0 or codes.max() >= MAX_RAW_CODE):
        raise DatasetError(
            f"codes hold raw codec ids in [{int(codes.min())}, {int(codes.max())}]; they must lie in "
            f"[0, {MAX_RAW_CODE}) without the +{CODEC_OFFSET} offset (it is added here)"
        )
    return codes


def _segment_codec(frames: torch.Tensor) -> torch.Tensor:
    """[N, 4] raw codes -> [N+1, 4] offset codec ids (official `encode_assistant_multi_codec_ids`)."""
    n = frames.shape[0]
    out = torch.full((n + 1, NUM_CODEBOOKS), CODEC_PAD_ID, dtype=torch.long)
    out[:n, 0] = frames[:, 0] + CODEC_OFFSET
    out[n, 0] = CODEC_EOS_ID
    out[1:, 1:] = frames[:, 1:] + CODEC_OFFSET
    return out


def _split_frames(codes: torch.Tensor, segment_frames: Sequence[int] | None) -> list[torch.Tensor]:
    if segment_frames is None:
        return [codes]
    sizes = [int(n) for n in segment_frames]
    if not sizes or any(n < 0 for n in sizes):
        raise DatasetError(f"segment_frames must be a non-empty list of frame counts >= 0, got {sizes}")
    if sum(sizes) != codes.shape[0]:
        raise DatasetError(
            f"segment_frames {sizes} add up to {sum(sizes)} frames but codes has {codes.shape[0]}; "
            "give one count per </pause>-separated transcript part, summing to the codec frames"
        )
    return list(torch.split(codes, sizes))


def _voice_segments(
    tokenizer: Any, ids: SpecialIds, codes: torch.Tensor, transcript: str | None, segment_frames: Sequence[int] | None
) -> list[_Piece]:
    """The voice-assistant body, segment by segment (official `AudioCodecSftDataConverter.convert`)."""
    frames = _split_frames(codes, segment_frames)
    if transcript:
        banned = [s for s in (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) if s and s in transcript]
        banned += [s for s in EXTENDED_SPECIAL_TOKENS if s != TMP_PAUSE_TOKEN and s in transcript]
        banned += [m for s, m in SPECIAL_TO_MASK.items() if s != TMP_PAUSE_TOKEN and m in transcript]
        if banned:
            raise DatasetError(
                f"transcript contains special token text {sorted(set(banned))}; only {TMP_PAUSE_TOKEN} may appear "
                "in a transcript (it separates speech segments). Remove the others from the transcript"
            )
        parts = transcript.split(TMP_PAUSE_TOKEN)
    else:
        parts = [""] * len(frames)
    if len(parts) != len(frames):
        raise DatasetError(
            f"transcript has {len(parts) - 1} {TMP_PAUSE_TOKEN} marker(s), i.e. {len(parts)} segment(s), but the "
            f"codes are split into {len(frames)} segment(s) (segment_frames={list(segment_frames or [])}); give "
            f"one frame count per segment"
        )
    pieces: list[_Piece] = []
    for k, (part, seg) in enumerate(zip(parts, frames)):
        end = TMP_PAUSE_TOKEN if k < len(parts) - 1 else tokenizer.eos_token
        text = encode_text(tokenizer, part + end)
        width = seg.shape[0] + 1
        if len(text) > width:
            raise DatasetError(
                f"segment {k} of the transcript ({part!r}) is {len(text)} text tokens with its end token, but its "
                f"{seg.shape[0]} codec frames give only {width} positions ({len(text) - width} too many). The text "
                f"of a segment must fit in its speech (official audio_converter assert). Fix: split the transcript "
                f"with {TMP_PAUSE_TOKEN} where the speech pauses so each part matches its own audio, or check that "
                f"the codes belong to this transcript"
            )
        text = text + [ids.text_pad] * (width - len(text))
        pieces.append(_Piece(text=text, roles=[ASSISTANT_FLAG_ID] * width, codec=_segment_codec(seg), body=True))
    return pieces


def _checked_run(tokenizer: Any, text: str, expect: dict[int, int], what: str) -> list[int]:
    """Encode a placeholder run and check every placeholder came out as exactly one token."""
    out = encode_text(tokenizer, text)
    for token_id, count in expect.items():
        if out.count(token_id) != count:
            raise ModelError(
                f"the tokenizer turned the {what} into {out.count(token_id)} copies of id {token_id} instead of "
                f"{count}: its reserved mask tokens are not single tokens; use the checkpoint's own tokenizer"
            )
    return out


def build_voice_chat_sample(
    tokenizer: Any,
    ids: SpecialIds,
    *,
    frame_pairs: Sequence[tuple[float, int]],
    n_audio_tokens: int,
    codes: torch.Tensor | None,
    transcript: str | None,
    system: str | None,
    instruction: str | None,
    segment_frames: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """One voice-chat sample as the official `apply_chat_template` lays it out (module docstring).

    Args:
        tokenizer: the checkpoint's text tokenizer (transformers).
        ids: `special_ids(tokenizer)`.
        frame_pairs: per video frame pair, (timestamp in seconds, number of `<|image_pad|>` the vision
            encoder fills for it); empty for no video.
        n_audio_tokens: number of `<|audio_pad|>` for the spoken question (computed by the audio side);
            0 leaves the audio item out.
        codes: [Fc, 4] raw codec ids of the answer speech (column 0 semantic, 1-3 acoustic, no offset).
            None builds the generation prompt instead: everything up to and including
            ``VOICE ASSISTANT:`` (official `infer_insert_assistant`), with no targets.
        transcript: answer text with `</pause>` between speech segments, or None/"" when unknown.
        system: system prompt text, or None/"" for none (official SYSTEM turn).
        instruction: user text after the video and audio, or None/"".
        segment_frames: frames per segment (sum Fc), one per `</pause>`-separated part; None = one segment.

    Returns:
        ``input_ids`` [N], ``codec_ids`` [N, 4], ``token_types`` [N], ``role_flags`` [N], ``text_labels``
        [N], ``codec_labels`` [N, 4], all int64; labels are the next position's ids or `IGNORE_INDEX`.
    """
    if int(n_audio_tokens) < 0:
        raise DatasetError(f"n_audio_tokens must be >= 0, got {n_audio_tokens}")
    pieces: list[_Piece] = []

    if system:  # else-branch of apply_chat_template: prefix | text + EOS | suffix
        pieces.append(_plain(encode_text(tokenizer, SYSTEM_PREFIX), PAD_FLAG_ID))
        pieces.append(
            _plain(encode_text(tokenizer, system) + encode_text(tokenizer, tokenizer.eos_token), SYSTEM_FLAG_ID)
        )
        pieces.append(_plain(encode_text(tokenizer, TURN_SUFFIX), PAD_FLAG_ID))

    user = encode_text(tokenizer, USER_PREFIX)
    if frame_pairs:
        pairs = [(t, int(n)) for t, n in frame_pairs]
        if any(n < 0 for _, n in pairs):
            raise DatasetError(f"image pad counts must be >= 0, got {[n for _, n in pairs]}")
        video = "".join(format_timestamp(t) + IMAGE_PAD_TOKEN * n for t, n in pairs)
        user += _checked_run(tokenizer, video, {ids.image_pad: sum(n for _, n in pairs)}, "video placeholders")
    if int(n_audio_tokens) > 0:
        n = int(n_audio_tokens)
        audio = AUDIO_BOS_TOKEN + AUDIO_PAD_TOKEN * n + AUDIO_EOS_TOKEN
        run = _checked_run(tokenizer, audio, {ids.audio_bos: 1, ids.audio_pad: n, ids.audio_eos: 1}, "audio run")
        if len(run) != n + 2:
            raise ModelError(
                f"the audio run encoded to {len(run)} ids instead of {n + 2}; use the checkpoint's own tokenizer"
            )
        user += run
    if instruction:
        user += encode_text(tokenizer, instruction)
    user += encode_text(tokenizer, TURN_SUFFIX)
    pieces.append(_plain(user, USER_FLAG_ID))

    pieces.append(_plain(encode_text(tokenizer, VOICE_ASSISTANT_PREFIX), PAD_FLAG_ID))
    if codes is not None:
        pieces.extend(_voice_segments(tokenizer, ids, _check_codes(codes), transcript, segment_frames))
        pieces.append(_plain(encode_text(tokenizer, TURN_SUFFIX), PAD_FLAG_ID))
    elif transcript or segment_frames is not None:
        raise DatasetError("transcript/segment_frames were given without codes; pass the answer's codes too")

    return _assemble(pieces, ids, text_loss=bool(transcript))


def _assemble(pieces: list[_Piece], ids: SpecialIds, *, text_loss: bool) -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([t for p in pieces for t in p.text], dtype=torch.long)
    role_flags = torch.tensor([r for p in pieces for r in p.roles], dtype=torch.long)
    n = input_ids.shape[0]
    codec_ids = torch.full((n, NUM_CODEBOOKS), CODEC_PAD_ID, dtype=torch.long)
    body = torch.zeros(n, dtype=torch.bool)
    pos = 0
    for p in pieces:
        width = len(p.text)
        if p.codec is not None:
            codec_ids[pos : pos + width] = p.codec
        body[pos : pos + width] = p.body
        pos += width

    token_types = torch.full((n,), TOKEN_TYPE_TEXT, dtype=torch.long)
    token_types[body] = TOKEN_TYPE_AUDIO_TEXT
    token_types[body & (input_ids == ids.text_pad)] = TOKEN_TYPE_AUDIO
    token_types[body & (input_ids == ids.pause)] = TOKEN_TYPE_PAUSE
    token_types[body & (input_ids == ids.text_eos)] = TOKEN_TYPE_END

    # Position p predicts p+1; only targets inside the voice-assistant body are learned.
    text_labels = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
    codec_labels = torch.full((n, NUM_CODEBOOKS), IGNORE_INDEX, dtype=torch.long)
    target = body[1:]
    nxt_text, nxt_codec = input_ids[1:], codec_ids[1:]
    if text_loss:
        keep = target & (nxt_text != ids.text_pad)
        text_labels[:-1][keep] = nxt_text[keep]
    codec_labels[:-1, 0][target] = nxt_codec[:, 0][target]
    acoustic = target.unsqueeze(-1) & (nxt_codec[:, 1:] != CODEC_PAD_ID)
    codec_labels[:-1, 1:][acoustic] = nxt_codec[:, 1:][acoustic]

    return {
        "input_ids": input_ids,
        "codec_ids": codec_ids,
        "token_types": token_types,
        "role_flags": role_flags,
        "text_labels": text_labels,
        "codec_labels": codec_labels,
    }


def collate_sequences(
    items: list[dict[str, torch.Tensor]], *, text_pad_id: int = PADDING_IDX
) -> dict[str, torch.Tensor]:
    """Right-pad samples of `build_voice_chat_sample` to the longest (official padding_side "right").

    Padding: ``input_ids`` text PAD (`text_pad_id`, the official padding_idx 3), ``codec_ids`` codec PAD 3,
    ``token_types`` 0, ``role_flags`` PAD flag 0, labels `IGNORE_INDEX`; adds ``attention_mask``
    [B, L] (1 = real). Only the `SEQUENCE_KEYS` are batched; callers batch their media themselves.
    """
    if not items:
        raise DatasetError("collate_sequences got an empty batch")
    for i, item in enumerate(items):
        missing = [k for k in SEQUENCE_KEYS if k not in item]
        if missing:
            raise DatasetError(f"batch item {i} lacks {', '.join(missing)}; build it with build_voice_chat_sample")
    lengths = [int(item["input_ids"].shape[0]) for item in items]
    width = max(lengths)
    fill = {
        "input_ids": text_pad_id,
        "codec_ids": CODEC_PAD_ID,
        "token_types": 0,
        "role_flags": PAD_FLAG_ID,
        "text_labels": IGNORE_INDEX,
        "codec_labels": IGNORE_INDEX,
    }
    batch: dict[str, torch.Tensor] = {}
    for key in SEQUENCE_KEYS:
        first = items[0][key]
        out = torch.full((len(items), width, *first.shape[1:]), fill[key], dtype=torch.long)
        for i, item in enumerate(items):
            value = item[key]
            if value.shape[0] != lengths[i]:
                raise DatasetError(f"batch item {i}: {key} has {value.shape[0]} positions, input_ids {lengths[i]}")
            out[i, : lengths[i]] = value
        batch[key] = out
    batch["attention_mask"] = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return batch


# --- the tiny tokenizer ---------------------------------------------------------------------------

# Official special token names (post_process/unified_post_processor.py names BOS/EOS; the PAD and UNK
# names are not in the open code: ours are placeholders, their ids follow the official 3 / 0).
TINY_UNK_TOKEN = "<longcat_unk>"
TINY_BOS_TOKEN = "<longcat_s>"
TINY_EOS_TOKEN = "</longcat_s>"
TINY_PAD_TOKEN = "<longcat_pad>"
TINY_VOCAB_SIZE = 512
TINY_MASK_START_ID = 24  # <mask_k> at 24 + k puts </pause> (<mask_113>) at 137, SGLang's CHAT_TEXT_FREE_END
TINY_NUM_MASKS = 128
_BYTE_ALPHABET = 256

_TINY_CORPUS = """\
The assistant watches the video and listens to the question, then it answers with its own voice.
A short clip shows a small robot car driving along a quiet street in the morning light.
What can you see in the video? I can see a road, two trees, a red door and a blue sky.
What can you hear in the audio? Someone is asking how long the ride to the station takes.
Please describe what happens next, and keep the answer short and friendly.
Sure. The car stops at the corner, waits for the light, and then turns to the left.
How are you today? I am fine, thank you. It is a lovely day for a walk in the park.
Tell me about the weather: it is warm and sunny, with a light wind from the sea.
Is there anything fun to do in the city? You could visit the museum, the market or the river.
The speaker sounds happy and calm; the voice is clear and the pace is natural.
Numbers and times: 0 1 2 3 4 5 6 7 8 9, 10, 12.5 seconds, 3:45, second{0.5}: second{12.0}:
SYSTEM: You are an emotional voice intelligent assistant.
USER: Look at the frames and answer the spoken question.
VOICE ASSISTANT: Hello there. Let me look at that for you. Here is what I found.
"""


def write_tiny_tokenizer(
    out_dir: Path, *, vocab_size: int = TINY_VOCAB_SIZE, mask_start_id: int = TINY_MASK_START_ID
) -> int:
    """Write a small real byte-level BPE tokenizer loadable with `transformers.AutoTokenizer`.

    Layout, like the official vocabulary as far as the code shows it: id 0 UNK, 1 BOS `<longcat_s>`,
    2 EOS `</longcat_s>`, 3 PAD; filler `<reserved_i>` up to `mask_start_id`; then the reserved
    `<mask_0>`..`<mask_127>` as special added tokens (the official rewrite targets `<mask_110>`..
    `<mask_119>`); then the 256 byte symbols and BPE merges trained on a small embedded text. The
    defaults put `</pause>` (`<mask_113>`) at 137 as in the official vocabulary. Writes
    `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`; returns the vocabulary size
    (`TINY_VOCAB_SIZE` by default, always <= 1024).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [TINY_UNK_TOKEN, TINY_BOS_TOKEN, TINY_EOS_TOKEN, TINY_PAD_TOKEN]
    if mask_start_id < len(specials):
        raise ValueError(f"mask_start_id must be >= {len(specials)}, got {mask_start_id}")
    specials += [f"<reserved_{i}>" for i in range(len(specials), mask_start_id)]
    specials += [f"<mask_{k}>" for k in range(TINY_NUM_MASKS)]
    floor = len(specials) + _BYTE_ALPHABET
    if not floor < vocab_size <= 1024:
        raise ValueError(f"vocab_size must be in ({floor}, 1024] for mask_start_id={mask_start_id}, got {vocab_size}")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    size = tok.get_vocab_size()
    if size != vocab_size:
        raise RuntimeError(f"tiny tokenizer training gave {size} entries instead of {vocab_size}; corpus too small")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    names = {
        "bos_token": TINY_BOS_TOKEN,
        "eos_token": TINY_EOS_TOKEN,
        "pad_token": TINY_PAD_TOKEN,
        "unk_token": TINY_UNK_TOKEN,
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **names,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "padding_side": "right",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
    return size
