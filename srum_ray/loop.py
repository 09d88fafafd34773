"""The round loop: generate -> propose -> filter -> judge -> reward -> learn -> sync.

:class:`RoundLoop` runs ``cfg.run.rounds`` online rounds on a runtime (every role in this
process, or Ray actors: :mod:`srum_ray.runtime`) and owns what both share: the rewards of each
judged chunk as it arrives, the run directory (:mod:`srum_ray.rundir`), metrics, the commit
point and resume. After a round's updates the learner's weights reach every generator with a
new version before the next round draws anything.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from srum_ray.config.schema import SrumConfig
from srum_ray.data import SampleSpec, load_prompts, round_samples
from srum_ray.rewards import effective_lambda_c
from srum_ray.rundir import RunDir
from srum_ray.runtime.base import Runtime
from srum_ray.runtime.local import (  # noqa: F401 - re-exported for callers of the loop
    DTYPES,
    LocalRuntime,
    ModelLoadError,
    Roles,
    build_roles,
    resolve_device,
)
from srum_ray.runtime.metrics import RunMetrics
from srum_ray.stages import SELECTION_KEYS, RewardFn, filter_counts, parse_counts, reward_stage
from srum_ray.types import RolloutBatch
from srum_ray.viz import contact_sheet, overlay_picture

log = logging.getLogger("srum_ray")

#: overview.png tiles at most this many overlays (the first samples to arrive)
OVERVIEW_MAX = 64


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5


#: a round whose fresh samples the judge scores this much lower on average than the first
#: round's (the base weights' samples) gets a warning, when the fall is also beyond
#: ``DRIFT_SE`` standard errors; see :func:`score_drop_warning`
DRIFT_DROP = 0.1
DRIFT_SE = 3.0


def score_drop_warning(first: dict[str, Any], now: dict[str, Any]) -> str | None:
    """A warning when the judge's mean global score of round ``now`` (a :func:`round_summary`
    row) has fallen below round 0's by more than :data:`DRIFT_DROP` and by more than
    :data:`DRIFT_SE` standard errors of the difference: the model's own understanding finds its
    images getting worse, the mark of self-training drift (images blown up or fading away).
    None when it has not, or when either round has no global scores."""
    m0, m1 = first.get("global_score_mean"), now.get("global_score_mean")
    n0, n1 = first.get("global_score_n") or 0, now.get("global_score_n") or 0
    if m0 is None or m1 is None or n0 == 0 or n1 == 0:
        return None
    drop = m0 - m1
    se = ((first.get("global_score_std") or 0.0) ** 2 / n0 + (now.get("global_score_std") or 0.0) ** 2 / n1) ** 0.5
    if drop <= DRIFT_DROP or drop <= DRIFT_SE * se:
        return None
    spread = f", {drop / se:.1f} standard errors" if se > 0 else ""
    return (f"the judge's mean global score fell from {m0:+.3f} (round 0: the starting weights' samples) to "
            f"{m1:+.3f} (-{drop:.3f}{spread}): the generator may be drifting; look at this round's "
            "overview.png, and consider a lower train.lr, train.ref_anchor: base or fewer steps a round")


def round_summary(batch: RolloutBatch) -> dict[str, Any]:
    """Reward statistics of a judged and rewarded round (global and local)."""
    g = [r.global_score for r in batch.records if r.global_score is not None]
    local = [s for r in batch.records for s in r.region_scores if s is not None]
    alphas = [r.alpha for r in batch.records if r.alpha is not None]
    w = batch.weights
    trained = [i for i, r in enumerate(batch.records) if r.trained]
    return {
        "samples": len(batch),
        "samples_trained": len(trained),
        "boxes": sum(len(r.boxes) for r in batch.records),
        "boxes_kept": sum(sum(1 for k in r.kept if k) for r in batch.records),
        "global_score_mean": _mean(g),
        "global_score_std": _std(g),
        "global_score_n": len(g),
        "local_score_mean": _mean(local),
        "local_score_std": _std(local),
        "alpha_mean": _mean(alphas),
        "weight_mean": float(w[trained].mean()) if w is not None and trained else None,
        "weight_pos_frac": float((w[trained] > 0).float().mean()) if w is not None and trained else None,
        "weight_neg_frac": float((w[trained] < 0).float().mean()) if w is not None and trained else None,
    }


def build_runtime(cfg: SrumConfig) -> Runtime:
    """The runtime ``cfg.runtime.mode`` asks for, with every role built."""
    if cfg.runtime.mode == "ray":
        from srum_ray.runtime.ray_runtime import RayRuntime

        return RayRuntime(cfg)
    return LocalRuntime(cfg, build_roles(cfg, resolve_device(cfg.run.device)))


def plan_steps(trained: list[int], steps: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Rows of each optimizer step: passes over a fresh shuffle of ``trained``, no row twice
    within a step (a step takes ``min(batch_size, len(trained))`` rows)."""
    order: list[int] = []
    plan = []
    for _ in range(steps):
        idx: list[int] = []
        while len(idx) < min(batch_size, len(trained)):
            if not order:
                order = list(trained)
                rng.shuffle(order)
            idx.append(order.pop())
        plan.append(idx)
    return plan


class RoundLoop:
    """Runs SRUM rounds on a runtime and records everything in a :class:`RunDir`.

    Args:
        cfg: the resolved config.
        run_dir: where the run is written (new, or opened for resume).
        runtime: where the roles run (default: built from ``cfg.runtime.mode``).
        roles: shorthand for a :class:`LocalRuntime` over already built roles.
        reward_fn: turns a judged batch into loss weights and reward maps (default
            :func:`srum_ray.stages.reward_stage`, SPEC 2.4; same signature). The shapes world's
            oracle diagnostic (``srum_ray.shapes.oracle``) passes its own.
    """

    def __init__(
        self,
        cfg: SrumConfig,
        run_dir: RunDir,
        runtime: Runtime | None = None,
        roles: Roles | None = None,
        reward_fn: RewardFn | None = None,
    ) -> None:
        self.cfg = cfg
        self.reward_fn = reward_stage if reward_fn is None else reward_fn
        self.run_dir = run_dir
        self.prompts = load_prompts(cfg.data.prompts)
        if runtime is None:
            runtime = LocalRuntime(cfg, roles) if roles is not None else build_runtime(cfg)
        self.runtime = runtime
        self.metrics = RunMetrics(cfg.runtime.metrics, run_name=run_dir.path.name)
        self.start_round = 0
        #: round 0's metrics row, what the drift warning compares with (read back on resume)
        self._first_round: dict[str, Any] | None = None
        self._restore()

    # ------------------------------------------------------------------ resume
    def _restore(self) -> None:
        moved = self.run_dir.quarantine_uncommitted()
        if moved:
            log.warning("moved what an interrupted round left into crashed/: %s", ", ".join(moved))
        state = self.run_dir.state()
        last = state["last_completed_round"]
        if last < 0:
            return
        ckpt = self.run_dir.checkpoint_dir(last)
        self.runtime.load(ckpt)
        # generators get the restored weights before they draw anything
        self.runtime.sync(state["weights_version"])
        self.start_round = last + 1
        log.info(
            "resumed from %s: round %d done, weights version %d, learner step %d",
            ckpt, last, state["weights_version"], self.runtime.global_step(),
        )

    # ------------------------------------------------------------------ rounds
    def run(self) -> dict[str, Any]:
        """Run the remaining rounds; returns the last round's metrics row."""
        last_row: dict[str, Any] = {}
        if self.start_round >= self.cfg.run.rounds:
            log.info("nothing to do: %d of %d rounds already complete", self.start_round, self.cfg.run.rounds)
        for r in range(self.start_round, self.cfg.run.rounds):
            last_row = self.run_round(r)
        return last_row

    def _specs(self, r: int) -> list[SampleSpec]:
        d = self.cfg.data
        return round_samples(
            self.prompts, r, d.prompts_per_round, d.images_per_prompt, self.cfg.run.seed, d.shuffle
        )

    def collect(self, r: int) -> tuple[RolloutBatch, dict[str, float], dict[str, Any]]:
        """Generate, propose, filter, judge and reward round ``r``, writing its artefacts.

        Each judged chunk is rewarded and written as soon as the runtime hands it over. The
        result is joined per sample id in spec order; a missing or duplicated id is an error.

        Returns the rewarded batch, seconds per stage (summed over chunks), and the round's
        counts: of the missing-score policy (``missing_policy``) and, with ``reward.min_global``
        / ``min_region`` set, of the samples they left out (``selection``).
        """
        cfg, rd = self.cfg, self.run_dir
        specs = self._specs(r)
        rd.start_round(r)
        timings = {k: 0.0 for k in ("generate", "propose", "filter", "judge", "reward", "write")}
        missing: dict[str, int] = {}
        chunks: list[RolloutBatch] = []
        seen: set[str] = set()
        overview: list[Image.Image] = []
        bar = tqdm(
            total=len(specs), desc=f"round {r} ({r + 1}/{cfg.run.rounds})", unit="img",
            disable=not cfg.run.progress, file=sys.stderr, dynamic_ncols=True,
        )

        def on_batch(batch: RolloutBatch, seconds: dict[str, float]) -> None:
            for k, v in seconds.items():
                timings[k] = timings.get(k, 0.0) + v
                self.metrics.observe_stage(k, v)
            t = time.perf_counter()
            batch, maps, counts = self.reward_fn(batch, cfg.reward, cfg.judge)
            for k, v in counts.items():
                missing[k] = missing.get(k, 0) + v
            timings["reward"] += time.perf_counter() - t
            t = time.perf_counter()
            for rec, image, R in zip(batch.records, batch.images, maps):
                if rec.id in seen:
                    raise RuntimeError(f"sample {rec.id} came back twice in round {r}")
                seen.add(rec.id)
                rd.write_image(r, rec, image)
                rd.write_reward_map(r, rec, R)
                if cfg.output.overlays:
                    picture = overlay_picture(image, rec, R)
                    rd.write_overlay(r, rec, picture)
                    if len(overview) < OVERVIEW_MAX:
                        overview.append(picture)
            chunks.append(batch)
            timings["write"] += time.perf_counter() - t
            bar.update(len(batch))

        self.runtime.collect(specs, r, on_batch)
        bar.close()
        lost = [s.id for s in specs if s.id not in seen]
        if lost or len(seen) != len(specs):
            raise RuntimeError(f"round {r}: {len(lost)} samples never came back: {lost[:5]}")
        arrived = RolloutBatch.concat(chunks)  # completion order
        row = {rec.id: i for i, rec in enumerate(arrived.records)}
        batch = arrived.select([row[s.id] for s in specs])  # spec order
        rd.write_samples(r, batch.records)
        if overview:
            contact_sheet(overview).save(rd.partial_round_dir(r) / "overview.png")
        selection = {k: missing.pop(k) for k in SELECTION_KEYS if k in missing}
        return batch, timings, {"missing_policy": missing, **({"selection": selection} if selection else {})}

    def learn(self, r: int, batch: RolloutBatch) -> list[dict[str, Any]]:
        """``train.steps_per_round`` optimizer steps on the round's trained samples."""
        cfg = self.cfg
        trained = [i for i, rec in enumerate(batch.records) if rec.trained]
        if not trained:
            log.warning("round %d: no sample can be trained (all dropped: missing scores, or reward.min_global / min_region)", r)
            return []
        lam = effective_lambda_c(cfg.train.lambda_c, cfg.reward.ablation)
        plan = plan_steps(trained, cfg.train.steps_per_round, cfg.train.batch_size,
                          random.Random(f"{cfg.run.seed}/train/{r}"))
        rows = []
        for k, m in enumerate(self.runtime.train(batch, plan, lam)):
            row = {"kind": "step", "round": r, "round_step": k, **m}
            self.run_dir.append_metrics(row)
            self.metrics.on_step(row)
            rows.append(row)
        return rows

    def run_round(self, r: int) -> dict[str, Any]:
        cfg, rd, rt = self.cfg, self.run_dir, self.runtime
        t_round, t_epoch = time.perf_counter(), time.time()
        for role, n in rt.replicas().items():
            self.metrics.set_replicas(role, n)
        batch, timings, counts = self.collect(r)
        t = time.perf_counter()
        steps = self.learn(r, batch)
        timings["train"] = time.perf_counter() - t
        t = time.perf_counter()
        tmp = rd.checkpoint_dir(r).with_name(f"{r:04d}.tmp")
        rt.save(tmp)
        tmp.rename(rd.checkpoint_dir(r))
        timings["checkpoint"] = time.perf_counter() - t
        t = time.perf_counter()
        version = r + 1
        sync_info = rt.sync(version)
        timings["sync"] = time.perf_counter() - t
        for k in ("train", "checkpoint", "sync"):
            self.metrics.observe_stage(k, timings[k])
        if cfg.runtime.timeline and rt.timeline(rd.partial_round_dir(r) / "timeline.json", since=t_epoch):
            log.info("ray timeline of round %d: %s", r, rd.round_dir(r) / "timeline.json")
        wall = time.perf_counter() - t_round
        row = {
            "kind": "round",
            "round": r,
            "weights_version": version,
            "global_step": rt.global_step(),
            "loss_mean": _mean([s["loss"] for s in steps]),
            "reward_term_mean": _mean([s["reward_term"] for s in steps]),
            "ref_term_mean": _mean([s["ref_term"] for s in steps]),
            **round_summary(batch),
            "parse": parse_counts(batch.records),
            "filter": filter_counts(batch.records, self.cfg.filter.enabled),
            **counts,
            "replicas": rt.replicas(),
            "sync": sync_info,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "wall_s": round(wall, 3),
            "samples_per_s": len(batch) / wall if wall > 0 else None,
        }
        if r == 0:
            self._first_round = row
        elif self._first_round is None:
            self._first_round = rd.round_metrics(0)
        warning = None if r == 0 or self._first_round is None else score_drop_warning(self._first_round, row)
        if warning is not None:
            row["warnings"] = [warning]
            log.warning("round %d: %s", r, warning)
        rd.append_metrics(row)
        self.metrics.on_round(row)
        rd.commit_round(r, weights_version=version, global_step=rt.global_step())
        if not cfg.output.keep_all_checkpoints:
            rd.prune_checkpoints(r)
        log.info(
            "round %d (%d/%d) done in %.1f s: loss %s, global %s, local %s, kept %d/%d boxes, "
            "parse %s -> %s",
            r, r + 1, cfg.run.rounds, wall,
            "-" if row["loss_mean"] is None else f"{row['loss_mean']:.4f}",
            "-" if row["global_score_mean"] is None else f"{row['global_score_mean']:+.3f}",
            "-" if row["local_score_mean"] is None else f"{row['local_score_mean']:+.3f}",
            row["boxes_kept"], row["boxes"], row["parse"], rd.round_dir(r),
        )
        return row
