"""Run the shapes demo over several seeds and write docs/RESULTS.md (mean and spread).

    python -m srum_ray.shapes.results --seeds 0 1 2 [--config configs/shapes.yaml]
        [--arms sft,srum,sample_level,binarized,no_global,no_constraint] [--out runs/results]
        [--doc docs/RESULTS.md] [key=value ...]

Each seed is one :func:`srum_ray.shapes.demo.run_demo` into ``<out>/seed<k>``; a seed whose
``results.json`` already exists is read, not rerun (so an interrupted sweep continues).

The doc is rewritten from the runs, except what an existing doc holds below the line
:data:`KEEP_MARKER`: sections written by hand (diagnostics, discussion) are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Sequence

from srum_ray.shapes.constraints import CATEGORIES
from srum_ray.shapes.evaluate import CONSTRAINT_KINDS, CONSTRAINTS_NOTE

#: a line in docs/RESULTS.md; what follows it is written by hand and kept on a rewrite
KEEP_MARKER = "<!-- Written by hand below this line: kept when srum_ray.shapes.results rewrites this file. -->"

#: SPEC section 3's ablation arms (and full SRUM)
ABLATION_ORDER = ("srum", "sample_level", "binarized", "no_global", "no_constraint")


def paper_claims(agg: dict) -> list[tuple[str, bool, str]]:
    """SPEC section 3's ranking, claim by claim, on the arms present: full SRUM best,
    sample-level worst, binarized below SFT, no-global below no-constraint. Each claim comes
    with the gap it rests on (mean ± sd over seeds of the per-seed difference in overall
    accuracy, against the closest other arm for "best" and "worst")."""
    arms = [a for a in (*ABLATION_ORDER, "sft") if a in agg]

    def overall(m: str) -> float:
        return overall_mean(agg, m)

    def gap(a: str, b: str) -> str:
        m, sd = mean_sd(overall_diffs(agg, a, b))
        noise = " (within the seed spread)" if abs(m) <= sd else ""
        return f"{a} - {b}: {100 * m:+.1f} ± {100 * sd:.1f} points{noise}"

    def others(a: str) -> list[str]:
        return [o for o in arms if o != a]

    out = []
    if "srum" in agg and others("srum"):
        runner_up = max(others("srum"), key=overall)
        out.append(("full SRUM is best", overall("srum") > overall(runner_up), gap("srum", runner_up)))
    if "sample_level" in agg and others("sample_level"):
        next_up = min(others("sample_level"), key=overall)
        out.append(("sample-level reward is worst", overall("sample_level") < overall(next_up), gap("sample_level", next_up)))
    if "binarized" in agg and "sft" in agg:
        out.append(("binarized is below SFT", overall("binarized") < overall("sft"), gap("binarized", "sft")))
    if "no_global" in agg and "no_constraint" in agg:
        out.append(("dropping the global reward hurts more than dropping the constraint",
                    overall("no_global") < overall("no_constraint"), gap("no_global", "no_constraint")))
    return out


def overall_mean(agg: dict, m: str) -> float:
    """Mean over seeds of arm ``m``'s overall test accuracy."""
    return mean_sd(agg[m]["overall"])[0]


def overall_diffs(agg: dict, a: str, b: str) -> list[float]:
    """Per-seed overall test accuracy of arm ``a`` minus arm ``b``."""
    return [x - y for x, y in zip(agg[a]["overall"], agg[b]["overall"])]


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def cell(xs: Sequence[float]) -> str:
    m, s = mean_sd(xs)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def aggregate(per_seed: list[dict]) -> dict:
    """``{model: {key: [value per seed]}}`` over the seeds' ``results.json`` test tables."""
    out: dict[str, dict[str, list[float]]] = {}
    for res in per_seed:
        for model, table in res["test"].items():
            for key, value in table.items():
                if isinstance(value, (int, float)) or value is None:
                    out.setdefault(model, {}).setdefault(key, []).append(value)
    return out


def constraint_lines(per_seed: list[dict]) -> list[str]:
    """Markdown table of the share of constraints that hold per kind (mean ± sd over seeds), then
    SRUM's per-kind change against the base and SFT with its per-seed values."""
    per_kind: dict[str, dict[str, list[float]]] = {}
    for res in per_seed:
        for model, table in res["test"].items():
            for kind, value in table.get("per_kind", {}).items():
                per_kind.setdefault(model, {}).setdefault(kind, []).append(value)
    kinds = [k for k in CONSTRAINT_KINDS if k in per_kind.get("base", {})]
    if not kinds:
        return []
    lines = ["| model | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for m, by_kind in per_kind.items():
        lines.append(f"| {m} | " + " | ".join(cell(by_kind[k]) if k in by_kind else "-" for k in kinds) + " |")
    lines.append("")
    for other in ("base", "sft"):
        if "srum" not in per_kind or other not in per_kind:
            continue
        parts = []
        for k in kinds:
            d = [100 * (a - b) for a, b in zip(per_kind["srum"][k], per_kind[other][k])]
            m, sd = mean_sd(d)
            parts.append(f"{k} {m:+.1f} ± {sd:.1f} ({', '.join(f'{x:+.1f}' for x in d)})")
        lines.append(f"- SRUM - {other}, points per kind (per seed): " + "; ".join(parts) + ".")
    return lines


def write_results(doc: Path, per_seed: list[dict], seeds: Sequence[int], command: str, config: str) -> str:
    agg = aggregate(per_seed)
    models = list(agg)
    keys = [c for c in CATEGORIES if c in agg["base"]] + ["overall"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell(agg[m][k]) for k in keys) + " |")
    table = "\n".join(lines)
    split_lines = ["| model | seen | unseen | overall |", "|---|---|---|---|"]
    for m in models:
        split_lines.append(f"| {m} | {cell(agg[m]['seen'])} | {cell(agg[m]['unseen'])} | {cell(agg[m]['overall'])} |")

    def overall(m: str) -> float:
        return overall_mean(agg, m)

    def diffs(a: str, b: str) -> list[float]:
        return overall_diffs(agg, a, b)

    checks = []
    if "srum" in agg:
        d_base = mean_sd(diffs("srum", "base"))
        checks.append(f"- SRUM - base, overall test accuracy: {100 * d_base[0]:+.1f} ± {100 * d_base[1]:.1f} points "
                      f"(per seed: {', '.join(f'{100 * x:+.1f}' for x in diffs('srum', 'base'))}); target >= +5: "
                      f"{'met' if d_base[0] >= 0.05 else 'not met'}.")
        if "sft" in agg:
            d_sft = mean_sd(diffs("srum", "sft"))
            checks.append(f"- SRUM - SFT: {100 * d_sft[0]:+.1f} ± {100 * d_sft[1]:.1f} points "
                          f"(per seed: {', '.join(f'{100 * x:+.1f}' for x in diffs('srum', 'sft'))}); target > 0: "
                          f"{'met' if d_sft[0] > 0 else 'not met'}.")
    present = [a for a in ABLATION_ORDER if a in agg]
    if len(present) > 1:
        found = sorted(present + (["sft"] if "sft" in agg else []), key=overall, reverse=True)
        checks.append("- Ranking found (best first, mean overall): "
                      + " > ".join(f"{a} ({100 * overall(a):.1f})" for a in found) + ".")
        for claim, holds, detail in paper_claims(agg):
            checks.append(f"  - paper: {claim}: {'holds' if holds else 'does not hold'} here ({detail}).")
    gaps = [res["gap"] for res in per_seed]
    u_r = [g["understanding_rendered"]["overall"] for g in gaps]
    u_g = [g["understanding_generated"]["overall"] for g in gaps]
    g_a = [g["generation"]["overall"] for g in gaps]
    checks.append(f"- Understanding vs generation (base model, test prompts): judge agreement with the truth "
                  f"{cell(u_r)} on rendered scenes and {cell(u_g)} on the base model's own images, against a "
                  f"generation accuracy of {cell(g_a)}; target understanding > generation: "
                  f"{'met' if mean_sd(u_g)[0] > mean_sd(g_a)[0] and mean_sd(u_r)[0] > mean_sd(g_a)[0] else 'not met'}.")
    gap_cats = [c for c in CATEGORIES if c in gaps[0]["generation"]] + ["overall"]
    gap_lines = ["| | " + " | ".join(gap_cats) + " |", "|---|" + "---|" * len(gap_cats)]
    for key, label in (("generation", "generation accuracy"), ("understanding_rendered", "understanding, rendered"),
                       ("understanding_generated", "understanding, generated")):
        gap_lines.append(f"| {label} | " + " | ".join(cell([g[key].get(c) for g in gaps]) for c in gap_cats) + " |")
    minutes = [res["seconds"] / 60 for res in per_seed]
    n_test = per_seed[0]["n_test"]
    text = f"""# Results: SRUM on the shapes world

Measured on the 2-core CPU build machine (shared with other work), {len(seeds)} seeds
({', '.join(map(str, seeds))}); each seed is a full demo: the base model, then one run per arm of
`{config}` (SFT = `reward.ablation=sft`; ablations = SPEC section 3 switches), scored by the exact
evaluator on {n_test} test prompts (half with held-out attribute-object combinations), one image per
prompt, the same seeds for every model. Entries are accuracy in % (share of prompts whose image
satisfies every constraint), mean ± standard deviation over seeds. Wall time per seed:
{', '.join(f'{m:.1f}' for m in minutes)} min.

Reproduce:

```bash
{command}
```

## Targets
{chr(10).join(checks)}

## Accuracy per category (test)
{table}

## Seen vs held-out combinations (test)
{chr(10).join(split_lines)}

## Constraints that hold (test)
{CONSTRAINTS_NOTE}

{chr(10).join(constraint_lines(per_seed))}

## Understanding vs generation (base model)
Understanding = agreement of the judge's whole-image verdict (score >= 0.75) with the truth (rendered:
how the scene was built, half right and half wrong in one attribute; generated: the exact
evaluator on the base model's images).

{chr(10).join(gap_lines)}

Per-seed reports (tables, accuracy-per-round plots, reward-map pictures): `<out>/seed<k>/report.md`.
"""
    if doc.is_file():
        old = doc.read_text()
        if KEEP_MARKER in old:
            text += "\n" + KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def scored_guidance(res: dict) -> float | None:
    """The guidance scale a demo's test images were sampled at: ``results.json`` records it since
    ``--eval-guidance`` exists; before, the scoring used the rollouts' scale, which every arm's run
    directory keeps in its ``config.yaml``. None when neither is there."""
    if "guidance" in res:
        return float(res["guidance"]["scoring"])
    from srum_ray.rundir import CONFIG, RunDir

    for run in res.get("runs", {}).values():
        if (Path(run) / CONFIG).is_file():
            return float(RunDir(run).load_config().generation.guidance_scale)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--arms", default="sft,srum,sample_level,binarized,no_global,no_constraint")
    ap.add_argument("--out", default="runs/results")
    ap.add_argument("--doc", default="docs/RESULTS.md")
    ap.add_argument("--val-prompts", type=int, default=60)
    ap.add_argument("--test-prompts", type=int, default=300)
    ap.add_argument("--eval-guidance", type=float, default=None,
                    help="guidance scale of the scoring (default: generation.guidance_scale, the rollouts')")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if len(args.seeds) < 1:
        ap.error("give at least one seed")
    from srum_ray.shapes.demo import run_demo, scoring_config

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    from srum_ray.config.load import ConfigError

    try:
        scoring = scoring_config(args.config, args.overrides, args.eval_guidance).generation.guidance_scale
    except ConfigError as e:
        ap.error(str(e))
    per_seed = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        if not (out / "results.json").is_file():
            run_demo(args.config, args.overrides, arms=arms, seed=seed, n_val=args.val_prompts,
                     n_test=args.test_prompts, out=out, eval_guidance=args.eval_guidance)
        res = json.loads((out / "results.json").read_text())
        reused = scored_guidance(res)
        if reused is None:
            ap.error(f"{out}/results.json does not say what guidance its test images were sampled at (written before "
                     "that was recorded, and its arms' run directories are gone): delete that seed to rerun it")
        if reused != scoring:
            ap.error(f"{out}/results.json was scored at guidance {reused:g}, this sweep scores at {scoring:g}: "
                     "give another --out, or delete that seed to rerun it")
        per_seed.append(res)
    command = "python -m srum_ray.shapes.results " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(Path(args.doc), per_seed, args.seeds, command, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
