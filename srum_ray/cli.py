"""``srum-ray``: the command line.

    srum-ray run --config configs/tiny.yaml [key.path=value ...]
    srum-ray run --resume RUN_DIR [run.rounds=N]
    srum-ray check --config configs/tiny.yaml [key.path=value ...]
    srum-ray show RUN_DIR [--round N]
    srum-ray demo [--config configs/shapes.yaml] [--arms sft,srum] [--seed 0] [--eval-guidance W] [key.path=value ...]

Every config, prompt-file, checkpoint-path or run-directory problem is reported as one line
``srum-ray: error: ...`` with exit status 2, before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from srum_ray.config.load import ConfigError, load_config
from srum_ray.preflight import PreflightError, check_config
from srum_ray.rundir import RunDir, RunDirError

#: keys a resumed run may change; anything else would make the rounds inconsistent
RESUMABLE_KEYS = ("run.rounds", "run.progress", "run.device")

USER_ERRORS = (ConfigError, PreflightError, RunDirError)


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("diffusers", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _resume_config(run_dir: RunDir, overrides: Sequence[str]):
    cfg = run_dir.load_config(overrides)  # an unknown key or a bad value is named first
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"cannot change {key} when resuming (allowed: {', '.join(RESUMABLE_KEYS)})"
            )
    return cfg


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _signed(x: float, digits: int) -> str:
    """``x`` with its sign, rounded; a value that rounds to zero reads +0.0, not -0.0."""
    text = f"{x:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config:
            raise ConfigError("--config and --resume exclude each other: a resumed run uses "
                              "its own config.yaml (change run.rounds etc. with key=value)")
        run_dir = RunDir.open_for_resume(args.resume)
        cfg = _resume_config(run_dir, args.overrides)
        run_dir.check_resumable(cfg.run.rounds)
        check_config(cfg, check_output=False)
        done = run_dir.state()["last_completed_round"] + 1
        if done >= cfg.run.rounds:  # before any model loads
            print(f"nothing to do: {_count(done, 'round')} of {cfg.run.rounds} already complete in {run_dir.path}",
                  file=sys.stderr)
            print(run_dir.path)
            return 0
        if args.overrides:
            from srum_ray.config.load import dump_config

            dump_config(cfg, run_dir.path / "config.yaml")
    else:
        if not args.config:
            raise ConfigError("run needs --config FILE (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
        run_dir = None
    _setup_logging()
    log = logging.getLogger("srum_ray")
    from srum_ray.loop import RoundLoop, build_runtime  # heavy imports after the checks

    runtime = build_runtime(cfg)
    try:
        if run_dir is None:  # created only once the models loaded: a failed load leaves nothing
            run_dir = RunDir.create(cfg)
        log.info("run directory: %s", run_dir.path)
        RoundLoop(cfg, run_dir, runtime=runtime).run()
    finally:
        runtime.shutdown()
    print(run_dir.path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    n = check_config(cfg)
    print(f"config ok: {_count(n, 'prompt')}, {_count(cfg.run.rounds, 'round')}, backend {cfg.model.backend}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    rd = RunDir.open_for_resume(args.run_dir)
    state = rd.state()
    rounds = [args.round] if args.round is not None else range(state["last_completed_round"] + 1)
    print(f"{rd.path}: {_count(state['last_completed_round'] + 1, 'round')} complete, "
          f"weights version {state['weights_version']}, learner step {state['global_step']}")
    for r in rounds:
        if not rd.round_dir(r).is_dir():
            raise RunDirError(f"round {r} is not complete in {rd.path}")
        print(f"\nround {r}  ({rd.round_dir(r)}/overview.png)")
        print(f"  {'id':<18} {'v':>2} {'global':>7} {'alpha':>6} {'boxes':>5} {'kept':>4} "
              f"{'scores':<30} prompt")
        for rec in rd.read_samples(r):
            scores = ",".join("-" if s is None else _signed(s, 1) for s in rec.region_scores)
            g = "miss" if rec.global_score is None else _signed(rec.global_score, 2)
            a = "-" if rec.alpha is None else f"{rec.alpha:.2f}"
            print(f"  {rec.id:<18} {rec.weights_version:>2} {g:>7} {a:>6} {len(rec.boxes):>5} "
                  f"{sum(rec.kept):>4} {scores[:30]:<30} {rec.prompt[:60]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from srum_ray.shapes.demo import ARMS, run_demo

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ConfigError(f"--arms: unknown arm {', '.join(map(repr, unknown)) or '(none given)'}; allowed: {', '.join(ARMS)}")
    _setup_logging()
    sizes = {k: v for k, v in (("n_val", args.val_prompts), ("n_test", args.test_prompts)) if v is not None}
    run_demo(args.config, args.overrides, arms=arms, seed=args.seed, out=args.out, eval_guidance=args.eval_guidance, **sizes)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="srum-ray", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run SRUM rounds (in this process, or on Ray with runtime.mode=ray)")
    run.add_argument("--config", help="YAML config (see configs/)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last completed round")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides")
    run.set_defaults(func=cmd_run)
    chk = sub.add_parser("check", help="validate a config and the paths it names, load nothing")
    chk.add_argument("--config", required=True, help="YAML config (see configs/)")
    chk.add_argument("overrides", nargs="*", help="key.path=value overrides")
    chk.set_defaults(func=cmd_check)
    show = sub.add_parser("show", help="summarize a run directory")
    show.add_argument("run_dir", help="a run directory (holds config.yaml and state.json)")
    show.add_argument("--round", type=int, help="only this round (0-based, as in rounds/NNNN)")
    show.set_defaults(func=cmd_show)
    demo = sub.add_parser("demo", help="shapes world: base vs SFT vs SRUM, scored by the exact evaluator")
    demo.add_argument("--config", default="configs/shapes.yaml")
    demo.add_argument("--arms", default="sft,srum",
                      help="comma-separated: srum, sft, sample_level, binarized, no_global, no_constraint")
    demo.add_argument("--seed", type=int, default=0, help="run.seed of every arm and the evaluation seed")
    demo.add_argument("--val-prompts", type=_positive, help="validation prompts scored after each round (default 40)")
    demo.add_argument("--test-prompts", type=_positive, help="test prompts scored per model (default 300)")
    demo.add_argument("--eval-guidance", type=float, metavar="W",
                      help="guidance scale of the scoring (default: generation.guidance_scale, the rollouts')")
    demo.add_argument("--out", help="demo directory (default: <run.output_dir>/<run.name>-demo-<time>)")
    demo.add_argument("overrides", nargs="*", help="key.path=value overrides for every arm")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"srum-ray: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `srum-ray show RUN | head`: the reader stopped, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as e:  # a model that fails to load is a user error too, reported the same way
        from srum_ray.loop import ModelLoadError

        if isinstance(e, ModelLoadError):
            print(f"srum-ray: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("srum-ray: interrupted; resume with `srum-ray run --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
