"""Figures and numbers for people: what the axes of the figures span, how probabilities read."""

from __future__ import annotations

from densenet_demo import plots


def _right_edge(fig) -> float:
    return fig.axes[0].get_xlim()[1]


def test_a_run_of_unknown_length_is_drawn_over_the_epochs_it_has_done():
    live = {"train loss (per step, smoothed)": [(0.1, 2.0), (0.9, 1.1), (1.6, 0.7), (2.3, 0.5)]}
    series = {"train loss": [(1, 1.0), (2, 0.6)], "val loss": [(1, 1.1), (2, 0.7)]}
    fig = plots.curves_figure(series, title="Loss", epochs=None, percent=False, live=live)
    assert 2.3 < _right_edge(fig) <= 3.0  # what the run did, not a placeholder of thousands of epochs


def test_an_expected_length_reaches_past_the_points_drawn_so_far():
    live = {"val acc": [(0.5, 0.6)]}
    fig = plots.curves_figure({}, title="Accuracy", epochs=6.4, percent=True, live=live)
    assert 6.4 < _right_edge(fig) <= 7.0
    done_more = plots.curves_figure({"val acc": [(1, 0.7), (8, 0.9)]}, title="Accuracy", epochs=6.4, percent=True)
    assert 8 < _right_edge(done_more) <= 8.5  # a run that outlasts its expected length stays on the axis


def test_a_single_epoch_is_a_visible_point_on_a_short_axis():
    fig = plots.curves_figure({"val acc": [(1, 0.8)]}, title="Accuracy", epochs=1, percent=True)
    left, right = fig.axes[0].get_xlim()
    assert left < 1 < right <= 1.5


def test_probabilities_keep_the_digits_that_tell_them_apart_from_zero():
    from densenet_demo.units import percent

    assert [percent(p) for p in (0.973, 0.034, 0.00123, 0.00001, 0.0)] == ["97%", "3.4%", "0.12%", "<0.01%", "0%"]
