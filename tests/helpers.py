"""What more than one test file needs: generated data, tiny models, the app in a subprocess, the browser, one
/predict call. A helper module, not a test file: plain functions, classes and constants, no fixtures (those are in
conftest.py, built from these), and no test file imports another test file or conftest.py, only this module.

The scripts the tests start as processes (fault_injection_app.py, short_ttl_app.py, distributed_fault.py,
fake_spaces/) are not helpers either: a test names them, it does not import them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from densenet_demo.config import DenseNetConfig
from densenet_demo.data.images import default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.training.config import TrainConfig
from densenet_demo.weights import checkpoints

if TYPE_CHECKING:
    from densenet_demo.ui.training_run import FinetuneTab

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20

# A DenseNet-BC small enough to train in a second on a CPU (conftest's ``tiny_config``).
TINY_CONFIG = DenseNetConfig(
    growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, compression=0.5, stem="cifar", num_classes=3
)
QUICK_MODEL = "densenet_bc100_k12"  # a preset without ImageNet weights, 32 px input: quick on a CPU with random init
SHORT_TTL_S = 6  # short_ttl_app.py's session time to live: long enough that a busy machine keeps it between calls


# ---------------------------------------------------------------------------------------------
# Generated images and datasets

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def colour_images(root: Path, per_class: int, seed: int = 0, size: tuple[int, int] = (24, 24)) -> Path:
    """Noisy images of three colours at varied brightness (``size`` as height, width): easy enough for a tiny
    model in a few epochs."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.array(colour) * rng.uniform(0.7, 1.2) + rng.normal(0, 20, (*size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def colour_zip(root: Path, per_class: int) -> Path:
    """``colour_images`` as a zip of class folders (``root.zip``), as a user uploads them."""
    folder = colour_images(root, per_class)
    archive = root.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, path.relative_to(folder))
    return archive


def solid_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """A plain RGB image of one colour at ``path``: a photo for tests where any image will do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Hostile files (the corpus of the reliability tests: the app's /load_dataset and the CLI's train get the same zips)


def png_bomb(path: Path, side: int = 40_000) -> Path:
    """A 1-bit PNG of side x side pixels (1.6 gigapixels): about 200 KB on disk, gigabytes once decoded."""
    path.write_bytes(png_bomb_bytes(side))
    return path


@functools.cache
def png_bomb_bytes(side: int) -> bytes:
    """The bomb's bytes, made once: deflating its 200 MB of rows costs seconds, and two fixtures want one."""
    row = bytes(1 + side // 8)  # filter byte + the row's bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    """A zip of ``entries`` (name -> bytes), each name kept as given, '../' and all."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in entries.items():
            zf.writestr(zipfile.ZipInfo(name), payload)  # ZipInfo keeps the name as given, '../' and all
    return path


def png_bytes(color: tuple[int, int, int], size: int = 24) -> bytes:
    """A small noisy PNG of about ``color``, as bytes."""
    path = Path(tempfile.mkstemp(suffix=".png")[1])
    try:
        noise = np.random.default_rng(sum(color)).normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8), "RGB").save(path)
        return path.read_bytes()
    finally:
        path.unlink()


def zip_bomb(path: Path, megabytes: int = 300) -> Path:
    """Hundreds of MB of zeros in one entry: a zip of about 1 MB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("circle/a.png", png_bytes((250, 20, 20)))
        with zf.open("square/zeros.png", "w", force_zip64=True) as entry:
            block = bytes(MIB)
            for _ in range(megabytes):
                entry.write(block)
    return path


def hostile_zips(folder: Path, token: str) -> dict[str, Path]:
    """Zips for /load_dataset and the CLI's train: case -> file; escaping entries are named with ``token``."""
    red, blue = png_bytes((230, 30, 30)), png_bytes((30, 30, 230))
    junk = {
        "circle/a.png": red,
        "circle/nested/deeper/b.png": red,
        "square/c.png": blue,
        "square/d.png": blue,
        "__MACOSX/circle/._a.png": b"\x00\x05\x16\x07 resource fork",
        "circle/.DS_Store": b"Bud1 junk",
        "square/readme.txt": b"not an image",
        "square/bomb.png": png_bomb(folder / "zip_bomb.png").read_bytes(),
    }
    return {
        "traversal": zip_of(folder / "traversal.zip", {"circle/a.png": red, f"../../escape_{token}.png": red}),
        "absolute": zip_of(folder / "absolute.zip", {"circle/a.png": red, f"/tmp/absolute_{token}.png": red}),
        "zip bomb": zip_bomb(folder / "zeros.zip"),
        "junk": zip_of(folder / "junk.zip", junk),
        "one class": zip_of(folder / "one_class.zip", {"circle/a.png": red, "circle/b.png": red}),
        "empty": zip_of(folder / "empty.zip", {}),
        "no images": zip_of(folder / "text.zip", {"circle/a.txt": b"x", "square/b.txt": b"y"}),
    }


# ---------------------------------------------------------------------------------------------
# Tiny models, checkpoints and training settings


def trained_looking(model: DenseNet) -> DenseNet:
    """``model`` in eval mode with BatchNorms away from their identity init, so a misplaced tensor shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def save_tiny_checkpoint(folder: Path, model: DenseNet, class_names: list[str]) -> Path:
    """``model`` as a checkpoint folder with its config's default preprocessing, for ``--model`` or ``run:``."""
    checkpoints.save_checkpoint(folder, model, class_names=class_names, preprocessing=default_preprocessing(model.cfg))
    return folder


def train_config(model: DenseNetConfig, /, **changes) -> TrainConfig:
    """A quick run of ``model`` on the CPU (3 epochs of 16 px images), with ``changes`` (``model=`` among them)."""
    settings = dict(
        model=model, weights="random", mode="scratch", epochs=3, batch_size=6, lr=1e-2, optimizer="adamw",
        schedule="cosine", image_size=16, val_fraction=0.25, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**settings, **changes})


def event_kinds(events) -> str:
    """The events' kinds in order, less the ``preparing`` messages (test_train checks those on their own)."""
    return " ".join(e.kind for e in events if e.kind != "preparing")


# ---------------------------------------------------------------------------------------------
# The Fine-tune tab in-process

# The page's settings for one epoch of densenet_fashion from scratch at 32 px, in start_training's order.
ONE_EPOCH_PAGE_SETTINGS = (
    "densenet_fashion",
    "Random init",
    "scratch",
    1,
    3e-3,
    8,
    32,
    False,
    "Off",
    "adamw",
    "default",
)


# The page's modules (gradio and ui/) are imported where they are used: conftest.py imports this module in pytest's
# controlling process too, which runs no test and should start in the seconds torch takes, not gradio's as well.


def finetune_page() -> FinetuneTab:
    """The Fine-tune tab built in a throwaway Blocks: its handlers run in-process, no server."""
    import gradio as gr

    from densenet_demo.hosting.training_queue import TrainingQueue
    from densenet_demo.ui import finetune_data
    from densenet_demo.ui.common import model_choices
    from densenet_demo.ui.finetune_tab import build_finetune_tab

    with gr.Blocks():
        state = finetune_data.session_state()
        dropdowns = {"predict_model": gr.Dropdown(), "reuse": gr.Dropdown()}
        return build_finetune_tab(model_choices(None), **dropdowns, state=state, trainings=TrainingQueue())


def images_by_hand(root: Path, per_class: int) -> dict[str, list[str]]:
    """Two classes (light, dark) of 32 px grey squares, as the page's "classes by hand" upload: class -> paths."""
    by_hand = {}
    for name, colour in (("light", 220), ("dark", 30)):
        (root / name).mkdir(parents=True)
        by_hand[name] = []
        for i in range(per_class):
            path = root / name / f"{i}.png"
            Image.new("L", (32, 32), colour + i).save(path)
            by_hand[name].append(str(path))
    return by_hand


def checked_dataset(by_hand: dict[str, list[str]]) -> dict:
    """The session state after the page's Check of ``by_hand``."""
    from densenet_demo.ui import finetune_data

    _, state = finetune_data.load_dataset("Classes by hand", None, None, "", by_hand, {})
    return state


# ---------------------------------------------------------------------------------------------
# The app in a subprocess, and calls to it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` running in a subprocess on a free loopback port, with its own weights folder.

    ``script`` runs another launcher (a test's fault-injecting wrapper of app.py); ``env`` adds variables.
    """

    def __init__(self, root, weights_dir, port: int, script: str = "app.py", env: dict | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.weights_dir = weights_dir
        self.log_path = root / "app.log"
        env = {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "DENSENET_DEMO_WEIGHTS": str(weights_dir),
            # auto answers from PyTorch and exports nothing (conftest._auto_backend_is_pytorch); env may set it back
            "DENSENET_DEMO_AUTO_BACKEND": "torch",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, script],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
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
        server = cls(root, weights_dir or root / "weights", free_port(), **kwargs)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def upload(server: AppServer, path: Path) -> str:
    """Upload a file as the browser does (multipart POST to Gradio's /upload); the server-side path it was given."""
    boundary = "densenet-demo-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n\r\n'.encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{server.url}gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)[0]


def predict_call(
    client: Client,
    images: list[Path],
    model: str,
    weights: str,
    weights_file: Path | None = None,
    *,
    top_k: int,
    cam: bool = False,
) -> tuple:
    """One /predict call through gradio_client: (label, gallery, table, info); ``cam`` asks for Grad-CAM overlays."""
    files = [handle_file(str(p)) for p in images]
    weights_upload = handle_file(str(weights_file)) if weights_file else None
    return client.predict(files, model, weights, weights_upload, top_k, cam, api_name="/predict")


# ---------------------------------------------------------------------------------------------
# The page in headless Chromium

# Debian's chromium (never a browser download). Without the background-networking flags Chromium keeps dialling
# out, and a machine with no network refuses it many times a second.
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


def pick(page: Page, elem_id: str, value: str, *, type_it: bool) -> None:
    """Choose the option of a Gradio dropdown whose label starts with ``value``.

    ``type_it``: type ``value`` into the box first, as a person narrowing a long list; else open the list and
    click. The option that starts with the value: a run's label may also name the preset ("… · densenet_bc100_k12 …").
    """
    box = page.locator(f"#{elem_id} input")
    box.click()
    if type_it:
        box.fill(value)
    page.get_by_role("option", name=re.compile("^" + re.escape(value))).first.click()
