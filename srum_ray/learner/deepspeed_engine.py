"""The DeepSpeed ZeRO learner engine (stage 1, 2 or 3; one or many ranks).

Same contract as :class:`srum_ray.learner.engine.TorchEngine`: one ``train_batch`` call is one
optimizer step of SPEC 2.5's loss with the client AdamW and linear warm-up, here on this
rank's share of the step's rows, split into ``train.grad_accum_steps`` micro-batches.

Noise and times are drawn for the whole global batch from a generator seeded by
``(seed, global_step)`` exactly as the torch engine draws them, and each rank takes its own
rows. Gradients are averaged over micro-batches and ranks, so a step is the same computation
whatever the world size and accumulation (up to float summation order), and world size 1
with one micro-batch reproduces the torch engine.

The generator's forward goes through the DeepSpeed engine (its hooks schedule ZeRO's
gradient reduction and, at stage 3, gather partitioned weights): a small module wraps
``generator.predict_velocity`` and owns only ``generator.trainable_module()``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from srum_ray import distributed
from srum_ray.config.schema import TrainConfig
from srum_ray.learner.ds_config import build_deepspeed_config
from srum_ray.learner.engine import (
    Engine, VelocityModule, build_adamw, check_cond_dropout, draw_drops, drop_conditions,
    warmup_factor,
)
from srum_ray.losses import noisy_latents, sample_timesteps, srum_flow_loss, velocity_target
from srum_ray.models.base import GenerationModel
from srum_ray.types import RolloutBatch

log = logging.getLogger(__name__)


class DeepSpeedEngine(Engine):
    """ZeRO learner over ``generator.trainable_module()``.

    Joins the process group of the ``env://`` variables (set by the learner worker); when
    none are set and no group exists, it starts a world of one on ``127.0.0.1``.

    Args:
        generator: the generator whose trainable module is optimized (at ZeRO-3 its weights
            are partitioned afterwards: use :meth:`state_dict_for_sync` to read them).
        cfg: the ``train`` section (ZeRO stage, batch, accumulation, optimizer settings).
        seed: run seed; the training noise of step ``s`` is a pure function of (seed, s).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (DeepSpeed's mixed precision).
    """

    WEIGHTS = "trainable.safetensors"
    META = "engine.json"
    TAG = "ds"

    def __init__(
        self, generator: GenerationModel, cfg: TrainConfig, seed: int = 0, *, dtype: str = "float32"
    ) -> None:
        check_cond_dropout(generator, cfg)
        if cfg.ref_anchor != "sample":
            raise ValueError(
                f"train.ref_anchor: {cfg.ref_anchor} is supported by train.engine: torch only "
                "(under ZeRO-3 the anchor's weights would need partitioning too); use ref_anchor: sample"
            )
        self.generator = generator
        self.cfg = cfg
        self.seed = seed
        self.dtype = dtype
        self.module = VelocityModule(generator)
        self.trainable = self.module.trainable
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the generator's trainable module has no trainable parameters")
        self.device = params[0].device
        if not distributed.is_initialized() and "MASTER_ADDR" not in os.environ:
            distributed.set_dist_env("127.0.0.1", distributed.free_port("127.0.0.1"), 0, 1)
        distributed.init_deepspeed_comm(self.device)
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        log.info("deepspeed engine: rank %d/%d, ZeRO-%d, %s, on %s", self.rank, self.world_size,
                 cfg.zero_stage, dtype, self.device)
        self.ds_config = build_deepspeed_config(cfg, self.world_size, dtype=dtype)
        optimizer = build_adamw(params, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_factor(s, cfg.warmup_steps)
        )
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config
        )
        self.global_step = 0

    # ------------------------------------------------------------------ training
    def _noise(
        self, rows_here: int, latent_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This rank's ``eps [n, C, h, w]``, ``t [n]`` and unconditional rows (``[n]`` bool or
        None, ``train.cond_dropout``) out of the global batch's draws."""
        total = rows_here * self.world_size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step)
        eps = torch.randn((total, *latent_shape), generator=gen)
        t = sample_timesteps(
            total, self.cfg.timestep_shift, mode=self.cfg.timestep_sampling, generator=gen
        )
        drop = draw_drops(total, self.cfg.cond_dropout, gen)
        lo = self.rank * rows_here
        mine = slice(lo, lo + rows_here)
        return eps[mine], t[mine], None if drop is None else drop[mine]

    def train_batch(self, batch: RolloutBatch, lambda_c: float) -> dict[str, float]:
        """One optimizer step on this rank's rows (``grad_accum_steps`` micro-batches).

        Every rank must call it with the same number of rows (a collective).

        Args:
            batch: this rank's rows, latents ``[n, C, h, w]``, cond and weights
                ``[n, 1, h, w]`` set; ``n`` a multiple of ``train.grad_accum_steps``.
            lambda_c: constraint weight.

        Returns:
            loss, reward_term, ref_term (means over all ranks' micro-batches), grad_norm
            (before clipping), lr (of this step) and step (after it).
        """
        if batch.latents is None or batch.weights is None:
            raise ValueError("train_batch needs a rewarded batch (latents and weights set)")
        n, accum = len(batch), self.cfg.grad_accum_steps
        if n == 0 or n % accum:
            raise ValueError(
                f"this rank got {n} rows, not a positive multiple of train.grad_accum_steps ({accum})"
            )
        self.ds.train()
        x0_all = batch.latents.float()
        eps_all, t_all, drop = self._noise(n, tuple(x0_all.shape[1:]))
        cond_all = drop_conditions(self.generator, batch.cond, drop)
        dev = self.device
        micro = n // accum
        sums = torch.zeros(3, dtype=torch.float64)
        lr = float(self.ds.get_lr()[0])
        for k in range(accum):
            rows = slice(k * micro, (k + 1) * micro)
            x0, eps, t = x0_all[rows].to(dev), eps_all[rows].to(dev), t_all[rows].to(dev)
            cond = {key: v[rows].to(dev) for key, v in cond_all.items()}
            v_pred = self.ds(noisy_latents(x0, eps, t), t, cond, self.cfg.guidance_scale).float()
            loss = srum_flow_loss(
                v_pred, velocity_target(x0, eps), batch.weights[rows].to(dev).float(), lambda_c
            )
            self.ds.backward(loss.total)
            self.ds.step()
            sums += torch.tensor([float(x.detach()) for x in loss], dtype=torch.float64)
        self.global_step += 1
        means = distributed.all_reduce_mean((sums / accum).tolist(), device=dev)
        grad_norm = self.ds.get_global_grad_norm()
        return {
            "loss": means[0],
            "reward_term": means[1],
            "ref_term": means[2],
            "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
            "lr": lr,
            "step": self.global_step,
        }

    # ------------------------------------------------------------------ weights
    def state_dict_for_sync(self, device: str | torch.device | None = "cpu") -> dict[str, torch.Tensor]:
        """The full trainable state dict as copies on ``device``, on every rank.

        A collective at ZeRO-3 (partitioned weights are gathered): every rank must call it.

        Args:
            device: where the copies go; ``None`` keeps the engine's device (what a NCCL
                broadcast sends).
        """
        target = self.device if device is None else torch.device(device)

        def copy() -> dict[str, torch.Tensor]:
            return {k: v.detach().to(target, copy=True).contiguous()
                    for k, v in self.trainable.state_dict().items()}

        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.trainable.parameters()), modifier_rank=None):
                return copy()
        return copy()

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path) -> None:
        """DeepSpeed checkpoint (model, optimizer shards, scheduler, step) + full weights.

        A collective: every rank calls it with the same directory, which must be shared by
        all ranks' nodes. Rank 0 also writes ``trainable.safetensors`` (full weights, as the
        torch engine does) and ``engine.json``.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        client = {"global_step": self.global_step, "seed": self.seed}
        self.ds.save_checkpoint(str(d), tag=self.TAG, client_state=client)
        weights = self.state_dict_for_sync()
        if self.rank == 0:
            save_file(weights, str(d / self.WEIGHTS))
            meta = {
                "engine": "deepspeed",
                "step": self.global_step,
                "zero_stage": self.cfg.zero_stage,
                "world_size": self.world_size,
                "dtype": self.dtype,
            }
            (d / self.META).write_text(json.dumps(meta))
        distributed.barrier()

    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote (same ZeRO stage and world size). A collective.

        Raises:
            FileNotFoundError: the directory is not a complete DeepSpeed checkpoint.
            ValueError: it was written by another engine, ZeRO stage or world size.
        """
        d = Path(directory)
        for name in (self.META, self.WEIGHTS, self.TAG):
            if not (d / name).exists():
                raise FileNotFoundError(f"checkpoint {d} is incomplete: {name} is missing")
        meta: dict[str, Any] = json.loads((d / self.META).read_text())
        expected = {"engine": "deepspeed", "zero_stage": self.cfg.zero_stage,
                    "world_size": self.world_size}
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            said = ", ".join(f"{k} {got!r} (this run: {want!r})" for k, (got, want) in wrong.items())
            raise ValueError(f"checkpoint {d} does not match this learner: {said}")
        path, client = self.ds.load_checkpoint(
            str(d), tag=self.TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint under {d / self.TAG}")
        self.global_step = int(client["global_step"])
