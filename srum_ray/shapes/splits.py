"""Train / validation / test prompt splits with held-out attribute-object combinations.

Some attribute-shape combinations never appear in a train or validation prompt
(``HELD_OUT_*``, fixed across seeds so that every run of the project holds out the same
ones); the test split mixes *seen* prompts (no held-out combination) with *unseen* ones (at
least one), as in T2I-CompBench. Categories are balanced in every split.

Splits never share a prompt text, and as far as the world allows they never share a
meaning either (:func:`grammar.canonical_key`: the constraint set regardless of word order):
each meaning is dealt to one split by a hash of (seed, meaning), with odds proportional to
the splits' seen quotas. A split that cannot fill its quota from its own meanings (the size
and texture binding categories have only 8 size-shape / texture-shape objects, so ~150
meanings) first reuses its meanings under another word order, then takes meanings no other
split has used yet. A quota that still cannot be met raises.

Files: one ``<split>.jsonl`` per split, one prompt a line::

    {"prompt": "...", "category": "colour", "unseen": false, "constraints": [...]}

which ``srum_ray.data.read_prompt_file`` reads as prompts, and :func:`load_prompt_specs`
reads back as the exact :class:`PromptSpec` objects.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
from srum_ray.shapes.grammar import canonical_key, query_attrs, queries_of, sample_prompt
from srum_ray.shapes.spec import COLOURS, SHAPES, SIZES, TEXTURES

SPLITS = ("train", "val", "test")
#: (colour, shape) pairs no train/val prompt names
HELD_OUT_COLOUR_SHAPE = (("red", "star"), ("blue", "circle"), ("green", "triangle"), ("yellow", "square"))
#: (size, shape) pairs no train/val prompt names
HELD_OUT_SIZE_SHAPE = (("small", "star"),)
#: (texture, shape) pairs no train/val prompt names
HELD_OUT_TEXTURE_SHAPE = (("striped", "triangle"),)
#: consecutive rejected draws after which a split relaxes to its next filling phase
_PATIENCE = 3000
_VOCAB = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "texture": TEXTURES}


@dataclass(frozen=True)
class SplitPrompt:
    """A prompt of a split; ``unseen`` marks a held-out combination (test split only)."""

    spec: PromptSpec
    unseen: bool = False


def is_held_out(q: ObjectQuery) -> bool:
    """Whether ``q`` names a held-out attribute-shape combination."""
    return (
        (q.colour, q.shape) in HELD_OUT_COLOUR_SHAPE
        or (q.size, q.shape) in HELD_OUT_SIZE_SHAPE
        or (q.texture, q.shape) in HELD_OUT_TEXTURE_SHAPE
    )


def is_unseen(spec: PromptSpec) -> bool:
    """Whether any object the prompt names is a held-out combination."""
    return any(is_held_out(q) for q in queries_of(spec))


def _seen_only(q: ObjectQuery) -> bool:
    return not is_held_out(q)


def _balanced(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _bucket(seed: int, key: frozenset[Constraint], weights: dict[str, int]) -> str:
    """The split a meaning is dealt to: a hash of (seed, meaning) against quota weights."""
    text = f"{seed}|" + "|".join(sorted(repr(c) for c in key))
    u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
    total = sum(weights.values())
    acc = 0.0
    for split, w in weights.items():
        acc += w / total
        if u < acc:
            return split
    return next(reversed(weights))


def _fill(
    need: int,
    split: str,
    draw: Callable[[], PromptSpec],
    owner: dict[frozenset[Constraint], str],
    texts: set[str],
    bucket: Callable[[frozenset[Constraint]], str] | None,
) -> list[PromptSpec]:
    """Draw ``need`` prompts for ``split``: new own-bucket meanings, then own-bucket
    paraphrases, then any meaning no other split owns; new texts only."""
    phases: list[Callable[[frozenset[Constraint]], bool]] = [
        lambda k: k not in owner and (bucket is None or bucket(k) == split),
        lambda k: owner.get(k, split) == split and (bucket is None or bucket(k) == split),
        lambda k: owner.get(k, split) == split,
    ]
    out: list[PromptSpec] = []
    phase, misses = 0, 0
    while len(out) < need:
        spec = draw()
        key = canonical_key(spec)
        if spec.text in texts or not phases[phase](key):
            misses += 1
            if misses >= _PATIENCE:
                phase, misses = phase + 1, 0
                if phase == len(phases):
                    raise ValueError(
                        f"{split}: only {len(out)} of {need} distinct {spec.category!r} prompts found; "
                        "ask for fewer prompts in this split"
                    )
            continue
        misses = 0
        texts.add(spec.text)
        owner[key] = split
        out.append(spec)
    return out


def make_splits(
    seed: int = 0, n_train: int = 2000, n_val: int = 300, n_test: int = 600, unseen_fraction: float = 0.5
) -> dict[str, list[SplitPrompt]]:
    """Balanced prompt splits, deterministic from ``seed``.

    Args:
        seed: seeds every draw and the dealing of meanings to splits.
        n_train, n_val, n_test: prompts per split, spread evenly over ``CATEGORIES``.
        unseen_fraction: share of each category's test prompts that name a held-out
            combination (the rest, and all train/val prompts, name none).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of :class:`SplitPrompt`, each list
        ordered category by category.

    Raises:
        ValueError: a quota cannot be met with distinct prompts.
    """
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ValueError(f"unseen_fraction must be in [0, 1], got {unseen_fraction}")
    quotas = {
        split: dict(zip(CATEGORIES, _balanced(n, len(CATEGORIES))))
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    out: dict[str, list[SplitPrompt]] = {s: [] for s in SPLITS}
    for cat in CATEGORIES:
        rng = random.Random(f"shapes-splits/{seed}/{cat}")
        n_unseen = round(quotas["test"][cat] * unseen_fraction)
        seen_quota = {"train": quotas["train"][cat], "val": quotas["val"][cat], "test": quotas["test"][cat] - n_unseen}
        owner: dict[frozenset[Constraint], str] = {}
        texts: set[str] = set()

        def draw_unseen() -> PromptSpec:
            while True:
                spec = sample_prompt(cat, rng)
                if is_unseen(spec):
                    return spec

        def bucket(key: frozenset[Constraint]) -> str:
            return _bucket(seed, key, seen_quota)

        for spec in _fill(n_unseen, "test", draw_unseen, owner, texts, None):
            out["test"].append(SplitPrompt(spec, unseen=True))
        for split in ("test", "val", "train"):
            specs = _fill(seen_quota[split], split, lambda: sample_prompt(cat, rng, _seen_only), owner, texts, bucket)
            out[split].extend(SplitPrompt(s, unseen=False) for s in specs)
    return out


def query_to_json(q: ObjectQuery) -> dict[str, str]:
    """The attributes ``q`` names (unnamed ones left out)."""
    return query_attrs(q)


def query_from_json(d: Any) -> ObjectQuery:
    """Inverse of :func:`query_to_json`; rejects unknown attributes and values."""
    if not isinstance(d, dict):
        raise ValueError(f"an object query must be a JSON object, got {d!r}")
    for k, v in d.items():
        if k not in _VOCAB:
            raise ValueError(f"unknown object attribute {k!r}; expected one of {tuple(_VOCAB)}")
        if v not in _VOCAB[k]:
            raise ValueError(f"{k} {v!r} is not one of {_VOCAB[k]}")
    return ObjectQuery(**d)


def constraint_to_json(c: Constraint) -> dict[str, Any]:
    """``{"type": "exists"|"count"|"relation", ...}``."""
    if isinstance(c, Exists):
        return {"type": "exists", "obj": query_to_json(c.obj)}
    if isinstance(c, Count):
        return {"type": "count", "obj": query_to_json(c.obj), "n": c.n}
    if isinstance(c, Relation):
        return {"type": "relation", "a": query_to_json(c.a), "rel": c.rel, "b": query_to_json(c.b)}
    raise TypeError(f"not a constraint: {c!r}")


def constraint_from_json(d: Any) -> Constraint:
    """Inverse of :func:`constraint_to_json`; a malformed object raises ``ValueError``."""
    kind = d.get("type") if isinstance(d, dict) else None
    try:
        if kind == "exists":
            return Exists(query_from_json(d["obj"]))
        if kind == "count":
            n = d["n"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"count n must be a non-negative integer, got {n!r}")
            return Count(query_from_json(d["obj"]), n)
        if kind == "relation":
            if d["rel"] not in RELATIONS:
                raise ValueError(f"relation {d['rel']!r} is not one of {RELATIONS}")
            return Relation(query_from_json(d["a"]), d["rel"], query_from_json(d["b"]))
    except KeyError as e:
        raise ValueError(f"{kind} constraint lacks key {e.args[0]!r}: {d!r}") from e
    raise ValueError(f"constraint needs a type of exists/count/relation, got {d!r}")


def write_prompt_files(directory: str | Path, splits: dict[str, list[SplitPrompt]]) -> dict[str, Path]:
    """Write ``<directory>/<split>.jsonl`` per split; returns the paths by split name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, prompts in splits.items():
        path = directory / f"{split}.jsonl"
        lines = [
            json.dumps(
                {
                    "prompt": p.spec.text,
                    "category": p.spec.category,
                    "unseen": p.unseen,
                    "constraints": [constraint_to_json(c) for c in p.spec.constraints],
                }
            )
            for p in prompts
        ]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths[split] = path
    return paths


def load_split_prompts(path: str | Path) -> list[SplitPrompt]:
    """Read a file :func:`write_prompt_files` wrote; errors name the file and line."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("a line must be a JSON object")
            if row.get("category") not in CATEGORIES:
                raise ValueError(f"category {row.get('category')!r} is not one of {CATEGORIES}")
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("constraints"), list):
                raise ValueError('needs a string "prompt" and a list "constraints"')
            spec = PromptSpec(row["prompt"], row["category"], tuple(constraint_from_json(c) for c in row["constraints"]))
            out.append(SplitPrompt(spec, bool(row.get("unseen", False))))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{lineno}: {e}") from e
    return out


def load_prompt_specs(path: str | Path) -> list[PromptSpec]:
    """The :class:`PromptSpec` of every line of a split file, in file order."""
    return [p.spec for p in load_split_prompts(path)]
