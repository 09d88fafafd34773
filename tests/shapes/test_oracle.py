"""The exact evaluator as the reward (srum_ray.shapes.oracle): weights and drops. Its wiring
through RoundLoop's reward_fn and scripts/shapes_scan.py is tested in test_demo.py."""

from __future__ import annotations

import random

import pytest
import torch

from srum_ray.config.schema import JudgeConfig, RewardConfig
from srum_ray.shapes import grammar, sampler
from srum_ray.shapes.evaluate import correct
from srum_ray.shapes.oracle import oracle_reward
from srum_ray.shapes.render import render
from srum_ray.types import RolloutBatch, SampleRecord


def _batch() -> tuple[RolloutBatch, list[bool]]:
    """Right and wrong renders of the same prompts, judged with a made-up global score."""
    rng = random.Random(5)
    records, images, truth = [], [], []
    for k in range(3):
        spec = grammar.sample_prompt("colour", rng)
        right = render(sampler.scene_for(spec, rng))
        wrong = render(sampler.wrong_scene_for(spec, rng)[0])
        for j, image in enumerate((right, wrong)):
            records.append(SampleRecord(id=f"{k}-{j}", round=0, prompt=spec.text, seed=k, weights_version=0,
                                        width=image.width, height=image.height, global_score=0.5))
            images.append(image)
            truth.append(correct(spec, image))
    latents = torch.zeros(len(records), 48, 16, 16)
    return RolloutBatch(records=records, latents=latents, images=images), truth


@pytest.mark.parametrize("mode", ["binary", "filter"])
def test_oracle_weights_are_the_evaluators_verdict(mode):
    batch, truth = _batch()
    assert truth == [True, False] * 3  # the renders really are right and wrong
    batch, maps, _ = oracle_reward(mode)(batch, RewardConfig(), JudgeConfig())
    assert batch.weights.shape == (6, 1, 16, 16) and len(maps) == 6
    for i, ok in enumerate(truth):
        assert torch.all(batch.weights[i] == (1.0 if ok else 0.0))
        rec = batch.records[i]
        assert rec.reward_stats["oracle_correct"] == float(ok)
        # binary keeps the wrong images in the batch mean; filter drops them from the loss
        assert rec.trained == (ok or mode == "binary")
        assert (rec.drop_reason is None) == rec.trained


def test_oracle_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown oracle mode 'soft'"):
        oracle_reward("soft")
