"""Learner engines: plain PyTorch (one process) and DeepSpeed ZeRO (one or many ranks)."""

from __future__ import annotations

from srum_ray.config.schema import TrainConfig
from srum_ray.learner.engine import Engine, TorchEngine
from srum_ray.models.base import GenerationModel

__all__ = ["Engine", "TorchEngine", "build_engine"]


def build_engine(
    generator: GenerationModel,
    train_cfg: TrainConfig,
    seed: int = 0,
    *,
    dtype: str = "float32",
    world_size: int = 1,
) -> Engine:
    """The engine named by ``train.engine`` over ``generator.trainable_module()``.

    Args:
        generator: the generator to train.
        train_cfg: the ``train`` section.
        seed: run seed (training noise is a pure function of seed and step).
        dtype: training dtype (``run.dtype``); the DeepSpeed engine turns on bf16 / fp16.
        world_size: learner ranks; above 1 only the DeepSpeed engine can run.

    Raises:
        ValueError: ``train.engine`` is ``torch`` with more than one rank.
    """
    if train_cfg.engine == "deepspeed":
        from srum_ray.learner.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(generator, train_cfg, seed, dtype=dtype)
    if world_size > 1:
        raise ValueError(
            f"train.engine 'torch' runs one process, but runtime.learner.replicas is {world_size}: "
            "set train.engine=deepspeed for more than one learner rank"
        )
    return TorchEngine(generator, train_cfg, seed=seed)
