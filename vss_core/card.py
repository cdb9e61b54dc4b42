"""The adapter's model card (its README.md), written one way for training, upload and evaluation:
through `huggingface_hub.ModelCard` and `ModelCardData`, so the metadata block is what the Hub parses.

`base_model` is set only when model.source is a Hub repo id: the Hub checks that field against its
models, and a local path there would be refused at upload.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from vss_core.atomic import write_atomic
from vss_core.config import is_local_source

TAGS = ["vss", "lora", "longcat-flash-omni", "video-speech-to-speech"]
USE = (
    "## Use\n\n    vss infer --adapter <this folder> --sample data/train/01 --out out.wav\n\n"
    'or `peft.PeftModel.from_pretrained(vss_core.model.load_omni(MODEL_DIR), "<this folder or repo>")`.'
)


def adapter_card(source: str | None, body: str) -> ModelCard:
    """A card with the peft/vss metadata and `body` (markdown)."""
    data = ModelCardData(
        library_name="peft", base_model=source if source and not is_local_source(source) else None, tags=TAGS
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def minimal_card(source: str | None) -> ModelCard:
    """The card an adapter folder gets at upload when it has none."""
    title = f"# LoRA adapter for {source or 'LongCat-Flash-Omni'}"
    return adapter_card(
        source, f"{title}\n\nTrained with vss (LoRA under DeepSpeed ZeRO-3) for video-speech-to-speech.\n\n{USE}"
    )


def save(card: ModelCard, path: Path) -> None:
    write_atomic(path, lambda tmp: card.save(str(tmp)))


def set_section(path: Path, heading: str, text: str) -> None:
    """Put `heading` + `text` at the end of the card at `path`, replacing an earlier section of that heading."""
    text_before = Path(path).read_text() if Path(path).is_file() else ""
    card = (
        ModelCard(text_before) if text_before.startswith("---") else adapter_card(None, text_before or "# LoRA adapter")
    )
    body = card.text.split(heading)[0].rstrip()
    card.text = f"{body}\n\n{heading}\n\n{text.strip()}\n"
    save(card, Path(path))
