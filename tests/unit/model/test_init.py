"""vss_core.model (the package's own code): the entry points the rest of vss uses are re-exported, each
name the very object of the submodule that owns it."""

from __future__ import annotations

from vss_core import model
from vss_core.model import batch, checkpoint, omni

OWNERS = {
    batch: {"collate"},
    checkpoint: {
        "PT_FILES",
        "TINY_LLM_CONFIG",
        "CheckpointConfigs",
        "count_parameters",
        "load_omni",
        "write_tiny_checkpoint",
        "zero3_leaf_classes",
    },
    omni: {"IGNORE", "STREAMS", "OmniModel", "OmniOutput", "SpecialTokenIds"},
}


def test_every_exported_name_is_its_submodules_object():
    assert set(model.__all__) == set().union(*OWNERS.values()) and len(model.__all__) == len(set(model.__all__))
    for sub, names in OWNERS.items():
        for name in names:
            assert getattr(model, name) is getattr(sub, name), (sub.__name__, name)
    assert model.IGNORE == -100  # the label PyTorch's cross-entropy ignores
