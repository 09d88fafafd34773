"""The stages of one SRUM round as functions on :class:`~srum_ray.types.RolloutBatch`.

generate -> propose -> filter -> judge -> reward. Each takes the role object it needs (a
generator, grounder, box filter, judge) and a batch, fills the records' fields for its stage
and returns the batch. The single-process loop calls them in order; the Ray actors wrap the
same calls, so both paths share this code.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from srum_ray.config.schema import JudgeConfig, RewardConfig
from srum_ray.data import SampleSpec
from srum_ray.grounding.base import Grounder
from srum_ray.judging.filter import BoxFilter
from srum_ray.judging.judge import Judge
from srum_ray.models.base import GenerationModel
from srum_ray.rewards import (
    ablation_needs_judging,
    dense_reward_map,
    resolve_missing,
    reward_stats,
    sample_weight_map,
)
from srum_ray.types import FILTERED, Box, RolloutBatch, SampleRecord


def generate_stage(
    generator: GenerationModel, specs: Sequence[SampleSpec], round_index: int
) -> RolloutBatch:
    """Draw one image per spec with the generator's current weights."""
    out = generator.generate([s.prompt for s in specs], [s.seed for s in specs])
    records = [
        SampleRecord(
            id=s.id,
            round=round_index,
            prompt=s.prompt,
            seed=s.seed,
            weights_version=generator.weights_version,
            width=img.width,
            height=img.height,
        )
        for s, img in zip(specs, out.images)
    ]
    return RolloutBatch(records=records, latents=out.latents, cond=out.cond, images=out.images)


def _boxes(rec: SampleRecord) -> list[Box]:
    return [Box.from_list(b) for b in rec.boxes]


def propose_stage(grounder: Grounder, batch: RolloutBatch) -> RolloutBatch:
    """Region proposals: ``records[i].boxes`` (pixel [x0, y0, x1, y1])."""
    boxes = grounder.propose(batch.images, [r.prompt for r in batch.records])
    for rec, bs in zip(batch.records, boxes):
        rec.boxes = [b.as_list() for b in bs]
        rec.kept = [True] * len(bs)
    return batch


def filter_stage(box_filter: BoxFilter, batch: RolloutBatch) -> RolloutBatch:
    """The understanding module keeps only boxes about the prompt (``records[i].kept``)."""
    kept, raw = box_filter.filter(
        batch.images, [r.prompt for r in batch.records], [_boxes(r) for r in batch.records]
    )
    for rec, k, a in zip(batch.records, kept, raw):
        rec.kept = list(k)
        rec.filter_raw = list(a)
    return batch


def judge_stage(judge: Judge, batch: RolloutBatch) -> RolloutBatch:
    """Global and local scores, raw answers and parse statuses into the records."""
    verdicts = judge.judge(
        batch.images,
        [r.prompt for r in batch.records],
        [_boxes(r) for r in batch.records],
        [list(r.kept) if r.kept else [True] * len(r.boxes) for r in batch.records],
        # retry seeds follow the sample, not its position in whatever chunk a worker got
        keys=[r.id for r in batch.records],
    )
    for rec, v in zip(batch.records, verdicts):
        v.apply_to(rec)
    return batch


#: what :func:`reward_stage` is: (judged batch, reward config, judge config) -> (batch with
#: ``weights`` set, R maps, missing-score counts); ``RoundLoop(reward_fn=...)`` takes any such
RewardFn = Callable[[RolloutBatch, RewardConfig, JudgeConfig], tuple[RolloutBatch, list[np.ndarray], dict[str, int]]]


#: the counts :func:`selection_drop` adds to :func:`reward_stage`'s: samples left out by
#: ``reward.min_global`` / ``reward.min_region`` (a round row keeps them under ``selection``)
SELECTION_KEYS = ("below_min_global", "below_min_region")


def selection_drop(g: float | None, region_scores: Sequence[float | None], reward_cfg: RewardConfig) -> tuple[str, str] | None:
    """``(count key, reason)`` when ``reward.min_global`` / ``reward.min_region`` leave a judged
    sample out, None when it is kept.

    A sample is kept when its global score is at least ``min_global`` and every scored region
    (after the relevance filter and the missing-score policy) at least ``min_region``; a
    missing global score fails ``min_global``, a missing region score is not compared."""
    if reward_cfg.min_global is not None:
        if g is None:
            return "below_min_global", f"no global score to compare with reward.min_global {reward_cfg.min_global:g}"
        if g < reward_cfg.min_global:
            return "below_min_global", f"global score {g:.2f} below reward.min_global {reward_cfg.min_global:g}"
    if reward_cfg.min_region is not None:
        low = [s for s in region_scores if s is not None and s < reward_cfg.min_region]
        if low:
            return "below_min_region", f"a region scored {min(low):.2f}, below reward.min_region {reward_cfg.min_region:g}"
    return None


def reward_stage(
    batch: RolloutBatch, reward_cfg: RewardConfig, judge_cfg: JudgeConfig
) -> tuple[RolloutBatch, list[np.ndarray], dict[str, int]]:
    """Dense maps R (image resolution, before alpha) and loss weights alpha * R (latent grid).

    Filtered boxes are not painted. Missing scores follow ``judge_cfg.on_missing_*``; a
    sample dropped by that policy gets ``trained = False`` and weight 0.

    Returns:
        The batch with ``weights [B, 1, h, w]`` set, the list of R maps ``[H, W]`` float32,
        and counts of how missing scores were handled.
    """
    if batch.latents is None:
        raise ValueError("reward_stage needs the batch's latents (for the latent grid)")
    h, w = batch.latents.shape[-2:]
    maps: list[np.ndarray] = []
    weights: list[torch.Tensor] = []
    totals: dict[str, int] = {}
    for rec in batch.records:
        kept_idx = [i for i, k in enumerate(rec.kept) if k] if rec.kept else list(range(len(rec.boxes)))
        boxes = [Box.from_list(rec.boxes[i]) for i in kept_idx]
        scores = [rec.region_scores[i] if i < len(rec.region_scores) else None for i in kept_idx]
        res = resolve_missing(
            scores, rec.global_score, judge_cfg.on_missing_region, judge_cfg.on_missing_global
        )
        map_scores, g, counts = res.scores, res.global_score, res.counts
        # sft never reads a score, so a missing one cannot be a reason to drop its sample
        drop = res.drop_sample and ablation_needs_judging(reward_cfg.ablation)
        drop_reason = res.drop_reason
        selected_out = None if drop else selection_drop(g, map_scores, reward_cfg)
        if selected_out is not None:
            # selection reads the judge's scores whatever the loss weights with (sft included)
            key, drop_reason = selected_out
            drop = True
            totals[key] = totals.get(key, 0) + 1
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + int(v)
        uncovered = g if reward_cfg.uncovered == "global" else None
        R = dense_reward_map(
            rec.height, rec.width, boxes, map_scores, reward_cfg.convention, reward_cfg.overlap, uncovered
        )
        rec.convention = reward_cfg.convention
        rec.overlap = reward_cfg.overlap
        rec.ablation = reward_cfg.ablation
        if drop:
            rec.trained = False
            rec.drop_reason = drop_reason
            rec.alpha = None
            weight = torch.zeros(1, 1, h, w)
        else:
            weight, alpha = sample_weight_map(R, g, reward_cfg.convention, reward_cfg.ablation, (h, w))
            rec.alpha = float(alpha)
        rec.reward_stats = reward_stats(R, rec.alpha, weight, convention=reward_cfg.convention)
        maps.append(R.astype(np.float32))
        weights.append(weight.reshape(1, 1, h, w).float())
    batch.weights = torch.cat(weights, dim=0) if weights else None
    return batch, maps, totals


# Statuses that count as a failure to parse, for metrics.
def parse_counts(records: Sequence[SampleRecord]) -> dict[str, int]:
    """Counts of parse statuses over a round (global_* and region_*)."""
    out: dict[str, int] = {}
    for rec in records:
        g = rec.parse.get("global")
        if g is not None:
            out[f"global_{g}"] = out.get(f"global_{g}", 0) + 1
        for s in rec.parse.get("regions", []):
            if s == FILTERED:
                continue
            out[f"region_{s}"] = out.get(f"region_{s}", 0) + 1
    return out


def filter_counts(records: Sequence[SampleRecord], enabled: bool = True) -> dict[str, int]:
    """Boxes kept and dropped by the relevance filter, and answers it could not read
    (none when the filter is disabled: it asked nothing)."""
    from srum_ray.judging.parser import parse_choice

    kept = sum(1 for r in records for k in r.kept if k)
    boxes = sum(len(r.kept) for r in records)
    unparsed = 0 if not enabled else sum(
        1 for r in records for a in r.filter_raw if parse_choice(a, ("yes", "no")) is None
    )
    return {"kept": kept, "dropped": boxes - kept, "unparsed": unparsed}
