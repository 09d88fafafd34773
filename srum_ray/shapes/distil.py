"""Best-of-K distillation on the shapes world: can the generator learn what its judge picks?

    python -m srum_ray.shapes.distil [--prompts 150] [--k 8] [--seed 0] [--picks judge,oracle,first]
        [--steps 100] [--lr 1e-4] [--batch 16] [--config configs/shapes.yaml] [--out runs/distil]
    python -m srum_ray.shapes.distil --summary runs/distil/distil.jsonl --steps 300 --lr 3e-4   # the table over seeds

Best-of-K (:mod:`srum_ray.shapes.best_of`) says the judge's pick of 8 samples is right far
more often than one sample; SRUM's rounds do not turn that into a better generator. This
separates "the generator cannot learn from a few hundred of its own images" from "what it
learns does not carry over to new prompts":

1. ``2 N`` test prompts (spread over categories) are split in two: ``train`` (even positions)
   and ``other`` (odd positions). The base draws ``K`` images for each ``train`` prompt.
2. For each pick rule a fresh copy of the base is fine-tuned on the picked images with the
   learner SRUM uses (:class:`srum_ray.learner.engine.TorchEngine`, plain flow loss: weight 1,
   no constraint term): ``judge``: the judge's highest-scored image of each prompt when its
   global score is at least ``--min-score`` (SRUM's "right" verdict); ``oracle``: every image
   the exact evaluator finds right; ``first``: the first image of each prompt whatever it is
   (self-training without selection, the control).
3. Before and after, one image per prompt with seeds that no sampled image used is scored by
   the exact evaluator on the ``train`` prompts (what was learned, on fresh noise) and on the
   ``other`` prompts (what carries over).

Each pick appends one JSON line to ``<out>/distil.jsonl`` and the table is printed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from srum_ray.config.schema import TrainConfig
from srum_ray.models.base import GenerationModel
from srum_ray.shapes.best_of import best_of_k, load_model
from srum_ray.shapes.constraints import PromptSpec
from srum_ray.shapes.measure import generation_report
from srum_ray.types import RolloutBatch, SampleRecord

__all__ = ["PICKS", "picked", "finetune", "summary_table", "summarize"]

PICKS = ("judge", "oracle", "first")


def picked(per_prompt: list[dict], k: int, rule: str, min_score: float = 0.75) -> list[int]:
    """Flat indices (prompt ``i``'s image ``j`` is ``i * k + j``) of the images ``rule`` keeps."""
    if rule not in PICKS:
        raise ValueError(f"unknown pick rule {rule!r}; allowed: {', '.join(PICKS)}")
    out = []
    for i, p in enumerate(per_prompt):
        if rule == "first":
            out.append(i * k)
        elif rule == "oracle":
            out += [i * k + j for j, ok in enumerate(p["correct"]) if ok]
        else:
            score = p["scores"][p["judge_pick"]]
            if score is not None and score >= min_score:
                out.append(i * k + p["judge_pick"])
    return out


def finetune(
    generator: GenerationModel, texts: Sequence[str], images: Sequence, *, steps: int, lr: float, batch: int,
    timestep_shift: float, seed: int = 0,
) -> list[float]:
    """``steps`` optimizer steps of the plain flow loss on (text, image) pairs; returns the losses."""
    from srum_ray.learner.engine import TorchEngine
    from srum_ray.loop import plan_steps

    if not texts:
        raise ValueError("nothing to fine-tune on: no image was picked")
    cfg = TrainConfig(lr=lr, warmup_steps=min(10, steps), batch_size=batch, lambda_c=0.0, timestep_shift=timestep_shift)
    engine = TorchEngine(generator, cfg, seed=seed)
    latents = generator.encode_images(list(images))
    records = [SampleRecord(id=f"d{i}", round=0, prompt=t, seed=i, weights_version=0) for i, t in enumerate(texts)]
    data = RolloutBatch(records, latents, generator.encode_prompts(list(texts)),
                        torch.ones(len(texts), 1, *latents.shape[2:]))
    plan = plan_steps(list(range(len(texts))), steps, batch, random.Random(seed))
    losses = [engine.train_batch(data.select(rows), 0.0)["loss"]
              for rows in tqdm(plan, desc="fine-tuning", unit="step", file=sys.stderr, disable=None)]
    generator.trainable_module().eval()
    return losses


def fresh_accuracy(generator: GenerationModel, specs: Sequence[PromptSpec], seed: int) -> float:
    """Accuracy of one image per prompt, seeds ``eval_seeds(n, seed + 1)``: disjoint from every
    seed :func:`best_of_k` with ``seed`` draws."""
    return generation_report(generator, specs, seed + 1)[0].overall


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=150, help="prompts in each half (train / other)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--picks", default="judge,oracle,first")
    ap.add_argument("--min-score", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--out", default="runs/distil")
    ap.add_argument("--summary", default=None, metavar="JSONL",
                    help="only print the table of the runs in JSONL with these --k / --steps / --lr / --batch")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.summary is not None:
        if not Path(args.summary).is_file():
            ap.error(f"--summary: no file at {args.summary}")
        return summarize(args.summary, k=args.k, steps=args.steps, lr=args.lr, batch=args.batch)
    picks = [p for p in args.picks.split(",") if p]
    bad = [p for p in picks if p not in PICKS]
    if bad or not picks:
        ap.error(f"--picks: unknown {', '.join(bad) or '(none given)'}; allowed: {', '.join(PICKS)}")
    if args.k < 1 or args.prompts < 1 or args.steps < 1 or args.batch < 1:
        ap.error("--k, --prompts, --steps and --batch must be at least 1")

    from srum_ray.shapes.demo import PROMPT_DIR, subsample
    from srum_ray.shapes.splits import load_split_prompts

    cfg, model = load_model(args.config, args.overrides)
    gen = model.generator
    base = {k: v.clone() for k, v in gen.trainable_module().state_dict().items()}
    both = subsample(load_split_prompts(PROMPT_DIR / "test.jsonl"), 2 * args.prompts)
    train, other = [p.spec for p in both[0::2]], [p.spec for p in both[1::2]]

    t0 = time.perf_counter()
    res = best_of_k(gen, model.understanding, train, args.k, args.seed)
    images = res.pop("images")
    print(f"[distil] {len(images)} images of {len(train)} prompts sampled and scored in {time.perf_counter() - t0:.0f} s")
    before = {"train": fresh_accuracy(gen, train, args.seed), "other": fresh_accuracy(gen, other, args.seed)}
    texts = [sp.text for sp in train for _ in range(args.k)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for rule in picks:
        gen.trainable_module().load_state_dict(base)
        idx = picked(res["per_prompt"], args.k, rule, args.min_score)
        right = sum(res["per_prompt"][i // args.k]["correct"][i % args.k] for i in idx)
        line = {"pick": rule, "seed": args.seed, "k": args.k, "prompts": len(train), "images": len(idx), "right": int(right),
                "steps": args.steps, "lr": args.lr, "batch": args.batch, "min_score": args.min_score,
                "before": {k: round(100 * v, 1) for k, v in before.items()}, "after": None}
        if idx:
            t1 = time.perf_counter()
            losses = finetune(gen, [texts[i] for i in idx], [images[i] for i in idx], steps=args.steps, lr=args.lr,
                              batch=args.batch, timestep_shift=cfg.train.timestep_shift, seed=args.seed)
            after = {"train": fresh_accuracy(gen, train, args.seed), "other": fresh_accuracy(gen, other, args.seed)}
            line.update(loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4), train_s=round(time.perf_counter() - t1, 1),
                        after={k: round(100 * v, 1) for k, v in after.items()})
        else:
            print(f"[distil] pick {rule}: no image picked, nothing trained", flush=True)
        with open(out / "distil.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
        lines.append(line)
    print(summary_table(lines))
    return lines


def summary_table(lines: Sequence[dict]) -> str:
    """Markdown: one row per (pick, seed) line, then per pick the mean +- sd over its trained
    lines of the change in points on the same prompts and on the other prompts."""
    rows = ["| pick | seed | images (right) | same prompts: base -> after | other prompts: base -> after |",
            "|---|---|---|---|---|"]
    order = sorted(lines, key=lambda ln: (PICKS.index(ln["pick"]), ln["seed"]))
    for ln in order:
        after = ln["after"] or {"train": "(not trained)", "other": "(not trained)"}
        rows.append(f"| {ln['pick']} | {ln['seed']} | {ln['images']} ({ln['right']}) | {ln['before']['train']} -> {after['train']} | "
                    f"{ln['before']['other']} -> {after['other']} |")
    rows += ["", "| pick | change, same prompts | change, other prompts |", "|---|---|---|"]
    for pick in PICKS:
        trained = [ln for ln in lines if ln["pick"] == pick and ln["after"]]
        if not trained:
            continue
        cells = []
        for half in ("train", "other"):
            d = np.array([ln["after"][half] - ln["before"][half] for ln in trained])
            cells.append(f"{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0.0:.1f}")
        rows.append(f"| {pick} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def summarize(path: str | Path, *, k: int, steps: int, lr: float, batch: int) -> list[dict]:
    """The lines of a ``distil.jsonl`` run with these settings (every seed and pick); prints
    their :func:`summary_table` (the table in docs/RESULTS.md)."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    lines = [ln for ln in lines if (ln["k"], ln["steps"], ln["lr"], ln["batch"]) == (k, steps, lr, batch)]
    if not lines:
        raise ValueError(f"{path}: no run with k={k}, steps={steps}, lr={lr}, batch={batch}")
    print(summary_table(lines))
    return lines


if __name__ == "__main__":
    main()
