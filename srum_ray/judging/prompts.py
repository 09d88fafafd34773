"""Judge and filter prompts (SPEC section 2.3), as pure functions of their inputs.

Free mode asks for a whole formatted answer (:func:`global_prompt`, :func:`local_prompt`).
Guided mode (:func:`guided_global_prompt`, :func:`guided_object_prompt`,
:func:`guided_score_prompt`) ends each prompt with the start of the answer, so the model only
fills in a name or a number; :func:`format_global_answer` / :func:`format_region_line` then
write the filled-in answer in the free format so the same parser reads both modes.

Boxes are written ``[x0, y0, x1, y1]`` in pixels with (0, 0) the top-left corner, as
:meth:`srum_ray.types.Box.as_list` gives them.
"""

from __future__ import annotations

from typing import Sequence

from srum_ray.types import Box

_GLOBAL_RUBRIC = """\
Give one score between -1 and 1:
  1.0           the arrangement is exactly what the prompt asks for
  0.5 to 0.9    mostly right, with small mistakes
  -0.4 to 0.4   neutral: the prompt asks for no particular arrangement, or the layout is generic
  -0.9 to -0.5  the layout is wrong
  -1.0          the layout contradicts the prompt"""

_LOCAL_RUBRIC = """\
Be strict. The score covers both how relevant the object is to the prompt and how well it is drawn:
  1.0           flawless, and exactly what the prompt asks for
  0.5 to 0.9    relevant to the prompt, with minor flaws
  -0.4 to 0.4   neutral, such as harmless background (0.0 means exactly neutral)
  -0.9 to -0.5  irrelevant and distracting, or relevant but badly distorted
  -1.0          works against what the prompt asks for"""


def _quote(prompt: str) -> str:
    """The prompt on one line, in double quotes."""
    return '"' + " ".join(str(prompt).split()) + '"'


def _box_text(box: Box) -> str:
    return "[" + ", ".join(str(v) for v in box.as_list()) + "]"


def _frame(size: tuple[int, int]) -> str:
    width, height = size
    return (
        f"The image is {width} x {height} pixels. Boxes are [x0, y0, x1, y1] in pixels, "
        "with (0, 0) at the top-left corner."
    )


def _global_intro(prompt: str) -> str:
    return (
        "You are checking a generated image against the text prompt it was made from.\n"
        f"Prompt: {_quote(prompt)}\n\n"
        "Judge only the layout and composition: are the things the prompt mentions placed, "
        "sized, counted and arranged the way the prompt asks (left or right, above or below, "
        "in front or behind, near or far, inside, how many)? Style and fine detail do not "
        "count here.\n\n" + _GLOBAL_RUBRIC
    )


def global_prompt(prompt: str) -> str:
    """Free-mode global question: one ``Score:`` line, then one ``Reason:`` line."""
    return (
        _global_intro(prompt) + "\n\n"
        "Answer with exactly these two lines and nothing else:\n"
        "Score: <a number between -1 and 1>\n"
        "Reason: <one short sentence>"
    )


def guided_global_prompt(prompt: str) -> str:
    """Guided-mode global question; it ends with the answer prefix ``Score: ``."""
    return _global_intro(prompt) + "\n\nAnswer with the score only.\nScore: "


def _local_intro(prompt: str, regions: Sequence[tuple[int, Box]], size: tuple[int, int]) -> str:
    listed = "\n".join(f"Region {rid}: {_box_text(box)}" for rid, box in regions)
    return (
        "You are checking regions of a generated image against the text prompt it was "
        "made from.\n"
        f"Prompt: {_quote(prompt)}\n"
        f"{_frame(size)}\n\n"
        f"Regions:\n{listed}"
    )


def local_prompt(prompt: str, regions: Sequence[tuple[int, Box]], size: tuple[int, int]) -> str:
    """Free-mode local question about every listed region.

    Args:
        prompt: the text prompt the image was generated from.
        regions: ``(region id, box)`` pairs to ask about, in the order to list them.
        size: ``(width, height)`` of the image in pixels.
    """
    return (
        _local_intro(prompt, regions, size) + "\n\n"
        "For EVERY region above, first name the main object inside its box, then give one "
        "score between -1 and 1 for it.\n" + _LOCAL_RUBRIC + "\n\n"
        "Answer with one line per region, in this form and nothing else:\n"
        "Region <id>: Object: <name>; Score: <number>; Reason: <short reason>"
    )


def guided_object_prompt(prompt: str, region_id: int, box: Box, size: tuple[int, int]) -> str:
    """Guided-mode question naming the object of one region; ends with
    ``Region <id>: Object: ``."""
    return (
        _local_intro(prompt, [(region_id, box)], size) + "\n\n"
        f"Name the main object inside the box of Region {region_id} in a few words.\n"
        f"Region {region_id}: Object: "
    )


def guided_score_prompt(
    prompt: str, region_id: int, box: Box, size: tuple[int, int], object_name: str | None
) -> str:
    """Guided-mode question scoring one region after its object was named; ends with
    ``Region <id>: Object: <name>; Score: ``."""
    return (
        _local_intro(prompt, [(region_id, box)], size) + "\n\n"
        f"Give one score between -1 and 1 for Region {region_id}.\n" + _LOCAL_RUBRIC + "\n\n"
        + format_region_line(region_id, object_name, None)
    )


def format_global_answer(score_text: str) -> str:
    """A global answer in the free format, from the number text the model filled in."""
    return f"Score: {score_text}"


def format_region_line(region_id: int, object_name: str | None, score_text: str | None) -> str:
    """One region line in the free format; with ``score_text=None`` it stops after
    ``Score: `` (the guided prompt's end)."""
    head = f"Region {region_id}: Object: {object_name or ''}; Score: "
    return head if score_text is None else head + score_text


def filter_prompt(prompt: str, box: Box, size: tuple[int, int]) -> str:
    """Yes/no question: does the region inside ``box`` show something the prompt is about?"""
    return (
        "You are looking at one region of a generated image.\n"
        f"Prompt: {_quote(prompt)}\n"
        f"{_frame(size)}\n"
        f"Region: {_box_text(box)}\n\n"
        "Does this region show something the prompt is about (an object, a part of an "
        "object, or a part of the scene that the prompt describes)? Answer yes or no."
    )
