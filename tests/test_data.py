"""Datasets from folders, zips, uploads and hand-made class lists; safe extraction; the split; the example."""

from __future__ import annotations

import io
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densenet_demo.data import archives, examples
from densenet_demo.data import datasets as data
from densenet_demo.data.datasets import DatasetError


def _png(path: Path, color=(200, 30, 30), size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _png_bytes(color=(30, 30, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _png(root / name / f"{i}.png")
    return root


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in entries.items():
            zf.writestr(zipfile.ZipInfo(name), payload)  # ZipInfo keeps the name as given, '../' included
    return path


def _names(items) -> list[str]:
    return sorted(Path(p).name for p, _ in items)


def test_class_subfolders_become_classes_with_nested_folders_counted(tmp_path):
    root = _classes(tmp_path / "pets", {"cat": 3, "dog": 2})
    _png(root / "cat" / "indoor" / "deep.png")
    files, report = data.load_image_folder(root)
    assert files.class_names == ("cat", "dog")
    assert report.counts == {"cat": 4, "dog": 2}
    assert sorted(label for _, label in files.train) == [0, 0, 0, 0, 1, 1]
    assert files.val is None and report.skipped == []


def test_train_and_val_folders_are_used_as_the_split(tmp_path):
    root = tmp_path / "flowers"
    _classes(root / "train", {"daisy": 4, "rose": 3})
    _classes(root / "val", {"daisy": 2, "rose": 1})
    files, report = data.load_image_folder(root)
    train, val = files.split(val_fraction=0.5, seed=0)  # the fraction does not apply: val/ is the split
    assert len(train) == 7 and len(val) == 3
    assert all("/val/" in str(path) for path, _ in val)
    assert report.val_counts == {"daisy": 2, "rose": 1}
    assert "train/ + val/ layout" in report.summary()


def test_one_wrapping_folder_is_looked_through(tmp_path):
    _classes(tmp_path / "outer" / "flowers", {"a": 1, "b": 1})
    files, _ = data.load_image_folder(tmp_path / "outer")
    assert files.class_names == ("a", "b")


def test_junk_files_are_skipped_and_reported_with_the_reason(tmp_path):
    root = _classes(tmp_path / "d", {"a": 1, "b": 1})
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._0.png").write_bytes(b"\x00\x05")
    (root / "b" / "notes.txt").write_text("hello")
    (root / "b" / "fake.png").write_bytes(b"this is not a png")
    (root / "b" / "empty.jpg").write_bytes(b"")
    _png(root / "loose.png")
    files, report = data.load_image_folder(root)
    assert len(files.train) == 2
    reasons = dict(report.skipped)
    assert reasons == {
        "a/.DS_Store": "hidden file",
        "__MACOSX/a/._0.png": "macOS resource fork (__MACOSX)",
        "b/notes.txt": "not an image file (.txt)",
        "b/fake.png": reasons["b/fake.png"],
        "b/empty.jpg": "empty file",
        "loose.png": "not inside a class folder",
    }
    assert reasons["b/fake.png"].startswith("not an image in a supported format")
    summary = report.summary()
    assert "skipped 6 file(s)" in summary and "b/notes.txt: not an image file" in summary
    assert report.to_dict()["counts"] == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    "counts, found",
    [({"only": 3}, "found 'only' (3 images)"), ({}, "found no class folder with images"), ({"a": 2, "b": 0}, "'a'")],
)
def test_fewer_than_two_classes_with_images_is_a_clear_error(tmp_path, counts, found):
    root = _classes(tmp_path / "d", counts)
    root.mkdir(exist_ok=True)
    for name in counts:
        (root / name).mkdir(parents=True, exist_ok=True)
    with pytest.raises(DatasetError, match="at least 2 classes") as error:
        data.load_image_folder(root)
    assert found in str(error.value)


def test_a_dataset_of_text_files_says_what_was_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no class folder with images; 1 file\(s\) skipped.*not an image file"):
        data.load_image_folder(tmp_path)


def test_a_zip_of_a_folder_loads_like_the_folder(tmp_path):
    entries = {f"shapes/{c}/{i}.png": _png_bytes() for c in ("x", "y") for i in range(2)}
    entries["shapes/.hidden.png"] = b""
    files, report = data.load_image_folder(_zip(tmp_path / "s.zip", entries), extract_to=tmp_path / "out")
    assert files.class_names == ("x", "y") and len(files.train) == 4
    assert all(Path(p).is_relative_to(tmp_path / "out") for p, _ in files.train)
    assert report.source == "s.zip"


@pytest.mark.parametrize("bad_name", ["../escape.png", "a/../../escape.png", "/tmp/abs_escape.png", "C:/x.png"])
def test_zip_entries_pointing_outside_are_rejected_and_nothing_is_written(tmp_path, bad_name):
    zip_path = _zip(tmp_path / "evil.zip", {"a/1.png": _png_bytes(), bad_name: _png_bytes()})
    target = tmp_path / "deep" / "target"
    with pytest.raises(DatasetError, match="points outside the upload; rejected"):
        archives.safe_extract_zip(zip_path, target)
    assert not target.exists() or not any(target.rglob("*"))
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "deep" / "escape.png").exists()
    assert not Path("/tmp/abs_escape.png").exists()


def test_a_symlink_entry_is_rejected(tmp_path):
    info = zipfile.ZipInfo("a/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr("a/1.png", _png_bytes())
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link; rejected"):
        archives.safe_extract_zip(tmp_path / "link.zip", tmp_path / "t")
    assert not (tmp_path / "t" / "a" / "1.png").exists()


def test_a_zip_bomb_is_rejected_before_anything_is_written(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", _png_bytes())
        with zf.open("b/zeros.png", "w", force_zip64=True) as entry:
            for _ in range(20):
                entry.write(bytes(1 << 20))
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000  # 20 MB of zeros in a few KB
    with pytest.raises(DatasetError, match="bomb.zip: inflates .* times .*rejected as a zip bomb"):
        archives.safe_extract_zip(tmp_path / "bomb.zip", tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "limits, message",
    [({"max_total_bytes": 100}, "over the limit of"), ({"max_entries": 2}, "3 entries is over the limit of 2")],
)
def test_zip_size_and_entry_limits_are_enforced(tmp_path, limits, message):
    zip_path = _zip(tmp_path / "z.zip", {f"a/{i}.png": _png_bytes() for i in range(3)})
    with pytest.raises(DatasetError, match=message):
        archives.safe_extract_zip(zip_path, tmp_path / "t", **limits)
    assert not (tmp_path / "t").exists()


def test_a_folder_upload_takes_the_class_from_the_relative_path(tmp_path):
    pairs = [(f"pets/{c}/{i}.png", _png(tmp_path / "uploads" / f"{c}{i}.png")) for c in ("cat", "dog") for i in (0, 1)]
    pairs.append(("pets/.DS_Store", tmp_path / "uploads" / "cat0.png"))
    files, report = data.from_uploaded_files(pairs)
    assert files.class_names == ("cat", "dog")
    assert [(Path(p).name, label) for p, label in files.train] == [
        ("cat0.png", 0),
        ("cat1.png", 0),
        ("dog0.png", 1),
        ("dog1.png", 1),
    ]
    assert report.skipped == [("pets/.DS_Store", "hidden file")]


def test_a_folder_upload_with_a_parent_path_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="points outside the upload"):
        data.from_uploaded_files([("../a/1.png", _png(tmp_path / "1.png"))])


def test_class_lists_label_files_by_the_given_name(tmp_path):
    a = [_png(tmp_path / f"x{i}.png") for i in range(2)]
    b = [_png(tmp_path / "y.png"), tmp_path / "notes.txt"]
    (tmp_path / "notes.txt").write_text("x")
    files, report = data.from_class_lists({"apples": a, " pears ": b})
    assert files.class_names == ("apples", "pears")
    assert sorted((Path(p).name, label) for p, label in files.train) == [("x0.png", 0), ("x1.png", 0), ("y.png", 1)]
    assert report.skipped == [("pears/notes.txt", "not an image file (.txt)")]
    with pytest.raises(DatasetError, match="class name"):
        data.from_class_lists({"a/b": a, "c": b})


def test_stratified_split_is_seeded_keeps_every_class_in_val_and_ignores_order(tmp_path):
    items = [(tmp_path / f"{label}_{i}.png", label) for label, n in ((0, 10), (1, 2), (2, 1)) for i in range(n)]
    train, val = data.stratified_split(items, 0.2, seed=1)
    assert sorted(label for _, label in val) == [0, 0, 1]  # 2 of 10; 1 of 2; a single image stays in train
    assert sorted(label for _, label in train) == [0] * 8 + [1, 2]
    assert data.stratified_split(list(reversed(items)), 0.2, seed=1) == (train, val)
    assert data.stratified_split(items, 0.2, seed=2)[1] != val
    with pytest.raises(ValueError, match="val_fraction"):
        data.stratified_split(items, 1.0, seed=0)


def test_the_example_dataset_is_deterministic_and_has_its_classes(tmp_path):
    one = examples.make_example_dataset(tmp_path / "one", n_per_class=3, image_size=32, seed=5)
    two = examples.make_example_dataset(tmp_path / "two", n_per_class=3, image_size=32, seed=5)
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 3 * len(examples.EXAMPLE_CLASSES)
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    loaded, report = data.load_image_folder(one)
    assert loaded.class_names == tuple(sorted(examples.EXAMPLE_CLASSES)) and report.skipped == []
    pixels = [np.asarray(Image.open(one / f)) for f in files]
    assert len({p.tobytes() for p in pixels}) == len(pixels)  # no two images alike


def test_an_image_that_fails_to_decode_is_dropped_from_its_batch_and_reported(tmp_path):
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    whole = _png_bytes()
    bad.write_bytes(whole[: len(whole) // 2])
    dataset = data.ImageFileDataset([(good, 0), (bad, 1)], lambda im: torch.zeros(3, 4, 4), mode="RGB", draft_size=16)
    x, y, failed = data.collate_skipping_failures([dataset[0], dataset[1]])
    assert x.shape == (1, 3, 4, 4) and y.tolist() == [0]
    assert [path for path, _ in failed] == [str(bad)] and "truncated" in failed[0][1]
    assert data.collate_skipping_failures([dataset[1]])[:2] == (None, None)


def test_a_refused_zip_leaves_no_temporary_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    zip_path = _zip(tmp_path / "evil.zip", {"a/1.png": _png_bytes(), "../escape.png": _png_bytes()})
    with pytest.raises(DatasetError, match="points outside the upload"):
        data.load_image_folder(zip_path)
    one_class = _zip(tmp_path / "one.zip", {"a/1.png": _png_bytes()})
    with pytest.raises(DatasetError):
        data.load_image_folder(one_class)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_folder_upload_pairs_files_with_same_names_and_sizes_in_upload_order(tmp_path):
    """Two class folders holding files of the same name and size: each file keeps its own folder."""
    import json

    from densenet_demo.ui.finetune_data import pair_folder_upload

    uploads = []
    for i, cls in enumerate(["cats", "dogs", "cats", "dogs"]):
        f = tmp_path / f"upload{i}" / f"{i // 2}.png"  # the server sees bare names: 0.png, 0.png, 1.png, 1.png
        f.parent.mkdir()
        f.write_bytes(_png_bytes())
        uploads.append((f"pets/{cls}/{i // 2}.png", str(f)))
    relpaths = json.dumps([{"path": rel, "size": Path(f).stat().st_size} for rel, f in uploads])
    assert pair_folder_upload([f for _, f in uploads], relpaths) == uploads
    files, report = data.from_uploaded_files(pair_folder_upload([f for _, f in uploads], relpaths))
    assert report.counts == {"cats": 2, "dogs": 2}
