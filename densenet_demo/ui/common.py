"""What the tabs share: the model lists (presets, the session's runs and Hub models), run access, errors turned
into messages.

The session state (``gr.State`` dict, see finetune_data.py) carries the ``sessions.Session`` whose owner token
decides which runs a page may list and use (``runs.visible_runs`` / ``runs.can_use``), and the Hub models the
session loaded (``HUB_MODELS``, see hub_models.py).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

import gradio as gr

from ..config import PRESETS
from ..hosting import runs
from ..weights import checkpoints
from ..weights import resolver as weights

__all__ = [
    "HUB_MODELS",
    "MODEL_API",
    "PAGE_WEIGHTS",
    "WEIGHTS_LABELS",
    "api_type",
    "check_run",
    "describe",
    "hub_choices",
    "limits_note",
    "list_runs",
    "model_choices",
    "names_only",
    "owner",
    "preset_choices",
    "reuse_choices",
    "run_choices",
    "unknown_model",
    "user_errors",
    "weights_label",
]

HUB_MODELS = "hub_models"  # the state's {hf-hub:USER/NAME@commit -> label} of the Hub models the session loaded

# The page's words for where a model's weights come from, and the engine's (``weights.resolve``): the one
# translation between them, for every tab. "ImageNet" lets the model decide: its ImageNet weights where it has
# them, else random init.
WEIGHTS_LABELS: dict[str, str] = {"ImageNet": weights.DEFAULT, "Random init": "random"}
PAGE_WEIGHTS: dict[str, str] = {engine: page for page, engine in WEIGHTS_LABELS.items()}  # the other way

# An absolute server path in a message: a '/' that starts a word (not the '//' of a URL), up to a space,
# quote, bracket, comma or colon.
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"()<>,;:]+")


# How API clients (view_api, MCP) are told what a model list takes: its choices are the page's at build time,
# but every session's own runs are valid too, so the type is a string with its forms named, not an enum.
MODEL_API = {
    "type": "string",
    "description": "a preset name (densenet121, densenet169, densenet_fashion, ...; see /architecture_table) or "
    "run:<run-id> of one of your fine-tuned runs (/list_runs), or hf-hub:USER/NAME@<commit> of a Hugging Face "
    "Hub model loaded with /load_hub_model",
}


def api_type(component: Any, info: dict[str, Any]) -> Any:
    """``component``, described to API clients as ``info`` (a JSON schema) instead of what Gradio derives from its
    page settings (a dropdown's choices as an enum, a slider's whole numbers as a float)."""
    component.api_info = lambda: info
    return component


def preset_choices() -> list[tuple[str, str]]:
    """(label, value) for each preset, its one-line summary in the label."""
    return [(f"{name} — {preset.summary}", name) for name, preset in PRESETS.items()]


def owner(state: dict[str, Any] | None) -> str | None:
    """The owner token of the page's session, or None before the session has one (it has no runs then)."""
    session = (state or {}).get("session")
    return getattr(session, "owner", None)


def run_choices(state: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The runs this session may use, newest first: (``dataset · model mode · acc · time``, ``run:<id>``)."""
    return runs.run_labels(runs.visible_runs(owner(state), runs.settings().shared))


def hub_choices(state: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The Hub models this session loaded (Predict's "Load from the Hugging Face Hub"): (label, ``hf-hub:…@commit``)."""
    return [(label, spec) for spec, label in ((state or {}).get(HUB_MODELS) or {}).items()]


def model_choices(state: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The session's fine-tuned runs (newest first), its Hub models, and then the presets, for the Predict tab."""
    return run_choices(state) + hub_choices(state) + preset_choices()


def reuse_choices(state: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Where the Architecture tab's feature-reuse heatmap may take its weights from."""
    return [("none", "none"), ("ImageNet weights (when available)", "imagenet")] + run_choices(state)


def describe(handler: Any) -> str:
    """A handler's docstring, up to its arguments: its endpoint's description where Gradio cannot read it (a
    ``functools.partial`` shows Python's own doc of partial)."""
    return (inspect.getdoc(handler) or "").split("\n\nArgs:")[0]


def list_runs(state: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fine-tuned runs this session may use, newest first, as (label, ``run:<id>``) choices: the Predict tab's
    model list (runs, then presets) and the Architecture tab's heatmap weights. A page opened later sees the runs
    trained since the app started."""
    return gr.update(choices=model_choices(state)), gr.update(choices=reuse_choices(state))


def unknown_model(model: str) -> gr.Error:
    """The one message for a model that does not exist or is not this session's: ids cannot be probed."""
    return gr.Error(f"Unknown model {model[:100]!r}: choose a preset or one of your fine-tuned runs (run:<run-id>).")


def check_run(model: str, state: dict[str, Any] | None) -> None:
    """Refuse ``run:<id>`` unless this session may use it (the same message for unknown and others' runs)."""
    with user_errors(weights.CheckpointError):
        checkpoints.validate_run_id(model.removeprefix("run:"))  # a malformed id says so; it names no run either way
    if not runs.can_use(model.removeprefix("run:"), owner(state), runs.settings().shared):
        raise unknown_model(model)


def limits_note(removed: list[str]) -> list[str]:
    """A log line for the runs the server's caps removed (no ids: they may be other sessions' runs)."""
    if not removed:
        return []
    limits = runs.settings()
    caps = [f"{limits.per_session} runs per session"] * bool(limits.per_session)
    caps += [f"{limits.max_mb:g} MB of runs"] * bool(limits.max_mb)
    return [f"Removed {len(removed)} older run(s) to stay within this server's limits ({', '.join(caps)})."]


@contextmanager
def user_errors(*errors: type[Exception]) -> Iterator[None]:
    """The engine's errors of these types reach the page as their plain message (the engine words them for people)."""
    try:
        yield
    except errors as e:
        raise gr.Error(str(e)) from None


def names_only(text: str) -> str:
    """``text`` with each absolute server path shortened to its last name (``/tmp/x/run.zip`` -> ``run.zip``)."""
    return _SERVER_PATH.sub(lambda m: PurePosixPath(m.group(0)).name or m.group(0), text)


def weights_label(model: str) -> str:
    """The page's word for ``model``'s own weights: "ImageNet" where it has them, else "Random init"."""
    return "ImageNet" if weights.default_weights(model) == "imagenet" else "Random init"
