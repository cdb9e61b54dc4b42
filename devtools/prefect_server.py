"""A real local Prefect server for tests: started on a free port of 127.0.0.1 with its own home, waited
for until healthy, stopped after; and the small readers the tests use against it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str, procs=()) -> None:
    """Poll `predicate` each second until true; fail naming `what` on timeout or when one of `procs` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited early with {p.returncode}")
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop(*procs: subprocess.Popen | None) -> None:
    """Terminate each process still running, killing it if it does not end within 30 s."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def local_server(home: Path, log: Path, **extra_env: str) -> Iterator[dict[str, str]]:
    """`prefect server start` (UI off, analytics off) with PREFECT_HOME=home; yields the environment that
    points a client at it (plus extra_env)."""
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        **extra_env,
    }
    port = api.rsplit(":", 1)[1].split("/")[0]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait(lambda: healthy(api), 120, "prefect server", [server])
            yield env
        finally:
            stop(server)


def flow_runs(env: dict[str, str]) -> list[dict]:
    """Every flow run on the server: name, state type, state message, id, deployment id."""
    code = (
        "import json; from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    runs = c.read_flow_runs()\n"
        "    print(json.dumps([{'name': r.name, 'state': r.state.type.value if r.state else None, "
        "'deployment': str(r.deployment_id), 'id': str(r.id), "
        "'message': r.state.message if r.state else None} for r in runs]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
