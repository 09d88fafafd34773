"""Scene sampler: right scenes satisfy every constraint, wrong scenes break the one they report."""

import random
from dataclasses import replace

import numpy as np
import pytest

from srum_ray.shapes.constraints import CATEGORIES, Count, Exists, ObjectQuery, PromptSpec, Relation
from srum_ray.shapes.grammar import queries_of, sample_prompt
from srum_ray.shapes.render import object_mask
from srum_ray.shapes.sampler import (
    RELATION_GAP,
    failed,
    holds,
    layout_problems,
    satisfies,
    scene_for,
    wrong_scene_for,
)
from srum_ray.shapes.spec import MAX_OBJECTS, Scene, SceneObject

RED_CIRCLE = ObjectQuery("circle", "red")
BLUE_SQUARE = ObjectQuery("square", "blue")


def _obj(shape, colour, cx, cy, size="small", texture="solid"):
    return SceneObject(shape, colour, size, texture, cx, cy)


def _matches(q, o):
    return q.matches(o.shape, o.colour, o.size, o.texture)


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(99)
    return [sample_prompt(c, rng) for c in CATEGORIES for _ in range(60)]


def test_holds_by_hand():
    scene = Scene((_obj("circle", "red", 10, 30), _obj("square", "blue", 15, 30), _obj("circle", "red", 40, 50)))
    assert holds(Exists(RED_CIRCLE), scene)
    assert not holds(Exists(ObjectQuery("circle", "blue")), scene)
    assert holds(Count(ObjectQuery("circle"), 2), scene)
    assert not holds(Count(ObjectQuery("circle"), 1), scene)
    assert holds(Count(ObjectQuery("star"), 0), scene)
    # 10 < 15 - 4: the first red circle is left of the square; the second is right of it
    assert holds(Relation(RED_CIRCLE, "left", BLUE_SQUARE), scene)
    assert holds(Relation(RED_CIRCLE, "right", BLUE_SQUARE), scene)
    assert holds(Relation(RED_CIRCLE, "below", BLUE_SQUARE), scene)  # 50 > 30 + 4
    assert not holds(Relation(RED_CIRCLE, "above", BLUE_SQUARE), scene)
    # 11 is not < 15 - 4: within the margin nothing is left of anything
    near = Scene((_obj("circle", "red", 11, 30), _obj("square", "blue", 15, 30)))
    assert not holds(Relation(RED_CIRCLE, "left", BLUE_SQUARE), near)
    # an object is never in relation with itself
    one = Scene((_obj("circle", "red", 30, 30),))
    assert not holds(Relation(ObjectQuery("circle"), "left", ObjectQuery(colour="red")), one)
    spec = PromptSpec("t", "spatial", (Exists(RED_CIRCLE), Relation(RED_CIRCLE, "above", BLUE_SQUARE)))
    assert failed(spec, scene) == [1] and not satisfies(spec, scene)


def test_layout_problems_by_hand():
    # small: radius 7, box [cx-7, cx+8)
    assert layout_problems(Scene((_obj("circle", "red", 9, 54),))) == []
    assert "edge" in layout_problems(Scene((_obj("circle", "red", 8, 30),)))[0]
    assert "edge" in layout_problems(Scene((_obj("circle", "red", 55, 30),)))[0]
    # boxes [9, 24) and [27, 42) on x: 3 px apart is fine, 2 px is not
    assert layout_problems(Scene((_obj("circle", "red", 16, 30), _obj("star", "red", 34, 30)))) == []
    assert "apart" in layout_problems(Scene((_obj("circle", "red", 16, 30), _obj("star", "red", 33, 30))))[0]
    # apart on y is enough even when x ranges overlap
    assert layout_problems(Scene((_obj("circle", "red", 16, 16), _obj("star", "red", 20, 34)))) == []
    assert "objects" in layout_problems(Scene(()))[0]


def _relation_objects(c, scene):
    (a,) = [o for o in scene.objects if _matches(c.a, o)]
    (b,) = [o for o in scene.objects if _matches(c.b, o)]
    return a, b


def _axis_gap(rel, a, b):
    return {"left": b.cx - a.cx, "right": a.cx - b.cx, "above": b.cy - a.cy, "below": a.cy - b.cy}[rel]


def test_scenes_satisfy_every_category(prompts):
    rng = random.Random(5)
    for spec in prompts:
        scene = scene_for(spec, rng)
        assert satisfies(spec, scene), spec.text
        assert layout_problems(scene) == []
        assert len(scene.objects) <= MAX_OBJECTS
        for c in spec.constraints:
            if isinstance(c, Relation):
                a, b = _relation_objects(c, scene)
                assert _axis_gap(c.rel, a, b) >= RELATION_GAP, spec.text


def test_rendered_objects_do_not_touch(prompts):
    rng = random.Random(6)
    for spec in prompts[::6]:
        scene = scene_for(spec, rng, max_distractors=3)
        masks = np.stack([object_mask(o, scene.canvas) for o in scene.objects]).astype(int)
        assert masks.sum(0).max() == 1


def test_distractors_never_match_a_query(prompts):
    rng = random.Random(8)
    extra = 0
    for spec in prompts:
        scene = scene_for(spec, rng, max_distractors=3)
        assert satisfies(spec, scene) and layout_problems(scene) == []
        assert len(scene.objects) <= MAX_OBJECTS
        plain = sum(any(_matches(q, o) for q in queries_of(spec)) for o in scene.objects)
        extra += len(scene.objects) - plain
    assert extra > 50  # distractors do get added


def test_crowded_scenes_fit():
    rng = random.Random(0)
    four_large = PromptSpec("four large stars", "numeracy", (Count(ObjectQuery("star", size="large"), 4),))
    for _ in range(20):
        scene = scene_for(four_large, rng)
        assert len(scene.objects) == 4 and layout_problems(scene) == []
    a, b, g = ObjectQuery("circle", size="large"), ObjectQuery("square", size="large"), ObjectQuery("star", size="large")
    spec = PromptSpec("t", "complex", (Exists(a), Exists(b), Relation(a, "below", b), Count(g, 2)))
    for _ in range(20):
        assert satisfies(spec, scene_for(spec, rng))


def test_contradictions_raise():
    spec = PromptSpec("t", "numeracy", (Count(ObjectQuery("circle"), 1), Count(ObjectQuery("circle", "red"), 2)))
    with pytest.raises(ValueError, match="could not build"):
        scene_for(spec, random.Random(0))
    too_many = PromptSpec("t", "numeracy", (Count(ObjectQuery("circle"), 3), Count(ObjectQuery("star"), 2)))
    with pytest.raises(ValueError, match="at most 4"):
        scene_for(too_many, random.Random(0))


def _one_change(base, wrong, c):
    """Whether ``wrong`` differs from ``base`` by one change of the kind ``c`` allows."""
    b, w = list(base.objects), list(wrong.objects)
    if len(b) != len(w):
        assert isinstance(c, Count) and abs(len(b) - len(w)) == 1
        small, big = (b, w) if len(b) < len(w) else (w, b)
        return all(o in big for o in small)
    diffs = [(x, y) for x, y in zip(b, w) if x != y]
    if isinstance(c, Relation):
        # only positions move, attributes stay
        return all(replace(x, cx=0, cy=0) == replace(y, cx=0, cy=0) for x, y in diffs) and len(diffs) >= 1
    (x, y), = diffs
    changed = [f for f in ("shape", "colour", "size", "texture", "cx", "cy") if getattr(x, f) != getattr(y, f)]
    return len(changed) == 1 and changed[0] not in ("cx", "cy")


def test_wrong_scenes_break_what_they_report(prompts):
    rng = random.Random(11)
    kinds = set()
    for spec in prompts:
        base = scene_for(spec, rng, max_distractors=1)
        wrong, k = wrong_scene_for(spec, rng, base)
        target = spec.constraints[k]
        assert not holds(target, wrong), spec.text
        assert not satisfies(spec, wrong)
        assert layout_problems(wrong) == []
        assert _one_change(base, wrong, target), (spec.text, base, wrong)
        # nothing else breaks, except a relation whose object was the one changed
        rel_idx = {i for i, c in enumerate(spec.constraints) if isinstance(c, Relation)}
        extra = set(failed(spec, wrong)) - {k}
        assert extra <= rel_idx and (not extra or isinstance(target, Exists)), spec.text
        if isinstance(target, Relation):
            a, b = _relation_objects(target, wrong)
            assert _axis_gap(target.rel, a, b) <= -RELATION_GAP
        kinds.add(type(target).__name__)
    assert kinds == {"Exists", "Count", "Relation"}


def test_wrong_colour_leaves_no_other_match():
    # two red circles: changing one colour cannot break "a red circle"; the sampler must not claim it did
    spec = PromptSpec("a red circle", "colour", (Exists(RED_CIRCLE),))
    twins = Scene((_obj("circle", "red", 15, 15), _obj("circle", "red", 45, 45)))
    with pytest.raises(ValueError, match="no single change"):
        wrong_scene_for(spec, random.Random(0), twins)
    single = Scene((_obj("circle", "red", 15, 15), _obj("star", "red", 45, 45)))
    wrong, k = wrong_scene_for(spec, random.Random(0), single)
    assert k == 0 and not any(_matches(RED_CIRCLE, o) for o in wrong.objects)


def test_wrong_scene_needs_a_right_base():
    spec = PromptSpec("a red circle", "colour", (Exists(RED_CIRCLE),))
    with pytest.raises(ValueError, match="does not satisfy"):
        wrong_scene_for(spec, random.Random(0), Scene((_obj("star", "red", 30, 30),)))


def test_deterministic(prompts):
    for spec in prompts[::10]:
        r1, r2 = random.Random(3), random.Random(3)
        assert scene_for(spec, r1, max_distractors=2) == scene_for(spec, r2, max_distractors=2)
        assert wrong_scene_for(spec, r1) == wrong_scene_for(spec, r2)
