"""A run carried across the page reload that signing in with Hugging Face makes.

Gradio's sign-in leaves the page and comes back to a fresh one: a new browser session, whose state no longer
knows the run the visitor just trained, and on a shared server no longer owns it (``runs``: a run is its
session's). So before the visitor signs in, their session offers the run: ``offer`` writes, beside the run, a
digest of a one-time secret and when it lapses, and returns a code (the run id and the secret) that the page
keeps in its address, which the sign-in carries along. The page that comes back ``accept``s the code: the run
becomes its session's. A code works once, for ``HANDOVER_TTL_S``; one that is never used changes nothing, and
the run goes with the old session as any run does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time

from ..weights import checkpoints
from . import runs

__all__ = ["HANDOVER_FILE", "HANDOVER_TTL_S", "accept", "offer"]

logger = logging.getLogger(__name__)

HANDOVER_FILE = "handover.json"  # beside owner.json; never part of a download (a checkpoint zip takes two files)
HANDOVER_TTL_S = 30 * 60  # within the hour Gradio keeps a closed page's state, so the old session still holds it
_SEPARATOR = "~"  # in neither run ids nor URL-safe secrets, and safe in a URL as it is


def offer(run_id: str, owner: str | None) -> str:
    """A one-time code that hands run ``run_id`` (which ``owner``'s session may use) to the session that shows it."""
    if not runs.can_use(run_id, owner, runs.settings().shared):
        raise runs.RunError(f"Unknown model 'run:{run_id}': choose one of your fine-tuned runs.")
    secret = secrets.token_urlsafe(24)
    record = {"digest": _digest(secret), "expires": time.time() + HANDOVER_TTL_S}
    checkpoints.atomic_write(
        checkpoints.run_path(run_id) / HANDOVER_FILE, lambda tmp: tmp.write_text(json.dumps(record), encoding="utf-8")
    )
    return f"{run_id}{_SEPARATOR}{secret}"


def accept(code: str, owner: str) -> str | None:
    """The run ``code`` hands over, now ``owner``'s; None for a code that is wrong, used or lapsed (said in the log)."""
    run_id, _, secret = (code or "").partition(_SEPARATOR)
    try:
        folder = checkpoints.run_path(checkpoints.validate_run_id(run_id))
        taken = folder / f".{HANDOVER_FILE}.{secrets.token_hex(4)}"
        os.replace(folder / HANDOVER_FILE, taken)  # one rename succeeds: a code is taken once, even by two pages
    except (checkpoints.CheckpointError, OSError):
        logger.info("a run handover code was refused (no such offer, or used)")
        return None
    try:
        record = json.loads(taken.read_text(encoding="utf-8"))
        valid = secrets.compare_digest(str(record["digest"]), _digest(secret)) and record["expires"] > time.time()
    except (OSError, ValueError, TypeError, KeyError):
        valid = False
    finally:
        taken.unlink(missing_ok=True)
    if not valid:
        logger.info("a run handover code was refused (wrong or lapsed)")
        return None
    runs.claim(run_id, owner)
    return run_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
