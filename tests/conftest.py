"""Shared fixtures: tiny models, generated images, a private weights folder per test, the app in a subprocess, a
client of it, the browser; and a check, at the end of the session, that no test wrote into the checkout.

The fixtures are built from tests/helpers.py, where the plain functions and classes live; test files import those
from helpers, never from here or from one another.
"""

from __future__ import annotations

import os
import tempfile

# The suite runs on pytest-xdist workers (pyproject.toml: -n 2), one per core: each worker and the processes it
# starts (app servers, the CLI) get one OpenMP thread, so that two workers' threads do not wait on each other's
# cores. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# hypothesis keeps its caches (constants, unicode tables) in ./.hypothesis unless told otherwise: outside the checkout.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), f"densenet-demo-hypothesis-{os.getuid()}")
)

import gc
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from helpers import REPO_ROOT, TINY_CONFIG, AppServer, chromium, colour_images, save_tiny_checkpoint, solid_image
from playwright.sync_api import Browser

from densenet_demo.config import DenseNetConfig
from densenet_demo.data import datasets as data
from densenet_demo.model import DenseNet
from densenet_demo.serving import predict

AUTO_BACKEND_ENV = "DENSENET_DEMO_AUTO_BACKEND"
_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")  # written by running the tests at all: not a leak
_CHECKOUT_BEFORE = pytest.StashKey[set]()


def _checkout_entries() -> set[str]:
    """Every file under the checkout's weights/, and what git sees beyond the tracked files (caches left out)."""
    root = REPO_ROOT
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
        if {"app_server", "start_app"} & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e")
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that use app_server or start_app must be marked @pytest.mark.e2e: " + ", ".join(unmarked)
        )
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


@pytest.fixture(scope="module", autouse=True)
def _collector_skips_what_is_loaded():
    """What the process holds as a test file starts (torch, gradio, onnx and their modules: hundreds of thousands of
    objects) is left out of later garbage collections. The engine collects at the end of every training run, which
    would otherwise walk all of it each time: seconds a run on a busy 2-core machine. Only the collector's work
    changes: frozen objects are still freed when no longer referenced, and whatever a test makes is collected."""
    gc.collect()
    gc.freeze()


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
    return TINY_CONFIG


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_config) -> Path:
    """A tiny DenseNet saved as a checkpoint folder (classes a, b, c): ``--model`` can start from it, quickly."""
    return save_tiny_checkpoint(tmp_path / "tiny", DenseNet(tiny_config), ["a", "b", "c"])


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """A folder of three colour classes, 8 noisy squares each (helpers.colour_images)."""
    return colour_images(tmp_path_factory.mktemp("colours"), per_class=8)


@pytest.fixture(scope="module")
def colours(colour_folder) -> data.LabeledFiles:
    """``colour_folder``'s 24 images as the trainer takes them."""
    return data.load_image_folder(colour_folder)[0]


@pytest.fixture
def photo(tmp_path) -> Path:
    """A 64x48 red photo: any image the app should classify."""
    return solid_image(tmp_path / "photo.png", (64, 48), (200, 30, 30))


@pytest.fixture
def empty_predictor_cache() -> Iterator[None]:
    """The engine's predictor cache empty before and after the test (``pytest.mark.usefixtures`` in a file)."""
    predict.clear_cache()
    yield
    predict.clear_cache()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app, started once for the API and browser tests."""
    server = AppServer.started(tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    """A gradio_client session of the shared app server, one per test file."""
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def start_app(tmp_path_factory) -> Iterator[Callable[..., AppServer]]:
    """Starts a test file's own app servers: ``start_app(name, **options of AppServer.started)`` answers a server
    in a fresh folder ``name``; every one started is stopped after the file's tests."""
    started: list[AppServer] = []

    def start(name: str, **options) -> AppServer:
        started.append(AppServer.started(tmp_path_factory.mktemp(name), **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched
