"""Prompt splits: balanced, disjoint, held-out combinations only in test, exact jsonl round trip."""

import json
from collections import Counter

import pytest

from srum_ray.data import read_prompt_file
from srum_ray.shapes import splits as splits_mod
from srum_ray.shapes.constraints import CATEGORIES, Count, Exists, ObjectQuery, PromptSpec, Relation
from srum_ray.shapes.grammar import canonical_key, queries_of
from srum_ray.shapes.splits import (
    HELD_OUT_COLOUR_SHAPE,
    HELD_OUT_SIZE_SHAPE,
    HELD_OUT_TEXTURE_SHAPE,
    SplitPrompt,
    constraint_from_json,
    constraint_to_json,
    is_held_out,
    is_unseen,
    load_prompt_specs,
    load_split_prompts,
    make_splits,
    write_prompt_files,
)


@pytest.fixture(scope="module")
def splits():
    return make_splits(seed=0)


def test_sizes_and_balance(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "val": 300, "test": 600}
    train = Counter(p.spec.category for p in splits["train"])
    assert sorted(train.values()) == [333, 333, 333, 333, 334, 334]
    assert set(train) == set(CATEGORIES)
    assert Counter(p.spec.category for p in splits["val"]) == {c: 50 for c in CATEGORIES}
    assert Counter((p.spec.category, p.unseen) for p in splits["test"]) == {
        (c, u): 50 for c in CATEGORIES for u in (True, False)
    }


def test_held_out_only_in_test(splits):
    for name in ("train", "val"):
        for p in splits[name]:
            assert not p.unseen and not any(is_held_out(q) for q in queries_of(p.spec)), p.spec.text
    for p in splits["test"]:
        assert p.unseen == is_unseen(p.spec)
    # every held-out combination is asked for somewhere in the unseen test prompts
    test_queries = [q for p in splits["test"] if p.unseen for q in queries_of(p.spec)]
    for colour, shape in HELD_OUT_COLOUR_SHAPE:
        assert any(q.colour == colour and q.shape == shape for q in test_queries)
    for size, shape in HELD_OUT_SIZE_SHAPE:
        assert any(q.size == size and q.shape == shape for q in test_queries)
    for texture, shape in HELD_OUT_TEXTURE_SHAPE:
        assert any(q.texture == texture and q.shape == shape for q in test_queries)


def test_held_out_by_hand():
    assert is_held_out(ObjectQuery("star", "red", "large"))
    assert is_held_out(ObjectQuery("star", size="small"))
    assert is_held_out(ObjectQuery("triangle", texture="striped"))
    assert not is_held_out(ObjectQuery("star", "blue", "large", "striped"))
    assert not is_held_out(ObjectQuery("star"))


def test_splits_share_no_text_and_no_meaning(splits):
    texts = {k: [p.spec.text for p in v] for k, v in splits.items()}
    for k, v in texts.items():
        assert len(set(v)) == len(v), f"repeated text in {k}"
    keys = {k: {canonical_key(p.spec) for p in v} for k, v in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(texts[a]) & set(texts[b])
        assert not keys[a] & keys[b]


def test_deterministic_and_seed_dependent():
    small = dict(n_train=60, n_val=12, n_test=24)
    a, b, c = make_splits(3, **small), make_splits(3, **small), make_splits(4, **small)
    assert a == b
    assert a != c


def test_fill_raises_when_prompts_run_out(monkeypatch):
    monkeypatch.setattr(splits_mod, "_PATIENCE", 20)
    spec = PromptSpec("a star", "numeracy", (Count(ObjectQuery("star"), 1),))
    with pytest.raises(ValueError, match="only 1 of 2 distinct 'numeracy' prompts"):
        splits_mod._fill(2, "train", lambda: spec, {}, set(), None)
    with pytest.raises(ValueError, match="unseen_fraction"):
        make_splits(unseen_fraction=1.5)


def test_constraint_json_by_hand():
    a, b = ObjectQuery("circle", "red"), ObjectQuery("star", size="large", texture="striped")
    rel = Relation(a, "left", b)
    d = constraint_to_json(rel)
    assert d == {"type": "relation", "a": {"shape": "circle", "colour": "red"}, "rel": "left",
                 "b": {"shape": "star", "size": "large", "texture": "striped"}}
    assert constraint_from_json(d) == rel
    assert constraint_to_json(Count(a, 3)) == {"type": "count", "obj": {"shape": "circle", "colour": "red"}, "n": 3}
    assert constraint_from_json(constraint_to_json(Exists(b))) == Exists(b)
    with pytest.raises(ValueError, match="colour 'pink'"):
        constraint_from_json({"type": "exists", "obj": {"colour": "pink"}})
    with pytest.raises(ValueError, match="lacks key 'n'"):
        constraint_from_json({"type": "count", "obj": {}})
    with pytest.raises(ValueError, match="relation 'near'"):
        constraint_from_json({"type": "relation", "a": {}, "rel": "near", "b": {}})


def test_jsonl_round_trip(splits, tmp_path):
    paths = write_prompt_files(tmp_path / "prompts", splits)
    assert sorted(p.name for p in paths.values()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    for name, prompts in splits.items():
        assert load_split_prompts(paths[name]) == prompts
        assert load_prompt_specs(paths[name]) == [p.spec for p in prompts]
        # the library's own prompt loader reads the same files
        assert read_prompt_file(paths[name]) == [p.spec.text for p in prompts]
    row = json.loads(paths["test"].read_text().splitlines()[0])
    assert set(row) == {"prompt", "category", "unseen", "constraints"} and row["unseen"] is True


def test_bad_file_names_its_line(tmp_path):
    good = SplitPrompt(PromptSpec("a star", "numeracy", (Count(ObjectQuery("star"), 1),)))
    path = write_prompt_files(tmp_path, {"val": [good]})["val"]
    path.write_text(path.read_text() + '{"prompt": "x", "category": "colour", "constraints": [{"type": "nope"}]}\n')
    with pytest.raises(ValueError, match=r"val.jsonl:2: constraint needs a type"):
        load_prompt_specs(path)
    path.write_text('{"prompt": "x", "category": "colours", "constraints": []}\n')
    with pytest.raises(ValueError, match=r"val.jsonl:1: category 'colours'"):
        load_prompt_specs(path)
