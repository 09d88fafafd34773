"""Box relevance filter tests with a scripted understanding model."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from srum_ray.config.schema import FilterConfig
from srum_ray.judging.filter import BoxFilter, FilterStats
from srum_ray.judging.prompts import filter_prompt
from srum_ray.models.base import AnswerConstraint, UnderstandingModel
from srum_ray.types import Box


class ScriptedModel(UnderstandingModel):
    """Answers with ``respond(prompt)`` and records every call's arguments."""

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[dict] = []

    def answer(self, images, prompts, *, max_new_tokens, constraint=None, temperature=0.0, seed=None):
        self.calls.append(
            dict(prompts=list(prompts), n_images=len(images), max_new_tokens=max_new_tokens,
                 constraint=constraint, temperature=temperature, seed=seed)
        )
        return [self.respond(p) for p in prompts]


def box_of(prompt: str) -> list[int]:
    return [int(v) for v in re.search(r"Region: \[(\d+), (\d+), (\d+), (\d+)\]", prompt).groups()]


IMAGES = [Image.new("RGB", (64, 64)), Image.new("RGB", (32, 16))]
PROMPTS = ["a cat on a mat", "a blue bird"]
BOXES = [
    [Box(0, 0, 10, 10), Box(20, 20, 40, 40), Box(1, 1, 5, 5)],
    [Box(2, 0, 30, 16)],
]


def test_keeps_yes_drops_no_in_batches():
    # "yes" for boxes starting at x0 < 10, "No." otherwise
    model = ScriptedModel(lambda p: "yes" if box_of(p)[0] < 10 else "No.")
    box_filter = BoxFilter(model, FilterConfig(max_new_tokens=3), batch_size=3)
    kept, raw = box_filter.filter(IMAGES, PROMPTS, BOXES)

    assert kept == [[True, False, True], [True]]
    assert raw == [["yes", "No.", "yes"], ["yes"]]
    assert [c["n_images"] for c in model.calls] == [3, 1]
    for c in model.calls:
        assert c["constraint"] == AnswerConstraint("choice", ("yes", "no"))
        assert (c["max_new_tokens"], c["temperature"], c["seed"]) == (3, 0.0, None)
    assert model.calls[1]["prompts"] == [filter_prompt("a blue bird", BOXES[1][0], (32, 16))]
    question = model.calls[0]["prompts"][1]
    assert "[20, 20, 40, 40]" in question and '"a cat on a mat"' in question
    assert "64 x 64" in question
    assert box_filter.stats == FilterStats(calls=2, requests=4, kept=3, dropped=1, unparsed=0)


@pytest.mark.parametrize("policy, expected", [("keep", [True, True, False]), ("drop", [False, True, False])])
def test_unparsed_answers_follow_policy_and_are_counted(policy, expected):
    answers = iter(["maybe", "Yes, it shows the cat", "**no**"])
    model = ScriptedModel(lambda p: next(answers))
    box_filter = BoxFilter(model, FilterConfig(on_unparsed=policy))
    kept, raw = box_filter.filter(IMAGES[:1], PROMPTS[:1], BOXES[:1])
    assert kept == [expected]
    assert raw == [["maybe", "Yes, it shows the cat", "**no**"]]
    assert box_filter.stats.unparsed == 1
    assert box_filter.stats.kept == sum(expected) and box_filter.stats.dropped == 3 - sum(expected)


def test_disabled_keeps_everything_without_calls():
    model = ScriptedModel(lambda p: pytest.fail("a disabled filter must not ask"))
    box_filter = BoxFilter(model, FilterConfig(enabled=False))
    kept, raw = box_filter.filter(IMAGES, PROMPTS, BOXES)
    assert kept == [[True, True, True], [True]]
    assert raw == [["", "", ""], [""]]
    assert model.calls == []
    assert box_filter.stats.as_dict(prefix="filter/") == {
        "filter/calls": 0, "filter/requests": 0, "filter/kept": 4, "filter/dropped": 0,
        "filter/unparsed": 0,
    }


def test_no_boxes_no_calls_and_totals_accumulate():
    model = ScriptedModel(lambda p: "no")
    box_filter = BoxFilter(model, FilterConfig())
    assert box_filter.filter(IMAGES, PROMPTS, [[], []]) == ([[], []], [[], []])
    assert model.calls == []
    box_filter.filter(IMAGES[1:], PROMPTS[1:], BOXES[1:])
    box_filter.filter(IMAGES[1:], PROMPTS[1:], BOXES[1:])
    assert box_filter.stats.dropped == 1 and box_filter.total.dropped == 2


def test_errors_name_the_problem():
    model = ScriptedModel(lambda p: "yes")
    with pytest.raises(ValueError, match="2 images, 1 prompts, 2 box lists"):
        BoxFilter(model, FilterConfig()).filter(IMAGES, PROMPTS[:1], BOXES)
    with pytest.raises(ValueError, match="on_unparsed"):
        BoxFilter(model, FilterConfig(on_unparsed="guess"))
    with pytest.raises(ValueError, match="batch_size"):
        BoxFilter(model, FilterConfig(), batch_size=0)

    class Silent(ScriptedModel):
        def answer(self, images, prompts, **kw):
            return []

    with pytest.raises(RuntimeError, match="returned 0 answers for 1 prompts"):
        BoxFilter(Silent(None), FilterConfig()).filter(IMAGES[1:], PROMPTS[1:], BOXES[1:])


def test_with_tiny_random_vlm_answers_are_valid_choices():
    from srum_ray.config.schema import TinyModelConfig
    from srum_ray.models.tiny_vlm import TinyUnderstanding

    model = TinyUnderstanding(TinyModelConfig(vlm_hidden=32, vlm_layers=1))
    box_filter = BoxFilter(model, FilterConfig(), batch_size=2)
    kept, raw = box_filter.filter(IMAGES, PROMPTS, BOXES)
    assert [len(k) for k in kept] == [3, 1]
    assert all(a in ("yes", "no") for row in raw for a in row)
    assert kept == [[a == "yes" for a in row] for row in raw]
    assert box_filter.stats.unparsed == 0 and box_filter.stats.calls == 2
    assert box_filter.filter(IMAGES, PROMPTS, BOXES) == (kept, raw)  # greedy: reproducible


def test_round_counts_no_unparsed_answers_when_the_filter_is_off():
    from srum_ray.stages import filter_counts
    from srum_ray.types import SampleRecord

    rec = SampleRecord(id="a", round=0, prompt="p", seed=0, weights_version=0)
    rec.kept, rec.filter_raw = [True, True, False], ["", "", ""]
    assert filter_counts([rec], enabled=False) == {"kept": 2, "dropped": 1, "unparsed": 0}
    assert filter_counts([rec], enabled=True)["unparsed"] == 3
    rec.filter_raw = ["yes", "maybe", "no"]
    assert filter_counts([rec])["unparsed"] == 1
