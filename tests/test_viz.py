"""viz.nice_ticks (property tests) and viz.line_plot's axis."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_ray.viz import SERIES_COLOURS, line_plot, nice_ticks

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(finite, finite)
def test_ticks_are_round_even_and_cover_the_range(a, b):
    lo, hi = min(a, b), max(a, b)
    ticks, decimals = nice_ticks(lo, hi)
    steps = np.diff(ticks)
    step = float(steps[0])
    assert ticks[0] <= lo + 1e-6 * step and ticks[-1] >= hi - 1e-6 * step
    assert np.allclose(steps, step, rtol=1e-6, atol=0)
    mantissa = step / 10.0 ** math.floor(math.log10(step) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))
    assert 2 <= len(ticks) <= 5 + 3  # up to target + 2 intervals
    if hi > lo:  # the step is the smallest round one that keeps to the target over the span
        assert (hi - lo) / step <= 5 * (1 + 1e-6)
    # every label written with `decimals` digits reads back as its tick
    for t in ticks:
        assert math.isclose(float(f"{t:.{decimals}f}"), t, rel_tol=1e-9, abs_tol=step * 1e-6)


def test_ticks_examples():
    assert nice_ticks(14.9, 36.3) == ([10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0], 0)
    assert nice_ticks(0.0, 0.125) == ([0.0, 0.025, 0.05, 0.075, 0.1, 0.125], 3)
    assert nice_ticks(0.0, 1.0) == ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 1)
    assert nice_ticks(7.0, 7.0)[0][0] == 7.0  # a flat series still gets an axis
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0.0, float("nan"))


def test_line_plot_draws_each_series_on_a_round_axis():
    series = {"sft": [(0.0, 18.7), (1.0, 20.9), (2.0, 26.3)], "srum": [(0.0, 18.7), (1.0, 23.6), (2.0, 36.3)]}
    img = line_plot(series, title="t", x_label="round", y_label="% drawn", size=(640, 400))
    assert img.size == (640, 400)
    px = np.asarray(img).reshape(-1, 3)
    for colour in SERIES_COLOURS[:2]:  # each series' line and markers are drawn
        assert (px == colour).all(axis=1).sum() > 50
    assert not (px == SERIES_COLOURS[2]).all(axis=1).any()
    fixed = line_plot(series, title="t", x_label="round", y_label="%", y_range=(0.0, 100.0))
    assert np.asarray(fixed).shape == (400, 640, 3)
