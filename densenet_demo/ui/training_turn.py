"""Start and Continue wait their turn in the server's trainings queue (``hosting/training_queue.py``), not in
Gradio's: the handler starts at once, joins the queue for its session, shows its place while it waits, and
trains when its turn comes. A session's second training is refused at once with the first one's place; so is
one more than the queue holds. Stop takes a waiting training out of the queue; a page closed while waiting
gives its place up at the next update (Gradio then closes the handler).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

from ..hosting.training_queue import Refused, Ticket, TrainingQueue
from ..training.events import CancelToken
from .common import user_errors

__all__ = ["PLACE_EVERY_S", "STOPPED_WHILE_WAITING", "started", "stop_waiting", "take_turn"]

PLACE_EVERY_S = 2.0  # the place is shown again at least this often: a closed page is noticed at an update
STOPPED_WHILE_WAITING = "Stopped while waiting for the trainer: nothing was trained."
PHASE = "training_turn"  # in the page's state: "waiting", "starting" (its turn came, the run is being built), None


def take_turn(
    trainings: TrainingQueue, state: dict[str, Any], owner: str, show: Callable[[str], dict[Any, Any]]
) -> Generator[dict[Any, Any], None, Ticket | None]:
    """Wait for this session's turn to train, yielding ``show(text)`` with the place; the ticket once it is the
    session's turn (the caller trains, then releases it), or None when Stop took it out of the queue.

    ``state``: the page's session state, yielded with each update, so that Stop finds ``state["cancel"]``: the
    token of this training from here on (the run follows it when its turn comes).
    """
    with user_errors(Refused):
        ticket = trainings.join(owner)
    state["cancel"] = cancel = CancelToken()
    state[PHASE] = "waiting"
    try:
        shown, at = "", 0.0
        while not ticket.wait(timeout=0.5) and not cancel.cancelled:
            text = f"Waiting for the trainer: {ticket.place().text()}. Predictions are served meanwhile."
            if text != shown or time.monotonic() - at > PLACE_EVERY_S:
                shown, at = text, time.monotonic()
                yield show(text)
        if cancel.cancelled:  # Stop came while waiting (perhaps just as the turn came): the place goes
            ticket.release()
            state[PHASE] = None
            return None
        state[PHASE] = "starting"  # until the run says it runs (``started``): Stop stops it as it starts
        return ticket
    except BaseException:  # the page went away (GeneratorExit) or anything else: the place is given up
        ticket.release()
        state[PHASE] = None
        raise


def started(state: dict[str, Any]) -> None:
    """The run is under way: from here Stop stops it as a running run (its own message)."""
    state[PHASE] = None


def stop_waiting(state: dict[str, Any]) -> str | None:
    """Stop for a training that waits its turn or is starting: cancelled, with the message to show; None when
    there is none (Stop then looks for a running one)."""
    phase = state.get(PHASE)
    if phase is None:
        return None
    state["cancel"].cancel()
    if phase == "waiting":
        return "Taken out of the trainings queue: nothing was trained."
    return "Stopping: the run ends as it starts; nothing was trained."
