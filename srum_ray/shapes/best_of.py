"""Best-of-K on the shapes world: how much the model's own understanding can pick out of its
generator's samples, at inference, with no training.

    python -m srum_ray.shapes.best_of [--k 8] [--test-prompts 150] [--seed 0]
        [--config configs/shapes.yaml] [--generator FILE] [--out runs/best_of] [key=value ...]

For every test prompt the generator draws ``K`` images (the first with the seed the demo's
evaluation uses, so ``first`` is the base accuracy of ``srum-ray demo --seed SEED``); the exact
evaluator scores each one and the judge gives each its global score (asked and read as SRUM
asks it). Reported per category and overall:

- ``first``: accuracy of the first image (one sample, as the demo scores);
- ``mean``: mean accuracy over the K images (pass@1 estimated on K samples);
- ``judge_best``: accuracy of the image the judge scores highest (ties: the earliest): the
  understanding module used as a reranker, the ceiling a self-rewarded generator could reach
  by learning to draw what its judge prefers;
- ``any``: share of prompts with at least one right image (pass@K, the oracle's best-of-K).

This says whether self-training has anything to sharpen: if the judge's pick is far above
``mean``, the self-reward signal is there and the question is how much data it takes to
distill it into the generator (docs/RESULTS.md, "Best-of-K").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from srum_ray.models.base import GenerationModel, UnderstandingModel
from srum_ray.shapes.constraints import CATEGORIES, PromptSpec
from srum_ray.shapes.evaluate import correct
from srum_ray.shapes.measure import eval_seeds, global_scores

__all__ = ["best_of_k", "sample_seeds"]

STATS = ("first", "mean", "judge_best", "any")


def sample_seeds(n: int, k: int, seed: int) -> list[list[int]]:
    """``seeds[i][j]``: the seed of prompt ``i``'s ``j``-th image; ``j = 0`` is the demo's
    evaluation seed (:func:`srum_ray.shapes.measure.eval_seeds`), the others are disjoint from it."""
    first, stride = eval_seeds(n, seed), max(64, k)
    return [[first[i]] + [(seed * 1_000_003 + i) * stride + j + 7_000_000_019 for j in range(1, k)] for i in range(n)]


def best_of_k(
    generator: GenerationModel, understanding: UnderstandingModel, specs: Sequence[PromptSpec], k: int, seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Draw ``k`` images per prompt, score them (evaluator and judge); returns
    ``{"per_prompt": [...], "summary": {stat: {category: acc, "overall": acc}}, "unread": n}``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    seeds = sample_seeds(len(specs), k, seed)
    flat_texts = [sp.text for sp in specs for _ in range(k)]
    flat_seeds = [s for row in seeds for s in row]
    images = []
    for s in tqdm(range(0, len(flat_texts), batch_size), desc=f"best-of-{k} sampling", unit="batch", file=sys.stderr, disable=None):
        images += generator.generate(flat_texts[s : s + batch_size], flat_seeds[s : s + batch_size]).images
    scores = global_scores(understanding, flat_texts, images, batch_size)
    per_prompt = []
    for i, sp in enumerate(specs):
        ok = [correct(sp, images[i * k + j]) for j in range(k)]
        sc = scores[i * k : (i + 1) * k]
        ranked = [-np.inf if x is None else x for x in sc]
        pick = int(np.argmax(ranked))
        per_prompt.append({
            "prompt": sp.text, "category": sp.category, "correct": ok, "scores": sc, "judge_pick": pick,
            "first": float(ok[0]), "mean": float(np.mean(ok)), "judge_best": float(ok[pick]), "any": float(any(ok)),
        })
    summary = {}
    for stat in STATS:
        per_cat = {c: float(np.mean([p[stat] for p in per_prompt if p["category"] == c]))
                   for c in CATEGORIES if any(p["category"] == c for p in per_prompt)}
        per_cat["overall"] = float(np.mean([p[stat] for p in per_prompt])) if per_prompt else float("nan")
        summary[stat] = per_cat
    return {"per_prompt": per_prompt, "summary": summary, "k": k, "seed": seed,
            "unread": sum(x is None for x in scores), "images": images}


def load_model(config: str, overrides: Sequence[str]) -> tuple:
    """``(cfg, model)``: the config with overrides, the thread count it asks for set, and its
    unified model built on ``run.device``."""
    from srum_ray.config.load import load_config
    from srum_ray.models.registry import build_model
    from srum_ray.runtime.local import apply_cpu_threads

    cfg = load_config(config, list(overrides))
    apply_cpu_threads(cfg)
    return cfg, build_model(cfg.model, cfg.generation, cfg.run.device)


def format_summary(summary: dict, k: int) -> str:
    labels = {"first": "one sample (demo's seed)", "mean": f"mean of {k} samples", "judge_best": f"judge's pick of {k}",
              "any": f"any of {k} right (oracle)"}
    cats = [c for c in CATEGORIES if c in summary["first"]] + ["overall"]
    lines = ["| | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for stat in STATS:
        lines.append(f"| {labels[stat]} | " + " | ".join(f"{100 * summary[stat][c]:.1f}" for c in cats) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--test-prompts", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--generator", default=None, help="generator.safetensors to score instead of the config's checkpoint")
    ap.add_argument("--out", default="runs/best_of")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.k < 1:
        ap.error("--k must be at least 1")
    if args.generator is not None and not Path(args.generator).is_file():
        ap.error(f"--generator: no file at {args.generator}")

    from srum_ray.shapes.demo import PROMPT_DIR, subsample
    from srum_ray.shapes.splits import load_split_prompts

    _, model = load_model(args.config, args.overrides)
    if args.generator is not None:
        from safetensors.torch import load_file

        model.generator.trainable_module().load_state_dict(load_file(args.generator))
    test = subsample(load_split_prompts(PROMPT_DIR / "test.jsonl"), args.test_prompts)
    res = best_of_k(model.generator, model.understanding, [p.spec for p in test], args.k, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = res.pop("images")
    line = {"k": args.k, "seed": args.seed, "n_test": len(test), "generator": args.generator, "overrides": args.overrides,
            "unread": res["unread"], "summary": {s: {c: round(100 * v, 1) for c, v in d.items()} for s, d in res["summary"].items()}}
    with open(out / "best_of.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    (out / f"per_prompt_seed{args.seed}_k{args.k}.json").write_text(json.dumps(res["per_prompt"], indent=1))
    _sheet(res["per_prompt"], images, args.k).save(out / f"best_of_seed{args.seed}_k{args.k}.png")
    print(format_summary(res["summary"], args.k))
    print(json.dumps(line))
    return line


def _sheet(per_prompt: list[dict], images: list, k: int, n: int = 12):
    """One row per prompt (the first ``n``): its K images, the judge's pick outlined, a green /
    red bar for the evaluator's verdict, the judge's score on each."""
    from PIL import Image, ImageDraw

    from srum_ray.shapes.demo import labelled

    rows = []
    for i, p in enumerate(per_prompt[:n]):
        tiles = []
        for j in range(k):
            sc = p["scores"][j]
            tile = labelled(images[i * k + j], "?" if sc is None else f"{sc:+.2f}")
            d = ImageDraw.Draw(tile)
            d.rectangle([0, tile.size[1] - 4, tile.size[0], tile.size[1]], fill=(40, 160, 60) if p["correct"][j] else (200, 40, 40))
            if j == p["judge_pick"]:
                d.rectangle([0, 0, tile.size[0] - 1, tile.size[1] - 1], outline=(30, 90, 220), width=3)
            tiles.append(tile)
        row = Image.new("RGB", (sum(t.size[0] for t in tiles), tiles[0].size[1] + 14), "white")
        x = 0
        for t in tiles:
            row.paste(t, (x, 14))
            x += t.size[0]
        ImageDraw.Draw(row).text((2, 1), f"{i + 1}. {p['prompt']}", fill=(0, 0, 0))
        rows.append(row)
    sheet = Image.new("RGB", (max(r.size[0] for r in rows), sum(r.size[1] for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.size[1]
    return sheet


if __name__ == "__main__":
    main()
