"""Which request a log line belongs to, and how the server's log reads.

A busy server interleaves many users' lines. While a request is served, every line the app logs carries a
tag: the request's id (the first 8 characters of Gradio's event id, which is also what a client's job knows)
and the session's prefix (``s:`` and the first 8 characters of the session hash), so one user's story can be
followed with ``grep``. Expected user errors (a bad image, an unknown run, a refused setting) are logged at
INFO, one line, no traceback; failures of the app itself at ERROR, with their traceback (``ui/app_blocks.py``).

The tag lives in a context variable: it follows the request into the worker threads Gradio runs handlers on
(``anyio`` copies the context), and lines logged outside any request show ``-``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

__all__ = [
    "LOG_FORMAT",
    "ClientLeft",
    "RequestTag",
    "configure_logging",
    "current_request",
    "request_context",
    "request_tag",
]

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request)s] %(name)s: %(message)s"
_NO_REQUEST = "-"
_current: ContextVar[str] = ContextVar("densenet_demo_request", default=_NO_REQUEST)


def request_tag(event_id: str | None, session_hash: str | None) -> str:
    """``3f2a91c0 s:7b2e01aa``: the request's id (a new one when Gradio gave none) and the session's prefix."""
    request_id = (event_id or secrets.token_hex(4))[:8]
    return f"{request_id} s:{session_hash[:8]}" if session_hash else request_id


@contextmanager
def request_context(tag: str) -> Iterator[str]:
    """Tag every line logged inside the block (and in the threads it hands work to through anyio) with ``tag``."""
    token = _current.set(tag)
    try:
        yield tag
    finally:
        _current.reset(token)


def current_request() -> str:
    """The tag of the request being served here, or ``-`` outside any request."""
    return _current.get()


class RequestTag(logging.Filter):
    """Adds ``record.request`` (the current request's tag) for ``LOG_FORMAT``'s ``%(request)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request"):
            record.request = _current.get()
        return True


class ClientLeft(logging.Filter):
    """A client that went away mid-request (an upload cut short: a closed tab, a lost connection, a client's
    timeout) is its own business: the ASGI server's ERROR with a traceback becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ClientDisconnect":  # starlette's, raised while a request body is read
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info, record.exc_text = "a client left mid-request", (), None, None
        return True


def configure_logging(stream: TextIO | None = None) -> bool:
    """The server's log on stderr (or ``stream``): warnings and failures of every library with their tracebacks,
    and the app's own notes at INFO, each line tagged with its request. Leaves a host's set-up alone (a test,
    a notebook, Spaces' runner): returns whether it set up logging. A client leaving mid-request is an INFO line
    in any case (``ClientLeft``)."""
    if not any(isinstance(f, ClientLeft) for f in logging.getLogger("uvicorn.error").filters):
        logging.getLogger("uvicorn.error").addFilter(ClientLeft())
    root = logging.getLogger()
    if root.handlers:
        return False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestTag())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("densenet_demo").setLevel(logging.INFO)
    return True
