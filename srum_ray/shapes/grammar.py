"""Plain-English prompts about shapes-world scenes, each with the exact constraints it states.

One sampler per T2I-CompBench category (``constraints.CATEGORIES``); the text and the
constraints are built together, so a prompt never carries a constraint its words do not say.
Every object a prompt names is a shape noun with optional adjectives in the order
``size texture colour shape`` ("a large striped red square"). Objects named in one prompt are
pairwise *incompatible* (some attribute both name differs), so no single object can stand for
two of them and no named object is counted by another object's count.

Categories in this world:

* ``colour``: 2-4 objects, each colour + shape: "a red circle and a blue square".
* ``shape``: shapes are the nouns here, so the geometric attribute bound to them is their
  *size*: 2-4 objects, each size + shape: "a large star and a small circle".
* ``texture``: 2-4 objects, each texture + shape: "a striped triangle and a solid square".
* ``spatial``: two colour + shape objects and a relation: "a green circle to the left of a
  yellow star" (Exists a, Exists b, Relation a rel b).
* ``numeracy``: one or two counted groups, 1-4 objects in all, shape with optional colour:
  "three blue triangles", "two circles and one square" (Count, exact).
* ``complex``: two or more of the above in one prompt: several binding kinds at once
  ("a large red star and a striped circle"), a relation between richly described objects
  ("a striped red square above a small circle"), a described object next to a counted group
  ("a striped red square and two small circles"), or a relation plus a counted group
  ("a red square above a blue circle, and two stars"). A relation never takes a counted
  group as an operand: ``Relation`` is existential ("some a is above some b"), so "above two
  circles" could not be stated exactly.

:func:`classify` recovers the category from the constraints alone; every sampled prompt
classifies as the category it was sampled for.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

from srum_ray.shapes.constraints import (
    CATEGORIES,
    RELATIONS,
    Constraint,
    Count,
    Exists,
    ObjectQuery,
    PromptSpec,
    Relation,
)
from srum_ray.shapes.spec import COLOURS, MAX_OBJECTS, SHAPES, SIZES, TEXTURES

Allow = Callable[[ObjectQuery], bool]

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
#: how many objects a binding prompt names, with weights
_BINDING_SIZES = ((2, 3, 4), (6, 3, 1))
_MAX_TRIES = 10_000

_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "texture": TEXTURES,
}
_ADJECTIVES = ("size", "texture", "colour")


def query_attrs(q: ObjectQuery) -> dict[str, str]:
    """The attributes ``q`` names, as ``{attribute: value}`` in a fixed order."""
    return {k: getattr(q, k) for k in ("shape", "colour", "size", "texture") if getattr(q, k) is not None}


def compatible(a: ObjectQuery, b: ObjectQuery) -> bool:
    """Whether one object could match both queries (no attribute both name differs)."""
    return all(va is None or vb is None or va == vb for va, vb in zip(_tuple(a), _tuple(b)))


def _tuple(q: ObjectQuery) -> tuple[str | None, ...]:
    return (q.shape, q.colour, q.size, q.texture)


def queries_of(spec: PromptSpec) -> list[ObjectQuery]:
    """Every object query in ``spec``, in constraint order, duplicates dropped."""
    out: list[ObjectQuery] = []
    for c in spec.constraints:
        for q in (c.a, c.b) if isinstance(c, Relation) else (c.obj,):
            if q not in out:
                out.append(q)
    return out


def noun_phrase(q: ObjectQuery, n: int | None = None) -> str:
    """"a large striped red square" (``n`` None) or "two small circles" (``n`` given)."""
    if q.shape is None:
        raise ValueError(f"every query in a prompt names a shape; got {q}")
    words = [getattr(q, k) for k in _ADJECTIVES if getattr(q, k) is not None]
    if n is None:
        first = (words or [q.shape])[0]
        return " ".join(["an" if first[0] in "aeiou" else "a", *words, q.shape])
    if n not in NUMBER_WORDS:
        raise ValueError(f"count {n} has no number word (1..{max(NUMBER_WORDS)})")
    return " ".join([NUMBER_WORDS[n], *words, q.shape + ("s" if n > 1 else "")])


def join_and(parts: Sequence[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def features(spec: PromptSpec) -> frozenset[str]:
    """Which category constructs a prompt uses: named colours/sizes/textures, relations, counts."""
    out = set()
    for q in queries_of(spec):
        if q.colour is not None:
            out.add("colour")
        if q.size is not None:
            out.add("shape")
        if q.texture is not None:
            out.add("texture")
    for c in spec.constraints:
        out.add("spatial" if isinstance(c, Relation) else "numeracy" if isinstance(c, Count) else "exists")
    out.discard("exists")
    return frozenset(out)


def classify(spec: PromptSpec) -> str:
    """The category a prompt's constraints put it in (see the module docstring)."""
    feats = features(spec)
    kinds = [type(c).__name__ for c in spec.constraints]
    only_exists = all(k == "Exists" for k in kinds)
    if only_exists and feats in ({"colour"}, {"shape"}, {"texture"}):
        return next(iter(feats))
    if sorted(kinds) == ["Exists", "Exists", "Relation"] and feats <= {"spatial", "colour"}:
        return "spatial"
    if all(k == "Count" for k in kinds) and feats <= {"numeracy", "colour"}:
        return "numeracy"
    if len(feats) >= 2:
        return "complex"
    raise ValueError(f"prompt {spec.text!r} fits no category (features {sorted(feats)})")


def _category_or_none(spec: PromptSpec) -> str | None:
    try:
        return classify(spec)
    except ValueError:
        return None


def n_objects(spec: PromptSpec) -> int:
    """How many objects the prompt asks for at least (each counted object, each other query)."""
    counted = {c.obj: c.n for c in spec.constraints if isinstance(c, Count)}
    return sum(counted.values()) + sum(1 for q in queries_of(spec) if q not in counted)


def _query(rng: random.Random, attrs: Sequence[str]) -> ObjectQuery:
    return ObjectQuery(**{a: rng.choice(_VALUES[a]) for a in ("shape", *attrs)})


def _some_attrs(rng: random.Random, min_n: int) -> list[str]:
    while True:
        chosen = [a for a in _ADJECTIVES if rng.random() < 0.5]
        if len(chosen) >= min_n:
            return chosen


def _distinct_queries(rng: random.Random, specs: Sequence[Sequence[str]]) -> list[ObjectQuery] | None:
    """One query per attribute list, pairwise incompatible; None when a draw collides."""
    out: list[ObjectQuery] = []
    for attrs in specs:
        q = _query(rng, attrs)
        if any(compatible(q, o) for o in out):
            return None
        out.append(q)
    return out


def _binding(attr: str, rng: random.Random) -> PromptSpec | None:
    k = rng.choices(*_BINDING_SIZES)[0]
    qs = _distinct_queries(rng, [[attr]] * k)
    if qs is None:
        return None
    return PromptSpec(join_and([noun_phrase(q) for q in qs]), "", tuple(Exists(q) for q in qs))


def _spatial(rng: random.Random) -> PromptSpec | None:
    qs = _distinct_queries(rng, [["colour"], ["colour"]])
    if qs is None:
        return None
    a, b = qs
    rel = rng.choice(RELATIONS)
    text = f"{noun_phrase(a)} {RELATION_PHRASES[rel]} {noun_phrase(b)}"
    return PromptSpec(text, "", (Exists(a), Exists(b), Relation(a, rel, b)))


def _numeracy(rng: random.Random) -> PromptSpec | None:
    if rng.random() < 0.5:
        counts = [rng.randint(1, MAX_OBJECTS)]
    else:
        n1 = rng.randint(1, MAX_OBJECTS - 1)
        counts = [n1, rng.randint(1, MAX_OBJECTS - n1)]
    qs = _distinct_queries(rng, [["colour"] if rng.random() < 0.5 else [] for _ in counts])
    if qs is None:
        return None
    text = join_and([noun_phrase(q, n) for q, n in zip(qs, counts)])
    return PromptSpec(text, "", tuple(Count(q, n) for q, n in zip(qs, counts)))


def _complex(rng: random.Random) -> PromptSpec | None:
    form = rng.randrange(4)
    if form == 0:  # several binding kinds at once
        k = rng.choices((2, 3), (6, 4))[0]
        qs = _distinct_queries(rng, [_some_attrs(rng, 1) for _ in range(k)])
        if qs is None:
            return None
        return PromptSpec(join_and([noun_phrase(q) for q in qs]), "", tuple(Exists(q) for q in qs))
    if form == 1:  # relation between described objects
        qs = _distinct_queries(rng, [_some_attrs(rng, 0), _some_attrs(rng, 0)])
        if qs is None:
            return None
        a, b = qs
        rel = rng.choice(RELATIONS)
        text = f"{noun_phrase(a)} {RELATION_PHRASES[rel]} {noun_phrase(b)}"
        return PromptSpec(text, "", (Exists(a), Exists(b), Relation(a, rel, b)))
    if form == 2:  # a described object and a counted group
        n = rng.randint(1, MAX_OBJECTS - 1)
        qs = _distinct_queries(rng, [_some_attrs(rng, 1), _some_attrs(rng, 0)])
        if qs is None:
            return None
        a, g = qs
        text = f"{noun_phrase(a)} and {noun_phrase(g, n)}"
        return PromptSpec(text, "", (Exists(a), Count(g, n)))
    # a relation and a counted group
    n = rng.randint(1, MAX_OBJECTS - 2)
    qs = _distinct_queries(rng, [_some_attrs(rng, 0), _some_attrs(rng, 0), _some_attrs(rng, 0)])
    if qs is None:
        return None
    a, b, g = qs
    rel = rng.choice(RELATIONS)
    text = f"{noun_phrase(a)} {RELATION_PHRASES[rel]} {noun_phrase(b)}, and {noun_phrase(g, n)}"
    return PromptSpec(text, "", (Exists(a), Exists(b), Relation(a, rel, b), Count(g, n)))


_SAMPLERS: dict[str, Callable[[random.Random], PromptSpec | None]] = {
    "colour": lambda rng: _binding("colour", rng),
    "shape": lambda rng: _binding("size", rng),
    "texture": lambda rng: _binding("texture", rng),
    "spatial": _spatial,
    "numeracy": _numeracy,
    "complex": _complex,
}
assert tuple(_SAMPLERS) == CATEGORIES


def sample_prompt(category: str, rng: random.Random, allow: Allow | None = None) -> PromptSpec:
    """A random prompt of ``category`` whose every object query passes ``allow``.

    Args:
        category: one of ``constraints.CATEGORIES``.
        rng: the only source of randomness (same state, same prompt).
        allow: predicate on each :class:`ObjectQuery` the prompt would name (splits use it to
            keep held-out attribute-object combinations out); None allows all.

    Returns:
        A :class:`PromptSpec` with ``category`` set, whose constraints are exactly the text's.

    Raises:
        ValueError: unknown category, or ``allow`` rejected every draw.
    """
    if category not in _SAMPLERS:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    for _ in range(_MAX_TRIES):
        spec = _SAMPLERS[category](rng)
        if spec is None or n_objects(spec) > MAX_OBJECTS or _category_or_none(spec) != category:
            continue
        if allow is not None and not all(allow(q) for q in queries_of(spec)):
            continue
        return PromptSpec(spec.text, category, spec.constraints)
    raise ValueError(f"no {category!r} prompt passed `allow` in {_MAX_TRIES} draws")


def canonical_key(spec: PromptSpec) -> frozenset[Constraint]:
    """What a prompt means, independent of word order: its constraint set with relations
    written one way (``right`` as ``left`` and ``below`` as ``above``, operands swapped)."""
    flip = {"right": "left", "below": "above"}
    out = []
    for c in spec.constraints:
        if isinstance(c, Relation) and c.rel in flip:
            c = Relation(c.b, flip[c.rel], c.a)
        out.append(c)
    return frozenset(out)


_NUMBER_OF = {w: n for n, w in NUMBER_WORDS.items()}
_RELATION_WORDS = {tuple(p.split()): rel for rel, p in RELATION_PHRASES.items()}
_PLURAL = {s + "s": s for s in SHAPES}


def parse_prompt(text: str) -> PromptSpec:
    """Read a prompt of this grammar back into its constraints (the inverse of the samplers).

    Noun phrases are ``(a|an|one..four) [size] [texture] [colour] shape[s]``; a/an makes an
    ``Exists``, a number word a ``Count``; a relation phrase between two noun phrases adds a
    ``Relation``; ``,`` and ``and`` only separate. The category is :func:`classify`'s.

    Raises:
        ValueError: naming the first word that does not fit the grammar.
    """
    words = re.findall(r"[a-z]+|,", text.lower())
    i, phrases, relations = 0, [], []
    pending_rel = None
    while i < len(words):
        w = words[i]
        if w in (",", "and"):
            i += 1
            continue
        rel = next((r for ws, r in _RELATION_WORDS.items() if tuple(words[i : i + len(ws)]) == ws), None)
        if rel is not None:
            if not phrases or pending_rel is not None:
                raise ValueError(f"relation {' '.join(RELATION_PHRASES[rel].split())!r} needs an object before it in {text!r}")
            pending_rel = rel
            i += len(RELATION_PHRASES[rel].split())
            continue
        if w not in ("a", "an") and w not in _NUMBER_OF:
            raise ValueError(f"expected a, an or a number word at {w!r} in {text!r}")
        count = _NUMBER_OF.get(w)
        i += 1
        attrs: dict[str, str] = {}
        for attr, values in (("size", tuple(SIZES)), ("texture", TEXTURES), ("colour", tuple(COLOURS))):
            if i < len(words) and words[i] in values:
                attrs[attr] = words[i]
                i += 1
        if i >= len(words) or (words[i] not in SHAPES and words[i] not in _PLURAL):
            raise ValueError(f"expected a shape at {words[i] if i < len(words) else 'the end'!r} in {text!r}")
        shape = _PLURAL.get(words[i], words[i])
        i += 1
        phrases.append((ObjectQuery(shape=shape, **attrs), count))
        if pending_rel is not None:
            relations.append((len(phrases) - 2, pending_rel, len(phrases) - 1))
            pending_rel = None
    if not phrases or pending_rel is not None:
        raise ValueError(f"no complete object phrase in {text!r}")
    constraints: list[Constraint] = [Exists(q) if n is None else Count(q, n) for q, n in phrases]
    constraints += [Relation(phrases[a][0], rel, phrases[b][0]) for a, rel, b in relations]
    spec = PromptSpec(text, "", tuple(constraints))
    return PromptSpec(text, _category_or_none(spec) or "complex", spec.constraints)
