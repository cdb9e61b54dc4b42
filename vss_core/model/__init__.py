"""LongCat-Flash-Omni in vss: the official modules (`omni`, `vision`, `audio`, `embeddings`), checkpoint
I/O in the official layout (`checkpoint`), and batching of prepared samples (`batch`).

`from vss_core import model` gives the entry points below; each submodule names the official
source it follows in its docstring.
"""

from vss_core.model.batch import collate
from vss_core.model.checkpoint import (
    PT_FILES,
    TINY_LLM_CONFIG,
    CheckpointConfigs,
    count_parameters,
    load_omni,
    write_tiny_checkpoint,
    zero3_leaf_classes,
)
from vss_core.model.omni import IGNORE, STREAMS, OmniModel, OmniOutput, SpecialTokenIds

__all__ = [
    "IGNORE",
    "PT_FILES",
    "STREAMS",
    "TINY_LLM_CONFIG",
    "CheckpointConfigs",
    "OmniModel",
    "OmniOutput",
    "SpecialTokenIds",
    "collate",
    "count_parameters",
    "load_omni",
    "write_tiny_checkpoint",
    "zero3_leaf_classes",
]
