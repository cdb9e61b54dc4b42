"""`vss serve` + `prefect deployment run vss/demo-cpu` against a real local Prefect server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited early with {p.returncode}")
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_served_demo_deployment_completes(tmp_path, tiny_model_dir, demo_data_dir):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=logs["server"], stderr=subprocess.STDOUT)
    served = None
    try:
        _wait(lambda: _healthy(api), 120, "prefect server", [server])
        served = subprocess.Popen([str(BIN / "vss"), "serve", "--no-demo-assets"], cwd=tmp_path, env=env,
                                  stdout=logs["serve"], stderr=subprocess.STDOUT)
        names = lambda: subprocess.run([str(BIN / "prefect"), "deployment", "ls"], env=env, capture_output=True,
                                       text=True).stdout
        _wait(lambda: "demo-cpu" in names(), 120, "vss serve to register deployments", [served])
        listed = names()
        assert "train-2xb200" in listed and "train-8xh100" in listed

        params = {"overrides": {"data.root": str(demo_data_dir), "model.source": str(tiny_model_dir),
                                "training.output_dir": str(tmp_path / "runs"), "training.epochs": 1}}
        out = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "vss/demo-cpu", "--params", json.dumps(params),
             "--watch", "--watch-timeout", "900"],
            env=env, capture_output=True, text=True, timeout=960,
        )
        assert out.returncode == 0, out.stdout + out.stderr + (tmp_path / "serve.log").read_text()[-4000:]
        assert "Completed" in out.stdout + out.stderr
        adapters = list((tmp_path / "runs").glob("cpu-demo-*/adapter/adapter_model.safetensors"))
        assert len(adapters) == 1
    finally:
        for p in (served, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs.values():
            f.close()
