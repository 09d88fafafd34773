"""Round wall time of the same tiny configuration run three ways, side by side in one run.

    python bench/pipeline.py [--rounds 3] [--config configs/ray_tiny.yaml] [--ways single,staged,ray] [key=value ...]

1. ``single``: the single-process loop (chunks stream through every stage in turn);
2. ``staged``: the public code's shape (generate all, then ground all, judge all, then train);
3. ``ray``: the Ray runtime (generator actors, Serve grounder/judge pools, learner group).

Each way writes its own run directory under a temp dir; times are the rounds' own (model
building and Ray start-up are reported apart; round 0 is warm-up when there are more).

**Idle share per role.** The round rows (those of ``metrics.jsonl``) hold each stage's
seconds summed over chunks. A role's busy time is the sum of its stages (generator:
generate; grounder: propose; judge: filter + judge; driver: reward + write; learner: train
+ checkpoint + sync), its capacity is round wall x its workers, and idle share = 1 - busy /
capacity. In one process these are exact. In the Ray runtime ``generate`` is the time a
generator spends on a chunk, and the pools' busy times are what their replicas report
(``propose_busy`` / ``judge_busy``: time in the stages, without the queueing and batching
waits that the driver's ``propose`` / ``judge`` request latencies include).

**Derived bound** (roles on their own cores/devices, one worker each), from the staged run's
stage times (each measured alone): with ``n`` chunks streaming, the collect phase takes at
least the busiest role's time plus one chunk through the other stages (fill and drain);
learning (train, checkpoint, sync) and the round's other serial work follow it, as in the
staged run. ``bound_speedup = staged round / that time``.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from srum_ray.config.load import load_config  # noqa: E402
from srum_ray.loop import RoundLoop, build_roles, resolve_device  # noqa: E402
from srum_ray.rundir import RunDir  # noqa: E402
from srum_ray.runtime.local import LocalRuntime  # noqa: E402
from srum_ray.runtime.staged import StagedRuntime  # noqa: E402

STAGES = ("generate", "propose", "filter", "judge", "reward", "write", "train", "checkpoint", "sync")
#: role -> the stages it is busy in (a ``<stage>_busy`` key, where the runtime reports one,
#: replaces the role's stages: see the module docstring)
ROLES = {
    "generator": ("generate",),
    "grounder": ("propose",),
    "judge": ("filter", "judge"),
    "driver": ("reward", "write"),
    "learner": ("train", "checkpoint", "sync"),
}
#: roles that stream chunk by chunk during collection (the rest run once per round)
STREAMING = ("generator", "grounder", "judge", "driver")


def run_way(name: str, cfg) -> dict:
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
        if name == "ray":  # Serve's handle threads log a traceback each when Ray is gone
            logging.getLogger("ray.serve").setLevel(logging.CRITICAL)
    steady = rows[1:] or rows
    wall = sum(r["wall_s"] for r in steady) / len(steady)
    keys = list(STAGES) + sorted({k for r in steady for k in r["timings_s"]} - set(STAGES))
    stage_s = {s: sum(r["timings_s"].get(s, 0.0) for r in steady) / len(steady) for s in keys}
    replicas = dict(rows[-1]["replicas"], driver=1)
    reported = {"grounder": "propose_busy", "judge": "judge_busy"}
    roles = {}
    for role, stages in ROLES.items():
        busy = stage_s[reported[role]] if reported.get(role) in stage_s else sum(stage_s[s] for s in stages)
        workers = replicas.get(role, 1)
        roles[role] = {"busy_s": busy, "workers": workers,
                       "idle_share": max(0.0, 1.0 - busy / (wall * workers)) if wall > 0 else None}
    return {"setup_s": setup, "round_s": [r["wall_s"] for r in rows], "steady_round_s": wall,
            "stage_s": stage_s, "other_s": max(0.0, wall - sum(stage_s[s] for s in STAGES)), "replicas": replicas,
            "roles": roles}


def derived_bound(staged: dict, chunks: int) -> dict:
    """Round time with every role on its own core/device (one worker each), from staged times."""
    busy = {role: staged["roles"][role]["busy_s"] for role in STREAMING}
    bottleneck = max(busy, key=busy.get)
    fill_drain = sum(b for r, b in busy.items() if r != bottleneck) / chunks
    serial = staged["roles"]["learner"]["busy_s"] + staged["other_s"]
    bound = busy[bottleneck] + fill_drain + serial
    return {"chunks": chunks, "bottleneck": bottleneck, "bottleneck_s": busy[bottleneck],
            "fill_drain_s": fill_drain, "serial_s": serial, "round_s": bound,
            "bound_speedup": staged["steady_round_s"] / bound}


def main(argv=None) -> int:
    p = C.parser(__doc__, "pipeline.json")
    p.add_argument("--config", default=str(C.ROOT / "configs/ray_tiny.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ways", default="single,staged,ray")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    C.quiet()
    results = {}
    cfg = None
    with tempfile.TemporaryDirectory() as tmp:
        for way in a.ways.split(","):
            mode = "ray" if way == "ray" else "local"
            cfg = load_config(a.config, [*a.overrides, f"run.rounds={a.rounds}", f"run.output_dir={tmp}/{way}",
                                         "run.progress=false", f"runtime.mode={mode}",
                                         *([] if way == "ray" else ["train.engine=torch"])])
            results[way] = run_way(way, cfg)
    assert cfg is not None
    chunks = math.ceil(cfg.data.prompts_per_round * cfg.data.images_per_prompt / cfg.generation.batch_size)
    base = results.get("staged", {}).get("steady_round_s")
    for r in results.values():
        r["speedup_vs_staged"] = C.ratio(base, r["steady_round_s"])
    C.print_table(
        f"round time, {cfg.data.prompts_per_round * cfg.data.images_per_prompt} images in {chunks} chunks "
        f"(stage seconds summed over chunks; in the ray runtime chunks overlap)",
        ["way", "setup s", "round s", "vs staged", *(s[:8] for s in STAGES)],
        [[w, r["setup_s"], r["steady_round_s"], r["speedup_vs_staged"], *(r["stage_s"][s] for s in STAGES)]
         for w, r in results.items()],
    )
    C.print_table(
        "idle share per role (1 - busy / (round x workers))",
        ["way", *(f"{role} (x workers)" for role in ROLES)],
        [[w, *(f"{100 * r['roles'][role]['idle_share']:.0f}% (x{r['roles'][role]['workers']})"
               for role in ROLES)] for w, r in results.items()],
    )
    bound = derived_bound(results["staged"], chunks) if "staged" in results else None
    if bound:
        print(f"\nderived bound, one core/device per role: bottleneck {bound['bottleneck']} "
              f"{bound['bottleneck_s']:.3f} s + fill/drain {bound['fill_drain_s']:.3f} s + serial "
              f"{bound['serial_s']:.3f} s = {bound['round_s']:.3f} s per round -> "
              f"{bound['bound_speedup']:.2f}x the staged round")
    C.write_json(a.out, {"config": a.config, "rounds": a.rounds, "overrides": a.overrides, "chunks": chunks,
                         "results": results, "derived_bound": bound})
    return 0


if __name__ == "__main__":
    sys.exit(main())
