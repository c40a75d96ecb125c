"""The app's ``gr.Blocks``: every request it serves is tagged in the log and answers with a message, and its MCP
server offers agents only the tools written for them.

Gradio runs every event (the page's, the API's, MCP's) through ``Blocks.process_api``; here that call
- tags the request's log lines (``hosting/request_log.py``);
- checks each input's kind before Gradio converts it (``inputs.py``);
- turns what goes wrong into what the client reads: an expected user error (``gr.Error``, an input Gradio
  could not prepare) is one INFO line and its message, without a traceback; anything else is a failure of the
  app: one ERROR line with the traceback, and the client reads a short apology with the request's reference,
  never Gradio's generic "The upstream Gradio app has raised an exception".

Its sessions are light: Gradio (6.31) makes a session for every page that opens and for every plain-HTTP API
call (``POST /gradio_api/call/...`` without a session hash: a new one each time), and fills each with the config
of every component of the page (196 here) the moment it is made: about 16 ms of the server's event loop per API
call on 2 cores and 315 KB kept per session, up to 10,000 sessions. Only Gradio's deep-link route reads those
configs (all at once); here a session works them out when something first asks (``LightSessionState``), and
the values each call sets in them (its inputs and outputs) wait there until then.

Its queue sums up the served events for Gradio's monitoring page every ``ANALYTICS_SUMMARY_EVERY`` events, not
after each one: Gradio (6.31) builds a pandas table of the last 10,000 events for it each time, 2 ms of the
server's CPU per event at 1,000 kept and 8 ms at 10,000, so a busy Space paid more for each request the longer
it served. ``GRADIO_ANALYTICS_CACHE_FREQUENCY``, where the host sets it, is Gradio's own and wins.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import gradio as gr
from gradio.blocks import BlocksConfig
from gradio.state_holder import SessionState, StateHolder

from ..hosting.request_log import current_request, request_context, request_tag
from .inputs import input_problem, wrong_inputs

__all__ = ["ANALYTICS_SUMMARY_EVERY", "FAILURE_MESSAGE", "DemoBlocks", "LightSessionState", "LightStateHolder"]

logger = logging.getLogger(__name__)

FAILURE_MESSAGE = (
    "This request failed on the server (reference {reference}); the details are in the server's log. Try again, "
    "and if it fails again, tell the host the reference."
)
_PROCESS_API = inspect.signature(gr.Blocks.process_api)
# Events between two summaries for Gradio's monitoring page (its own default: 1, a pandas table of up to 10,000
# events after every event); the page shows figures at most this many events old.
ANALYTICS_SUMMARY_EVERY = 50


class DemoBlocks(gr.Blocks):
    """``gr.Blocks`` whose requests are tagged in the log and whose errors are messages (see the module).

    ``mcp_tools``: the endpoints (api names) the MCP server offers as tools; the API keeps all public ones.
    """

    def __init__(self, *args: Any, mcp_tools: Iterable[str] = (), **kwargs: Any) -> None:
        self.mcp_tools = frozenset(mcp_tools)
        self._mcp_server: Any = None
        super().__init__(*args, **kwargs)

    def queue(self, *args: Any, **kwargs: Any) -> DemoBlocks:
        """Gradio's ``queue``, its monitoring summary made every ``ANALYTICS_SUMMARY_EVERY`` events (see the module)."""
        super().queue(*args, **kwargs)
        if "GRADIO_ANALYTICS_CACHE_FREQUENCY" not in os.environ:
            self._queue.ANAYLTICS_CACHE_FREQUENCY = ANALYTICS_SUMMARY_EVERY  # (sic: Gradio's spelling)
        return self

    @property
    def state_holder(self) -> StateHolder:
        """Gradio's sessions for this app (set by Gradio when the server is made); their configs are lazy."""
        return self._state_holder

    @state_holder.setter
    def state_holder(self, holder: StateHolder) -> None:
        if type(holder) is StateHolder:  # Gradio's own, just made and still empty: the same holder, light sessions
            holder.__class__ = LightStateHolder
        self._state_holder = holder

    @property
    def mcp_server_obj(self) -> Any:
        """Gradio's MCP server for this app, once launched with it; its tools are ``mcp_tools`` only."""
        return self._mcp_server

    @mcp_server_obj.setter
    def mcp_server_obj(self, server: Any) -> None:
        # Gradio (6.31) makes every public API endpoint a tool and offers no per-endpoint switch: the page's
        # training, run and dataset endpoints need the page's session, which MCP calls do not keep. The server
        # reads its tools from this map for listing, calling and its schema page alike.
        if server is not None:
            server.tool_to_endpoint = {
                tool: endpoint
                for tool, endpoint in server.tool_to_endpoint.items()
                if endpoint.lstrip("/") in self.mcp_tools
            }
        self._mcp_server = server

    async def process_api(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Gradio's ``process_api``, tagged in the log, its inputs' kinds checked, its errors turned into messages."""
        call = _PROCESS_API.bind(self, *args, **kwargs).arguments
        block_fn = call["block_fn"]
        if isinstance(block_fn, int):
            block_fn = self.fns[block_fn]
        request = call.get("request")
        session = call.get("session_hash") or getattr(request, "session_hash", None)
        endpoint = f"/{block_fn.api_name}" if block_fn.api_name else str(block_fn.name)
        with request_context(request_tag(call.get("event_id"), session)):
            try:
                if call.get("iterator") is None and not block_fn.batch:
                    wrong = wrong_inputs(block_fn, call["inputs"], call.get("state"))
                    if wrong is not None:
                        raise gr.Error(wrong)
                return await super().process_api(*args, **kwargs)
            except Exception as error:  # every failure becomes the client's message here, and one log line
                raise _answer(error, endpoint, block_fn, call["inputs"]) from None


class LightSessionState(SessionState):
    """Gradio's ``SessionState`` whose per-component configs are worked out when first read, not when it is made
    nor when a call sets a component's value in them.

    Everything else is Gradio's own: its ``__init__`` runs as it is, shown an app with no components, so that it
    fills no configs; a value set in a config not worked out yet waits beside it (``_Later``); a config set or
    updated otherwise is set as Gradio sets it; ``components`` (the deep link's read) first works out every
    config not yet there, in the page's order, with the values set since.
    """

    def __init__(self, blocks: Any) -> None:
        super().__init__(_WithoutComponents(blocks))
        self._not_configured = [key for key in self.blocks_config.blocks if key in blocks.blocks]

    def _update_value_in_config(self, key: int, value: Any) -> None:
        config = self.config_values.get(key)
        if config is None:  # Gradio would work it out now, from the session's block, and set the value in it
            self.config_values[key] = _Later(self.blocks_config.blocks[key], value)
        elif isinstance(config, _Later):
            config.value = value
        else:
            super()._update_value_in_config(key, value)

    @property
    def components(self) -> Iterator[dict]:
        if self._not_configured:  # the page's order; a config or value set since is kept as it was set
            done, blocks = self.config_values, self.blocks_config.blocks
            self.config_values = {
                key: done[key] if key in done else _Later(blocks[key])
                for key in self._not_configured
                if key in done or key in blocks
            } | done
            self._not_configured = []
        for key, config in list(self.config_values.items()):
            if isinstance(config, _Later):
                self.config_values[key] = config.config(key)
        return SessionState.components.fget(self)


_NO_VALUE = object()


class _Later:
    """A session's config of a component, not worked out yet, and the value a call has set in it since, if any."""

    __slots__ = ("block", "value")

    def __init__(self, block: Any, value: Any = _NO_VALUE) -> None:
        self.block, self.value = block, value

    def config(self, key: int) -> dict:
        """What Gradio's session would hold: the block's config, with the value set since in it."""
        config = BlocksConfig.config_for_block(key, [], self.block)
        if self.value is not _NO_VALUE and "props" in config:
            config["props"]["value"] = self.value
        return config


class LightStateHolder(StateHolder):
    """Gradio's ``StateHolder`` making ``LightSessionState`` sessions."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LightSessionState(self.blocks)
        return super().__getitem__(session_id)


class _WithoutComponents:
    """An app as ``SessionState.__init__`` sees it from ``LightSessionState``: the same, less its components."""

    blocks: dict[int, Any] = {}

    def __init__(self, app: Any) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)


def _answer(error: Exception, endpoint: str, block_fn: Any, values: list[Any]) -> gr.Error:
    """The ``gr.Error`` the client reads for ``error``, logged once: INFO for a user error, ERROR for a failure."""
    if isinstance(error, gr.Error):
        message = str(error.message)
        logger.info("%s refused: %s", endpoint, _one_line(message))
        return gr.Error(
            message, duration=error.duration, visible=error.visible, title=error.title, print_exception=False
        )
    problem = input_problem(error, block_fn, values)
    if problem is not None:
        logger.info("%s refused: %s", endpoint, problem)
        return gr.Error(problem, print_exception=False)
    logger.error("%s failed", endpoint, exc_info=error)
    reference = current_request().split()[0]
    return gr.Error(FAILURE_MESSAGE.format(reference=reference), print_exception=False)


def _one_line(message: str, limit: int = 300) -> str:
    """A message as one log line: newlines folded, at most ``limit`` characters."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
