"""Start and Continue wait their turn in the server's trainings queue (``hosting/training_queue.py``), not in
Gradio's: the handler starts at once, joins the queue for its session, shows its place while it waits, and
trains when its turn comes. A session's second training is refused at once with the first one's place; so is
one more than the queue holds. Stop takes a waiting training out of the queue, and stops one whose turn has
just come as soon as its run exists; a page closed while waiting gives its place up at the next update (Gradio
then closes the handler).

In the page's state: ``PHASE`` ("waiting", "starting", or None once the run is under way) and ``TOKEN``, the
cancel token Stop sets while there is no run to stop yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

from ..hosting.training_queue import Refused, Ticket, TrainingQueue
from ..training.events import CancelToken
from ..training.runners import TrainingRun
from .common import user_errors

__all__ = ["PLACE_EVERY_S", "STOPPED_WHILE_WAITING", "run_started", "stop_waiting", "take_turn", "turn_over"]

PLACE_EVERY_S = 2.0  # the place is shown again at least this often: a closed page is noticed at an update
STOPPED_WHILE_WAITING = "Stopped while waiting for the trainer: nothing was trained."
PHASE = "training_turn"  # in the page's state: "waiting", "starting" (its turn came, the run is being built), None
TOKEN = "training_turn_cancel"


def take_turn(
    trainings: TrainingQueue, state: dict[str, Any], owner: str, show: Callable[[str], dict[Any, Any]]
) -> Generator[dict[Any, Any], None, Ticket | None]:
    """Wait for this session's turn to train, yielding ``show(text)`` with the place; the ticket once it is the
    session's turn (the caller trains, then releases it), or None when Stop took it out of the queue.

    ``state``: the page's session state, yielded with each update, so that Stop finds this training in it.
    """
    with user_errors(Refused):
        ticket = trainings.join(owner)
    state[TOKEN] = cancel = CancelToken()
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
        state[PHASE] = "starting"  # until the run exists (``run_started``): Stop stops it as it starts
        return ticket
    except BaseException:  # the page went away (GeneratorExit) or anything else: the place is given up
        ticket.release()
        state[PHASE] = None
        raise


def run_started(state: dict[str, Any], run: TrainingRun) -> None:
    """The run exists and is the session's (``follow_run``): from here Stop stops it as a running run; a Stop
    that came while it was being built stops it now."""
    if state.get(PHASE) == "starting" and state[TOKEN].cancelled:
        run.stop()
    state[PHASE] = None


def turn_over(ticket: Ticket, state: dict[str, Any]) -> None:
    """The training has ended, however: its place in the queue goes to the next."""
    ticket.release()
    state[PHASE] = None


def stop_waiting(state: dict[str, Any]) -> str | None:
    """Stop for a training that waits its turn or is starting: cancelled, with the message to show; None when
    there is none (Stop then looks for a running one)."""
    phase = state.get(PHASE)
    if phase is None:
        return None
    state[TOKEN].cancel()
    if phase == "waiting":
        return "Taken out of the trainings queue: nothing was trained."
    return "Stopping: the run ends as it starts; nothing was trained."
