"""One shapes-world arm, scored on the test prompts: the tool behind the hyperparameter scan in
docs/RESULTS.md ("Hyperparameter scan").

    .venv/bin/python scripts/shapes_scan.py --name NAME [--arm srum] [--seed 0]
        [--test-prompts 600] [--eval-guidance 3.0] [--oracle binary|filter]
        [--generator FILE] [--score-every N] [--out runs/scan] [key.path=value ...]

Runs the arm (``srum``, ``sft``, an ablation name, or ``base`` for no training) with
``configs/shapes.yaml`` plus the overrides in the single-process runtime (the same rounds as the
Ray runtime, bit for bit, without actor start-up), then scores the last round's weights with the
exact evaluator: one image per test prompt, the same seeds as ``srum-ray demo --seed SEED``.
``--eval-guidance`` scores at a guidance scale other than the rollouts' (the rollouts use
``generation.guidance_scale``). ``--oracle`` trains on the exact evaluator's verdict instead of
the judge's reward (``srum_ray.shapes.oracle``: a judge that is never wrong). Appends one JSON
line per run to ``OUT/scan.jsonl`` and prints it: accuracy per category, the share of
constraints of each kind that hold, and what the images draw (objects per image, share of
pixels drawn: self-training drift shows there first). ``--arm base --generator FILE`` scores other
generator weights (e.g. ``train_umm --snapshot-every`` snapshots: the ground-truth curve).
``--score-every N`` also scores the checkpoints of rounds 0, N, 2N, ... (the last round is
always scored) and records their accuracy as ``per_round``: drift or a gain that fades shows
there (needs ``output.keep_all_checkpoints``, on in the shapes configs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srum_ray.config.load import ConfigError, load_config  # noqa: E402
from srum_ray.runtime.local import apply_cpu_threads  # noqa: E402
from srum_ray.shapes.demo import (  # noqa: E402
    PROMPT_DIR,
    Evaluator,
    arm_overrides,
    checkpoint_state,
    run_arm,
    score_summary,
    scoring_config,
    subsample,
)
from srum_ray.shapes.oracle import ORACLE_MODES, oracle_reward  # noqa: E402
from srum_ray.shapes.splits import load_split_prompts  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="label of this run in scan.jsonl")
    ap.add_argument("--arm", default="srum", help="srum, sft, an ablation name, or base (no training)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--test-prompts", type=int, default=600)
    ap.add_argument("--eval-guidance", type=float, default=None,
                    help="guidance scale of the scoring (default: generation.guidance_scale)")
    ap.add_argument("--oracle", choices=ORACLE_MODES, default=None,
                    help="loss weights from the exact evaluator instead of the judge (diagnostic)")
    ap.add_argument("--generator", default=None,
                    help="with --arm base: score these generator weights (a generator.safetensors, "
                         "e.g. a train_umm snapshot) instead of the config's checkpoint")
    ap.add_argument("--score-every", type=int, default=0, metavar="N",
                    help="also score the checkpoints of rounds 0, N, 2N, ... (0: the last round only)")
    ap.add_argument("--out", default="runs/scan")
    ap.add_argument("overrides", nargs="*")
    # overrides may sit anywhere among the flags (a flag after them is not taken for one)
    args = ap.parse_intermixed_args(argv)
    if args.oracle and args.arm == "base":
        ap.error("--oracle needs an arm that trains, not base")
    if args.score_every < 0:
        ap.error("--score-every must be 0 (last round only) or a positive number of rounds")
    if args.generator is not None:
        if args.arm != "base":
            ap.error("--generator scores given weights: use it with --arm base")
        if not Path(args.generator).is_file():
            ap.error(f"--generator: no file at {args.generator}")

    out = Path(args.out)
    train_arm = "srum" if args.arm == "base" else args.arm
    overrides = ["runtime.mode=local", *args.overrides, *arm_overrides(train_arm, args.seed, out / args.name)]
    try:
        cfg = load_config(args.config, overrides)
        eval_cfg = scoring_config(args.config, overrides, args.eval_guidance)
    except ConfigError as e:
        ap.error(str(e))

    apply_cpu_threads(cfg)
    t0 = time.perf_counter()
    reward_fn = oracle_reward(args.oracle) if args.oracle else None
    run_dir = None if args.arm == "base" else run_arm(cfg, reward_fn)
    t1 = time.perf_counter()
    test = subsample(load_split_prompts(PROMPT_DIR / "test.jsonl"), args.test_prompts)
    ev = Evaluator(eval_cfg, args.seed)
    if args.generator is not None:
        from safetensors.torch import load_file

        ev.load(load_file(args.generator))
    else:
        ev.load(None if run_dir is None else checkpoint_state(run_dir, cfg.run.rounds - 1))
    scored = score_summary(ev.score(test)[0])
    per_round = []
    if run_dir is not None and args.score_every:
        for r in range(0, cfg.run.rounds - 1, args.score_every):
            ev.load(checkpoint_state(run_dir, r))
            per_round.append({"round": r, **score_summary(ev.score(test)[0])})
        per_round.append({"round": cfg.run.rounds - 1, **scored})
    t2 = time.perf_counter()

    globals_ = []
    if run_dir is not None:
        with open(run_dir / "metrics.jsonl") as f:
            rows = [json.loads(line) for line in f]
        globals_ = [round(r["global_score_mean"], 3) for r in rows if "global_score_mean" in r]
    line = {
        "name": args.name, "arm": args.arm, "oracle": args.oracle, "generator": args.generator,
        "seed": args.seed, "overrides": args.overrides,
        "eval_guidance": eval_cfg.generation.guidance_scale, "n_test": len(test),
        **scored,
        "global_score_per_round": globals_, "per_round": per_round,
        "run_dir": None if run_dir is None else str(run_dir),
        "train_s": round(t1 - t0), "eval_s": round(t2 - t1),
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scan.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
