"""What a shapes-world prompt asks for, as checkable constraints.

A prompt (``PromptSpec``) carries its text, its T2I-CompBench-style category and a tuple of
constraints; the evaluator checks each against an image, the scene sampler builds scenes
that satisfy (or deliberately violate) them.

* :class:`Exists`: some object matches every attribute the query names (attribute binding:
  "a red circle" needs one object that is both red and a circle).
* :class:`Count`: exactly ``n`` objects match the query (numeracy).
* :class:`Relation`: some object matching ``a`` is ``rel`` of some object matching ``b``
  (2D spatial), judged on centres: ``left`` means a.cx < b.cx - RELATION_MARGIN, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

CATEGORIES = ("colour", "shape", "texture", "spatial", "numeracy", "complex")
RELATIONS = ("left", "right", "above", "below")
#: pixels by which centres must differ for a relation to hold
RELATION_MARGIN = 4


@dataclass(frozen=True)
class ObjectQuery:
    """Attributes an object must have; None = any."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    texture: str | None = None

    def matches(self, shape: str, colour: str, size: str, texture: str) -> bool:
        return all(
            want is None or want == got
            for want, got in ((self.shape, shape), (self.colour, colour), (self.size, size), (self.texture, texture))
        )


@dataclass(frozen=True)
class Exists:
    obj: ObjectQuery


@dataclass(frozen=True)
class Count:
    obj: ObjectQuery
    n: int


@dataclass(frozen=True)
class Relation:
    a: ObjectQuery
    rel: str
    b: ObjectQuery


Constraint = Union[Exists, Count, Relation]


def relation_holds(rel: str, a_xy: tuple[float, float], b_xy: tuple[float, float]) -> bool:
    """Whether a centre ``a_xy`` is ``rel`` of ``b_xy`` (image y grows downwards)."""
    (ax, ay), (bx, by) = a_xy, b_xy
    m = RELATION_MARGIN
    return {
        "left": ax < bx - m,
        "right": ax > bx + m,
        "above": ay < by - m,
        "below": ay > by + m,
    }[rel]


@dataclass(frozen=True)
class PromptSpec:
    text: str
    category: str
    constraints: tuple[Constraint, ...]
