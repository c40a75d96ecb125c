"""Start the app in a process of its own on a free loopback port, for the benchmarks that measure it served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(
    argv: list[str],
    weights_dir: str,
    timeout_s: float = 120,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> tuple[subprocess.Popen, str, float]:
    """Run ``python *argv`` from the project root; return it, its URL and the seconds until its first HTTP 200.

    ``env``: more variables for it; ``log``: a file for its output (else it is dropped)."""
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DENSENET_DEMO_WEIGHTS": weights_dir,
        **(env or {}),
    }
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    output = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115  (the child holds it)
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    while time.perf_counter() - start < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the app did not answer within {timeout_s:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
