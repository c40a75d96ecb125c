"""Who trains now and who waits: the server's trainings queue, apart from the queue that serves predictions.

A server has one trainer (``slots``: trainings at once; a CPU Space has two cores, which one training fills).
A session may have one training queued or running: asking for a second is refused at once, with the first's
place. At most ``max_waiting`` trainings wait; one more is refused at once, saying how busy the trainer is.
Gradio's own queue never holds a waiting training (the handler waits here, after it has started), so a flood of
trainings cannot fill the places that predictions need (``ui/app.py``). The app makes one queue for its page.

A ``Ticket`` is a place in the queue: ``wait`` until it may train (in short waits, so the page can show the
place meanwhile and a closed page can end the wait), then train, and ``release`` in every case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["MAX_WAITING", "TRAINING_SLOTS", "Place", "Refused", "Ticket", "TrainingQueue"]

TRAINING_SLOTS = 1  # trainings at once: one fills a 2-core CPU (torch uses every core); see docs/reliability.md
MAX_WAITING = 16  # trainings waiting at most; each holds a worker thread of Gradio's 40 while it waits


class Refused(Exception):
    """A training the queue will not take now; the message says why and what to do."""


@dataclass(frozen=True)
class Place:
    """Where a ticket stands: ``ahead`` trainings before it (0: it may train), of ``running`` and ``waiting``."""

    ahead: int
    running: int
    waiting: int

    def text(self) -> str:
        if self.ahead == 0:
            return "your turn"
        return f"{_ordinal(self.ahead)} in line ({_count(self.running, 'training')} running, {self.waiting} waiting)"


class Ticket:
    """One training's place in the queue (see the module). Release it when the training ends or is given up."""

    def __init__(self, queue: TrainingQueue, session: str) -> None:
        self._queue, self.session = queue, session
        self.joined = time.monotonic()

    def place(self) -> Place:
        return self._queue.place(self)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the turn to train; True once it is this ticket's."""
        return self._queue.wait(self, timeout)

    def release(self) -> None:
        """Leave the queue (or the trainer); idempotent."""
        self._queue.release(self)


class TrainingQueue:
    """The trainings of one server: at most ``slots`` at once, ``max_waiting`` waiting, one per session."""

    def __init__(self, slots: int = TRAINING_SLOTS, max_waiting: int = MAX_WAITING) -> None:
        self.slots, self.max_waiting = slots, max_waiting
        self._tickets: list[Ticket] = []  # in order: the first ``slots`` train, the others wait
        self._changed = threading.Condition()

    def join(self, session: str) -> Ticket:
        """A place for ``session``'s training; ``Refused`` at once if it has one already or the queue is full."""
        with self._changed:
            mine = next((t for t in self._tickets if t.session == session), None)
            if mine is not None:
                place = self._place(mine)
                where = "is training now" if place.ahead == 0 else f"is waiting: {place.text()}"
                raise Refused(
                    f"This session's training {where}. A session trains one run at a time: wait for it, "
                    "or press Stop to end it, then start another."
                )
            waiting = max(0, len(self._tickets) - self.slots)
            if waiting >= self.max_waiting:
                raise Refused(
                    f"The trainer is busy: {_count(min(len(self._tickets), self.slots), 'training')} running and "
                    f"{waiting} waiting, as many as this server queues. Try again in a few minutes; "
                    "predictions are served meanwhile."
                )
            ticket = Ticket(self, session)
            self._tickets.append(ticket)
            return ticket

    def place(self, ticket: Ticket) -> Place:
        with self._changed:
            return self._place(ticket)

    def _place(self, ticket: Ticket) -> Place:
        index = self._tickets.index(ticket) if ticket in self._tickets else 0
        running = min(len(self._tickets), self.slots)
        return Place(ahead=max(0, index - self.slots + 1), running=running, waiting=len(self._tickets) - running)

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._turn(ticket), timeout)

    def _turn(self, ticket: Ticket) -> bool:
        return ticket in self._tickets[: self.slots]

    def release(self, ticket: Ticket) -> None:
        with self._changed:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
                self._changed.notify_all()

    @contextmanager
    def ticket(self, session: str) -> Iterator[Ticket]:
        """``join``, and ``release`` on the way out whatever happens."""
        ticket = self.join(session)
        try:
            yield ticket
        finally:
            ticket.release()

    def __len__(self) -> int:
        with self._changed:
            return len(self._tickets)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
