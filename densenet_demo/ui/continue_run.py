"""Continue training: the session's last run, finished or stopped, trained for more epochs on the dataset it was
trained on (its weights, optimizer and best epoch kept: training/state.py). The page's button, ``/continue_training``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import gradio as gr

from ..training import runners
from ..weights import checkpoints
from ..weights import resolver as weights
from .common import check_run, describe, user_errors
from .finetune_data import session_of
from .training_run import FinetuneTab, follow_run
from .training_turn import STOPPED_WHILE_WAITING, take_turn, turn_over

__all__ = ["ContinueControls", "build_continue_controls", "continue_training", "wire_continue"]

DEFAULT_MORE_EPOCHS = 5


class ContinueControls(NamedTuple):
    more_epochs: gr.Number
    button: gr.Button


def build_continue_controls() -> ContinueControls:
    """The "More epochs" field and the "Continue training" button, where the page puts them."""
    with gr.Row():
        more = gr.Number(
            value=DEFAULT_MORE_EPOCHS, precision=0, minimum=1, maximum=1000, label="More epochs",
            elem_id="train-more-epochs",
        )  # fmt: skip
        button = gr.Button("Continue training", elem_id="train-continue")
    return ContinueControls(more, button)


def wire_continue(tab: FinetuneTab, controls: ContinueControls) -> None:
    """Continue runs like Start (its turn in the trainings queue, the same live updates)."""
    controls.button.click(
        functools.partial(continue_training, tab),
        [tab.state, controls.more_epochs],
        tab.training_outputs(),
        api_name="continue_training",
        api_description=describe(continue_training),
        concurrency_limit=None,  # it waits its turn in the trainings queue, not in Gradio's (training_turn.py)
    )


def continue_training(
    tab: FinetuneTab, state: dict[str, Any] | None, more_epochs: float = DEFAULT_MORE_EPOCHS
) -> Iterator[dict[Any, Any]]:
    """Train this session's last run (finished or stopped) for more epochs, on the dataset it was trained on,
    streaming the same live updates as /train; like it, it waits its turn while others train.

    Args:
        more_epochs: how many epochs more (the run then counts as one of its epochs done plus these).
    """
    state = dict(state or {})
    run_id = state.get("run_id")
    if not run_id:
        raise gr.Error("Train a run first (Start); then Continue training gives it more epochs.")
    if state.get("dataset") is None:
        raise gr.Error("Check the dataset this run was trained on (step 1), then continue.")
    check_run(f"run:{run_id}", state)  # a shared server: the session's own runs only
    if isinstance(more_epochs, float) and more_epochs.is_integer():
        more_epochs = int(more_epochs)
    files, report = state["dataset"]
    ticket = yield from take_turn(tab.trainings, state, session_of(state).owner, tab.show(state))
    if ticket is None:
        yield tab.show(state)(STOPPED_WHILE_WAITING)
        return
    try:
        with user_errors(ValueError, FileNotFoundError, weights.CheckpointError):
            run = runners.continue_training(checkpoints.find_run(run_id), files, more_epochs, report=report)
        first, last = run.config.epochs - more_epochs + 1, run.config.epochs
        note = f"Continuing run {run_id} for {more_epochs} more epoch(s): epochs {first} to {last}."
        yield from follow_run(tab, state, run, note)
    finally:
        turn_over(ticket, state)
