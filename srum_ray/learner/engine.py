"""The learner engine interface and its plain-PyTorch implementation.

An engine owns the optimizer of a generator's trainable module and applies
:func:`srum_ray.losses.srum_flow_loss` to rewarded batches. The DeepSpeed engine of the
distributed runtime implements the same interface.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from srum_ray.config.schema import TrainConfig
from srum_ray.losses import noisy_latents, sample_timesteps, srum_flow_loss, velocity_target
from srum_ray.models.base import GenerationModel
from srum_ray.types import RolloutBatch


class Engine(abc.ABC):
    """What the round loop needs from a learner backend."""

    global_step: int = 0

    @abc.abstractmethod
    def train_batch(self, batch: RolloutBatch, lambda_c: float) -> dict[str, float]:
        """One optimizer step on ``batch`` (latents, cond and weights set); returns metrics."""

    @abc.abstractmethod
    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """Trainable weights to push to the generators (detached, CPU or device)."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write model, optimizer and scheduler state so that :meth:`load` resumes exactly."""

    @abc.abstractmethod
    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote."""


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps`` optimizer steps, then constant.

    ``step`` counts finished steps, so the first step uses ``1 / warmup_steps``.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


#: devices whose AdamW has a fused kernel (one kernel over all parameters); elsewhere torch's
#: default implementation is used
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


class VelocityModule(torch.nn.Module):
    """``forward(x_t, t, cond) = generator.predict_velocity(...)``; parameters: the trainable module.

    The generator is kept outside the module registry (even if it is an ``nn.Module``
    itself), so its frozen parts are never handed to DeepSpeed; ``torch.func.functional_call``
    on it runs the generator with other trainable weights (the frozen anchor of
    ``train.ref_anchor: base``).
    """

    def __init__(self, generator: GenerationModel) -> None:
        super().__init__()
        self.trainable = generator.trainable_module()
        self.__dict__["_generator"] = generator

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor], guidance_scale: float = 1.0
    ) -> torch.Tensor:
        return trained_velocity(self.__dict__["_generator"], x_t, t, cond, guidance_scale)


def check_cond_dropout(generator: GenerationModel, cfg: TrainConfig) -> None:
    """``train.cond_dropout`` and ``train.guidance_scale`` need a generator that knows its
    unconditional prompt."""
    if cfg.cond_dropout > 0 and not generator.supports_null_condition:
        raise ValueError(
            f"train.cond_dropout is {cfg.cond_dropout}, but {type(generator).__name__} has no "
            "unconditional prompt to drop to; set train.cond_dropout: 0"
        )
    if cfg.guidance_scale > 1 and not generator.supports_null_condition:
        raise ValueError(
            f"train.guidance_scale is {cfg.guidance_scale}, but {type(generator).__name__} has no "
            "unconditional prompt to guide against; set train.guidance_scale: 1"
        )


def trained_velocity(
    generator: GenerationModel, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor], scale: float
) -> torch.Tensor:
    """The velocity the loss trains (``train.guidance_scale``): the conditional prediction, or
    for ``scale > 1`` the guided ``v_null + scale (v_cond - v_null)`` with ``v_null`` computed
    without gradient (the unconditional branch is what guidance subtracts, held fixed)."""
    v_cond = generator.predict_velocity(x_t, t, cond).float()
    if scale <= 1.0:
        return v_cond
    with torch.no_grad():
        null = generator.null_condition(cond, torch.ones(x_t.shape[0], dtype=torch.bool))
        v_null = generator.predict_velocity(x_t, t, null).float()
    return v_null + scale * (v_cond - v_null)


def drop_conditions(
    generator: GenerationModel, cond: dict[str, torch.Tensor], drop: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """``cond`` with the rows where ``drop`` is true set to the unconditional prompt."""
    if drop is None or not bool(drop.any()):
        return cond
    return generator.null_condition(cond, drop)


def draw_drops(rows: int, p: float, gen: torch.Generator) -> torch.Tensor | None:
    """Which of ``rows`` rows train unconditionally (share ``p``), drawn after the noise and times
    from the same generator, so a resumed run redraws them; None when ``p`` is 0."""
    return torch.rand(rows, generator=gen) < p if p > 0 else None


def build_adamw(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """The learner's AdamW (SPEC betas / eps / weight decay), fused where torch has the kernel.

    Both engines use it (DeepSpeed as its client optimizer). The fused kernel does the same
    update in one pass over all parameters; torch's default on CPU is a per-parameter loop
    of elementwise ops, measured 3x (float32) and 5.5x (bfloat16) slower for 38 M parameters
    on one core (docs/PERFORMANCE.md).
    """
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


class TorchEngine(Engine):
    """Single-process learner: AdamW (SPEC betas/eps), linear warm-up, grad-norm clipping.

    The trainable module is the generator's own (``generator.trainable_module()``), so in the
    single-process loop a step updates the very weights the next round samples from.
    """

    WEIGHTS = "trainable.safetensors"
    STATE = "engine_state.pt"

    def __init__(self, generator: GenerationModel, cfg: TrainConfig, seed: int = 0) -> None:
        self.generator = generator
        self.cfg = cfg
        self.seed = seed
        check_cond_dropout(generator, cfg)
        self.module = generator.trainable_module()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        # ref_anchor "base": the weights the run starts from, frozen (swapped in by functional_call)
        self.velocity = VelocityModule(generator)
        self.anchor_state = (
            {f"trainable.{k}": v.detach().clone() for k, v in self.module.state_dict().items()}
            if cfg.ref_anchor == "base" else None
        )
        if not self.params:
            raise ValueError("the generator's trainable module has no trainable parameters")
        device = self.params[0].device
        self.device = device
        self.optimizer = build_adamw(self.params, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_factor(s, cfg.warmup_steps)
        )
        self.global_step = 0

    def _noise_generator(self) -> torch.Generator:
        # noise and times are a pure function of (seed, step): a resumed run redraws them
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step)

    def train_batch(self, batch: RolloutBatch, lambda_c: float) -> dict[str, float]:
        if batch.latents is None or batch.weights is None:
            raise ValueError("train_batch needs a rewarded batch (latents and weights set)")
        self.module.train()
        gen = self._noise_generator()
        x0 = batch.latents.float()
        eps = torch.randn(x0.shape, generator=gen)
        t = sample_timesteps(
            x0.shape[0], self.cfg.timestep_shift, mode=self.cfg.timestep_sampling, generator=gen
        )
        drop = draw_drops(x0.shape[0], self.cfg.cond_dropout, gen)
        dev = self.device
        x0, eps, t = x0.to(dev), eps.to(dev), t.to(dev)
        x_t = noisy_latents(x0, eps, t)
        target = velocity_target(x0, eps)
        cond = {k: v.to(dev) for k, v in drop_conditions(self.generator, batch.cond, drop).items()}
        v_pred = trained_velocity(self.generator, x_t, t, cond, self.cfg.guidance_scale)
        anchor = {}
        if self.anchor_state is not None:
            with torch.no_grad():
                v_base = torch.func.functional_call(
                    self.velocity, self.anchor_state, (x_t, t, cond, self.cfg.guidance_scale)
                ).float()
            anchor = {"ref_pred": v_pred, "ref_target": v_base}
        loss = srum_flow_loss(v_pred, target, batch.weights.to(dev).float(), lambda_c, **anchor)
        if not torch.isfinite(loss.total):
            # one such step would turn every weight into NaN and every later round into noise
            raise FloatingPointError(
                f"non-finite loss ({float(loss.total):g}) at learner step {self.global_step}; the "
                "weights were not updated (lower train.lr, or train in float32)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        return {
            "loss": float(loss.total.detach()),
            "reward_term": float(loss.reward_term.detach()),
            "ref_term": float(loss.ref_term.detach()),
            "grad_norm": float(grad_norm),
            "lr": float(lr),
            "step": self.global_step,
        }

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(weights, str(d / self.WEIGHTS))
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "global_step": self.global_step,
            },
            d / self.STATE,
        )
        (d / "engine.json").write_text(json.dumps({"engine": "torch", "step": self.global_step}))

    def load(self, directory: str | Path) -> None:
        d = Path(directory)
        for name in (self.WEIGHTS, self.STATE):
            if not (d / name).is_file():
                raise FileNotFoundError(f"checkpoint {d} is incomplete: {name} is missing")
        self.module.load_state_dict(load_file(str(d / self.WEIGHTS), device=str(self.device)))
        state: dict[str, Any] = torch.load(d / self.STATE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])
