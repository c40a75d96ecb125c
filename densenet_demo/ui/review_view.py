"""The Fine-tune tab's review of a run (training/review.py): the mistakes gallery and the likely mislabels.

Review predicts every image of a run's data once and keeps the result in the session (``state["review"]``). A
confusion-matrix cell is chosen by clicking it in the table of counts or with the two dropdowns beside it; its
validation images show as thumbnails with their top-3 probabilities. Below: the most confidently wrong, and the
images whose given label looks wrong ("given: 3, looks like: 8 (0.97)"). The ``/review`` endpoint returns what
``python -m densenet_demo review RUN --json`` prints, for the session's own runs, on the data the run recorded:
files are named inside the data's folder, never by their path on the server.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

from ..data.datasets import DatasetError
from ..data.images import ImageError, decode_image
from ..hosting import runs
from ..training.review import Review, ReviewError, review_run
from ..weights import checkpoints
from .common import check_run, names_only, run_choices

__all__ = ["ReviewView", "build_review_view", "review_for_page", "runs_to_review", "thumbnail"]

CELL_SHOWN = 48  # thumbnails of one cell; the command line and the API list every file
WRONG_SHOWN = 24
SUSPECTS_SHOWN = 48
THUMBNAIL_PX = 112


class ReviewView(NamedTuple):
    """The review's components; ``run`` is refreshed when a run finishes (``runs_to_review``)."""

    run: gr.Dropdown
    result: gr.JSON
    status: gr.Markdown
    table: gr.Dataframe
    true_class: gr.Dropdown
    predicted: gr.Dropdown
    cell: gr.Gallery
    wrong: gr.Gallery
    suspects: gr.Gallery

    def shown(self) -> list[Any]:
        return [self.status, self.table, self.true_class, self.predicted, self.cell, self.wrong, self.suspects]


def build_review_view(state: gr.State) -> ReviewView:
    """The review's layout and events; call inside the Fine-tune tab, below a run's results."""
    with gr.Accordion("Review a run: its mistakes and likely mislabels", open=False, elem_id="review") as accordion:
        gr.Markdown(
            "Predicts every image of the run's data once (a run you trained here, while its data is on the "
            "server). Click a cell of the counts, or pick it beside them, to see its validation images."
        )
        with gr.Row():
            # Any value: an API client names its run (run:<id>); review_for_page checks that it is the session's.
            run = gr.Dropdown(run_choices(None), label="Run", elem_id="review-run", scale=3, allow_custom_value=True)
            button = gr.Button("Review", elem_id="review-button", scale=1)
        status = gr.Markdown(elem_id="review-status")
        result = gr.JSON(visible=False, label="Review")
        with gr.Row():
            table = gr.Dataframe(
                label="Validation counts (rows: true class, columns: predicted); click a cell",
                interactive=False,
                elem_id="review-table",
                min_width=340,
            )
            with gr.Column(min_width=200, scale=0):
                true_class = gr.Dropdown([], label="True class", elem_id="review-true")
                predicted = gr.Dropdown([], label="Predicted as", elem_id="review-predicted")
        cell = gr.Gallery(label="Images of this cell", columns=6, height="auto", elem_id="review-cell")
        wrong = gr.Gallery(label="Most confidently wrong", columns=6, height="auto", elem_id="review-wrong")
        suspects = gr.Gallery(label="Likely mislabels", columns=6, height="auto", elem_id="review-suspects")
    view = ReviewView(run, result, status, table, true_class, predicted, cell, wrong, suspects)
    accordion.expand(runs_to_review, state, run, api_visibility="private")  # the session's runs of now
    button.click(
        review_for_page, [run, state], [result, state], api_name="review", concurrency_limit=1, concurrency_id="review"
    ).success(show_review, state, view.shown(), api_visibility="private")
    for chooser in (true_class, predicted):
        chooser.input(show_cell, [true_class, predicted, state], cell, api_visibility="private")
    table.select(pick_cell, state, [true_class, predicted, cell], api_visibility="private")
    return view


def runs_to_review(state: dict[str, Any] | None) -> dict[str, Any]:
    """The run list, the session's latest run chosen (after a run finishes)."""
    latest = (state or {}).get("run_id")
    return gr.update(choices=run_choices(state), **({"value": f"run:{latest}"} if latest else {}))


def review_for_page(
    run: str | None,
    state: dict[str, Any] | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio finds its progress bar by this default)
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Review one of the session's runs on the data it was trained on.

    Args:
        run: ``run:<run-id>`` (or the bare id) of a run this session trained.

    Returns the confusions and the suspected mislabels, as ``review --json`` prints them.
    """
    state = dict(state or {})
    if not run:
        raise gr.Error("Choose a run to review (train one first).")
    run = run if run.startswith("run:") else f"run:{run}"
    check_run(run, state)
    run_id = run.removeprefix("run:")
    if runs.settings().shared and runs.is_published(run_id):
        raise gr.Error("A published run's data is the host's: review a run you trained here.")
    progress(0, desc="predicting every image once")

    def report(done: int, total: int) -> None:
        progress((done, total), desc="predicting every image once", unit="images")

    try:
        with runs.in_use(run_id):
            review = review_run(run, progress=report)
    except (ReviewError, DatasetError, checkpoints.CheckpointError, ValueError) as e:
        raise gr.Error(names_only(str(e))) from None
    state["review"] = review
    return review.to_dict(), state


def show_review(state: dict[str, Any] | None) -> list[Any]:
    """The reviewed run on the page: counts, the largest confusion's images, the most confidently wrong, suspects."""
    review: Review = (state or {})["review"]
    names = list(review.class_names)
    matrix = review.confusion_matrix()
    counts = [[name, *map(int, row)] for name, row in zip(names, matrix, strict=True)]
    table = {"headers": ["true \\ predicted", *names], "data": counts}
    confusions = review.confusions()
    true, predicted = (confusions[0].true, confusions[0].predicted) if confusions else (names[0], names[0])
    n_suspects = len(review.suspect_rows())
    held_out = int((~review.trained_on).sum())
    lines = [
        f"**{review.run_id}**: {int(matrix.trace())} of {held_out} validation images right; "
        f"{len(confusions)} kinds of confusion; {n_suspects} likely mislabels among {len(review.files)} images "
        f"({review.method})."
    ]
    if review.missing:
        lines.append(f"{review.missing} of the run's images are no longer on the server; the rest were reviewed.")
    if review.skipped:
        lines.append(f"{len(review.skipped)} image(s) could not be decoded and were left out.")
    wrong = [(_thumb(review, r), _top3(review, r)) for r in review.most_confidently_wrong(WRONG_SHOWN)]
    rows, mislabels = review.suspect_rows(SUSPECTS_SHOWN), review.suspected_mislabels(SUSPECTS_SHOWN)
    shown = [(_thumb(review, r), f"{s.caption()} · {s.file}") for r, s in zip(rows, mislabels, strict=True)]
    if n_suspects > SUSPECTS_SHOWN:
        lines.append(f"The first {SUSPECTS_SHOWN} likely mislabels are shown; the `/review` API lists them all.")
    choices = gr.update(choices=names, value=true), gr.update(choices=names, value=predicted)
    return ["\n\n".join(lines), table, *choices, _cell(review, true, predicted), wrong, shown]


def show_cell(true: str | None, predicted: str | None, state: dict[str, Any] | None) -> list[Any]:
    review = (state or {}).get("review")
    if review is None or true not in review.class_names or predicted not in review.class_names:
        return []
    return _cell(review, true, predicted)


def pick_cell(state: dict[str, Any] | None, evt: gr.SelectData) -> tuple[Any, Any, list[Any]]:
    """A click on the counts: its row is the true class, its column (after the names) the predicted one."""
    review = (state or {}).get("review")
    row, column = (evt.index if isinstance(evt.index, (list, tuple)) else (None, None))[:2]
    if review is None or row is None or not 1 <= column <= len(review.class_names):
        return gr.skip(), gr.skip(), gr.skip()
    true, predicted = review.class_names[row], review.class_names[column - 1]
    return true, predicted, _cell(review, true, predicted)


def _cell(review: Review, true: str, predicted: str) -> list[tuple[Image.Image, str]]:
    rows = review.cell(review.class_names.index(true), review.class_names.index(predicted))
    return [(_thumb(review, r), _top3(review, r)) for r in rows[:CELL_SHOWN]]


def _top3(review: Review, row: int) -> str:
    """The top 3 first (a thumbnail's caption is cut to its width; the whole shows when it is opened)."""
    top = ", ".join(f"{name} {p:.2f}" for name, p in review.top(row))
    return f"{top} · given: {review.class_names[review.labels[row]]} · {review.files[row]}"


def _thumb(review: Review, row: int) -> Image.Image:
    return thumbnail(review.paths[row])


def thumbnail(path: Any, size: int = THUMBNAIL_PX) -> Image.Image:
    """A small copy to show (the file itself is never served); a grey square for an image that no longer decodes."""
    try:
        image = decode_image(path, mode="RGB", draft_size=size)
    except (ImageError, OSError):
        return Image.new("RGB", (size, size), (128, 128, 128))
    image.thumbnail((size, size))
    if min(image.size) < size // 2:  # tiny scans (8x8 digits): enlarge, so that a person can see them
        scale = size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    return image
