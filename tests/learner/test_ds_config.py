"""The pure DeepSpeed config builder."""

import json

import pytest

from srum_ray.config.schema import TrainConfig
from srum_ray.learner.ds_config import build_deepspeed_config, micro_batch_size


def test_fp32_zero2_two_ranks_two_micro_steps():
    train = TrainConfig(batch_size=8, grad_accum_steps=2, zero_stage=2, grad_clip=0.5)
    assert build_deepspeed_config(train, world_size=2) == {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 0.5,
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def test_bf16_zero3_one_rank():
    train = TrainConfig(batch_size=4, zero_stage=3)
    cfg = build_deepspeed_config(train, world_size=1, dtype="bfloat16")
    assert cfg["train_batch_size"] == 4 and cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": False, "contiguous_gradients": False}
    assert cfg["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert cfg["fp16"] == {"enabled": False}


def test_fp16_has_dynamic_loss_scaling():
    cfg = build_deepspeed_config(TrainConfig(batch_size=6), world_size=3, dtype="float16")
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["fp16"] == {
        "enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
        "hysteresis": 2, "min_loss_scale": 1,
    }
    assert cfg["bf16"] == {"enabled": False}


def test_no_optimizer_or_scheduler_and_json_serialisable():
    cfg = build_deepspeed_config(TrainConfig(), world_size=1)
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert json.loads(json.dumps(cfg)) == cfg


@pytest.mark.parametrize(
    "batch, world, accum",
    [(4, 3, 1), (6, 2, 2), (2, 4, 1), (4, 1, 3)],
)
def test_indivisible_batch_names_the_settings(batch, world, accum):
    train = TrainConfig(batch_size=batch, grad_accum_steps=accum)
    with pytest.raises(ValueError) as err:
        build_deepspeed_config(train, world_size=world)
    msg = str(err.value)
    for name in ("train.batch_size", "runtime.learner.replicas", "train.grad_accum_steps"):
        assert name in msg
    assert f"= {world * accum}" in msg


def test_micro_batch_size_and_bad_inputs():
    assert micro_batch_size(12, 2, 3) == 2
    assert micro_batch_size(12, 1, 1) == 12
    with pytest.raises(ValueError, match="world size of 0"):
        micro_batch_size(4, 0, 1)
    with pytest.raises(ValueError, match="unknown training dtype 'int8'"):
        build_deepspeed_config(TrainConfig(), world_size=1, dtype="int8")
