"""What each input of an endpoint accepts, checked before its handler runs, and Gradio's own input failures
worded for people.

The page sends well-formed values; API and MCP clients may send anything (a list for a number, text for a
checkbox, a server path for a file). Gradio converts some values itself and passes others on unchecked (a
``gr.Number`` without bounds hands a list to the handler), and when its conversion fails the client reads only
"The upstream Gradio app has raised an exception". Here every value is checked against the kind of its
component first, and a failure of Gradio's own preparation (a file that is not an upload of this server, a
malformed file record) becomes a message that names the parameter and what it takes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import gradio as gr
import pydantic
from gradio.block_function import BlockFunction
from gradio.exceptions import ComponentProcessingError, InvalidPathError
from gradio.utils import get_function_params

__all__ = ["expected_value", "input_problem", "wrong_inputs"]

FILE_EXPECTED = "a file uploaded to this server (gradio_client: handle_file(path)) or an http(s):// URL"
_AT_INDEX = re.compile(r"^Could not preprocess input component at index (\d+)")


def expected_value(component: Any) -> str:
    """What ``component`` takes, in a few words a client can act on."""
    if isinstance(component, (gr.Slider, gr.Number)):
        low, high = component.minimum, component.maximum
        whole = "a whole number" if getattr(component, "precision", None) == 0 else "a number"
        if low is not None and high is not None:
            return f"{whole} from {low:g} to {high:g}"
        return whole + (f" of at least {low:g}" if low is not None else "")
    if isinstance(component, gr.Checkbox):
        return "true or false"
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        values = [value for _, value in component.choices]
        shown = ", ".join(repr(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        custom = " (or a run as 'run:<run-id>')" if getattr(component, "allow_custom_value", False) else ""
        return f"one of {shown}{custom}"
    if isinstance(component, (gr.File, gr.Image)):
        return FILE_EXPECTED
    if isinstance(component, gr.Textbox):
        return "text"
    return "a value of the documented kind"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _accepts(component: Any, value: Any) -> bool:
    """Whether ``value`` (as a client sent it) has the kind ``component`` takes; files are left to Gradio."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(component, gr.Slider):
        return number and math.isfinite(value)
    if isinstance(component, gr.Number):
        return value is None or (number and math.isfinite(value))
    if isinstance(component, gr.Checkbox):
        return value is None or isinstance(value, bool)
    if isinstance(component, gr.Textbox):
        return value is None or isinstance(value, str)
    if isinstance(component, gr.Dropdown) and component.multiselect:
        return value is None or (isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value))
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        if value is None or getattr(component, "allow_custom_value", False):
            return value is None or isinstance(value, str)
        return any(value == choice and type(value) is type(choice) for _, choice in component.choices)
    return True


def _described(value: Any) -> str:
    """The value as the message shows it: short text itself, anything else (a path too) by its kind."""
    if isinstance(value, str) and "/" not in value and "\\" not in value:
        return repr(value if len(value) <= 40 else value[:39] + "…")
    return _kind(value)


def parameter_names(block_fn: BlockFunction) -> list[str]:
    """The handler's parameter names, one per input (as ``client.view_api()`` shows them)."""
    try:
        names = [name for name, *_ in get_function_params(block_fn.fn)]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"input {i + 1}" for i in range(len(block_fn.inputs))]


def wrong_inputs(block_fn: BlockFunction, values: Sequence[Any], session: Any = None) -> str | None:
    """A message naming each value whose kind its input does not take (a list for top_k, text for show_cam), or
    None when every value may go on to Gradio's own conversion and the handler.

    ``session``: Gradio's state of the calling session, which holds the components as the page has updated them
    (a run added to a list of choices); without it, the components as built."""
    components = [_as_updated(component, session) for component in block_fn.inputs]
    if len(values) != len(block_fn.inputs):  # Gradio fills in the session's state; the client sends the others
        names = parameter_names(block_fn)
        named = [name for name, c in zip(names, block_fn.inputs, strict=True) if not isinstance(c, gr.State)]
        return f"This endpoint takes {len(named)} value(s), in this order: {', '.join(named) or 'none'}."
    wrong = [
        (i, component, value)
        for i, (component, value) in enumerate(zip(components, values, strict=True))
        if not isinstance(component, gr.State) and not _accepts(component, value)
    ]
    if not wrong:
        return None
    names = parameter_names(block_fn)  # the handler's signature, read only to name what is wrong
    return "; ".join(f"{names[i]} takes {expected_value(c)}, not {_described(v)}" for i, c, v in wrong) + "."


def _as_updated(component: Any, session: Any) -> Any:
    """The session's copy of ``component`` where the page updated it (its choices), else the component itself."""
    if session is None or getattr(component, "stateful", False):
        return component
    try:
        return session[component._id] if component._id in session else component
    except (KeyError, TypeError):
        return component


def input_problem(error: Exception, block_fn: BlockFunction, values: Sequence[Any]) -> str | None:
    """The message for an input Gradio could not prepare (before the handler ran), or None when ``error`` is not
    such a failure."""
    names = parameter_names(block_fn)
    if isinstance(error, ComponentProcessingError):
        match = _AT_INDEX.match(str(error))
        if match is None:  # an output the handler returned: the app's failure, not the client's
            return None
        index = int(match.group(1))
        component = block_fn.inputs[index]
        return f"{names[index]} takes {expected_value(component)}; the value given could not be used."
    if isinstance(error, InvalidPathError):
        return f"A file must be {FILE_EXPECTED}; a path on the server is refused."
    if isinstance(error, ValueError) and _raised_in(error, "safehttpx"):  # Gradio's guard on the URLs it fetches
        return f"A file must be {FILE_EXPECTED} of a public address; a private or local one is refused."
    if isinstance(error, pydantic.ValidationError):
        files = [
            name
            for name, component in zip(names, block_fn.inputs, strict=False)
            if isinstance(component, (gr.File, gr.Image))
        ]
        name = " or ".join(files) or "A file input"
        return f"{name} takes {FILE_EXPECTED}; the value given is not a file record."
    return None


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether ``error`` was raised by ``package``'s code (its traceback's innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] == package
