"""Scenes for a prompt: ones that satisfy it, and ones deliberately wrong in one attribute.

Ground truth is checked on the scene's own objects (:func:`holds`), the same semantics the
evaluator applies to pixels: ``Exists`` = some object matches, ``Count`` = exactly ``n``
objects match, ``Relation`` = some ``a`` object is ``rel`` of some other ``b`` object by more
than ``constraints.RELATION_MARGIN`` between centres.

Layouts are kept easy to read: every bounding box lies ``MARGIN`` px inside the canvas, any
two boxes are at least ``GAP`` px apart on some axis, and every relation a scene is built to
satisfy holds with centres ``RELATION_GAP`` px apart on its axis (a broken one is reversed by
as much).
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from srum_ray.shapes.constraints import Constraint, Count, Exists, ObjectQuery, PromptSpec, Relation, relation_holds
from srum_ray.shapes.grammar import query_attrs, queries_of
from srum_ray.shapes.spec import CANVAS, COLOURS, MAX_OBJECTS, SHAPES, SIZES, TEXTURES, Scene, SceneObject

MARGIN = 2
GAP = 3
RELATION_GAP = 10
_VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "texture": TEXTURES}
_ATTRS = ("shape", "colour", "size", "texture")
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_SCENE_TRIES = 50
_LAYOUT_TRIES = 200


def _matches(q: ObjectQuery, o: SceneObject) -> bool:
    return q.matches(o.shape, o.colour, o.size, o.texture)


def holds(constraint: Constraint, scene: Scene) -> bool:
    """Whether ``constraint`` is true of ``scene``'s objects (exact ground truth)."""
    objs = scene.objects
    if isinstance(constraint, Exists):
        return any(_matches(constraint.obj, o) for o in objs)
    if isinstance(constraint, Count):
        return sum(_matches(constraint.obj, o) for o in objs) == constraint.n
    if isinstance(constraint, Relation):
        return any(
            i != j
            and _matches(constraint.a, oa)
            and _matches(constraint.b, ob)
            and relation_holds(constraint.rel, (oa.cx, oa.cy), (ob.cx, ob.cy))
            for i, oa in enumerate(objs)
            for j, ob in enumerate(objs)
        )
    raise TypeError(f"not a constraint: {constraint!r}")


def failed(spec: PromptSpec, scene: Scene) -> list[int]:
    """Indices of ``spec.constraints`` that do not hold on ``scene``."""
    return [i for i, c in enumerate(spec.constraints) if not holds(c, scene)]


def satisfies(spec: PromptSpec, scene: Scene) -> bool:
    """Whether every constraint of ``spec`` holds on ``scene``."""
    return not failed(spec, scene)


def layout_problems(scene: Scene) -> list[str]:
    """Why a layout breaks the rules (margin, gaps, object count); empty when it is fine."""
    out = []
    if not 1 <= len(scene.objects) <= MAX_OBJECTS:
        out.append(f"{len(scene.objects)} objects (1..{MAX_OBJECTS} allowed)")
    boxes = [o.bbox() for o in scene.objects]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if x0 < MARGIN or y0 < MARGIN or x1 > scene.canvas - MARGIN or y1 > scene.canvas - MARGIN:
            out.append(f"object {i} box {boxes[i]} is within {MARGIN} px of the canvas edge")
        for j in range(i):
            if not _apart(boxes[i], boxes[j]):
                out.append(f"objects {j} and {i} are less than {GAP} px apart")
    return out


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return b[0] - a[2] >= GAP or a[0] - b[2] >= GAP or b[1] - a[3] >= GAP or a[1] - b[3] >= GAP


def _slots(spec: PromptSpec) -> tuple[list[ObjectQuery], list[tuple[int, str, int]]]:
    """One query per object to draw, and relations as (slot a, rel, slot b)."""
    slots: list[ObjectQuery] = []
    for c in spec.constraints:
        if isinstance(c, Count):
            slots.extend([c.obj] * c.n)
    for c in spec.constraints:
        if isinstance(c, Exists) and c.obj not in slots:
            slots.append(c.obj)
    rels = []
    for c in spec.constraints:
        if isinstance(c, Relation):
            ia = slots.index(c.a) if c.a in slots else _append(slots, c.a)
            ib = next((k for k, q in enumerate(slots) if q == c.b and k != ia), None)
            rels.append((ia, c.rel, _append(slots, c.b) if ib is None else ib))
    return slots, rels


def _append(slots: list[ObjectQuery], q: ObjectQuery) -> int:
    slots.append(q)
    return len(slots) - 1


def _random_object(q: ObjectQuery, rng: random.Random) -> dict[str, str]:
    named = query_attrs(q)
    return {a: named[a] if a in named else rng.choice(_VALUES[a]) for a in _ATTRS}


def _positions(radius: int, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = radius + MARGIN, canvas - MARGIN - 1 - radius
    xs, ys = np.meshgrid(np.arange(lo, hi + 1), np.arange(lo, hi + 1), indexing="xy")
    return xs.ravel(), ys.ravel()


def _free(
    radius: int, placed: list[SceneObject], rels: list[tuple[SceneObject, str, bool]], rng: random.Random
) -> tuple[int, int] | None:
    """A random centre for a new object of ``radius`` clear of ``placed`` and satisfying
    ``rels``: (other, rel, new_is_a) means new ``rel`` other (new_is_a) or other ``rel`` new."""
    xs, ys = _positions(radius, CANVAS)
    ok = np.ones(xs.shape, dtype=bool)
    for p in placed:
        px0, py0, px1, py1 = p.bbox()
        apart_x = (px0 - (xs + radius + 1) >= GAP) | ((xs - radius) - px1 >= GAP)
        apart_y = (py0 - (ys + radius + 1) >= GAP) | ((ys - radius) - py1 >= GAP)
        ok &= apart_x | apart_y
    for other, rel, new_is_a in rels:
        if not new_is_a:
            rel = _OPPOSITE[rel]
        if rel == "left":
            ok &= xs <= other.cx - RELATION_GAP
        elif rel == "right":
            ok &= xs >= other.cx + RELATION_GAP
        elif rel == "above":
            ok &= ys <= other.cy - RELATION_GAP
        else:
            ok &= ys >= other.cy + RELATION_GAP
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    k = int(idx[rng.randrange(idx.size)])
    return int(xs[k]), int(ys[k])


def _layout(
    attrs: list[dict[str, str]], rels: list[tuple[int, str, int]], rng: random.Random, fixed: dict[int, SceneObject] | None = None
) -> list[SceneObject] | None:
    """Place objects (``fixed`` ones keep their place) so that all ``rels`` hold with margin."""
    fixed = fixed or {}
    for _ in range(_LAYOUT_TRIES):
        placed: dict[int, SceneObject] = dict(fixed)
        order = [i for i in range(len(attrs)) if i not in fixed]
        rng.shuffle(order)
        for i in order:
            need = [(placed[b], r, True) for a, r, b in rels if a == i and b in placed]
            need += [(placed[a], r, False) for a, r, b in rels if b == i and a in placed]
            xy = _free(SIZES[attrs[i]["size"]], list(placed.values()), need, rng)
            if xy is None:
                break
            placed[i] = SceneObject(**attrs[i], cx=xy[0], cy=xy[1])
        else:
            return [placed[i] for i in range(len(attrs))]
    return None


def _distractor(spec: PromptSpec, placed: list[SceneObject], rng: random.Random) -> SceneObject | None:
    """An object that matches no query of ``spec`` (so it can break nothing), or None."""
    qs = queries_of(spec)
    for _ in range(50):
        attrs = _random_object(ObjectQuery(), rng)
        probe = SceneObject(**attrs, cx=0, cy=0)
        if any(_matches(q, probe) for q in qs):
            continue
        xy = _free(SIZES[attrs["size"]], placed, [], rng)
        return None if xy is None else SceneObject(**attrs, cx=xy[0], cy=xy[1])
    return None


def scene_for(spec: PromptSpec, rng: random.Random, *, max_distractors: int = 0) -> Scene:
    """A scene on which every constraint of ``spec`` holds, deterministic from ``rng``.

    Each queried object gets the attributes its query names and random values for the rest;
    counted groups get exactly ``n`` objects. Up to ``max_distractors`` extra objects (never
    beyond ``MAX_OBJECTS``) are added, each matching no query of the prompt. Objects appear in
    random order.

    Raises:
        ValueError: no valid scene was found (e.g. the constraints contradict each other).
    """
    slots, rels = _slots(spec)
    if len(slots) > MAX_OBJECTS:
        raise ValueError(f"prompt {spec.text!r} needs {len(slots)} objects; at most {MAX_OBJECTS} fit")
    for _ in range(_SCENE_TRIES):
        objs = _layout([_random_object(q, rng) for q in slots], rels, rng)
        if objs is None:
            continue
        extra = rng.randint(0, max(0, min(max_distractors, MAX_OBJECTS - len(objs))))
        for _ in range(extra):
            d = _distractor(spec, objs, rng)
            if d is not None:
                objs.append(d)
        rng.shuffle(objs)
        scene = Scene(tuple(objs))
        if satisfies(spec, scene) and not layout_problems(scene):
            return scene
    raise ValueError(f"could not build a scene satisfying {spec.text!r} in {_SCENE_TRIES} tries")


_Candidate = tuple[str, list[SceneObject]]  # (kind of change, objects after it)


def _attribute_changes(objs: list[SceneObject], i: int, q: ObjectQuery) -> list[_Candidate]:
    """Scenes with object ``i`` changed in one attribute that ``q`` names."""
    out = []
    for attr, value in query_attrs(q).items():
        for new in _VALUES[attr]:
            if new != value:
                changed = list(objs)
                changed[i] = replace(objs[i], **{attr: new})
                out.append((attr, changed))
    return out


def _mutations(objs: list[SceneObject], c: Constraint, rng: random.Random) -> list[_Candidate]:
    """Candidate wrong versions of ``objs`` aimed at breaking ``c``."""
    if isinstance(c, Exists):
        hits = [i for i, o in enumerate(objs) if _matches(c.obj, o)]
        return _attribute_changes(objs, hits[0], c.obj) if len(hits) == 1 else []
    if isinstance(c, Count):
        hits = [i for i, o in enumerate(objs) if _matches(c.obj, o)]
        out = [cand for i in hits for cand in _attribute_changes(objs, i, c.obj)]
        out += [("remove", objs[:i] + objs[i + 1 :]) for i in hits if len(objs) > 1]
        if len(objs) < MAX_OBJECTS:
            for _ in range(3):
                attrs = _random_object(c.obj, rng)
                xy = _free(SIZES[attrs["size"]], objs, [], rng)
                if xy is not None:
                    out.append(("add", objs + [SceneObject(**attrs, cx=xy[0], cy=xy[1])]))
        return out
    hits_a = [i for i, o in enumerate(objs) if _matches(c.a, o)]
    hits_b = [i for i, o in enumerate(objs) if _matches(c.b, o)]
    if len(hits_a) != 1 or len(hits_b) != 1 or hits_a == hits_b:
        return []
    ia, ib = hits_a[0], hits_b[0]
    swapped = list(objs)
    swapped[ia] = replace(objs[ia], cx=objs[ib].cx, cy=objs[ib].cy)
    swapped[ib] = replace(objs[ib], cx=objs[ia].cx, cy=objs[ia].cy)
    last = CANVAS - 1
    if c.rel in ("left", "right"):
        mirrored = [replace(o, cx=last - o.cx) for o in objs]
    else:
        mirrored = [replace(o, cy=last - o.cy) for o in objs]
    out: list[_Candidate] = [("swap", swapped), ("mirror", mirrored)]
    fixed = {k: o for k, o in enumerate(objs) if k not in (ia, ib)}
    attrs = [{a: getattr(o, a) for a in _ATTRS} for o in objs]
    for _ in range(3):
        moved = _layout(attrs, [(ia, _OPPOSITE[c.rel], ib)], rng, fixed=fixed)
        if moved is not None:
            out.append(("move", moved))
    return out


def wrong_scene_for(spec: PromptSpec, rng: random.Random, base: Scene | None = None) -> tuple[Scene, int]:
    """A scene like :func:`scene_for`'s but wrong in one thing, and which constraint it breaks.

    One change is made to a correct scene (``base``, or a fresh ``scene_for(spec, rng)``):
    a named colour/shape/size/texture of a queried object is changed, a counted group gains
    or loses one object (or one counted object changes a named attribute), or the two
    objects of a relation change sides (swapped, mirrored or re-placed, reversed by at least
    ``RELATION_GAP``). The target constraint is drawn at random among those one change can
    break; among that target's candidate changes breaking fewest constraints, the kind of
    change (which attribute; add or remove; swap, mirror or move) is drawn first, uniformly,
    then the change.

    Returns:
        ``(scene, index)``: the wrong scene, valid in layout, and the index into
        ``spec.constraints`` of the constraint that no longer holds (others may fail with it,
        e.g. a relation whose object changed colour).

    Raises:
        ValueError: ``base`` does not satisfy ``spec``, or no single change breaks it.
    """
    if base is not None and not satisfies(spec, base):
        raise ValueError(f"base scene does not satisfy {spec.text!r}: constraints {failed(spec, base)} fail")
    for _ in range(_SCENE_TRIES):
        scene = base if base is not None else scene_for(spec, rng)
        objs = list(scene.objects)
        targets = list(range(len(spec.constraints)))
        rng.shuffle(targets)
        for t in targets:
            scored = []
            for kind, cand in _mutations(objs, spec.constraints[t], rng):
                s = Scene(tuple(cand), scene.canvas)
                if not layout_problems(s) and not holds(spec.constraints[t], s):
                    scored.append((len(failed(spec, s)), kind, s))
            if scored:
                fewest = min(n for n, _, _ in scored)
                best = [(kind, s) for n, kind, s in scored if n == fewest]
                kind = rng.choice(sorted({k for k, _ in best}))
                return rng.choice([s for k, s in best if k == kind]), t
        if base is not None:
            break
    raise ValueError(f"no single change breaks {spec.text!r}")
