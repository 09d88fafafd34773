"""Does a generator bind attributes to objects, or only draw the prompt's words?

Images generated for ``a C1 S1 and a C2 S2`` (two shapes, two colours, all distinct) are scored
by the exact evaluator twice: against their own prompt and against the swapped one, ``a C2 S1
and a C1 S2``, which names the same words bound the other way. A generator that binds satisfies
its own prompt more often than the swapped one; a bag of words satisfies both alike, whatever
its accuracy. The gap (own minus swapped) is the measure; docs/RESULTS.md, "Binding", has what
the shapes bases give.

    python -m srum_ray.shapes.binding --config configs/shapes.yaml [--prompts 300] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Sequence

from srum_ray.shapes.constraints import ObjectQuery, PromptSpec
from srum_ray.shapes.grammar import noun_phrase, parse_prompt
from srum_ray.shapes.spec import COLOURS, SHAPES


def swapped_pairs(n: int, seed: int = 0) -> list[tuple[PromptSpec, PromptSpec]]:
    """``n`` (prompt, swapped prompt) pairs: ``a C1 S1 and a C2 S2`` and ``a C2 S1 and a C1 S2``
    (with "an" where the grammar says it) with S1 != S2 and C1 != C2, drawn from ``seed``."""
    if n < 1:
        raise ValueError(f"the binding test needs at least one prompt, got {n}")
    rng = random.Random(f"binding/{seed}")
    pairs = []
    for _ in range(n):
        s1, s2 = rng.sample(list(SHAPES), 2)
        c1, c2 = rng.sample(list(COLOURS), 2)
        pairs.append((_two_objects(s1, c1, s2, c2), _two_objects(s1, c2, s2, c1)))
    return pairs


def _two_objects(s1: str, c1: str, s2: str, c2: str) -> PromptSpec:
    """``a C1 S1 and a C2 S2`` in the grammar's own words."""
    a, b = ObjectQuery(shape=s1, colour=c1), ObjectQuery(shape=s2, colour=c2)
    return parse_prompt(f"{noun_phrase(a)} and {noun_phrase(b)}")


def binding_scores(own: Sequence[PromptSpec], swapped: Sequence[PromptSpec], images: Sequence) -> dict:
    """Accuracy (%) of ``images`` against their own prompts and against the swapped ones, and the gap."""
    from srum_ray.shapes.evaluate import evaluate

    right_own = 100 * evaluate(list(own), list(images)).overall
    right_swapped = 100 * evaluate(list(swapped), list(images)).overall
    return {"prompts": len(own), "own": round(right_own, 1), "swapped": round(right_swapped, 1),
            "gap": round(right_own - right_swapped, 1)}


def binding_test(generator, n: int = 300, seed: int = 0) -> dict:
    """Generate one image per prompt of :func:`swapped_pairs` (the evaluation's seeds) and score them."""
    from srum_ray.shapes.measure import generate_for

    pairs = swapped_pairs(n, seed)
    own, swapped = [p for p, _ in pairs], [q for _, q in pairs]
    return binding_scores(own, swapped, generate_for(generator, own, seed))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--prompts", type=int, default=300, help="prompt pairs (one image each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.checkpoint=runs/X")
    args = ap.parse_args(argv)
    if args.prompts < 1:
        ap.error(f"--prompts must be at least 1, got {args.prompts}")

    from srum_ray.shapes.best_of import load_model

    cfg, model = load_model(args.config, args.overrides)
    res = binding_test(model.generator, args.prompts, args.seed)
    line = {"checkpoint": cfg.model.checkpoint, "guidance": cfg.generation.guidance_scale, "seed": args.seed,
            "overrides": args.overrides, **res}
    print(f"right for their own prompt {res['own']:.1f}%, for the swapped prompt {res['swapped']:.1f}% "
          f"(gap {res['gap']:+.1f} points; 0 = a bag of words) over {res['prompts']} prompts")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    main()
