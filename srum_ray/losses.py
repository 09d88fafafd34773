"""The SRUM flow-matching loss (SPEC 2.5): pure torch functions.

Rectified flow with ``t = 0`` clean and ``t = 1`` noise::

    x_t      = (1 - t) * x0 + t * eps
    target   = eps - x0                                  (velocity)
    L_r      = mean( w * (v_theta(x_t, t, c) - target)^2 ),   w = alpha * R at the latent grid
    L_ref    = mean( (v_theta - target)^2 )               (or on a separate anchor latent)
    L        = L_r + lambda_c * L_ref

A positive weight pulls the prediction toward the sample's velocity, a negative one pushes
it away; ``L_ref`` keeps the model from drifting. Training times are drawn in (0, 1) and
shifted with ``t' = s t / (1 + (s - 1) t)`` (shift ``s`` > 1 moves mass toward noise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "SrumLoss", "noisy_latents", "sample_timesteps", "shift_timesteps", "srum_flow_loss",
    "velocity_target",
]

#: sampled times are kept this far from 0 and 1 so that both x0 and eps take part
_T_EPS = 1e-5


def shift_timesteps(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Timestep shift ``s t / (1 + (s - 1) t)``: maps 0 -> 0, 1 -> 1; ``s = 1`` is identity.

    Args:
        t: times in [0, 1], any shape (or a float).
        shift: ``s > 0``.

    Returns:
        Shifted times, same shape/type as ``t``.
    """
    if not shift > 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    batch: int,
    shift: float = 1.0,
    mode: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training times for one batch, in (0, 1), then shifted.

    Args:
        batch: number of times ``B``.
        shift: timestep shift ``s`` (see :func:`shift_timesteps`).
        mode: ``uniform`` (U(0, 1)) or ``logit_normal`` (sigmoid of N(0, 1)).
        generator: optional torch generator (on ``device``) for reproducible draws.
        device: where the times live (default CPU).

    Returns:
        float32 tensor ``[B]`` with values in ``[1e-5, 1 - 1e-5]`` before the shift.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if mode == "uniform":
        u = torch.rand(batch, generator=generator, device=device)
    elif mode == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    else:
        raise ValueError(f"unknown timestep sampling mode {mode!r}; allowed: logit_normal, uniform")
    return shift_timesteps(u.clamp(_T_EPS, 1 - _T_EPS), shift)


def _broadcast_t(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(
            f"t must be a scalar or [B] with B = {like.shape[0]}, got shape {tuple(t.shape)}"
        )
    return t.view(-1, *([1] * (like.dim() - 1)))


def noisy_latents(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t eps`` with ``t`` broadcast over the sample dimensions.

    Args:
        x0: clean latents ``[B, C, h, w]`` (any rank, batch first).
        eps: noise, same shape as ``x0``.
        t: ``[B]`` or a scalar.

    Returns:
        ``x_t``, shape of ``x0``.
    """
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} differ in shape")
    tb = _broadcast_t(t, x0)
    return (1 - tb) * x0 + tb * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Rectified-flow velocity target ``eps - x0`` (``d x_t / d t``), shape of ``x0``."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} differ in shape")
    return eps - x0


class SrumLoss(NamedTuple):
    """The loss and its parts, each a 0-dim float32 tensor.

    Attributes:
        total: ``L_r + lambda_c * L_ref`` (what to backpropagate).
        reward_term: ``L_r``.
        ref_term: ``L_ref``.
    """

    total: torch.Tensor
    reward_term: torch.Tensor
    ref_term: torch.Tensor


def _broadcast_weight(weight: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weight, dtype=torch.float32, device=v.device)
    if w.dim() == 0:
        return w
    if w.dim() == 1 and v.dim() > 1:
        if w.shape[0] != v.shape[0]:
            raise ValueError(f"weight [B] has B = {w.shape[0]}, predictions have {v.shape[0]}")
        return w.view(-1, *([1] * (v.dim() - 1)))
    ok = w.dim() == v.dim() and all(a in (1, b) for a, b in zip(w.shape, v.shape))
    if not ok:
        raise ValueError(
            f"weight shape {tuple(w.shape)} does not broadcast to predictions {tuple(v.shape)}; "
            "use [B, 1, h, w], [B, C, h, w], [B] or a scalar"
        )
    return w


def srum_flow_loss(
    v_pred: torch.Tensor,
    v_target: torch.Tensor,
    weight: torch.Tensor | float,
    lambda_c: float,
    ref_pred: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
) -> SrumLoss:
    """SPEC 2.5: ``L = mean(w * (v_pred - v_target)^2) + lambda_c * L_ref``.

    ``L_ref = mean((v_pred - v_target)^2)``, or ``mean((ref_pred - ref_target)^2)`` when a
    separate anchor is given (the public code may anchor the constraint on another latent).
    Both means run over every element (``B * C * h * w``), not over the weight's sum. The
    sums are computed in float32; the weight is detached (no gradient flows into rewards),
    gradients flow through ``v_pred`` and ``ref_pred``. With ``lambda_c == 0`` the total is
    exactly ``L_r``.

    Args:
        v_pred: predicted velocity ``[B, C, h, w]`` (any rank, batch first).
        v_target: ``eps - x0``, same shape.
        weight: ``alpha * R``: ``[B, 1, h, w]``, ``[B, C, h, w]``, ``[B]`` or a scalar.
        lambda_c: constraint weight, ``>= 0``.
        ref_pred, ref_target: optional anchor prediction and target (both or neither).

    Returns:
        :class:`SrumLoss` ``(total, reward_term, ref_term)``.
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(
            f"v_pred {tuple(v_pred.shape)} and v_target {tuple(v_target.shape)} differ in shape"
        )
    if v_pred.dim() < 1 or v_pred.numel() == 0:
        raise ValueError(f"predictions must be non-empty and batch-first, got {tuple(v_pred.shape)}")
    lambda_c = float(lambda_c)
    if not lambda_c >= 0 or lambda_c == float("inf"):
        raise ValueError(f"lambda_c must be a finite number >= 0, got {lambda_c}")
    if (ref_pred is None) != (ref_target is None):
        raise ValueError("give both ref_pred and ref_target for a separate anchor, or neither")

    sq = (v_pred.float() - v_target.float()) ** 2
    w = _broadcast_weight(weight, v_pred).detach()
    reward_term = (w * sq).mean()
    if ref_pred is None:
        ref_term = sq.mean()
    else:
        if ref_pred.shape != ref_target.shape:
            raise ValueError(
                f"ref_pred {tuple(ref_pred.shape)} and ref_target {tuple(ref_target.shape)} "
                "differ in shape"
            )
        ref_term = ((ref_pred.float() - ref_target.float()) ** 2).mean()
    total = reward_term if lambda_c == 0 else reward_term + lambda_c * ref_term
    return SrumLoss(total, reward_term, ref_term)
