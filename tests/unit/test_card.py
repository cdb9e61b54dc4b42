"""The adapter card: metadata the Hub parses (huggingface_hub.ModelCard), base_model only for a Hub id,
sections replaced, not repeated."""

from huggingface_hub import ModelCard

from vss_core import card


def test_base_model_is_set_for_a_hub_id_only(tmp_path):
    hub = ModelCard(str(card.minimal_card("meituan-longcat/LongCat-Flash-Omni")))
    assert hub.data.base_model == "meituan-longcat/LongCat-Flash-Omni" and hub.data.library_name == "peft"
    assert "vss" in hub.data.tags
    local = ModelCard(str(card.minimal_card(str(tmp_path))))
    assert local.data.base_model is None and local.data.library_name == "peft"


def test_a_section_is_replaced_and_a_card_without_metadata_gets_it(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# my adapter\n\nnotes\n")
    card.set_section(path, "## Evaluation (vss)", "| a |\n|---|\n| 1 |")
    card.set_section(path, "## Evaluation (vss)", "| a |\n|---|\n| 2 |")
    text = path.read_text()
    loaded = ModelCard.load(path)
    assert loaded.data.library_name == "peft" and "# my adapter" in loaded.text and "notes" in loaded.text
    assert text.count("## Evaluation (vss)") == 1 and "| 2 |" in text and "| 1 |" not in text
