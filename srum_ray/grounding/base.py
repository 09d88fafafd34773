"""Region proposals (SPEC 2.2): the grounder interface and the shared box post-processing.

A :class:`Grounder` turns each generated image (plus its prompt) into a short list of pixel
boxes that the judge then scores one by one. Every grounder ends with :func:`select_boxes`,
which keeps the largest ``N`` boxes by area as the public SRUM code does (``N`` is
``GrounderConfig.max_boxes``, 10 there).
"""

from __future__ import annotations

import abc
from typing import Iterable, Sequence

from PIL import Image

from srum_ray.types import Box

BoxLike = Box | Sequence[float]


def _as_box(box: BoxLike) -> Box:
    return box if isinstance(box, Box) else Box.from_list(box)


def select_boxes(
    boxes: Iterable[BoxLike],
    width: int,
    height: int,
    max_boxes: int,
    min_area_frac: float = 0.0,
) -> list[Box]:
    """Clean up proposals for one ``width x height`` image and keep the largest ones.

    Steps, in order: clip every box to the image; drop boxes with no area (``x1 <= x0`` or
    ``y1 <= y0`` after clipping); drop boxes whose area is below
    ``min_area_frac * width * height``; drop exact duplicates; sort by area descending,
    ties broken by position (top edge, then left edge, then bottom, then right, so
    top-left first); keep the first ``max_boxes``.

    Args:
        boxes: :class:`Box` objects or ``[x0, y0, x1, y1]`` sequences (exclusive ends,
            pixels; sequences are rounded to integers and their corners ordered).
        width: image width in pixels (>= 1).
        height: image height in pixels (>= 1).
        max_boxes: how many boxes to keep at most (>= 0).
        min_area_frac: smallest allowed box area as a fraction of the image, in [0, 1).

    Returns:
        At most ``max_boxes`` distinct boxes inside the image, largest first.

    Raises:
        ValueError: on a non-positive image size, a negative ``max_boxes`` or an
            ``min_area_frac`` outside [0, 1).
    """
    if width < 1 or height < 1:
        raise ValueError(f"select_boxes needs a positive image size, got {width}x{height}")
    if max_boxes < 0:
        raise ValueError(f"select_boxes max_boxes must be >= 0, got {max_boxes}")
    if not 0.0 <= min_area_frac < 1.0:
        raise ValueError(f"select_boxes min_area_frac must be in [0, 1), got {min_area_frac}")
    min_area = min_area_frac * width * height
    kept: set[Box] = set()
    for raw in boxes:
        box = _as_box(raw).clipped(width, height)
        if box.x1 <= box.x0 or box.y1 <= box.y0 or box.area < min_area:
            continue
        kept.add(box)
    ordered = sorted(kept, key=lambda b: (-b.area, b.y0, b.x0, b.y1, b.x1))
    return ordered[:max_boxes]


def check_batch(images: Sequence[Image.Image], prompts: Sequence[str], who: str) -> None:
    """Raise ``ValueError`` unless there is exactly one prompt per image."""
    if len(images) != len(prompts):
        raise ValueError(f"{who}.propose got {len(images)} images but {len(prompts)} prompts")


class Grounder(abc.ABC):
    """Proposes regions of generated images for the per-region judge.

    Implementations are plain in-process classes; ``actors/`` wraps them for Ray.
    """

    #: registry name used in ``GrounderConfig.kind``
    kind: str = ""

    @abc.abstractmethod
    def propose(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> list[list[Box]]:
        """Boxes for each image.

        Args:
            images: RGB images (any size; each may differ).
            prompts: the prompt each image was generated from, one per image.

        Returns:
            One list per image of pixel boxes ``[x0, y0, x1, y1)`` inside that image,
            already passed through :func:`select_boxes` (largest first, at most
            ``max_boxes``).
        """


class NoGrounder(Grounder):
    """Proposes nothing: only the global score shapes the reward (``kind: none``)."""

    kind = "none"

    def propose(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> list[list[Box]]:
        check_batch(images, prompts, type(self).__name__)
        return [[] for _ in images]
