"""Prompt grammar: text and constraints agree, categories are what they claim, allow is obeyed."""

import random
import re
from collections import Counter

import pytest

from srum_ray.shapes.constraints import CATEGORIES, RELATIONS, Count, Exists, ObjectQuery, PromptSpec, Relation
from srum_ray.shapes.grammar import (
    canonical_key,
    classify,
    compatible,
    features,
    n_objects,
    noun_phrase,
    queries_of,
    sample_prompt,
)
from srum_ray.shapes.spec import COLOURS, MAX_OBJECTS, SHAPES, SIZES, TEXTURES

_WORD_ATTR = {**{c: "colour" for c in COLOURS}, **{s: "size" for s in SIZES}, **{t: "texture" for t in TEXTURES}}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
_REL_RE = re.compile(r" (to the left of|to the right of|above|below) ")
_REL_NAMES = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}


def _parse_item(item):
    """An independent reading of one noun phrase: (query, None) for "a ...", (query, n) for a count."""
    words = item.split()
    head, *adjs, noun = words
    n = _NUMBERS.get(head)
    if n is None:
        assert head in ("a", "an"), item
        assert head == ("an" if (adjs or [noun])[0][0] in "aeiou" else "a"), item
    if n is not None and n > 1:
        assert noun.endswith("s"), item
        noun = noun[:-1]
    assert noun in SHAPES, item
    attrs = {"shape": noun}
    for w in adjs:
        assert _WORD_ATTR[w] not in attrs, item
        attrs[_WORD_ATTR[w]] = w
    return ObjectQuery(**attrs), n


def _constraint(item):
    q, n = _parse_item(item)
    return Exists(q) if n is None else Count(q, n)


def _parse(text):
    """Constraints the words of ``text`` state, read without the grammar module."""
    tail = []
    if ", and " in text:
        text, rest = text.split(", and ")
        tail = [_constraint(rest)]
    m = _REL_RE.search(text)
    if m:
        a_text, b_text = text[: m.start()], text[m.end() :]
        (a, na), (b, nb) = _parse_item(a_text), _parse_item(b_text)
        assert na is None and nb is None, "a relation operand is never a counted group"
        return [Exists(a), Exists(b), Relation(a, _REL_NAMES[m.group(1)], b)] + tail
    items = text.split(", ")
    items = items[:-1] + items[-1].split(" and ")
    return [_constraint(i) for i in items] + tail


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(1234)
    return {c: [sample_prompt(c, rng) for _ in range(300)] for c in CATEGORIES}


def test_noun_phrases_by_hand():
    assert noun_phrase(ObjectQuery("square", "red", "large", "striped")) == "a large striped red square"
    assert noun_phrase(ObjectQuery("circle", "orange")) == "an orange circle"
    assert noun_phrase(ObjectQuery("star")) == "a star"
    assert noun_phrase(ObjectQuery("circle", size="small"), 2) == "two small circles"
    assert noun_phrase(ObjectQuery("triangle", "blue"), 1) == "one blue triangle"
    with pytest.raises(ValueError, match="names a shape"):
        noun_phrase(ObjectQuery(colour="red"))


def test_text_states_exactly_the_constraints(prompts):
    for cat, specs in prompts.items():
        for spec in specs:
            assert spec.category == cat
            parsed = _parse(spec.text)
            assert Counter(parsed) == Counter(spec.constraints), spec.text


def test_every_prompt_classifies_as_its_category(prompts):
    for cat, specs in prompts.items():
        assert {classify(s) for s in specs} == {cat}


def test_named_objects_are_distinct_and_fit(prompts):
    for specs in prompts.values():
        for spec in specs:
            qs = queries_of(spec)
            assert all(not compatible(a, b) for i, a in enumerate(qs) for b in qs[:i]), spec.text
            assert 1 <= n_objects(spec) <= MAX_OBJECTS


def test_category_shapes(prompts):
    for s in prompts["colour"] + prompts["shape"] + prompts["texture"]:
        assert all(isinstance(c, Exists) for c in s.constraints) and len(s.constraints) >= 2
    assert {len(set(map(type, s.constraints))) for s in prompts["spatial"]} == {2}
    assert all(isinstance(c, Count) and 1 <= c.n <= 4 for s in prompts["numeracy"] for c in s.constraints)
    assert all(len(features(s)) >= 2 for s in prompts["complex"])
    assert features(prompts["shape"][0]) == {"shape"} and features(prompts["texture"][0]) == {"texture"}


def test_vocabulary_is_covered(prompts):
    seen = Counter()
    for specs in prompts.values():
        for s in specs:
            for q in queries_of(s):
                seen.update(v for v in (q.shape, q.colour, q.size, q.texture) if v)
            for c in s.constraints:
                if isinstance(c, Relation):
                    seen[c.rel] += 1
                if isinstance(c, Count):
                    seen[c.n] += 1
    for v in (*SHAPES, *COLOURS, *SIZES, *TEXTURES, *RELATIONS, 1, 2, 3, 4):
        assert seen[v] > 0, v
    # every complex form shows up
    kinds = Counter(tuple(sorted(type(c).__name__ for c in s.constraints)) for s in prompts["complex"])
    assert any("Relation" in k and "Count" in k for k in kinds)
    assert any("Relation" not in k and "Count" in k for k in kinds)
    assert any(set(k) == {"Exists"} for k in kinds)


def test_deterministic():
    a = [sample_prompt(c, random.Random(7)) for c in CATEGORIES]
    b = [sample_prompt(c, random.Random(7)) for c in CATEGORIES]
    assert a == b


def test_allow_is_obeyed():
    rng = random.Random(0)
    no_red = lambda q: q.colour != "red"  # noqa: E731
    for cat in CATEGORIES:
        for _ in range(100):
            s = sample_prompt(cat, rng, no_red)
            assert "red" not in s.text.split()
    with pytest.raises(ValueError, match="passed `allow`"):
        sample_prompt("colour", rng, lambda q: False)
    with pytest.raises(ValueError, match="unknown category"):
        sample_prompt("color", rng)


def test_classify_by_hand():
    red_c, blue_s = ObjectQuery("circle", "red"), ObjectQuery("square", "blue")
    assert classify(PromptSpec("", "", (Exists(red_c), Exists(blue_s)))) == "colour"
    rel = (Exists(red_c), Exists(blue_s), Relation(red_c, "left", blue_s))
    assert classify(PromptSpec("", "", rel)) == "spatial"
    assert classify(PromptSpec("", "", (Count(ObjectQuery("star"), 3),))) == "numeracy"
    # a described object next to a count mixes binding and numeracy
    assert classify(PromptSpec("", "", (Exists(red_c), Count(ObjectQuery("star"), 2)))) == "complex"
    big = ObjectQuery("circle", "red", "large")
    assert classify(PromptSpec("", "", (Exists(big), Exists(blue_s), Relation(big, "above", blue_s)))) == "complex"
    with pytest.raises(ValueError, match="fits no category"):
        classify(PromptSpec("a circle", "", (Exists(ObjectQuery("circle")),)))


def test_canonical_key_ignores_word_order():
    a, b = ObjectQuery("circle", "red"), ObjectQuery("star", "blue")
    left = PromptSpec("x", "spatial", (Exists(a), Exists(b), Relation(a, "left", b)))
    right = PromptSpec("y", "spatial", (Exists(b), Exists(a), Relation(b, "right", a)))
    above = PromptSpec("z", "spatial", (Exists(a), Exists(b), Relation(a, "above", b)))
    assert canonical_key(left) == canonical_key(right) != canonical_key(above)


def test_parse_prompt_inverts_every_sampler():
    from srum_ray.shapes.grammar import canonical_key, parse_prompt

    rng = random.Random(11)
    for cat in CATEGORIES:
        for _ in range(200):
            spec = sample_prompt(cat, rng)
            back = parse_prompt(spec.text)
            assert canonical_key(back) == canonical_key(spec) and back.category == spec.category


@pytest.mark.parametrize("text, fragment", [
    ("a photo of a cat", "expected a shape"),
    ("above a red circle", "needs an object before it"),
    ("red circle", "expected a, an or a number word"),
    ("a red circle above", "no complete object phrase"),
])
def test_parse_prompt_names_what_does_not_fit(text, fragment):
    from srum_ray.shapes.grammar import parse_prompt

    with pytest.raises(ValueError, match=fragment):
        parse_prompt(text)
