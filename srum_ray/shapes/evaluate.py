"""Score shapes-world prompts on images with no learned model (T2I-CompBench-style report).

:func:`check` reads an image with :func:`~srum_ray.shapes.detect.detect` and decides every
constraint of a :class:`~srum_ray.shapes.constraints.PromptSpec` with the semantics of
:mod:`srum_ray.shapes.constraints`:

* ``Exists(q)``: some detection matches every attribute ``q`` names.
* ``Count(q, n)``: exactly ``n`` detections match ``q``.
* ``Relation(a, rel, b)``: some detection matching ``a`` is ``rel`` of some other detection
  matching ``b``, judged on centroids by :func:`~srum_ray.shapes.constraints.relation_holds`.

A prompt is correct when all its constraints hold; :func:`evaluate` reports, per category,
the fraction of prompts that are fully correct (T2I-CompBench scores each category by the
share of its prompts an image satisfies), the overall fraction, and the fraction of
constraints of each kind that hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from srum_ray.shapes.constraints import (
    CATEGORIES,
    Constraint,
    Count,
    Exists,
    ObjectQuery,
    PromptSpec,
    Relation,
    relation_holds,
)
from srum_ray.shapes.detect import Detection, detect, foreground_mask

__all__ = [
    "CONSTRAINTS_NOTE", "CONSTRAINT_KINDS", "Detection", "EvalReport", "check", "check_detections", "correct",
    "detect", "drawn_objects", "evaluate", "unasked_objects",
]

CONSTRAINT_KINDS = ("exists", "count", "relation")
#: how to read a table of :attr:`EvalReport.per_kind` (the demo's report and docs/RESULTS.md)
CONSTRAINTS_NOTE = (
    "Share of the test prompts' constraints of each kind that the image satisfies, in %: exists = an "
    "object with every attribute the prompt names is drawn; count = exactly that many such objects; "
    "relation = one such object is left of / right of / above / below another. A graded view of the "
    "same images: an image with most of its constraints right still counts as wrong in the accuracy "
    "tables."
)


def _matches(q: ObjectQuery, d: Detection) -> bool:
    return q.matches(d.shape, d.colour or "", d.size, d.texture)


def _kind(c: Constraint) -> str:
    if isinstance(c, Exists):
        return "exists"
    if isinstance(c, Count):
        return "count"
    if isinstance(c, Relation):
        return "relation"
    raise TypeError(f"unknown constraint type {type(c).__name__}: expected Exists, Count or Relation")


def _holds(c: Constraint, dets: Sequence[Detection]) -> bool:
    kind = _kind(c)
    if kind == "exists":
        return any(_matches(c.obj, d) for d in dets)
    if kind == "count":
        return sum(_matches(c.obj, d) for d in dets) == c.n
    return any(
        relation_holds(c.rel, (a.cx, a.cy), (b.cx, b.cy))
        for i, a in enumerate(dets)
        if _matches(c.a, a)
        for j, b in enumerate(dets)
        if j != i and _matches(c.b, b)
    )


def unasked_objects(spec: PromptSpec, detections: Sequence[Detection]) -> int:
    """How many of ``detections`` match none of the objects ``spec`` names. The constraints do
    not count them against an image (as T2I-CompBench does not, but in counting), so a generator
    can satisfy more constraints by drawing more: this is how that shows."""
    from srum_ray.shapes.grammar import queries_of

    queries = queries_of(spec)
    return sum(1 for d in detections if not any(_matches(q, d) for q in queries))


def check_detections(spec: PromptSpec, detections: Sequence[Detection]) -> list[bool]:
    """One bool per constraint of ``spec``, decided on already computed detections."""
    return [_holds(c, detections) for c in spec.constraints]


def check(spec: PromptSpec, image: Image.Image | np.ndarray) -> list[bool]:
    """One bool per constraint of ``spec``: whether ``image`` (RGB, see ``detect``) satisfies it."""
    return check_detections(spec, detect(image))


def correct(spec: PromptSpec, image: Image.Image | np.ndarray) -> bool:
    """Whether ``image`` satisfies every constraint of ``spec``."""
    return all(check(spec, image))


@dataclass
class EvalReport:
    """Accuracies of a set of images against their prompts.

    Attributes:
        per_category: category -> fraction of its prompts fully correct (only categories seen).
        per_kind: constraint kind ("exists", "count", "relation") -> fraction of those
            constraints that hold (only kinds seen).
        overall: fraction of all prompts fully correct.
        n_prompts: category -> number of prompts.
        n_constraints: kind -> number of constraints.
        results: per prompt, the per-constraint bools, in input order.
        drawn: what the images draw, as :func:`drawn_objects` measures it (``objects`` per
            image, ``ink`` share of the canvas, ``unasked`` objects per image that the prompt
            does not name), from the same detections.
        unasked: per prompt, the number of detected objects its prompt does not name.
    """

    per_category: dict[str, float]
    per_kind: dict[str, float]
    overall: float
    n_prompts: dict[str, int]
    n_constraints: dict[str, int]
    results: list[list[bool]] = field(default_factory=list, repr=False)
    drawn: dict[str, float] = field(default_factory=dict)
    unasked: list[int] = field(default_factory=list, repr=False)

    @property
    def strict(self) -> float:
        """Share of prompts whose image is right and draws nothing the prompt does not name."""
        if len(self.unasked) != len(self.results) or not self.results:
            raise ValueError(f"strict needs one unasked count per prompt: {len(self.unasked)} for {len(self.results)} prompts")
        return float(np.mean([all(r) and u == 0 for r, u in zip(self.results, self.unasked)]))

    def table(self) -> str:
        """Plain-text table: one row per category, the overall row, then one per constraint kind."""
        lines = [f"{'category':<12} {'n':>5} {'accuracy':>9}"]
        for cat in [c for c in CATEGORIES if c in self.per_category] + sorted(set(self.per_category) - set(CATEGORIES)):
            lines.append(f"{cat:<12} {self.n_prompts[cat]:>5} {self.per_category[cat]:>9.3f}")
        lines.append(f"{'overall':<12} {sum(self.n_prompts.values()):>5} {self.overall:>9.3f}")
        lines.append(f"{'constraint':<12} {'n':>5} {'holds':>9}")
        for kind in [k for k in CONSTRAINT_KINDS if k in self.per_kind]:
            lines.append(f"{kind:<12} {self.n_constraints[kind]:>5} {self.per_kind[kind]:>9.3f}")
        return "\n".join(lines)


def evaluate(specs: Sequence[PromptSpec], images: Sequence[Image.Image | np.ndarray]) -> EvalReport:
    """Score ``images[i]`` against ``specs[i]`` for every i.

    Raises:
        ValueError: when the two sequences differ in length or are empty.
    """
    if len(specs) != len(images):
        raise ValueError(f"evaluate needs one image per prompt: {len(specs)} prompts, {len(images)} images")
    if not specs:
        raise ValueError("evaluate needs at least one prompt")
    cat_ok: dict[str, list[bool]] = {}
    kind_ok: dict[str, list[bool]] = {}
    results = []
    counts: list[int] = []
    unasked: list[int] = []
    for spec, image in zip(specs, images):
        detections = detect(image)
        counts.append(len(detections))
        unasked.append(unasked_objects(spec, detections))
        res = check_detections(spec, detections)
        results.append(res)
        cat_ok.setdefault(spec.category, []).append(all(res))
        for c, ok in zip(spec.constraints, res):
            kind_ok.setdefault(_kind(c), []).append(ok)
    return EvalReport(
        per_category={k: float(np.mean(v)) for k, v in cat_ok.items()},
        per_kind={k: float(np.mean(v)) for k, v in kind_ok.items()},
        overall=float(np.mean([all(r) for r in results])),
        n_prompts={k: len(v) for k, v in cat_ok.items()},
        n_constraints={k: len(v) for k, v in kind_ok.items()},
        results=results,
        drawn=_drawn(counts, images, unasked),
        unasked=unasked,
    )


def drawn_objects(images: Sequence[Image.Image | np.ndarray], specs: Sequence[PromptSpec] | None = None) -> dict[str, float]:
    """How much the images draw: ``objects``, the mean number of detections per image, and
    ``ink``, the mean share of pixels the detector reads as drawn; with ``specs`` (one per image)
    also ``unasked``, the mean number of detections their prompt does not name
    (:func:`unasked_objects`). Self-training drift shows here first (objects blown up into blobs,
    fading away, or multiplying)."""
    if not images:
        raise ValueError("drawn_objects needs at least one image")
    if specs is not None and len(specs) != len(images):
        raise ValueError(f"drawn_objects needs one prompt per image: {len(specs)} prompts, {len(images)} images")
    detections = [detect(image) for image in images]
    unasked = None if specs is None else [unasked_objects(s, d) for s, d in zip(specs, detections)]
    return _drawn([len(d) for d in detections], images, unasked)


def _drawn(counts: Sequence[int], images: Sequence[Image.Image | np.ndarray], unasked: Sequence[int] | None = None) -> dict[str, float]:
    ink = [float(np.mean(foreground_mask(image))) for image in images]
    out = {"objects": float(np.mean(counts)), "ink": float(np.mean(ink))}
    if unasked is not None:
        out["unasked"] = float(np.mean(unasked))
    return out
