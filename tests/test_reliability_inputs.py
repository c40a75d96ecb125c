"""Hostile and odd inputs through the real entry points: /predict, /load_dataset, /train, /architecture and the CLI.

For each case: the right result or one clear message naming what was wrong; nothing written outside the upload's
own folder; no code run; memory bounded; the next request served normally. The corpus is generated here. The
engine's unit tests (test_images, test_weights, test_data) cover the same kinds of file one function at a time.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from helpers import MIB, QUICK_MODEL, hostile_zips, png_bomb, predict_call
from PIL import Image
from safetensors.torch import save_file

from densenet_demo.cli.main import main
from densenet_demo.config import DenseNetConfig
from densenet_demo.model import DenseNet

pytestmark = pytest.mark.timeout(300)

# ---------------------------------------------------------------------------------------------
# The corpus


def _white_background(image: Image.Image) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", image.size, (255,) * 4), image.convert("RGBA")).convert("RGB")


def _odd_images(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """Odd but legal images: case -> (file, a plain RGB PNG of the very pixels the app should see, if exact)."""
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([v, v[::-1], 255 - v], axis=2), "RGB")
    cases: dict[str, tuple[Image.Image, dict, Image.Image | None, str]] = {}

    def add(case: str, image: Image.Image, twin: Image.Image | None, suffix: str = ".png", **save) -> None:
        cases[case] = (image, save, twin, suffix)

    add("16-bit", Image.fromarray(v.astype(np.uint16) * 257), Image.fromarray(v, "L").convert("RGB"))
    bits = Image.fromarray(v > 127)
    add("1-bit", bits, bits.convert("RGB"))
    cmyk = rgb.convert("CMYK")
    add("CMYK TIFF", cmyk, cmyk.convert("RGB"), ".tif")
    add("CMYK JPEG", cmyk, None, ".jpg", quality=90)
    la = Image.merge("LA", [Image.fromarray(v, "L"), Image.fromarray(v[:, ::-1], "L")])
    add("LA", la, _white_background(la))
    palette = rgb.quantize(16)
    add("palette with transparency", palette, _white_background(palette.copy()), transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    add("EXIF-rotated", rgb, rgb.transpose(Image.Transpose.ROTATE_270), exif=exif)
    frames = [rgb.quantize(32)] + [Image.new("RGB", rgb.size, c).quantize(32) for c in ((255, 0, 0), (0, 0, 255))]
    add("animated GIF", frames[0], frames[0].convert("RGB"), ".gif", save_all=True, append_images=frames[1:])
    add("1x1", Image.new("RGB", (1, 1), (200, 10, 10)), None)

    out = {}
    for i, (case, (image, save, twin, suffix)) in enumerate(cases.items()):
        path = folder / f"odd{i}{suffix}"
        if case == "palette with transparency":
            image.info["transparency"] = 3
            twin = _white_background(image)
        image.save(path, **save)
        twin_path = None
        if twin is not None:
            twin_path = folder / f"odd{i}_twin.png"
            twin.save(twin_path)
        out[case] = (path, twin_path)
    huge = folder / "huge_photo.jpg"  # 24 megapixels, under the 64 MP limit: a phone photo
    Image.linear_gradient("L").resize((6000, 4000)).convert("RGB").save(huge, quality=85)
    out["huge but legal photo"] = (huge, None)
    return out


def _bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not usable images: case -> (file, what the message must say)."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    Image.linear_gradient("L").convert("RGB").save(folder / "whole.jpg", quality=90)
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return {
        "zero-byte file": (folder / "empty.jpg", "empty"),
        "text renamed .jpg": (folder / "notes.jpg", "not an image"),
        "truncated JPEG": (folder / "truncated.jpg", "corrupt or truncated"),
        "decompression-bomb PNG": (png_bomb(folder / "bomb.png"), "decompression bomb|over the limit"),
    }


@pytest.fixture(scope="module")
def other_architecture(tmp_path_factory) -> Path:
    """Weights of a DenseNet that is not QUICK_MODEL: the file a user picks for the wrong model."""
    path = tmp_path_factory.mktemp("other") / "other_architecture.safetensors"
    other = DenseNetConfig(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3)
    save_file(DenseNet(other).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, other_architecture) -> dict:
    folder = tmp_path_factory.mktemp("corpus")
    token = secrets.token_hex(4)  # names no other run uses, to look for them afterwards
    zips = hostile_zips(folder, token)
    evil_marker = folder / f"ran_{token}"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(evil_marker)!r}, 'w').write('code ran')",))

    torch.save({"state_dict": Payload()}, folder / "evil.pth")
    return {
        "folder": folder,
        "token": token,
        "odd": _odd_images(folder),
        "bad": _bad_images(folder),
        "zips": zips,
        "evil": folder / "evil.pth",
        "evil_marker": evil_marker,
        "other_architecture": other_architecture,
        "plain": folder / "odd0_twin.png",
    }


def _predict(client, paths: list[Path], *, top_k: int = 10, cam: bool = False, weights="Random init", file=None):
    return predict_call(client, paths, QUICK_MODEL, weights, file, top_k=top_k, cam=cam)


def _still_serving(client, corpus) -> None:
    label, *_ = _predict(client, [corpus["plain"]], top_k=3)
    assert len(label["confidences"]) == 3


def _rows(table: dict) -> dict[str, dict]:
    return {row[0]: dict(zip(table["headers"], row, strict=True)) for row in table["data"]}


def _vm_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


# ---------------------------------------------------------------------------------------------
# /predict


@pytest.mark.e2e
def test_odd_images_are_classified_exactly_like_their_plain_twins(client, corpus):
    odd = corpus["odd"]
    paths = [p for p, _ in odd.values()] + [t for _, t in odd.values() if t]
    label, gallery, table, info = _predict(client, paths, cam=True)
    rows = _rows(table)
    assert len(rows) == len(paths) and len(gallery) == len(paths)
    assert "❌" not in info
    for case, (path, twin) in odd.items():
        assert len(rows[path.name]["top-k"].split(", ")) == 10, case
        if twin is not None:
            same = ("top-1", "p", "top-k")
            assert [rows[path.name][k] for k in same] == [rows[twin.name][k] for k in same], case
    # The comparison can tell images apart: the EXIF-rotated image is not read as the unrotated one.
    rotated, upright = odd["EXIF-rotated"][0], odd["CMYK TIFF"][1]  # the CMYK twin holds the upright pixels
    assert rows[rotated.name]["top-k"] != rows[upright.name]["top-k"]


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["zero-byte file", "text renamed .jpg", "truncated JPEG", "decompression-bomb PNG"])
def test_a_bad_image_gets_one_clear_message_and_the_next_request_is_served(client, corpus, case):
    path, reason = corpus["bad"][case]
    with pytest.raises(Exception, match=rf"{path.name}: .*({reason})") as error:
        _predict(client, [path])
    assert "Traceback" not in str(error.value) and len(str(error.value)) < 400
    _still_serving(client, corpus)


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["zero-byte file", "text renamed .jpg", "truncated JPEG", "decompression-bomb PNG"])
def test_the_one_image_input_gives_a_bad_image_its_reason_too(client, corpus, case):
    path, reason = corpus["bad"][case]
    with pytest.raises(Exception, match=rf"{path.name}: .*({reason})") as error:
        client.predict(handle_file(str(path)), QUICK_MODEL, "Random init", 3, api_name="/classify_image")
    assert "upstream" not in str(error.value) and len(str(error.value)) < 400
    _still_serving(client, corpus)


@pytest.mark.e2e
def test_the_one_image_input_reads_odd_images_as_the_files_input_does(client, corpus):
    for case, (path, _) in corpus["odd"].items():
        label, note = client.predict(handle_file(str(path)), QUICK_MODEL, "Random init", 10, api_name="/classify_image")
        files_label, *_ = _predict(client, [path])
        assert label["confidences"] == files_label["confidences"], case


@pytest.mark.e2e
def test_bad_images_among_good_ones_are_named_and_the_good_ones_classified(client, corpus):
    bad = [p for p, _ in corpus["bad"].values()]
    label, _, table, info = _predict(client, [corpus["plain"], *bad], top_k=3)
    assert list(_rows(table)) == [corpus["plain"].name]
    assert all(f"❌ {p.name}:" in info for p in bad)


@pytest.mark.e2e
def test_memory_stays_bounded_through_bombs_and_a_huge_photo(client, corpus, app_server):
    pid = app_server.process.pid
    _still_serving(client, corpus)  # the model is built and cached before measuring
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the present RSS
    before = _vm_kb(pid, "VmRSS")
    with pytest.raises(Exception, match="bomb|over the limit"):
        _predict(client, [corpus["bad"]["decompression-bomb PNG"][0]])
    label, *_ = _predict(client, [corpus["odd"]["huge but legal photo"][0]], top_k=1)
    assert len(label["confidences"]) == 1
    with pytest.raises(Exception, match="zip bomb"):
        client.predict("Zip file", handle_file(str(corpus["zips"]["zip bomb"])), None, "", api_name="/load_dataset")
    peak_growth_mb = (_vm_kb(pid, "VmHWM") - before) / 1024
    # Decoded, the bomb alone would take 1.6 GB (as RGB, 4.8 GB); the photo at full size 72 MB.
    assert peak_growth_mb < 300, f"server peak memory grew by {peak_growth_mb:.0f} MB"


@pytest.mark.e2e
def test_a_pth_that_would_run_code_is_refused_and_never_runs(client, corpus):
    with pytest.raises(Exception, match="evil.pth: refused, .*could run code"):
        _predict(client, [corpus["plain"]], weights="Checkpoint file", file=corpus["evil"])
    assert not corpus["evil_marker"].exists()
    _still_serving(client, corpus)


@pytest.mark.e2e
def test_a_checkpoint_for_another_architecture_is_refused_with_the_mismatch(client, corpus):
    with pytest.raises(Exception, match="other_architecture.safetensors: the weights do not fit .*mismatch|missing"):
        _predict(client, [corpus["plain"]], weights="Checkpoint file", file=corpus["other_architecture"])
    _still_serving(client, corpus)


# ---------------------------------------------------------------------------------------------
# /load_dataset and /train


@pytest.fixture(scope="module")
def data_client(app_server):
    """A client of its own, so that its session folder on the server can be found and inspected."""
    before = set(Path(tempfile.gettempdir()).glob("densenet_demo_session_*"))
    client = Client(app_server.url, verbose=False)
    client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    created = set(Path(tempfile.gettempdir()).glob("densenet_demo_session_*")) - before
    assert len(created) == 1, created
    session = created.pop()
    yield client, session
    shutil.rmtree(session, ignore_errors=True)  # a test client never closes its session


def _load_zip(client, path: Path) -> str:
    return client.predict("Zip file", handle_file(str(path)), None, "", api_name="/load_dataset")


def _extractions(session: Path) -> list[Path]:
    return sorted(session.glob("zip_*"))


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["traversal", "absolute"])
def test_a_zip_entry_pointing_outside_is_rejected_and_nothing_is_written(data_client, corpus, case):
    client, session = data_client
    with pytest.raises(Exception, match="points outside the upload; rejected"):
        _load_zip(client, corpus["zips"][case])
    token = corpus["token"]
    tmp = Path(tempfile.gettempdir())
    assert not (tmp / f"escape_{token}.png").exists() and not (tmp / f"absolute_{token}.png").exists()
    assert not list(session.rglob(f"*_{token}.png"))
    assert not any(p.is_file() for p in session.rglob("*") if p.name == "a.png")  # not even the good entry


@pytest.mark.e2e
def test_a_zip_bomb_is_rejected_before_it_is_inflated(data_client, corpus):
    client, session = data_client
    with pytest.raises(Exception, match=r"zeros.zip: .*rejected as a zip bomb"):
        _load_zip(client, corpus["zips"]["zip bomb"])
    assert sum(p.stat().st_size for p in session.rglob("*") if p.is_file()) < MIB


@pytest.mark.e2e
def test_junk_in_a_zip_is_skipped_and_reported_and_nested_folders_count(data_client, corpus):
    client, _ = data_client
    report = _load_zip(client, corpus["zips"]["junk"])
    assert "4 images in 2 classes" in report
    assert "circle: 2" in report and "square: 2" in report  # circle/nested/deeper/b.png belongs to circle
    for entry, reason in [
        ("__MACOSX/circle/._a.png", "__MACOSX"),
        ("circle/.DS_Store", "hidden file"),
        ("square/readme.txt", "not an image file"),
        ("square/bomb.png", "decompression bomb|over the limit"),
    ]:
        line = next((x for x in report.splitlines() if entry in x), "")
        assert line and re.search(reason, line), (entry, report)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case, message",
    [
        ("one class", r"found 'circle' \(2 images\).*at least 2 classes"),
        ("empty", r"empty.zip: found no class folder with images.*at least 2 classes"),
        ("no images", r"text.zip: found no class folder with images.*skipped.*not an image file"),
    ],
)
def test_a_zip_without_two_classes_of_images_gets_one_clear_message(data_client, corpus, case, message):
    client, _ = data_client
    with pytest.raises(Exception, match=message):
        _load_zip(client, corpus["zips"][case])
    report = client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    assert "4 classes" in report


@pytest.mark.e2e
def test_loading_again_and_again_keeps_one_extracted_copy(data_client, corpus):
    client, session = data_client
    for _ in range(3):
        assert "2 classes" in _load_zip(client, corpus["zips"]["junk"])
    assert len(_extractions(session)) == 1
    client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    assert _extractions(session) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": 100_000}, "image_size must be an integer from .* to 1024"),
        ({"epochs": 1_000_000}, "greater than maximum value 100"),
        ({"batch_size": 0}, "less than minimum value 1"),
        ({"lr": -1.0}, "lr must be a number"),
    ],
    ids=["image size 1e5", "1e6 epochs", "batch 0", "negative lr"],
)
def test_absurd_training_settings_get_one_clear_message(data_client, change, message):
    client, _ = data_client
    client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    settings = {"epochs": 1, "lr": None, "batch_size": 32, "image_size": None, **change}
    with pytest.raises(Exception, match=message):
        client.predict(
            QUICK_MODEL, "Random init", "linear", settings["epochs"], settings["lr"], settings["batch_size"],
            settings["image_size"], False, "Auto", "default", "default", api_name="/train",
        )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize(
    "growth_rate, blocks, image_size, message",
    [
        (0, "6,12", None, "less than minimum value 1"),
        (12, "1000000", None, r"block_config\[0\] must be an integer from 1 to 128"),
        (12, "6,12", 100_000, "image size 100000 is too large"),
    ],
    ids=["k=0", "1e6 layers", "image size 1e5"],
)
def test_absurd_architecture_configs_get_one_clear_message(client, growth_rate, blocks, image_size, message):
    with pytest.raises(Exception, match=message):
        client.predict(
            "custom", growth_rate, blocks, 24, 4, 0.5, 0.0, "cifar", "3", image_size, "none", api_name="/architecture"
        )


# ---------------------------------------------------------------------------------------------
# The CLI


@pytest.mark.e2e
def test_cli_predict_answers_every_file_of_the_corpus_in_one_run(corpus):
    odd, bad = corpus["odd"], corpus["bad"]
    paths = [p for p, _ in odd.values()] + [t for _, t in odd.values() if t] + [p for p, _ in bad.values()]
    argv = ["predict", *map(str, paths), "--model", QUICK_MODEL, "--weights", "random", "--top-k", "10", "--json"]
    result = subprocess.run([sys.executable, "-m", "densenet_demo", *argv], capture_output=True, text=True, timeout=240)
    assert result.returncode == 1  # some inputs failed
    assert "Traceback" not in result.stderr
    answers = {Path(r["image"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(answers) == len(paths)
    for path, reason in bad.values():
        assert re.search(reason, answers[path.name]["error"]), answers[path.name]
        assert f"error: {path}:" in result.stderr
    for case, (path, twin) in odd.items():
        assert len(answers[path.name]["top_k"]) == 10, case
        if twin is not None:  # the same classes, the same probabilities up to float rounding: the command
            # classifies in batches, and a convolution's sums may round otherwise in a batch of another size
            got, want = answers[path.name]["top_k"], answers[twin.name]["top_k"]
            assert [c["label"] for c in got] == [c["label"] for c in want], case
            assert all(abs(a["probability"] - b["probability"]) <= 2e-6 for a, b in zip(got, want, strict=True)), case


@pytest.mark.parametrize(
    "config, message",
    [
        ({"growth_rate": 0, "block_config": [6, 12]}, "growth_rate must be an integer from 1"),
        ({"growth_rate": 12, "block_config": [1_000_000]}, r"block_config\[0\] must be an integer from 1 to 128"),
    ],
    ids=["k=0", "1e6 layers"],
)
def test_cli_arch_refuses_an_absurd_config_file_in_one_line(tmp_path, capsys, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["arch", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)


def test_cli_arch_refuses_an_absurd_image_size_in_one_line(capsys):
    assert main(["arch", "densenet121", "--image-size", "100000"]) == 2
    assert "image size 100000 is too large" in capsys.readouterr().err


def test_cli_predict_refuses_weights_of_another_architecture(photo, other_architecture, capsys):
    argv = ["predict", str(photo), "--model", QUICK_MODEL, "--weights", str(other_architecture)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "other_architecture.safetensors: the weights do not fit" in err and len(err.strip().splitlines()) == 1
