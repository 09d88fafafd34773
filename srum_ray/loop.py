"""The single-process round loop: generate -> propose -> filter -> judge -> reward -> learn.

:class:`RoundLoop` builds every role in this process, runs ``cfg.run.rounds`` online rounds
and writes the run directory (:mod:`srum_ray.rundir`). The learner trains the generator's
own trainable module, then pushes the refreshed weights (with a new version) to the
generator before the next round draws anything.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from srum_ray.config.schema import SrumConfig
from srum_ray.data import SampleSpec, load_prompts, round_samples
from srum_ray.grounding import build_grounder
from srum_ray.judging.filter import BoxFilter, FilterStats
from srum_ray.judging.judge import Judge, JudgeStats
from srum_ray.learner.engine import Engine, TorchEngine
from srum_ray.models.registry import build_model
from srum_ray.rewards import effective_lambda_c
from srum_ray.rundir import RunDir
from srum_ray.stages import (
    filter_stage,
    generate_stage,
    judge_stage,
    parse_counts,
    propose_stage,
    reward_stage,
)
from srum_ray.types import RolloutBatch
from srum_ray.viz import contact_sheet, overlay_picture

log = logging.getLogger("srum_ray")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is cuda but torch sees no CUDA device")
    return name


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5


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
        "local_score_mean": _mean(local),
        "local_score_std": _std(local),
        "alpha_mean": _mean(alphas),
        "weight_mean": float(w[trained].mean()) if w is not None and trained else None,
        "weight_pos_frac": float((w[trained] > 0).float().mean()) if w is not None and trained else None,
        "weight_neg_frac": float((w[trained] < 0).float().mean()) if w is not None and trained else None,
    }


@dataclass
class Roles:
    """Every role of a round, built in this process."""

    generator: Any
    grounder: Any
    box_filter: BoxFilter
    judge: Judge
    engine: Engine


class ModelLoadError(RuntimeError):
    """A checkpoint or model could not be built (one line naming the path and problem)."""


def build_roles(cfg: SrumConfig, device: str) -> Roles:
    """Build the model, grounder, filter, judge and learner engine from config."""
    if cfg.run.cpu_threads:
        torch.set_num_threads(cfg.run.cpu_threads)
    t0 = time.perf_counter()
    try:
        model = build_model(cfg.model, cfg.generation, device=device, dtype=DTYPES[cfg.run.dtype])
        grounder = build_grounder(cfg.grounder, understanding=model.understanding, device=device)
    except (FileNotFoundError, ValueError, OSError, ImportError) as e:
        raise ModelLoadError(f"{type(e).__name__}: {e}".splitlines()[0]) from e
    log.info("built models on %s in %.1f s", device, time.perf_counter() - t0)
    return Roles(
        generator=model.generator,
        grounder=grounder,
        box_filter=BoxFilter(model.understanding, cfg.filter, batch_size=cfg.judge.batch_size),
        judge=Judge(model.understanding, cfg.judge, seed=cfg.run.seed),
        engine=TorchEngine(model.generator, cfg.train, seed=cfg.run.seed),
    )


class RoundLoop:
    """Runs SRUM rounds in one process and records everything in a :class:`RunDir`."""

    def __init__(self, cfg: SrumConfig, run_dir: RunDir, roles: Roles | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.prompts = load_prompts(cfg.data.prompts)
        self.device = resolve_device(cfg.run.device)
        if cfg.run.cpu_threads:
            torch.set_num_threads(cfg.run.cpu_threads)
        self.roles = roles or build_roles(cfg, self.device)
        self.start_round = 0
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
        self.roles.engine.load(ckpt)
        self.roles.generator.load_trainable_state(
            self.roles.engine.state_dict_for_sync(), version=state["weights_version"]
        )
        self.start_round = last + 1
        log.info(
            "resumed from %s: round %d done, weights version %d, learner step %d",
            ckpt, last, state["weights_version"], self.roles.engine.global_step,
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

        Returns the rewarded batch, seconds per stage, and the round's counts (missing-score
        policy, judge and filter counters).
        """
        cfg, roles, rd = self.cfg, self.roles, self.run_dir
        specs = self._specs(r)
        rd.start_round(r)
        timings = {k: 0.0 for k in ("generate", "propose", "filter", "judge", "reward", "write")}
        missing: dict[str, int] = {}
        judge_stats, filter_stats = JudgeStats(), FilterStats()
        parts: list[RolloutBatch] = []
        bar = tqdm(
            total=len(specs), desc=f"round {r + 1}/{cfg.run.rounds}", unit="img",
            disable=not cfg.run.progress, file=sys.stderr, dynamic_ncols=True,
        )
        for start in range(0, len(specs), cfg.generation.batch_size):
            chunk = specs[start : start + cfg.generation.batch_size]
            steps = [
                ("generate", lambda b: generate_stage(roles.generator, chunk, r)),
                ("propose", lambda b: propose_stage(roles.grounder, b)),
                ("filter", lambda b: filter_stage(roles.box_filter, b)),
                ("judge", lambda b: judge_stage(roles.judge, b)),
            ]
            batch = None
            for name, fn in steps:
                bar.set_postfix_str(name)
                t = time.perf_counter()
                batch = fn(batch)
                timings[name] += time.perf_counter() - t
            judge_stats.add(roles.judge.stats)
            filter_stats.add(roles.box_filter.stats)
            t = time.perf_counter()
            batch, maps, counts = reward_stage(batch, cfg.reward, cfg.judge)
            for k, v in counts.items():
                missing[k] = missing.get(k, 0) + v
            timings["reward"] += time.perf_counter() - t
            t = time.perf_counter()
            for rec, image, R in zip(batch.records, batch.images, maps):
                rd.write_image(r, rec, image)
                rd.write_reward_map(r, rec, R)
                if cfg.output.overlays:
                    rd.write_overlay(r, rec, overlay_picture(image, rec, R))
            timings["write"] += time.perf_counter() - t
            parts.append(batch)
            bar.update(len(chunk))
        bar.close()
        batch = RolloutBatch.concat(parts)
        rd.write_samples(r, batch.records)
        if cfg.output.overlays:
            from PIL import Image

            d = rd.partial_round_dir(r)
            sheet = contact_sheet([Image.open(d / rec.overlay) for rec in batch.records])
            sheet.save(d / "overview.png")
        counts = {
            "missing_policy": missing,
            "judge_stats": judge_stats.as_dict(),
            "filter_stats": filter_stats.as_dict(),
        }
        return batch, timings, counts

    def learn(self, r: int, batch: RolloutBatch) -> list[dict[str, Any]]:
        """``train.steps_per_round`` optimizer steps on the round's trained samples."""
        cfg, engine = self.cfg, self.roles.engine
        trained = [i for i, rec in enumerate(batch.records) if rec.trained]
        if not trained:
            log.warning("round %d: no sample can be trained (all dropped by missing scores)", r)
            return []
        lam = effective_lambda_c(cfg.train.lambda_c, cfg.reward.ablation)
        rng = random.Random(f"{cfg.run.seed}/train/{r}")
        order: list[int] = []
        rows = []
        for step in tqdm(
            range(cfg.train.steps_per_round), desc=f"train {r + 1}/{cfg.run.rounds}", unit="step",
            disable=not cfg.run.progress, file=sys.stderr, dynamic_ncols=True,
        ):
            idx = []
            while len(idx) < min(cfg.train.batch_size, len(trained)):
                if not order:
                    order = list(trained)
                    rng.shuffle(order)
                idx.append(order.pop())
            m = engine.train_batch(batch.select(idx), lam)
            row = {"kind": "step", "round": r, "round_step": step, **m}
            self.run_dir.append_metrics(row)
            rows.append(row)
        return rows

    def run_round(self, r: int) -> dict[str, Any]:
        cfg, rd, roles = self.cfg, self.run_dir, self.roles
        t_round = time.perf_counter()
        batch, timings, counts = self.collect(r)
        t = time.perf_counter()
        steps = self.learn(r, batch)
        timings["train"] = time.perf_counter() - t
        t = time.perf_counter()
        tmp = rd.checkpoint_dir(r).with_name(f"{r:04d}.tmp")
        roles.engine.save(tmp)
        tmp.rename(rd.checkpoint_dir(r))
        timings["checkpoint"] = time.perf_counter() - t
        t = time.perf_counter()
        version = r + 1
        roles.generator.load_trainable_state(roles.engine.state_dict_for_sync(), version=version)
        timings["sync"] = time.perf_counter() - t
        wall = time.perf_counter() - t_round
        row = {
            "kind": "round",
            "round": r,
            "weights_version": version,
            "global_step": roles.engine.global_step,
            "loss_mean": _mean([s["loss"] for s in steps]),
            "reward_term_mean": _mean([s["reward_term"] for s in steps]),
            "ref_term_mean": _mean([s["ref_term"] for s in steps]),
            **round_summary(batch),
            "parse": parse_counts(batch.records),
            **counts,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "wall_s": round(wall, 3),
            "samples_per_s": len(batch) / wall if wall > 0 else None,
        }
        rd.append_metrics(row)
        rd.commit_round(r, weights_version=version, global_step=roles.engine.global_step)
        if not cfg.output.keep_all_checkpoints:
            rd.prune_checkpoints(r)
        log.info(
            "round %d/%d done in %.1f s: loss %s, global %s, local %s, kept %d/%d boxes, "
            "parse %s -> %s",
            r + 1, cfg.run.rounds, wall,
            "-" if row["loss_mean"] is None else f"{row['loss_mean']:.4f}",
            "-" if row["global_score_mean"] is None else f"{row['global_score_mean']:+.3f}",
            "-" if row["local_score_mean"] is None else f"{row['local_score_mean']:+.3f}",
            row["boxes_kept"], row["boxes"], row["parse"], rd.round_dir(r),
        )
        return row
