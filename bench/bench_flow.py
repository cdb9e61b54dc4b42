"""Orchestration overhead of the `vss` flow on the demo: the flow's wall time minus the training
subprocess's wall time, and the ratio of the two. Measured in one process, one run.

    .venv/bin/python bench/bench_flow.py [--samples 4]

The first DeepSpeed use compiles its CPU ops (~75 s); run `make demo` or the tests once first, or
the compile lands in the training time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()

    from flows.vss import vss
    from vss_core import demo, model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.write_tiny_checkpoint(tmp / "model")
        demo.write_demo_dataset(tmp / "data", args.samples, seconds=2.0)
        overrides = {
            "data": {"root": str(tmp / "data")},
            "model": {"source": str(tmp / "model")},
            "training": {"output_dir": str(tmp / "runs")},
        }
        t = time.perf_counter()
        result = vss(profile="cpu-demo", overrides=overrides)
        flow_wall = time.perf_counter() - t
        train_wall = result.training_wall_s

    print(f"flow wall time              : {flow_wall:7.1f} s")
    print(f"training subprocess         : {train_wall:7.1f} s  ({result.stages[4].detail})")
    print(f"orchestration + other stages: {flow_wall - train_wall:7.1f} s")
    print(f"overhead / training         : {(flow_wall - train_wall) / train_wall:7.2f}")
    print(f"training / flow             : {train_wall / flow_wall:7.2f}")


if __name__ == "__main__":
    main()
