"""What a preset's training budget can do with perfect data: the ceiling of any reward.

    python -m srum_ray.shapes.budget [--config configs/shapes.yaml] [--steps N] [--lr LR]
        [--images N] [--test-prompts 600] [--seed 0] [--out runs/budget] [key=value ...]

SRUM's rollouts are never better than the rendered ground truth, and its reward can at best
keep the right ones. So fine-tuning the base with SRUM's learner for the same number of steps
at the same learning rate, on rendered scenes that satisfy their prompts, bounds what any reward
(the judge's, the exact evaluator's) can add with that budget. This does that:

1. ``--images`` train prompts are drawn (default: the config's rollouts over the whole run,
   ``rounds x prompts_per_round x images_per_prompt``) and one scene that satisfies each is
   rendered.
2. The base is scored on ``--test-prompts`` test prompts exactly as ``srum-ray demo --seed
   SEED`` and ``scripts/shapes_scan.py`` score (same prompts, same seeds).
3. It is fine-tuned with :func:`srum_ray.shapes.distil.finetune` (the learner SRUM uses, plain
   flow loss) for ``--steps`` steps (default ``rounds x steps_per_round``) of the config's batch
   size at ``--lr`` (default ``train.lr``), and scored again.

Appends one JSON line to ``<out>/budget.jsonl``: accuracy before and after (overall, per
category), the constraints that hold per kind, and what the images draw.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from srum_ray.config.load import load_config
from srum_ray.runtime.local import apply_cpu_threads
from srum_ray.shapes.demo import PROMPT_DIR, Evaluator, score_summary, subsample
from srum_ray.shapes.distil import finetune
from srum_ray.shapes.render import render
from srum_ray.shapes.sampler import scene_for
from srum_ray.shapes.splits import load_split_prompts

__all__ = ["ground_truth_data", "main"]


def ground_truth_data(n: int, seed: int) -> tuple[list[str], list]:
    """``n`` (prompt text, rendered scene that satisfies it) pairs of train prompts, from ``seed``."""
    train = load_split_prompts(PROMPT_DIR / "train.jsonl")
    rng = random.Random(f"shapes-budget/{seed}")
    specs = [rng.choice(train).spec for _ in range(n)]
    return [s.text for s in specs], [render(scene_for(s, rng)) for s in specs]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: rounds x train.steps_per_round)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: train.lr)")
    ap.add_argument("--images", type=int, default=None,
                    help="ground-truth scenes (default: rounds x prompts_per_round x images_per_prompt)")
    ap.add_argument("--test-prompts", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, ["runtime.mode=local", *args.overrides])
    steps = args.steps if args.steps is not None else cfg.run.rounds * cfg.train.steps_per_round
    lr = args.lr if args.lr is not None else cfg.train.lr
    n_images = args.images if args.images is not None else cfg.run.rounds * cfg.data.prompts_per_round * cfg.data.images_per_prompt
    if steps < 1 or n_images < 1 or args.test_prompts < 1 or lr <= 0:
        ap.error(f"--steps, --images and --test-prompts must be at least 1 and --lr above 0 (got {steps}, {n_images}, {args.test_prompts}, {lr})")
    apply_cpu_threads(cfg)

    test = subsample(load_split_prompts(PROMPT_DIR / "test.jsonl"), args.test_prompts)
    ev = Evaluator(cfg, args.seed)
    t0 = time.perf_counter()
    before = score_summary(ev.score(test)[0])
    texts, images = ground_truth_data(n_images, args.seed)
    losses = finetune(ev.generator, texts, images, steps=steps, lr=lr, batch=cfg.train.batch_size,
                      timestep_shift=cfg.train.timestep_shift, seed=args.seed)
    after = score_summary(ev.score(test)[0])
    line = {
        "config": args.config, "overrides": args.overrides, "checkpoint": cfg.model.checkpoint, "seed": args.seed,
        "steps": steps, "lr": lr, "batch": cfg.train.batch_size, "images": n_images, "n_test": len(test),
        "loss_first": round(losses[0], 4), "loss_last": round(sum(losses[-16:]) / len(losses[-16:]), 4),
        "before": before, "after": after,
        "change": round(after["accuracy"]["overall"] - before["accuracy"]["overall"], 1),
        "seconds": round(time.perf_counter() - t0),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "budget.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
