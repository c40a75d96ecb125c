"""Shared fixtures: tiny models, generated images, a private weights folder per test; and a check, at the end of
the session, that no test wrote into the checkout."""

from __future__ import annotations

import os

# The suite runs on pytest-xdist workers (pyproject.toml: -n 2), one per core: each worker and the processes it
# starts (app servers, the CLI) get one OpenMP thread, so that two workers' threads do not wait on each other's
# cores. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from playwright.sync_api import Browser, sync_playwright

from densenet_demo.config import DenseNetConfig

AUTO_BACKEND_ENV = "DENSENET_DEMO_AUTO_BACKEND"
_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")  # written by running the tests at all: not a leak
_CHECKOUT_BEFORE = pytest.StashKey[set]()


def _checkout_entries() -> set[str]:
    """Every file under the checkout's weights/, and what git sees beyond the tracked files (caches left out)."""
    root = _repo_root()
    entries = {f"weights/{p.relative_to(root / 'weights')}" for p in (root / "weights").rglob("*") if p.is_file()}
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=root, capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):  # no git (an unpacked copy): weights/ alone is checked
        status = ""
    return entries | {line for line in status.splitlines() if not any(cache in line for cache in _CACHES)}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test on the shared app server starts the app: it must carry the e2e mark, or the fast loop would not be."""
    unmarked = [
        item.nodeid
        for item in items
        if "app_server" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("e2e")
    ]
    if unmarked:
        raise pytest.UsageError("tests that use app_server must be marked @pytest.mark.e2e: " + ", ".join(unmarked))
    # Files with end-to-end tests first, those whose tests may take longest (their timeout) before the others; a
    # stable sort, so each file keeps its own order. The two workers take whole files in this order: the long
    # ones start early and the short unit files even out the end.
    longest: dict[Path, float] = {}
    for item in items:
        if item.get_closest_marker("e2e"):
            timeout = item.get_closest_marker("timeout")
            allowed = timeout.args[0] if timeout is not None and timeout.args else 0
            longest[item.path] = max(longest.get(item.path, 0), allowed)
    items.sort(key=lambda item: -longest.get(item.path, -1))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_CHECKOUT_BEFORE] = _checkout_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when the checkout gained files: a test wrote where only its tmp folders should be."""
    before = session.config.stash.get(_CHECKOUT_BEFORE, None)
    if before is None:
        return
    new = sorted(_checkout_entries() - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("=", "tests wrote into the checkout (use tmp_path and monkeypatch.context())", red=True)
            for entry in new:
                reporter.write_line(entry)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _private_weights_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own weights cache, so nothing touches the repo's weights/ folder."""
    path = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("DENSENET_DEMO_WEIGHTS", str(path))
    return path


@pytest.fixture(autouse=True)
def _auto_backend_is_pytorch(monkeypatch):
    """``auto`` answers from PyTorch and exports nothing: each test (and each app server) has its own weights
    folder, so every one would export its models again in the background (DenseNet-121: ~30 s of both cores).
    The tests of the backends themselves (test_backends.py) set it back."""
    monkeypatch.setenv(AUTO_BACKEND_ENV, "torch")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config() -> DenseNetConfig:
    """A DenseNet-BC small enough to train in a second on a CPU."""
    return DenseNetConfig(
        growth_rate=4,
        block_config=(2, 2),
        num_init_features=8,
        bn_size=2,
        compression=0.5,
        stem="cifar",
        num_classes=3,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` running in a subprocess on a free loopback port, with its own weights folder.

    ``script`` runs another launcher (a test's fault-injecting wrapper of app.py); ``env`` adds variables.
    """

    def __init__(self, root, weights_dir, port: int, script: str = "app.py", env: dict | None = None) -> None:
        import os
        import subprocess
        import sys

        self.url = f"http://127.0.0.1:{port}/"
        self.weights_dir = weights_dir
        self.log_path = root / "app.log"
        env = {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "DENSENET_DEMO_WEIGHTS": str(weights_dir),
            AUTO_BACKEND_ENV: "torch",  # see _auto_backend_is_pytorch; a test's env may set it back
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, script],
            cwd=_repo_root(),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        import time
        import urllib.request

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"app.py did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    @classmethod
    def started(cls, root, weights_dir=None, *, own_tmp: bool = False, **kwargs) -> AppServer:
        """A server on a free port, answering; ``weights_dir`` defaults to ``root/weights``.

        ``own_tmp``: the server's temporary files (uploads, session folders) go to ``root/tmp``, not /tmp.
        """
        root.mkdir(parents=True, exist_ok=True)
        if own_tmp:
            (root / "tmp").mkdir(exist_ok=True)
            kwargs["env"] = {"TMPDIR": str(root / "tmp"), **kwargs.get("env", {})}
        server = cls(root, weights_dir or root / "weights", _free_port(), **kwargs)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        import subprocess

        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app, started once for the API and browser tests."""
    server = AppServer.started(tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


# Headless Chromium from Debian's package (never a browser download). Without the background-networking flags
# Chromium keeps dialling out, and a machine with no network refuses it many times a second.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """Debian's chromium, headless, with ``CHROMIUM_ARGS`` and ``extra_args``; closed on exit."""
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is required for the browser tests (bash .ci/run installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=[*CHROMIUM_ARGS, *extra_args])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched
