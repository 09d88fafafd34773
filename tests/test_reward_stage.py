"""srum_ray.stages.reward_stage: loss weights per sample, and ``reward.min_global`` selection."""

from __future__ import annotations

import pytest
import torch

from srum_ray.config.load import ConfigError, load_config
from srum_ray.config.schema import JudgeConfig, RewardConfig
from srum_ray.stages import reward_stage
from srum_ray.types import RolloutBatch, SampleRecord


def _batch(globals_: list[float | None]) -> RolloutBatch:
    """One 32 px image per global score, a box over its left half scored 0.8."""
    records = [
        SampleRecord(id=str(i), round=0, prompt="p", seed=i, weights_version=0, width=32, height=32,
                     boxes=[[0, 0, 16, 32]], kept=[True], region_scores=[0.8], global_score=g)
        for i, g in enumerate(globals_)
    ]
    return RolloutBatch(records=records, latents=torch.zeros(len(records), 4, 8, 8))


def test_without_min_global_every_judged_sample_trains():
    batch, _, counts = reward_stage(_batch([-0.9, 0.2, 0.9]), RewardConfig(), JudgeConfig())
    assert [r.trained for r in batch.records] == [True, True, True]
    assert "below_min_global" not in counts
    # paper convention: weight alpha * R on the box's half, 0 elsewhere
    for rec, w in zip(batch.records, batch.weights):
        assert torch.allclose(w[0, :, :4], torch.full((8, 4), rec.alpha * 0.8))
        assert torch.all(w[0, :, 4:] == 0)


def test_min_global_drops_the_samples_the_judge_calls_wrong_and_keeps_the_others_weights():
    plain, _, _ = reward_stage(_batch([-0.9, 0.5, 0.75, 0.9]), RewardConfig(), JudgeConfig())
    batch, _, counts = reward_stage(_batch([-0.9, 0.5, 0.75, 0.9]), RewardConfig(min_global=0.75), JudgeConfig())
    assert [r.trained for r in batch.records] == [False, False, True, True]
    assert counts["below_min_global"] == 2
    for rec, w, w_plain in zip(batch.records, batch.weights, plain.weights):
        if rec.trained:
            assert rec.drop_reason is None and torch.equal(w, w_plain)
        else:
            assert "below reward.min_global 0.75" in rec.drop_reason and rec.alpha is None
            assert torch.all(w == 0)


def test_min_global_selects_for_sft_too_and_a_missing_score_keeps_its_own_reason():
    batch, _, counts = reward_stage(_batch([-0.9, 0.9]), RewardConfig(ablation="sft", min_global=0.5), JudgeConfig())
    assert [r.trained for r in batch.records] == [False, True] and counts["below_min_global"] == 1
    assert torch.all(batch.weights[1] == 1)  # sft's weight on the kept sample
    # without a score: the missing policy's own drop, or (neutral policy kept it) not selected
    batch, _, counts = reward_stage(_batch([None, 0.9]), RewardConfig(min_global=0.5), JudgeConfig(on_missing_global="drop_sample"))
    assert [r.trained for r in batch.records] == [False, True]
    assert batch.records[0].drop_reason == "missing_global" and "below_min_global" not in counts
    batch, _, counts = reward_stage(_batch([None, 0.9]), RewardConfig(ablation="sft", min_global=0.5), JudgeConfig())
    assert [r.trained for r in batch.records] == [False, True]
    assert batch.records[0].drop_reason == "no global score to compare with reward.min_global 0.5"


def test_min_global_is_range_checked_in_config():
    assert load_config(None, ["reward.min_global=0.75"]).reward.min_global == 0.75
    with pytest.raises(ConfigError, match="reward.min_global"):
        load_config(None, ["reward.min_global=1.5"])


def test_min_region_drops_a_sample_with_an_unwanted_object():
    batch = _batch([0.9, 0.9, 0.9])
    batch.records[1].boxes.append([16, 0, 32, 32])
    batch.records[1].kept.append(True)
    batch.records[1].region_scores.append(-0.6)  # an object the prompt does not ask for
    batch.records[2].boxes.append([16, 0, 32, 32])
    batch.records[2].kept.append(True)
    batch.records[2].region_scores.append(None)  # a missing score is not compared
    out, _, counts = reward_stage(batch, RewardConfig(min_region=0.0), JudgeConfig())
    assert [r.trained for r in out.records] == [True, False, True]
    assert counts["below_min_region"] == 1 and "below_min_global" not in counts
    assert out.records[1].drop_reason == "a region scored -0.60, below reward.min_region 0"
    assert torch.all(out.weights[1] == 0) and torch.any(out.weights[0] != 0)


def test_uncovered_global_gives_the_canvas_no_box_covers_the_global_score():
    globals_ = [-0.5, 0.9]
    batch, maps, _ = reward_stage(_batch(globals_), RewardConfig(uncovered="global"), JudgeConfig())
    for rec, g, R, w in zip(batch.records, globals_, maps, batch.weights):
        assert rec.alpha == pytest.approx((g + 1) / 2)
        assert (R[:, :16] == pytest.approx(0.8)) and (R[:, 16:] == pytest.approx(g))  # the map kept on disk
        assert torch.allclose(w[0, :, :4], torch.full((8, 4), rec.alpha * 0.8))
        assert torch.allclose(w[0, :, 4:], torch.full((8, 4), rec.alpha * g))
    # public_code paints (g + 1) / 2 there
    batch, maps, _ = reward_stage(_batch([0.9]), RewardConfig(uncovered="global", convention="public_code"), JudgeConfig())
    assert maps[0][:, 16:] == pytest.approx(0.95)
    with pytest.raises(ConfigError, match="reward.uncovered"):
        load_config(None, ["reward.uncovered=box"])
