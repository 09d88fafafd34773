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


@pytest.mark.parametrize("convention, ends", [("paper", (-1.0, 1.0)), ("public_code", (0.0, 1.0))])
def test_overlay_has_a_reward_map_legend_of_its_convention(convention, ends):
    from PIL import Image

    from srum_ray.types import SampleRecord
    from srum_ray.viz import CAPTION, PANEL, diverging_rgb, overlay_picture

    rec = SampleRecord(id="a", round=0, prompt="a red circle", seed=0, weights_version=0, boxes=[(4, 4, 30, 30)], kept=[True],
                       region_scores=[0.5], global_score=0.2, alpha=0.6, convention=convention, overlap="default")
    pic = overlay_picture(Image.new("RGB", (64, 64), "white"), rec, np.zeros((64, 64)))
    assert pic.size == (2 * PANEL + 6, PANEL + CAPTION)
    legend = np.asarray(pic)[PANEL + 42 :].reshape(-1, 3)  # the caption's last line only
    neutral, span = (ends[0] + ends[1]) / 2, (ends[1] - ends[0]) / 2
    for end in ends:  # the scale's two ends, in the colours the map uses for them
        colour = diverging_rgb(np.array([[end]]), neutral, span)[0, 0].astype(int)
        assert (np.abs(legend.astype(int) - colour) <= 8).all(axis=1).sum() >= 8
