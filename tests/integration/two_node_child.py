"""One "node" of the two-node test: vss's launch of training on this node, as each node's vss does.

    python two_node_child.py CONFIG_JSON RUN_DIR MODEL_DIR PREPARED_DIR

Prints the training report as JSON on its last line; exits 1 (with the error) when training fails.
"""

import json
import sys
from pathlib import Path

from vss_core import launch
from vss_core.config import VSSConfig
from vss_core.runs import RunPaths

cfg = VSSConfig.model_validate_json(Path(sys.argv[1]).read_text())
try:
    report = launch.run_training(cfg, RunPaths(root=sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
except Exception as exc:  # noqa: BLE001 - the test reads the message
    print(f"FAILED: {exc}", flush=True)
    sys.exit(1)
print(json.dumps(report.model_dump()), flush=True)
