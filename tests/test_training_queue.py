"""The trainings queue: one training at a time, one queued or running per session, a bounded wait, places told."""

from __future__ import annotations

import threading
import time

import pytest

from densenet_demo.hosting.training_queue import Refused, TrainingQueue


def test_a_session_has_one_training_queued_or_running_and_a_second_is_refused_with_its_place():
    queue = TrainingQueue(slots=1, max_waiting=4)
    alice = queue.join("alice")
    bob = queue.join("bob")
    assert alice.place().ahead == 0 and alice.wait(0)
    assert bob.place().text() == "1st in line (1 training running, 1 waiting)" and not bob.wait(0.01)
    with pytest.raises(Refused, match="This session's training is training now"):
        queue.join("alice")
    with pytest.raises(Refused, match="is waiting: 1st in line"):
        queue.join("bob")
    alice.release()
    assert bob.wait(0) and bob.place().ahead == 0
    assert queue.join("alice").place().text() == "1st in line (1 training running, 1 waiting)"


def test_a_full_queue_refuses_at_once_and_takes_again_when_a_place_frees():
    queue = TrainingQueue(slots=1, max_waiting=2)
    tickets = [queue.join(f"s{i}") for i in range(3)]  # one trains, two wait
    start = time.monotonic()
    with pytest.raises(Refused, match="1 training running and 2 waiting, as many as this server queues"):
        queue.join("late")
    assert time.monotonic() - start < 0.1
    tickets[1].release()  # a waiting page was closed
    assert queue.join("late").place().ahead == 2 and len(queue) == 3


def test_a_waiting_training_starts_when_the_one_before_it_ends():
    queue = TrainingQueue(slots=1, max_waiting=4)
    first, second = queue.join("a"), queue.join("b")
    started = threading.Event()

    def wait_then_train():
        while not second.wait(timeout=0.05):
            pass
        started.set()

    thread = threading.Thread(target=wait_then_train)
    thread.start()
    time.sleep(0.2)
    assert not started.is_set()
    first.release()
    assert started.wait(5)
    thread.join()


def test_the_ticket_is_released_whatever_happens():
    queue = TrainingQueue()
    with pytest.raises(RuntimeError):
        with queue.ticket("a"):
            raise RuntimeError("a training failed")
    assert len(queue) == 0
    ticket = queue.join("a")
    ticket.release()
    ticket.release()  # twice: no harm
    assert len(queue) == 0


def test_places_count_in_ordinals_past_ten():
    queue = TrainingQueue(slots=1, max_waiting=30)
    tickets = [queue.join(f"s{i}") for i in range(24)]
    assert [tickets[i].place().text().split()[0] for i in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd"
    ]  # fmt: skip
