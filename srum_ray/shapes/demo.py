"""The shapes-world demo: base model vs the SFT baseline vs SRUM, measured by the exact evaluator.

    srum-ray demo --config configs/shapes.yaml [--arms sft,srum] [--seed 0] [--eval-guidance W] [key=value ...]

1. Every arm is a full run of the config through its runtime (the Ray runtime on a local Ray
   for ``configs/shapes.yaml``), one after the other on one Ray session: ``srum`` is the config
   as it is, ``sft`` sets ``reward.ablation=sft`` (same self-generated samples, plain flow loss),
   and any ablation name (``sample_level``, ``binarized``, ``no_global``, ``no_constraint``)
   sets that ablation. ``--seed`` sets ``run.seed`` (prompts, sampling and training noise).
2. Every arm's checkpoint after every round is loaded into a generator in this process and
   scored on validation prompts (the accuracy-per-round plot, and the share of the canvas drawn
   per round: an arm with a round that draws more than :data:`DRIFT_RATIO` times the base's
   share, or less than its inverse, gets a drift warning on the console and in the report); the
   last one, and the base weights, on the test prompts (seen and held-out combinations), one
   image per prompt with the same seeds for every arm, at the rollouts' guidance scale or at
   ``--eval-guidance``.
3. Writes into the demo directory: ``report.md`` (tables per category, per seen/unseen and
   per constraint kind, what the images draw next to the ground truth (self-training drift),
   and the understanding-vs-generation gap of the base model), ``results.json``,
   ``accuracy_per_round.png``, ``drawn_per_round.png``, ``reward_maps_round_first.png`` /
   ``..._last.png`` (the SRUM run's overlays: image, boxes, scores and reward map) and
   ``test_images.png`` (the same test prompts drawn by base, SFT and SRUM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from srum_ray.config.load import load_config
from srum_ray.config.schema import SrumConfig
from srum_ray.shapes.constraints import CATEGORIES, PromptSpec
from srum_ray.shapes.evaluate import CONSTRAINT_KINDS, CONSTRAINTS_NOTE, EvalReport, drawn_objects
from srum_ray.shapes.splits import SplitPrompt, load_split_prompts

if TYPE_CHECKING:
    from srum_ray.stages import RewardFn

log = logging.getLogger("srum_ray")

#: arm names other than "srum": the reward.ablation value each sets
ARMS = ("srum", "sft", "sample_level", "binarized", "no_global", "no_constraint")
PROMPT_DIR = Path("configs/prompts/shapes")


@dataclass
class ArmResult:
    name: str
    run_dir: str | None
    #: (round index after which the weights were taken, val accuracy); round -1 = base
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    #: (round index, share of the canvas drawn on the same validation images); round -1 = base
    val_drawn: list[tuple[int, float]] = field(default_factory=list)
    #: the arm's drift warning (:func:`drift_warning`), if its rounds drifted
    warning: str | None = None
    test: dict = field(default_factory=dict)
    seconds: float = 0.0


def arm_overrides(arm: str, seed: int, out: Path) -> list[str]:
    if arm not in ARMS:
        raise ValueError(f"unknown demo arm {arm!r}; allowed: {', '.join(ARMS)}")
    ablation = "none" if arm == "srum" else arm
    return [f"reward.ablation={ablation}", f"run.seed={seed}", f"run.output_dir={out}", f"run.name={arm}"]


def subsample(prompts: Sequence[SplitPrompt], n: int) -> list[SplitPrompt]:
    """``n`` prompts spread evenly over a split ordered category by category (all if n >= len)."""
    if n >= len(prompts):
        return list(prompts)
    idx = np.linspace(0, len(prompts) - 1, n).round().astype(int)
    return [prompts[i] for i in idx]


def report_dict(report: EvalReport, prompts: Sequence[SplitPrompt]) -> dict:
    """The numbers of one scoring, as ``results.json`` keeps them: accuracy per category, overall
    and per seen / unseen; constraints per kind; what the images draw; and ``correct``, whether
    each prompt's image satisfies it (in the prompts' order)."""
    ok = [all(r) for r in report.results]
    seen = [o for o, p in zip(ok, prompts) if not p.unseen]
    unseen = [o for o, p in zip(ok, prompts) if p.unseen]
    return {
        **{c: report.per_category[c] for c in CATEGORIES if c in report.per_category},
        "overall": report.overall,
        # right and nothing drawn that the prompt does not name (extra objects game the constraints)
        "strict": report.strict,
        "seen": float(np.mean(seen)) if seen else None,
        "unseen": float(np.mean(unseen)) if unseen else None,
        "per_kind": report.per_kind,
        "drawn": report.drawn,
        "correct": ok,
    }


#: how to read the demo report's "What the images draw" table
DRAWN_NOTE = (
    "Whatever the prompt asks: objects = detections per image, drawn = share of the canvas the detector "
    "reads as drawn, in %; unasked = detections per image that match no object the prompt names (the "
    "constraints do not count them against an image, so drawing more can satisfy more of them: the "
    "accuracy table's `strict` column counts an image right only if it draws nothing unasked). Ground "
    "truth = one rendered scene per test prompt. Self-training drift shows here before it shows in "
    "accuracy: objects blown up into blobs (drawn rises), fading away (drawn falls) or multiplying "
    "(unasked rises); see docs/RESULTS.md, \"What self-training draws\" and \"Selecting on the judge's verdict\"."
)


#: an arm with a round whose weights draw more than this many times the base's share of the
#: canvas on the validation prompts (or less than its inverse) gets a drift warning
DRIFT_RATIO = 1.5


def drift_warning(arm: str, drawn: Sequence[tuple[int, float]]) -> str | None:
    """One line for an arm whose rounds drew beyond :data:`DRIFT_RATIO` times the base's share of
    the canvas, either way; None if none did. ``drawn`` is ``[(round, share)]`` with the base
    weights first (round -1), as :attr:`ArmResult.val_drawn`."""
    (_, base_ink), rounds = drawn[0], drawn[1:]

    def off(ink: float) -> bool:
        return ink > 0.0 if base_ink <= 0.0 else not 1 / DRIFT_RATIO <= ink / base_ink <= DRIFT_RATIO

    flagged = [(r, ink) for r, ink in rounds if off(ink)]
    if not flagged:
        return None
    (r0, ink0), (r_last, ink_last) = flagged[0], rounds[-1]
    what = "objects blown up into blobs" if ink0 > base_ink else "objects fading away"
    return (f"{arm} draws {100 * ink0:.1f}% of the canvas after round {r0} and {100 * ink_last:.1f}% after round "
            f"{r_last}, against {100 * base_ink:.1f}% for the base: self-training drift, {what} "
            "(docs/RESULTS.md, \"What self-training draws\")")


def ground_truth_images(prompts: Sequence[SplitPrompt], seed: int) -> list[Image.Image]:
    """One rendered scene per prompt that satisfies it, deterministic from ``seed``."""
    import random

    from srum_ray.shapes.render import render
    from srum_ray.shapes.sampler import scene_for

    rng = random.Random(f"shapes-demo/ground-truth/{seed}")
    return [render(scene_for(p.spec, rng)) for p in prompts]


def format_drawn_table(drawn: dict[str, dict[str, float]]) -> str:
    lines = ["| images | objects | unasked | drawn |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {d['objects']:.2f} | {d['unasked']:.2f} | {100 * d['ink']:.1f} |" if "unasked" in d
        else f"| {name} | {d['objects']:.2f} | | {100 * d['ink']:.1f} |"
        for name, d in drawn.items()
    ]
    return "\n".join(lines)


def score_summary(acc: dict) -> dict:
    """The rounded numbers a scan or budget line records for one scoring (:func:`report_dict`):
    accuracy per category and overall, constraints per kind (both in %), and what the images
    draw."""
    drawn = acc["drawn"]
    return {
        "accuracy": {k: round(100 * v, 1) for k, v in acc.items() if isinstance(v, float)},
        "constraints": {k: round(100 * v, 1) for k, v in acc["per_kind"].items()},
        "objects_per_image": round(drawn["objects"], 2), "ink_percent": round(100 * drawn["ink"], 1),
        "unasked_per_image": round(drawn["unasked"], 2) if "unasked" in drawn else None,
    }


class Evaluator:
    """Scores generator weights on given prompts with fixed seeds."""

    def __init__(self, cfg: SrumConfig, seed: int, on_images: Callable[[int], None] | None = None) -> None:
        from srum_ray.models.registry import build_model

        # on the run's device: the images a seed gives differ between devices only by rounding
        self.generator = build_model(cfg.model, cfg.generation, cfg.run.device, parts=("generator",)).generator
        self.base_state = {k: v.clone() for k, v in self.generator.trainable_module().state_dict().items()}
        self.seed = seed
        self.on_images = on_images  # called with the number of images drawn (progress)

    def load(self, state: dict | None) -> None:
        self.generator.trainable_module().load_state_dict(self.base_state if state is None else state)

    def score(self, prompts: Sequence[SplitPrompt]) -> tuple[dict, list[Image.Image]]:
        from srum_ray.shapes.measure import generation_report

        report, images = generation_report(self.generator, [p.spec for p in prompts], self.seed, self.on_images)
        return report_dict(report, prompts), images


def scoring_config(config: str, overrides: Sequence[str], guidance: float | None = None) -> SrumConfig:
    """The config the scoring samples with: the arms' own, or with ``generation.guidance_scale``
    set to ``guidance`` (rollouts without guidance, say, scored at the scale the base is measured
    with). Validated like any override; a bad ``guidance`` is named as the ``--eval-guidance``
    it came from (the config and ``overrides`` are checked first, so their errors stay theirs)."""
    from srum_ray.config.load import ConfigError

    cfg = load_config(config, list(overrides))
    if guidance is None:
        return cfg
    try:
        return load_config(config, [*overrides, f"generation.guidance_scale={guidance}"])
    except ConfigError as e:
        raise ConfigError(f"--eval-guidance {guidance}: {e}") from e


def checkpoint_state(run_dir: Path, r: int) -> dict:
    from safetensors.torch import load_file

    path = run_dir / "checkpoints" / f"{r:04d}" / "trainable.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no trainable weights at {path}")
    return load_file(path)


def run_arm(cfg: SrumConfig, reward_fn: RewardFn | None = None) -> Path:
    """Runs one arm's rounds; ``reward_fn`` replaces the reward stage (see :class:`RoundLoop`)."""
    from srum_ray.loop import RoundLoop, build_runtime
    from srum_ray.rundir import RunDir

    runtime = build_runtime(cfg)
    try:
        run_dir = RunDir.create(cfg)
        log.info("demo arm %s: %s", cfg.run.name, run_dir.path)
        RoundLoop(cfg, run_dir, runtime=runtime, reward_fn=reward_fn).run()
    finally:
        runtime.shutdown()
    return run_dir.path


def labelled(image: Image.Image, text: str, scale: int = 2) -> Image.Image:
    w, h = image.size
    out = Image.new("RGB", (w * scale, h * scale + 14), "white")
    out.paste(image.resize((w * scale, h * scale), Image.Resampling.NEAREST), (0, 14))
    ImageDraw.Draw(out).text((2, 1), text[: 6 * scale + 10], fill=(0, 0, 0))
    return out


def comparison_sheet(prompts: Sequence[PromptSpec], rows: dict[str, Sequence[Image.Image]], ok: dict[str, Sequence[bool]], n: int = 12) -> Image.Image:
    """One column per prompt, one row per arm; a green / red bar says what the evaluator found."""
    from srum_ray.viz import contact_sheet

    tiles = []
    for arm, images in rows.items():
        for i in range(min(n, len(prompts))):
            tile = labelled(images[i], f"{i + 1} {arm}")  # the number of its prompt below
            ImageDraw.Draw(tile).rectangle([0, tile.size[1] - 4, tile.size[0], tile.size[1]], fill=(40, 160, 60) if ok[arm][i] else (200, 40, 40))
            tiles.append(tile)
    sheet = contact_sheet(tiles, columns=min(n, len(prompts)))
    caption = Image.new("RGB", (sheet.size[0], 14 * min(n, len(prompts)) + 4), "white")
    d = ImageDraw.Draw(caption)
    for i, p in enumerate(prompts[:n]):
        d.text((2, 2 + 14 * i), f"{i + 1}. {p.text}", fill=(0, 0, 0))
    out = Image.new("RGB", (sheet.size[0], sheet.size[1] + caption.size[1]), "white")
    out.paste(sheet, (0, 0))
    out.paste(caption, (0, sheet.size[1]))
    return out


def format_round_table(results: dict[str, ArmResult]) -> str:
    """Validation accuracy and share drawn per arm: base weights, then after each round."""
    rounds = max((len(r.val_curve) for r in results.values()), default=1) - 1
    head = ["arm", "base", *(f"after round {r}" for r in range(rounds))]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, res in results.items():
        for what, points in (("accuracy", res.val_curve), ("drawn", res.val_drawn)):
            lines.append(f"| {arm} {what} | " + " | ".join(f"{100 * v:.1f}" for _, v in points) + " |")
    return "\n".join(lines)


def format_table(results: dict[str, dict], keys: Sequence[str]) -> str:
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, res in results.items():
        cells = ["-" if res.get(k) is None else f"{100 * res[k]:.1f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(
    config: str,
    overrides: Sequence[str] = (),
    *,
    arms: Sequence[str] = ("sft", "srum"),
    seed: int = 0,
    n_val: int = 40,
    n_test: int = 300,
    out: str | Path | None = None,
    eval_guidance: float | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Run the demo (see the module docstring); returns the demo directory.

    ``eval_guidance``: the guidance scale the scoring samples with (default: the config's
    ``generation.guidance_scale``, the rollouts')."""
    from srum_ray.preflight import check_config

    t_start = time.perf_counter()
    base_cfg = load_config(config, list(overrides))
    eval_cfg = scoring_config(config, overrides, eval_guidance)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    demo_dir = Path(out) if out is not None else Path(base_cfg.run.output_dir) / f"{base_cfg.run.name}-demo-{stamp}"
    cfgs = {arm: load_config(config, [*overrides, *arm_overrides(arm, seed, demo_dir)]) for arm in arms}
    for cfg in cfgs.values():
        check_config(cfg)
    demo_dir.mkdir(parents=True, exist_ok=True)
    val = subsample(load_split_prompts(PROMPT_DIR / "val.jsonl"), n_val)
    test = subsample(load_split_prompts(PROMPT_DIR / "test.jsonl"), n_test)

    connected = False
    session: contextlib.AbstractContextManager = contextlib.nullcontext()
    if base_cfg.runtime.mode == "ray":
        from actors.pools import serve_session, start_serve
        from srum_ray.runtime.ray_runtime import init_ray

        # the demo's session owns Serve unless it runs already: each arm deletes its own apps
        # and the next reuses the controller
        ray_session = init_ray(base_cfg.runtime.address)
        connected = ray_session.connected
        if ray_session.own_instance:
            start_serve()  # ray.shutdown() below stops it with the instance
        else:
            session = serve_session()  # a joined cluster: stops the Serve it started, if it did
    results: dict[str, ArmResult] = {}
    try:
        with session:
            for arm, cfg in cfgs.items():
                t0 = time.perf_counter()
                progress(f"[demo] arm {arm}: {cfg.run.rounds} rounds of {cfg.data.prompts_per_round} images")
                run_dir = run_arm(cfg)
                results[arm] = ArmResult(arm, str(run_dir), seconds=time.perf_counter() - t0)
    finally:
        if connected:
            import ray

            ray.shutdown()

    progress(f"[demo] scoring: {len(val)} validation prompts per round, {len(test)} test prompts per model")
    n_images = len(val) * (1 + sum(cfgs[arm].run.rounds for arm in results)) + len(test) * (1 + len(results))
    bar = tqdm(total=n_images, desc="scoring", unit="img", disable=not base_cfg.run.progress, file=sys.stderr, dynamic_ncols=True)
    ev = Evaluator(eval_cfg, seed, on_images=bar.update)

    def say(message: str) -> None:  # a line above the bar, not through it
        with tqdm.external_write_mode(file=sys.stderr):
            progress(message)

    ev.load(None)
    base_val, _ = ev.score(val)
    base_ink = base_val["drawn"]["ink"]
    base_test, base_images = ev.score(test)
    test_images = {"base": base_images}
    for arm, res in results.items():
        run_dir = Path(res.run_dir)
        rounds = cfgs[arm].run.rounds
        res.val_curve = [(-1, base_val["overall"])]
        res.val_drawn = [(-1, base_ink)]
        for r in range(rounds):
            ev.load(checkpoint_state(run_dir, r))
            acc, _ = ev.score(val)
            ink = acc["drawn"]["ink"]
            res.val_curve.append((r, acc["overall"]))
            res.val_drawn.append((r, ink))
            say(f"[demo] {arm} after round {r}: validation accuracy {100 * acc['overall']:.1f}%, "
                     f"{100 * ink:.1f}% of the canvas drawn (base {100 * base_ink:.1f}%)")
        res.warning = drift_warning(arm, res.val_drawn)
        if res.warning is not None:
            say(f"[demo] warning: {res.warning}")
        res.test, test_images[arm] = ev.score(test)
    bar.close()

    # the understanding-vs-generation gap of the base model, on the same test prompts
    from srum_ray.models.registry import build_model
    from srum_ray.shapes.measure import understanding_vs_generation

    und = build_model(base_cfg.model, base_cfg.generation, base_cfg.run.device, parts=("understanding",)).understanding
    gap = understanding_vs_generation(ev.generator, und, [p.spec for p in test], seed, images=base_images)

    tables = {"base": base_test, **{arm: r.test for arm, r in results.items()}}
    drawn = {"ground truth": drawn_objects(ground_truth_images(test, seed), [p.spec for p in test]), **{n: t["drawn"] for n, t in tables.items()}}
    val_truth_ink = drawn_objects(ground_truth_images(val, seed))["ink"]
    guidance = {"rollouts": base_cfg.generation.guidance_scale, "scoring": eval_cfg.generation.guidance_scale}
    write_outputs(demo_dir, tables, results, gap, test, test_images, seed, time.perf_counter() - t_start, drawn, val_truth_ink, guidance)
    progress((demo_dir / "report.md").read_text())
    progress(f"[demo] wrote {demo_dir}")
    return demo_dir


def write_outputs(
    demo_dir: Path, tables: dict, results: dict[str, ArmResult], gap: dict, test: list[SplitPrompt], test_images: dict,
    seed: int, seconds: float, drawn: dict[str, dict[str, float]], val_truth_ink: float,
    guidance: dict[str, float],
) -> None:
    from srum_ray.shapes.measure import format_gap_table
    from srum_ray.viz import line_plot

    keys = [c for c in CATEGORIES if c in tables["base"]] + ["overall"] + (["strict"] if "strict" in tables["base"] else [])
    # x: the round after which the weights were taken (-1: the base weights), as in report.md
    base_tick = {-1.0: "base"}
    series = {arm: [(float(r), 100 * acc) for r, acc in res.val_curve] for arm, res in results.items()}
    line_plot(series, title="validation accuracy (exact evaluator): base weights, then after each round", x_label="after round",
              y_label="% right", x_tick_labels=base_tick).save(demo_dir / "accuracy_per_round.png")
    ink_series = {arm: [(float(r), 100 * ink) for r, ink in res.val_drawn] for arm, res in results.items()}
    last = max((r for res in results.values() for r, _ in res.val_drawn), default=0)
    ink_series["ground truth"] = [(-1.0, 100 * val_truth_ink), (float(max(0, last)), 100 * val_truth_ink)]
    line_plot(ink_series, title="share of the canvas drawn (validation): base weights, then after each round", x_label="after round",
              y_label="% drawn", x_tick_labels=base_tick).save(demo_dir / "drawn_per_round.png")
    reward_pictures = []
    if "srum" in results:
        run_dir = Path(results["srum"].run_dir)
        rounds = sorted((run_dir / "rounds").glob("[0-9][0-9][0-9][0-9]"))
        for which, round_dir in (("first", rounds[0]), ("last", rounds[-1])) if rounds else ():
            if (round_dir / "overview.png").is_file():  # written only with output.overlays on
                shutil.copyfile(round_dir / "overview.png", demo_dir / f"reward_maps_round_{which}.png")
                reward_pictures.append(f"reward_maps_round_{which}.png")
    pictures = (" / ".join(reward_pictures) + " (SRUM's judged samples: boxes, region scores, reward map)"
                if reward_pictures else "no reward-map pictures (no SRUM arm, or output.overlays off)")
    ok = {name: tables[name]["correct"] for name in test_images}
    comparison_sheet([p.spec for p in test[:: max(1, len(test) // 12)]], {k: v[:: max(1, len(test) // 12)] for k, v in test_images.items()}, {k: v[:: max(1, len(test) // 12)] for k, v in ok.items()}).save(demo_dir / "test_images.png")

    payload = {
        "seed": seed,
        "seconds": seconds,
        "test": tables,
        "val_curves": {arm: r.val_curve for arm, r in results.items()},
        "val_drawn": {arm: r.val_drawn for arm, r in results.items()},
        "val_drawn_ground_truth": val_truth_ink,
        "warnings": [r.warning for r in results.values() if r.warning is not None],
        "runs": {arm: r.run_dir for arm, r in results.items()},
        "arm_seconds": {arm: r.seconds for arm, r in results.items()},
        "gap": gap,
        "drawn": drawn,
        "n_test": len(test),
        "guidance": guidance,
    }
    (demo_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    n_unseen = sum(p.unseen for p in test)
    warnings = [r.warning for r in results.values() if r.warning is not None]
    drift_lines = "\n" + ("\n".join(f"- Drift warning: {w}" for w in warnings) if warnings else (
        f"No round's weights drew more than {DRIFT_RATIO}x, or less than 1/{DRIFT_RATIO}, of the base's share."))
    text = f"""# shapes-world demo (seed {seed})

Test prompts: {len(test)} ({len(test) - n_unseen} seen, {n_unseen} with held-out combinations);
one image per prompt, same seeds for every model, sampled at guidance {guidance["scoring"]:g} (the rollouts:
{guidance["rollouts"]:g}); accuracy = share of prompts whose image satisfies every constraint
(exact evaluator), in %. Wall time {seconds / 60:.1f} min.

## Accuracy per category (test)
{format_table(tables, keys)}

## Seen vs held-out combinations (test)
{format_table(tables, ["seen", "unseen", "overall"])}

## Constraints that hold (test)
{CONSTRAINTS_NOTE}

{format_table({name: t["per_kind"] for name, t in tables.items()}, [k for k in CONSTRAINT_KINDS if k in tables["base"]["per_kind"]])}

## What the images draw (test)
{DRAWN_NOTE}

{format_drawn_table(drawn)}

## Validation after each round
Accuracy in % (plot: accuracy_per_round.png) and share of the canvas drawn in % (ground truth
{100 * val_truth_ink:.1f}; plot: drawn_per_round.png) of the base weights and of each arm's
weights after each round (rounds numbered from 0, as in the run directories).

{format_round_table(results)}
{drift_lines}

## Understanding vs generation (base model, test prompts)
{format_gap_table(gap)}

Pictures: {pictures}, test_images.png (the same test prompts, one row per model;
green bar = correct). Runs: {", ".join(f"{a}: {Path(r.run_dir).resolve()}" for a, r in results.items())}
"""
    (demo_dir / "report.md").write_text(text)
