"""Whose Hugging Face account the page acts for: the visitor's own sign-in, never the host's.

- On a Space (Gradio's OAuth is real there; the README's front matter asks for it: ``hf_oauth: true``), the
  visitor signs in with ``gr.LoginButton`` and Gradio hands each request their OAuth token (``gr.OAuthToken``).
  A push uses that token and nothing else; without it the push is refused. Downloads use it too (a visitor's
  own private model), else go anonymous. The Space owner's ``HF_TOKEN`` is never used for a visitor.
- On another shared server (``runs.settings().shared``: a non-loopback address, a share link) there is no real
  sign-in: Gradio would mock it with the host's account for every visitor. So no login button, pushes are
  refused, downloads go anonymous.
- Locally, the person at the machine is the visitor: this machine's sign-in (``HF_TOKEN`` or ``hf auth login``).
  Gradio mocks the login button with that account, which needs the token and an answer from the Hub at launch;
  the button is shown only when both are there (else Gradio would refuse to start), and a push waits for it.
"""

from __future__ import annotations

import logging
import os

import gradio as gr
from gradio.utils import get_space

from ..hosting import runs
from ..weights.hub import hub_endpoint, network_errors

__all__ = ["download_token", "login_available", "on_space", "push_token", "where"]

logger = logging.getLogger(__name__)


def on_space() -> bool:
    """True on a Hugging Face Space, where Gradio's sign-in is the real OAuth (``gradio.utils.get_space``)."""
    return get_space() is not None


def where() -> str:
    """``space``, ``shared`` (another server with visitors) or ``local``: which of the rules above applies."""
    if on_space():
        return "space"
    return "shared" if runs.settings().shared else "local"


def login_available() -> bool:
    """Whether the page can carry ``gr.LoginButton`` (Gradio refuses to launch with one it cannot serve)."""
    place = where()
    if place == "space":
        return bool(os.environ.get("OAUTH_CLIENT_ID"))  # set by the Hub when the front matter has hf_oauth: true
    return place == "local" and _machine_signed_in()


def _machine_signed_in() -> bool:
    """This machine has a Hugging Face token the Hub answers for (what Gradio's local mock of the login needs)."""
    from huggingface_hub import get_token, whoami
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        return False
    try:
        user = whoami(token=token)
    except (HfHubHTTPError, *network_errors()) as e:
        logger.info(
            "no Hugging Face sign-in button: this machine's token was not confirmed by %s (%s)", hub_endpoint(), e
        )
        return False
    return user.get("type") == "user"  # Gradio's mock refuses an organisation's token (and would not launch)


def push_token(oauth_token: gr.OAuthToken | None) -> str | None:
    """The token a push from this page uses (None: this machine's sign-in); ``gr.Error`` when there is none to use."""
    place = where()
    if place == "shared":
        raise gr.Error(
            "Pushing to the Hub needs each visitor's own Hugging Face sign-in, which this server does not have "
            "(it does on a Hugging Face Space). Download the run instead, and push it from your computer with "
            "`python -m densenet_demo push`."
        )
    if place == "space" and not os.environ.get("OAUTH_CLIENT_ID"):
        raise gr.Error("This Space has no Hugging Face sign-in (its README needs hf_oauth: true); download the run.")
    if login_available() and oauth_token is None:
        raise gr.Error("Sign in with Hugging Face first (the button above), then push.")
    if place == "space":
        return oauth_token.token  # type: ignore[union-attr]  # checked just above
    return None  # local: the mocked sign-in stands for this machine's own, which the engine reads itself


def download_token(oauth_token: gr.OAuthToken | None) -> str | bool | None:
    """The token a download for this page uses: the visitor's on a Space, none on another shared server (False),
    this machine's locally (None)."""
    place = where()
    if place == "space":
        return oauth_token.token if oauth_token is not None else False
    return False if place == "shared" else None
