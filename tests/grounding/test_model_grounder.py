"""parse_boxes, ask_for_boxes, ModelGrounder and build_grounder."""

from __future__ import annotations

from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from srum_ray.config.schema import GrounderConfig, SamConfig
from srum_ray.grounding import (
    TINY_SAM_PRESET,
    ModelGrounder,
    NoGrounder,
    SamGrounder,
    ask_for_boxes,
    build_grounder,
    parse_boxes,
)
from srum_ray.models.base import AnswerConstraint, UnderstandingModel
from srum_ray.types import Box


class ScriptedUnderstanding(UnderstandingModel):
    """Answers with canned text, one per question, and records what it was asked."""

    def __init__(self, replies: Sequence[str]):
        self.replies = list(replies)
        self.calls: list[dict] = []

    def answer(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        constraint: AnswerConstraint | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        self.calls.append(
            dict(images=list(images), prompts=list(prompts), max_new_tokens=max_new_tokens)
        )
        out, self.replies = self.replies[: len(prompts)], self.replies[len(prompts) :]
        return out


class NativeGrounding(ScriptedUnderstanding):
    """A backend with its own grounding output (raw boxes, possibly outside the image)."""

    def __init__(self, boxes: list[list[Box]]):
        super().__init__([])
        self.boxes = boxes

    def ground(self, images, prompts):
        return self.boxes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cat: [10, 20, 30, 40]", [Box(10, 20, 30, 40)]),
        ("(5,6,7,8) then [1 2 3 4]", [Box(5, 6, 7, 8), Box(1, 2, 3, 4)]),
        (
            '[{"bbox_2d": [5, 6, 70, 80], "label": "cat"},'
            ' {"bbox_2d": [40, 2, 12, 9], "label": "dog"}]',
            [Box(5, 6, 64, 48), Box(12, 2, 40, 9)],  # clipped to 64x48; corners reordered
        ),
        # all numbers in [0, 1]: normalized; 0.1*64=6.4 -> 6, 0.2*48=9.6 -> 10, 0.6*48=28.8 -> 29
        ("[0.1, 0.2, 0.5, 0.6]", [Box(6, 10, 32, 29)]),
        # Qwen2-VL tokens: 0..1000; 250/1000*64 = 16, 500/1000*48 = 24
        ("<|box_start|>(250,0),(500,500)<|box_end|>", [Box(16, 0, 32, 24)]),
        ("from (1, 2) to (11, 12)", [Box(1, 2, 11, 12)]),
        ("[12, 30, 40]", []),  # three numbers are not a box
        ("[3, 3, 3, 9]", []),  # zero width
        ("[-20, -20, -5, 10]", []),  # outside the image
        ("[1e999, 0, 5, 5]", []),  # overflows to infinity: not a box
        ("no boxes here, just 4 numbers 1 2 3 4", []),
        ("", []),
    ],
)
def test_parse_boxes_cases(text, expected):
    assert parse_boxes(text, 64, 48) == expected


def test_parse_boxes_none_and_bad_size():
    assert parse_boxes(None, 10, 10) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive image size"):
        parse_boxes("[1, 2, 3, 4]", 0, 10)


_pieces = st.one_of(
    st.sampled_from(["[", "]", "(", ")", ",", ";", " ", "\n", ".", "-", "+", "e", "E", "to",
                     "<|box_start|>", "<|box_end|>", '"bbox_2d": ', "{", "}"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 1).map(str),
)
_texts = st.one_of(st.text(max_size=200), st.lists(_pieces, max_size=60).map("".join))


@settings(max_examples=300, deadline=None)
@given(text=_texts, width=st.integers(1, 2048), height=st.integers(1, 2048))
def test_parse_boxes_never_raises_and_stays_inside(text, width, height):
    for box in parse_boxes(text, width, height):
        assert isinstance(box, Box)
        assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height


def test_ask_for_boxes_asks_in_pixels_and_parses():
    model = ScriptedUnderstanding(
        ["red cube: [4, 4, 20, 30]\nblue ball: [30, 10, 60, 40]", "nothing"]
    )
    images = [Image.new("RGB", (64, 48)), Image.new("RGB", (32, 32))]
    prompts = ["a red cube left of a blue ball", "a tree"]
    got = ask_for_boxes(model, images, prompts, max_new_tokens=77)
    assert got == [[Box(4, 4, 20, 30), Box(30, 10, 60, 40)], []]
    (call,) = model.calls
    assert call["max_new_tokens"] == 77 and call["images"] == images
    assert prompts[0] in call["prompts"][0] and "64 x 48" in call["prompts"][0]
    assert "32 x 32" in call["prompts"][1]


def test_ask_for_boxes_rejects_a_wrong_number_of_answers():
    with pytest.raises(ValueError, match="1 answers for 2 questions"):
        ask_for_boxes(
            ScriptedUnderstanding(["[1, 1, 5, 5]"]), [Image.new("RGB", (8, 8))] * 2, ["a", "b"]
        )


def test_model_grounder_uses_default_ground_then_selects():
    replies = ["[0, 0, 10, 10] [0, 0, 10, 10] [5, 5, 60, 60] (1, 1, 3, 3) [0.5, 0.5, 1.0, 1.0]"]
    g = ModelGrounder(ScriptedUnderstanding(replies), GrounderConfig(kind="model", max_boxes=2))
    # 64x48: [5,5,60,60] -> (5,5,60,48) area 2365; normalized (32,24,64,48) area 768; dup dropped
    got = g.propose([Image.new("RGB", (64, 48))], ["x"])
    assert got == [[Box(5, 5, 60, 48), Box(32, 24, 64, 48)]]
    assert g.kind == "model"


def test_model_grounder_calls_a_native_ground_and_cleans_its_boxes():
    native = NativeGrounding([[Box(-10, -10, 100, 5), Box(2, 2, 2, 9)], []])
    g = ModelGrounder(native, GrounderConfig(kind="model"))
    images = [Image.new("RGB", (16, 16))] * 2
    assert g.propose(images, ["a", "b"]) == [[Box(0, 0, 16, 5)], []]
    assert native.calls == []  # the native path never went through answer()
    with pytest.raises(ValueError, match="returned 2 box lists for 1 images"):
        g.propose(images[:1], ["a"])


def test_build_grounder_dispatch():
    assert isinstance(build_grounder(GrounderConfig(kind="none")), NoGrounder)
    model = ScriptedUnderstanding([])
    g = build_grounder(GrounderConfig(kind="model"), understanding=model)
    assert isinstance(g, ModelGrounder) and g.understanding is model
    with pytest.raises(ValueError, match="understanding=None"):
        build_grounder(GrounderConfig(kind="model"))
    with pytest.raises(ValueError, match="unknown grounder.kind 'bogus'"):
        build_grounder(GrounderConfig(kind="bogus"))
    sam = build_grounder(GrounderConfig(kind="sam", sam=SamConfig(**TINY_SAM_PRESET)))
    assert isinstance(sam, SamGrounder)
    assert sam.generator.pred_iou_thresh == 0.0 and sam.generator.box_nms_thresh == 0.7
