"""select_boxes and NoGrounder: hand-computed cases plus a property test."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from srum_ray.grounding.base import Grounder, NoGrounder, select_boxes
from srum_ray.types import Box


def test_select_boxes_clips_filters_dedupes_and_orders():
    # 64 x 48 image, min area 1% = 30.72 px
    boxes = [
        Box(-5, -5, 10, 10),  # A: clipped to (0,0,10,10), area 100
        Box(10, 10, 30, 20),  # B: area 200
        Box(50, 40, 80, 60),  # C: clipped to (50,40,64,48), area 14*8 = 112
        Box(0, 0, 10, 10),  # duplicate of A after clipping
        Box(20, 20, 20, 30),  # zero width
        Box(70, 0, 90, 10),  # entirely right of the image -> empty after clipping
        Box(0, 30, 20, 40),  # G: area 200, ties with B; B is higher up so B first
        Box(1, 1, 3, 3),  # area 4 < 30.72
    ]
    got = select_boxes(boxes, 64, 48, max_boxes=10, min_area_frac=0.01)
    assert got == [Box(10, 10, 30, 20), Box(0, 30, 20, 40), Box(50, 40, 64, 48), Box(0, 0, 10, 10)]
    assert select_boxes(boxes, 64, 48, max_boxes=2, min_area_frac=0.01) == got[:2]
    # without the area floor the 2x2 box comes last
    assert select_boxes(boxes, 64, 48, max_boxes=10)[-1] == Box(1, 1, 3, 3)
    assert select_boxes(boxes, 64, 48, max_boxes=0) == []


def test_select_boxes_ties_by_left_edge_and_area_floor_is_inclusive():
    # 100 x 100 image, 1% = exactly 100 px
    boxes = [Box(50, 0, 60, 10), Box(0, 0, 10, 10), Box(20, 0, 29, 11)]  # areas 100, 100, 99
    assert select_boxes(boxes, 100, 100, max_boxes=5, min_area_frac=0.01) == [
        Box(0, 0, 10, 10),
        Box(50, 0, 60, 10),
    ]


def test_select_boxes_accepts_sequences():
    got = select_boxes([[30.6, 40.2, 10.0, 5.4], (0, 0, 3, 3)], 32, 32, max_boxes=5)
    assert got == [Box(10, 5, 31, 32), Box(0, 0, 3, 3)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=0, height=5, max_boxes=1), "positive image size"),
        (dict(width=5, height=5, max_boxes=-1), "max_boxes"),
        (dict(width=5, height=5, max_boxes=1, min_area_frac=1.0), "min_area_frac"),
    ],
)
def test_select_boxes_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_boxes([Box(0, 0, 1, 1)], **kwargs)


coords = st.integers(min_value=-50, max_value=150)


@settings(max_examples=150, deadline=None)
@given(
    raw=st.lists(st.tuples(coords, coords, coords, coords), max_size=30),
    width=st.integers(1, 100),
    height=st.integers(1, 100),
    max_boxes=st.integers(0, 12),
    frac=st.sampled_from([0.0, 0.001, 0.05, 0.3]),
)
def test_select_boxes_properties(raw, width, height, max_boxes, frac):
    got = select_boxes(raw, width, height, max_boxes, frac)
    candidates = {Box.from_list(r).clipped(width, height) for r in raw}
    candidates = {b for b in candidates if b.area > 0 and b.area >= frac * width * height}
    assert len(got) == min(max_boxes, len(candidates))
    assert len(set(got)) == len(got)
    assert set(got) <= candidates
    for b in got:
        assert 0 <= b.x0 < b.x1 <= width and 0 <= b.y0 < b.y1 <= height
    areas = [b.area for b in got]
    assert areas == sorted(areas, reverse=True)
    if got:  # nothing left out is larger than what was kept
        assert all(b.area <= areas[-1] for b in candidates - set(got))


def test_no_grounder_proposes_nothing():
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (16, 8))]
    g = NoGrounder()
    assert g.kind == "none"
    assert g.propose(images, ["a", "b"]) == [[], []]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        g.propose(images, ["a"])


def test_grounder_is_abstract():
    with pytest.raises(TypeError):
        Grounder()  # type: ignore[abstract]
