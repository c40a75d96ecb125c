"""The Fine-tune tab's first step, the data: check the chosen source and keep it in the session.

Per-user data lives in the tab's ``gr.State`` dict: ``session`` (a ``sessions.Session``, the user's folders),
``dataset`` (the checked files and their report), ``dataset_key`` (what was checked: Start checks again when
the choice has changed since), ``cancel`` (the token of the latest run, for Stop) and ``run_id`` (its name).
"""

from __future__ import annotations

import html
import json
import os
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr

from ..data import datasets as data
from ..data import examples
from ..hosting import runs, sessions
from .common import user_errors

__all__ = [
    "SOURCE_CHOICES",
    "add_class",
    "close_session",
    "ensure_dataset",
    "folder_summary",
    "load_dataset",
    "pair_folder_upload",
    "session_of",
    "session_state",
]

SOURCE_CHOICES = ("Example dataset", "Zip file", "Folder", "Classes by hand")


def session_of(state: dict[str, Any]) -> sessions.Session:
    return state.setdefault("session", sessions.Session())


def session_state() -> gr.State:
    """The page's per-session state (all tabs share it); when it expires, ``close_session`` runs."""
    return gr.State({}, time_to_live=sessions.STATE_TTL_S, delete_callback=close_session)


def close_session(state: dict[str, Any] | None) -> None:
    """The state's time to live is over (or the page was closed): the session's folders go, and on a shared
    server its runs too (unless published or in use)."""
    if state and state.get("session"):
        state["session"].close(remove_runs=runs.settings().shared)


def pair_folder_upload(files: list[str], relpaths_json: str) -> list[tuple[str, str]]:
    """Pair each uploaded temp file with the relative path the browser reported for it.

    Gradio's directory upload hands the server each file with only its bare name; the page's script
    (``FOLDER_UPLOAD_JS``) reports the relative paths and sizes, and name + size find each file's folder.
    """
    try:
        entries = json.loads(relpaths_json or "[]")
    except json.JSONDecodeError:
        entries = []
    pool: dict[tuple[str, int], list[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("size", -1), int):
            key = (Path(entry["path"]).name, entry.get("size", -1))
            pool.setdefault(key, []).append(entry["path"])
    pairs = []
    for file in files:
        key = (Path(file).name, os.path.getsize(file))
        rel = pool.get(key, []).pop(0) if pool.get(key) else None
        if rel is None:
            raise gr.Error(
                "The browser did not report the folders of the uploaded files, so the classes are unknown. "
                "Upload a zip of class subfolders instead."
            )
        pairs.append((rel, file))
    return pairs


def load_dataset(
    source: str,
    zip_file: str | None = None,
    folder_files: list[str] | None = None,
    relpaths: str | None = None,
    by_hand: dict[str, list[str]] | None = None,
    state: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Validate the chosen data and show its report (classes, counts, skipped files).

    Args:
        source: "Example dataset", "Zip file", "Folder" or "Classes by hand".
        zip_file: with "Zip file": a .zip of class subfolders (or train/ and val/).
        folder_files: with "Folder": the folder's files.
        relpaths: with "Folder": the files' paths inside the folder, as JSON (the page sends them).
    """
    state = dict(state or {})
    session = session_of(state)
    session.folder()  # made with the session's first dataset, whatever its source: one place to look
    extracted = None
    with user_errors(data.DatasetError, zipfile.BadZipFile, OSError):
        if source == "Example dataset":
            dataset, report = data.load_image_folder(examples.example_dataset_folder())
            report.source = "the built-in example dataset (shapes and stripes, generated)"
        elif source == "Zip file":
            if not zip_file:
                raise gr.Error("Choose a .zip of class subfolders first.")
            extracted = session.extraction_folder()
            dataset, report = data.load_image_folder(zip_file, extract_to=extracted)  # refused: folder removed
        elif source == "Folder":
            if not folder_files:
                raise gr.Error("Choose a folder of class subfolders first.")
            dataset, report = data.from_uploaded_files(pair_folder_upload(folder_files, relpaths))
        else:
            dataset, report = data.from_class_lists(by_hand or {})
    session.use_dataset(extracted)
    state["dataset"] = (dataset, report)
    state["dataset_key"] = _choice_key(source, zip_file, folder_files, relpaths, by_hand)
    return f"```text\n{report.summary()}\n```", state


def ensure_dataset(
    source: str,
    zip_file: str | None,
    folder_files: list[str] | None,
    relpaths: str,
    by_hand: dict[str, list[str]] | None,
    state: dict[str, Any] | None,
) -> tuple[Any, dict[str, Any]]:
    """Before Start: check the chosen data unless exactly this choice has been checked already."""
    state = state or {}
    if state.get("dataset") is not None and state.get("dataset_key") == _choice_key(
        source, zip_file, folder_files, relpaths, by_hand
    ):
        return gr.skip(), state
    return load_dataset(source, zip_file, folder_files, relpaths, by_hand, state)


def _choice_key(
    source: str, zip_file: str | None, folder_files: list[str] | None, relpaths: str, by_hand: dict | None
) -> str:
    """What identifies a data choice: the source and its files (uploads get new temp paths each time)."""
    if source == "Example dataset":
        return source
    if source == "Zip file":
        return json.dumps([source, zip_file])
    if source == "Folder":
        return json.dumps([source, sorted(folder_files or []), relpaths or ""])
    return json.dumps([source, sorted((k, sorted(v)) for k, v in (by_hand or {}).items())])


def folder_summary(folder_files: list[str] | None, relpaths_json: str) -> str:
    """A few lines for an uploaded folder (how many files, which class folders) instead of one row per file."""
    if not folder_files:
        return ""
    try:
        entries = json.loads(relpaths_json or "[]")
    except json.JSONDecodeError:
        entries = []
    paths = [e["path"] for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)]
    folders = Counter(PurePosixPath(p).parent.name for p in paths if len(PurePosixPath(p).parts) > 2)
    text = f"**{len(folder_files):,} files uploaded**"
    if folders:
        shown = ", ".join(f"{html.escape(name)} ({n:,})" for name, n in sorted(folders.items())[:12])
        more = f", and {len(folders) - 12} more" if len(folders) > 12 else ""
        text += f" in {len(folders)} class folder(s): {shown}{more}."
    return text + " Press **Check dataset** (or Start) to check every image."


def add_class(
    name: str, files: list[str] | None, by_hand: dict[str, list[str]] | None
) -> tuple[dict[str, list[str]], str, str, None]:
    """Add images under a class name (again: more images for it); returns the classes, their list, cleared inputs."""
    by_hand = dict(by_hand or {})
    name = (name or "").strip()
    if not name:
        raise gr.Error("Name the class first.")
    if not files:
        raise gr.Error(f"Add some images for '{name}': upload them, or capture them with the camera.")
    by_hand[name] = list(by_hand.get(name, [])) + list(files)
    text = "\n".join(f"- **{html.escape(c)}**: {len(v)} image(s)" for c, v in by_hand.items())
    return by_hand, text, "", None
