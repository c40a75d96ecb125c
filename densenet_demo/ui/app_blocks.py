"""The app's ``gr.Blocks``: every request it serves is tagged in the log and answers with a message, and its MCP
server offers agents only the tools written for them.

Gradio runs every event (the page's, the API's, MCP's) through ``Blocks.process_api``; here that call
- tags the request's log lines (``hosting/request_log.py``);
- checks each input's kind before Gradio converts it (``inputs.py``);
- turns what goes wrong into what the client reads: an expected user error (``gr.Error``, an input Gradio
  could not prepare) is one INFO line and its message, without a traceback; anything else is a failure of the
  app: one ERROR line with the traceback, and the client reads a short apology with the request's reference,
  never Gradio's generic "The upstream Gradio app has raised an exception".
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import Any

import gradio as gr

from ..hosting.request_log import current_request, request_context, request_tag
from .inputs import input_problem, wrong_inputs

__all__ = ["FAILURE_MESSAGE", "DemoBlocks"]

logger = logging.getLogger(__name__)

FAILURE_MESSAGE = (
    "This request failed on the server (reference {reference}); the details are in the server's log. Try again, "
    "and if it fails again, tell the host the reference."
)
_PROCESS_API = inspect.signature(gr.Blocks.process_api)


class DemoBlocks(gr.Blocks):
    """``gr.Blocks`` whose requests are tagged in the log and whose errors are messages (see the module).

    ``mcp_tools``: the endpoints (api names) the MCP server offers as tools; the API keeps all public ones.
    """

    def __init__(self, *args: Any, mcp_tools: Iterable[str] = (), **kwargs: Any) -> None:
        self.mcp_tools = frozenset(mcp_tools)
        self._mcp_server: Any = None
        super().__init__(*args, **kwargs)

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
