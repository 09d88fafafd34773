"""Region proposals from the UMM's own grounding (SPEC 2.2, ``kind: model``).

The understanding module is asked, in free text, for a box around each object the prompt
mentions; :func:`parse_boxes` reads whatever it wrote. The parser never raises on any text:
a reply with no readable box simply yields no boxes (the sample is then judged globally).

Coordinate conventions the parser reads:

* ``[x0, y0, x1, y1]`` or ``(x0, y0, x1, y1)`` anywhere in the text, including inside JSON
  such as Qwen2.5-VL's ``[{"bbox_2d": [x0, y0, x1, y1], "label": "cat"}]``;
* a box whose four numbers all lie in [0, 1] is read as normalized and scaled by the
  image width / height; any other box is read as pixels. A model that normalizes to
  0..1000 (Qwen2-VL) is indistinguishable from pixels in a large image, so such plain boxes
  are taken as pixels and clipped; only Qwen2-VL's own special-token form
  ``<|box_start|>(x0,y0),(x1,y1)<|box_end|>`` is read as 0..1000;
* corners in either order; everything clipped to the image; boxes with no area dropped.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Sequence

from PIL import Image

from srum_ray.config.schema import GrounderConfig
from srum_ray.grounding.base import Grounder, check_batch, select_boxes
from srum_ray.types import Box

if TYPE_CHECKING:
    from srum_ray.models.base import UnderstandingModel

_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_SEP = r"(?:\s*[,;]\s*|\s+)"
#: four numbers in brackets or parentheses
_QUAD = re.compile(r"[\[(]\s*" + _NUM + _SEP + _NUM + _SEP + _NUM + _SEP + _NUM + r"\s*[\])]")
#: two points, (x0, y0), (x1, y1)
_PAIR = re.compile(
    r"\(\s*" + _NUM + _SEP + _NUM + r"\s*\)\s*,?\s*(?:to\s*)?\(\s*" + _NUM + _SEP + _NUM + r"\s*\)"
)
_QWEN2_SPAN = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.DOTALL)

#: the question put to the understanding model; ``{w}``/``{h}`` are the image size
BOX_QUESTION = (
    'This image was generated for the prompt: "{prompt}".\n'
    "Find every object the prompt mentions that is visible in the image and give a "
    "bounding box for each, in pixel coordinates of this {w} x {h} image "
    "(x grows to the right from 0 to {w}, y grows downward from 0 to {h}).\n"
    "Answer with one line per object, in the form: name: [x0, y0, x1, y1]\n"
    "where (x0, y0) is the top-left corner and (x1, y1) the bottom-right corner."
)


def _to_box(values: Sequence[float], width: int, height: int, scale: float | None) -> Box | None:
    """Pixel box from four numbers (pixels, or normalized by ``scale``); None if unusable."""
    if not all(math.isfinite(v) for v in values):
        return None
    xa, ya, xb, yb = values
    if scale is None and all(0.0 <= v <= 1.0 for v in values):
        scale = 1.0
    if scale is not None:
        xa, xb = xa / scale * width, xb / scale * width
        ya, yb = ya / scale * height, yb / scale * height

    def clip(v: float, hi: int) -> int:
        return int(round(min(max(v, 0.0), float(hi))))

    x0, x1 = sorted((clip(xa, width), clip(xb, width)))
    y0, y1 = sorted((clip(ya, height), clip(yb, height)))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1, y1)


def _scan(
    text: str, offset: int, width: int, height: int, scale: float | None
) -> list[tuple[int, Box]]:
    """``(position, box)`` for every four-number group and every point pair in ``text``."""
    found: list[tuple[int, Box]] = []
    taken: list[tuple[int, int]] = []
    for pattern in (_QUAD, _PAIR):
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            taken.append(m.span())
            box = _to_box([float(g) for g in m.groups()], width, height, scale)
            if box is not None:
                found.append((offset + m.start(), box))
    return found


def parse_boxes(text: str, width: int, height: int) -> list[Box]:
    """Every box written in ``text``, as pixel boxes inside a ``width x height`` image.

    See the module docstring for the formats and the normalization rule. Boxes come back
    in the order they appear in the text (duplicates kept; :func:`select_boxes` dedupes).

    Args:
        text: free model output; any string (or None) is accepted.
        width: image width in pixels (>= 1).
        height: image height in pixels (>= 1).

    Returns:
        Boxes with ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``.

    Raises:
        ValueError: only for a non-positive image size, never because of ``text``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"parse_boxes needs a positive image size, got {width}x{height}")
    if not text or not isinstance(text, str):
        return []
    found: list[tuple[int, Box]] = []
    taken: list[tuple[int, int]] = []
    for span in _QWEN2_SPAN.finditer(text):  # Qwen2-VL special tokens: 0..1000 normalized
        found += _scan(span.group(1), span.start(1), width, height, 1000.0)
        taken.append(span.span())
    rest = list(text)
    for a, b in taken:  # blank the spans already read so they are not read twice
        rest[a:b] = " " * (b - a)
    found += _scan("".join(rest), 0, width, height, None)
    return [box for _, box in sorted(found, key=lambda item: item[0])]


def ask_for_boxes(
    understanding: "UnderstandingModel",
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 128,
) -> list[list[Box]]:
    """Ask ``understanding`` (greedy) for the boxes of each prompt's objects and parse them.

    Args:
        understanding: the model that answers; its :meth:`answer` gets one question per
            image (:data:`BOX_QUESTION` with the prompt and the image size filled in).
        images: the generated images.
        prompts: the prompt of each image.
        max_new_tokens: answer length limit.

    Returns:
        One list of parsed boxes per image (possibly empty; not yet passed through
        :func:`select_boxes`).

    Raises:
        ValueError: on a prompt/image count mismatch, or when the model returns a
            different number of answers than questions.
    """
    check_batch(images, prompts, "ask_for_boxes")
    if not images:
        return []
    questions = [
        BOX_QUESTION.format(prompt=p, w=im.width, h=im.height) for im, p in zip(images, prompts)
    ]
    answers = understanding.answer(images, questions, max_new_tokens=max_new_tokens)
    if len(answers) != len(images):
        raise ValueError(
            f"{type(understanding).__name__}.answer returned {len(answers)} answers "
            f"for {len(images)} questions"
        )
    return [parse_boxes(a, im.width, im.height) for a, im in zip(answers, images)]


class ModelGrounder(Grounder):
    """Boxes from the understanding module's own grounding (``kind: model``).

    Calls :meth:`UnderstandingModel.ground` (by default :func:`ask_for_boxes`; a backend
    with native grounding overrides it) and keeps the largest ``cfg.max_boxes``.

    Args:
        understanding: the model to ask.
        cfg: grounder config (``max_boxes``, ``min_box_area_frac``).
    """

    kind = "model"

    def __init__(self, understanding: "UnderstandingModel", cfg: GrounderConfig) -> None:
        self.understanding = understanding
        self.cfg = cfg

    def propose(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        check_batch(images, prompts, type(self).__name__)
        if not images:
            return []
        found = self.understanding.ground(images, prompts)
        if len(found) != len(images):
            raise ValueError(
                f"{type(self.understanding).__name__}.ground returned {len(found)} box lists "
                f"for {len(images)} images"
            )
        return [
            select_boxes(b, im.width, im.height, self.cfg.max_boxes, self.cfg.min_box_area_frac)
            for b, im in zip(found, images)
        ]
