"""The exact evaluator as the reward: a diagnostic upper bound for the shapes world.

SRUM rewards the generator with its own understanding. To tell whether a run fails to improve
because the judge is wrong or because the self-generated data cannot teach the generator, the
same rounds can be trained with the exact evaluator's verdict instead (a judge that is never
wrong). Two modes, both on whole samples:

- ``binary``: loss weight 1 on every latent position of an image that satisfies every
  constraint of its prompt, 0 elsewhere (the batch mean keeps the zero rows: weighted SFT);
- ``filter``: the same weights, and the wrong images are dropped from the loss altogether
  (``trained = False``), so every optimizer step sees only correct images (rejection-sampling
  fine-tuning).

The judge still runs and its boxes, scores and reward maps are written as usual; only the loss
weights change. Each record's ``reward_stats["oracle_correct"]`` holds the verdict (1 or 0).
Used by ``scripts/shapes_scan.py --oracle``; results in docs/RESULTS.md ("Hyperparameter scan").
"""

from __future__ import annotations

import torch

from srum_ray.config.schema import JudgeConfig, RewardConfig
from srum_ray.shapes.evaluate import correct
from srum_ray.shapes.grammar import parse_prompt
from srum_ray.stages import RewardFn, reward_stage
from srum_ray.types import RolloutBatch

__all__ = ["ORACLE_MODES", "oracle_reward"]

ORACLE_MODES = ("binary", "filter")


def oracle_reward(mode: str) -> RewardFn:
    """A reward function with :func:`srum_ray.stages.reward_stage`'s signature whose loss weights
    are the exact evaluator's verdict (see the module docstring for ``mode``)."""
    if mode not in ORACLE_MODES:
        raise ValueError(f"unknown oracle mode {mode!r}; allowed: {', '.join(ORACLE_MODES)}")

    def reward(batch: RolloutBatch, reward_cfg: RewardConfig, judge_cfg: JudgeConfig) -> tuple:
        batch, maps, counts = reward_stage(batch, reward_cfg, judge_cfg)
        if len(batch.images) != len(batch.records):
            raise ValueError("the oracle reward needs the batch's images")
        verdicts = []
        for rec, image in zip(batch.records, batch.images):
            ok = correct(parse_prompt(rec.prompt), image)
            verdicts.append(1.0 if ok else 0.0)
            rec.reward_stats = {**rec.reward_stats, "oracle_correct": verdicts[-1]}
            if mode == "filter" and not ok:
                rec.trained = False
                rec.drop_reason = "oracle: image does not satisfy its prompt"
        w = torch.tensor(verdicts, dtype=torch.float32).view(-1, 1, 1, 1)
        batch.weights = w * torch.ones_like(batch.weights)
        return batch, maps, counts

    return reward
