"""The DeepSpeed config of the learner, built from :class:`TrainConfig` by a pure function.

The optimizer and the warm-up schedule are not in the config: the engine passes DeepSpeed a
client ``torch.optim.AdamW`` (SPEC betas / eps / weight decay) and a client ``LambdaLR``
(:func:`srum_ray.learner.engine.warmup_factor`), so the torch and DeepSpeed engines step the
same optimizer.
"""

from __future__ import annotations

from typing import Any

from srum_ray.config.schema import TrainConfig

__all__ = ["DTYPES", "build_deepspeed_config", "micro_batch_size"]

#: training dtypes the config knows
DTYPES = ("float32", "bfloat16", "float16")
#: DeepSpeed prints a line every this many steps; large = effectively never
STEPS_PER_PRINT = 1_000_000_000


def micro_batch_size(batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Rows one rank feeds per micro-step: ``batch_size / (world_size * grad_accum_steps)``.

    Raises:
        ValueError: naming the three settings, when the division is not exact or the
            world size is below 1.
    """
    if world_size < 1:
        raise ValueError(f"runtime.learner.replicas gives a world size of {world_size}; need >= 1")
    per_step = world_size * grad_accum_steps
    if grad_accum_steps < 1 or batch_size < per_step or batch_size % per_step:
        raise ValueError(
            f"train.batch_size ({batch_size}) must be a positive multiple of learner world size "
            f"(runtime.learner.replicas, {world_size}) x train.grad_accum_steps "
            f"({grad_accum_steps}) = {per_step}"
        )
    return batch_size // per_step


def build_deepspeed_config(train: TrainConfig, world_size: int, *, dtype: str = "float32") -> dict[str, Any]:
    """DeepSpeed config dict for one optimizer step of ``train.batch_size`` rows.

    Args:
        train: the ``train`` section (batch size, accumulation, clipping, ZeRO stage).
        world_size: learner ranks (``runtime.learner.replicas``, at least 1).
        dtype: ``float32``, ``bfloat16`` (bf16 block) or ``float16`` (fp16 with dynamic
            loss scaling).

    Returns:
        A JSON-serialisable dict for ``deepspeed.initialize(config=...)``, without
        ``optimizer`` / ``scheduler`` blocks. ``overlap_comm`` and ``contiguous_gradients``
        are on only for more than one rank; bf16 skips DeepSpeed's gradient overflow scan
        (both measured in docs/PERFORMANCE.md).

    Raises:
        ValueError: batch size not divisible by world size x accumulation, or unknown dtype.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown training dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    micro = micro_batch_size(train.batch_size, world_size, train.grad_accum_steps)
    # overlapped, contiguous gradient buckets serve the reduce-scatter between ranks; with one
    # rank there is nothing to reduce and they only add a copy of every gradient
    many = world_size > 1
    zero: dict[str, Any] = {
        "stage": int(train.zero_stage),
        "overlap_comm": many,
        "contiguous_gradients": many,
    }
    # bf16 has float32's exponent range and no loss scale: DeepSpeed's default scan of every
    # gradient for inf/NaN (an extra pass before each step) is off, as in its float32 path
    # and in the torch engine; a non-finite gradient shows in the step's grad_norm
    bf16: dict[str, Any] = {"enabled": dtype == "bfloat16"}
    if dtype == "bfloat16":
        bf16["check_grad_overflow"] = False
    fp16: dict[str, Any] = {"enabled": dtype == "float16"}
    if dtype == "float16":
        fp16.update(loss_scale=0, initial_scale_power=16, loss_scale_window=1000, hysteresis=2,
                    min_loss_scale=1)
    return {
        "train_batch_size": int(train.batch_size),
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": int(train.grad_accum_steps),
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": zero,
        "bf16": bf16,
        "fp16": fp16,
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
