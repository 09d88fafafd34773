"""Round wall time of the same tiny configuration run three ways, side by side in one run.

    python bench/pipeline.py [--rounds 2] [--config configs/ray_tiny.yaml] [--out bench/results/pipeline.json] [key=value ...]

1. ``single``: the single-process loop (chunks stream through every stage in turn);
2. ``staged``: the public code's shape (generate all, then ground all, judge all, then train);
3. ``ray``: the Ray runtime (generator actors, Serve grounder/judge pools, learner group).

Each way writes its own run directory under a temp dir; times are the rounds' own (model
building and Ray start-up are reported apart). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srum_ray.config.load import load_config  # noqa: E402
from srum_ray.loop import RoundLoop, build_roles, resolve_device  # noqa: E402
from srum_ray.rundir import RunDir  # noqa: E402
from srum_ray.runtime.local import LocalRuntime  # noqa: E402
from srum_ray.runtime.staged import StagedRuntime  # noqa: E402

STAGES = ("generate", "propose", "filter", "judge", "reward", "write", "train", "checkpoint", "sync")


def run_way(name: str, cfg, out: Path) -> dict:
    t0 = time.perf_counter()
    if name == "ray":
        from srum_ray.runtime.ray_runtime import RayRuntime

        runtime = RayRuntime(cfg)
    else:
        roles = build_roles(cfg, resolve_device(cfg.run.device))
        runtime = (StagedRuntime if name == "staged" else LocalRuntime)(cfg, roles)
    setup = time.perf_counter() - t0
    try:
        loop = RoundLoop(cfg, RunDir.create(cfg), runtime=runtime)
        rows = [loop.run_round(r) for r in range(cfg.run.rounds)]
    finally:
        runtime.shutdown()
    # round 0 includes one-off warm-up (JIT, first requests): report the rest where there is one
    steady = rows[1:] or rows
    return {
        "setup_s": setup,
        "round_s": [r["wall_s"] for r in rows],
        "steady_round_s": sum(r["wall_s"] for r in steady) / len(steady),
        "stage_s": {s: sum(r["timings_s"].get(s, 0.0) for r in steady) / len(steady) for s in STAGES},
        "replicas": rows[-1]["replicas"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/ray_tiny.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ways", default="single,staged,ray")
    p.add_argument("--out", default=str(ROOT / "bench/results/pipeline.json"))
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in a.ways.split(","):
            mode = "ray" if way == "ray" else "local"
            cfg = load_config(a.config, [*a.overrides, f"run.rounds={a.rounds}", f"run.output_dir={tmp}/{way}",
                                         "run.progress=false", f"runtime.mode={mode}",
                                         *([] if way == "ray" else ["train.engine=torch"])])
            results[way] = run_way(way, cfg, Path(tmp))
    base = results.get("staged", {}).get("steady_round_s")
    print(f"\n{'way':<8} {'setup s':>8} {'round s':>8} {'vs staged':>10}  " + " ".join(f"{s[:8]:>8}" for s in STAGES))
    for way, r in results.items():
        ratio = f"{base / r['steady_round_s']:.2f}x" if base else "-"
        print(f"{way:<8} {r['setup_s']:>8.2f} {r['steady_round_s']:>8.3f} {ratio:>10}  "
              + " ".join(f"{r['stage_s'][s]:>8.3f}" for s in STAGES))
    print("\nstage times are summed over chunks (in the ray runtime chunks overlap, so they add up to more than the round)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cpus": __import__("os").cpu_count(),
        "config": a.config, "rounds": a.rounds, "overrides": a.overrides, "results": results,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
