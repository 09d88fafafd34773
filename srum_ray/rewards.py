"""Reward maths (SPEC 2.4) and the reward ablations (SPEC section 3): pure functions.

The global score ``g`` in [-1, 1] becomes ``alpha = (g + 1) / 2`` in [0, 1]. Region scores
are painted into a dense map ``R`` of shape ``[H, W]`` (image pixels, float32, *before*
alpha), resized to the latent grid and multiplied by alpha: the per-element loss weight is
``alpha * R`` (SPEC 2.5, ``L_r = mean(alpha * R * (v - (eps - x0))^2)``).

Conventions (chosen by name; both from SPEC 2.4):

* ``paper``: R in [-1, 1]. Uncovered pixels are 0 (neutral). A covered pixel is the overlap
  rule applied to the scores of the boxes that cover it. Default rule: ``mean``.
* ``public_code``: R in [0, 1]. The map starts at 0.5 everywhere and a box with score ``s``
  carries the value ``(s + 1) / 2``. With the convention's own rule (``max``, its default)
  every box raises its pixels to ``max(current, (s + 1) / 2)``, so the 0.5 base takes part
  and a negative box never lowers a pixel below 0.5. With any other rule a covered pixel is
  that rule over the covering boxes' ``(s + 1) / 2`` values only (no base); uncovered pixels
  stay 0.5.

``uncovered_score`` (``reward.uncovered: global``, not in SPEC) replaces the base of the pixels no
box covers by the value a box with that score paints (the global score g: ``g`` in paper,
``(g + 1) / 2`` in public_code).

Overlap rules: ``max``, ``mean``, ``min`` over the covering boxes, and ``last``: the last box
in list order that covers the pixel wins. ``default`` names the convention's own rule.

Boxes are pixel ``[x0, y0, x1, y1)`` with x1/y1 exclusive (:class:`srum_ray.types.Box`); they
are clipped to the image, and a box whose score is ``None`` is skipped (not painted).

Ablations (one switch each, SPEC section 3) are described by :data:`ABLATIONS` and applied by
:func:`sample_weight_map`; :func:`effective_lambda_c` gives the constraint weight each one
trains with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from srum_ray.types import Box

__all__ = [
    "ABLATIONS", "CONVENTIONS", "OVERLAP_RULES", "AblationSpec", "Convention",
    "MissingResolution", "ablation_needs_judging", "alpha_from_global", "dense_reward_map",
    "effective_lambda_c", "get_ablation", "get_convention", "reward_stats", "resolve_missing",
    "resolve_overlap", "sample_weight_map", "to_latent_grid",
]


@dataclass(frozen=True)
class Convention:
    """One reward-map convention.

    Attributes:
        name: registry name.
        base: value of pixels no box covers.
        neutral: the value that means "neither rewarded nor penalised" (binarization cut).
        default_overlap: the convention's own overlap rule.
        low, high: range of R.
        base_in_max: under its own rule, the base takes part in the max (public code).
    """

    name: str
    base: float
    neutral: float
    default_overlap: str
    low: float
    high: float
    base_in_max: bool

    def box_value(self, score: float) -> float:
        """The value a box with judge score ``score`` in [-1, 1] paints."""
        return (score + 1.0) / 2.0 if self.name == "public_code" else score


CONVENTIONS: Mapping[str, Convention] = MappingProxyType({
    "paper": Convention("paper", 0.0, 0.0, "mean", -1.0, 1.0, base_in_max=False),
    "public_code": Convention("public_code", 0.5, 0.5, "max", 0.0, 1.0, base_in_max=True),
})

OVERLAP_RULES: tuple[str, ...] = ("max", "mean", "min", "last")


@dataclass(frozen=True)
class AblationSpec:
    """What one ablation switch changes.

    Attributes:
        name: registry name (``RewardConfig.ablation``).
        uses_map: the dense map R shapes the weight (False: constant or 1).
        uses_global: alpha comes from the global score (False: alpha = 1).
        uses_constraint: the L_ref term is kept (False: lambda_c = 0).
        needs_judging: the loss needs judge scores at all (judging may still run for logs).
    """

    name: str
    uses_map: bool
    uses_global: bool
    uses_constraint: bool
    needs_judging: bool


ABLATIONS: Mapping[str, AblationSpec] = MappingProxyType({
    "none": AblationSpec("none", True, True, True, True),
    "sample_level": AblationSpec("sample_level", False, True, True, True),
    "binarized": AblationSpec("binarized", True, True, True, True),
    "no_global": AblationSpec("no_global", True, False, True, True),
    "no_constraint": AblationSpec("no_constraint", True, True, False, True),
    "sft": AblationSpec("sft", False, False, False, False),
})


def _lookup(registry: Mapping, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(sorted(registry))}")
    return registry[name]


def get_convention(name: str) -> Convention:
    """The convention called ``name`` (``paper`` | ``public_code``); ValueError otherwise."""
    return _lookup(CONVENTIONS, name, "reward convention")


def get_ablation(name: str) -> AblationSpec:
    """The ablation called ``name`` (see :data:`ABLATIONS`); ValueError otherwise."""
    return _lookup(ABLATIONS, name, "ablation")


def resolve_overlap(convention: str, overlap: str = "default") -> str:
    """The concrete overlap rule: ``default`` becomes the convention's own rule."""
    conv = get_convention(convention)
    if overlap == "default":
        return conv.default_overlap
    if overlap not in OVERLAP_RULES:
        allowed = ", ".join(("default",) + OVERLAP_RULES)
        raise ValueError(f"unknown overlap rule {overlap!r}; allowed: {allowed}")
    return overlap


def ablation_needs_judging(ablation: str) -> bool:
    """Whether the loss of ``ablation`` needs judge scores (``sft`` does not)."""
    return get_ablation(ablation).needs_judging


def effective_lambda_c(lambda_c: float, ablation: str) -> float:
    """The constraint weight ``ablation`` trains with: 0 for ``no_constraint`` and ``sft``."""
    return float(lambda_c) if get_ablation(ablation).uses_constraint else 0.0


def alpha_from_global(g: float) -> float:
    """SPEC 2.4: ``alpha = (g + 1) / 2`` with ``g`` clamped to [-1, 1]; NaN raises."""
    g = float(g)
    if math.isnan(g):
        raise ValueError("global score is NaN")
    return (min(max(g, -1.0), 1.0) + 1.0) / 2.0


def _check_score(s: float, what: str) -> float:
    s = float(s)
    if not math.isfinite(s):
        raise ValueError(f"{what} is not finite: {s}")
    return min(max(s, -1.0), 1.0)


def dense_reward_map(
    height: int,
    width: int,
    boxes: Sequence[Box | Sequence[float]],
    scores: Sequence[float | None],
    convention: str,
    overlap: str = "default",
    uncovered_score: float | None = None,
) -> np.ndarray:
    """Paint region scores into the dense reward map R (before alpha); see the module doc.

    Args:
        height, width: image size in pixels.
        boxes: one :class:`Box` (or ``[x0, y0, x1, y1]``) per region; clipped to the image.
        scores: one score in [-1, 1] per box (clamped); ``None`` = skip the box.
        convention: ``paper`` or ``public_code``.
        overlap: ``default`` | ``max`` | ``mean`` | ``min`` | ``last``.
        uncovered_score: a score in [-1, 1] (clamped) painted, as a box with that score would
            be, on every pixel no box covers (``reward.uncovered: global`` passes the global
            score); None: the convention's base. Covered pixels are unchanged by it.

    Returns:
        float32 array ``[height, width]``; in [-1, 1] (paper) or [0, 1] (public_code).
    """
    conv = get_convention(convention)
    rule = resolve_overlap(convention, overlap)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")

    painted = []  # (y0, y1, x0, x1, value) in list order
    for i, (box, score) in enumerate(zip(boxes, scores)):
        if score is None:
            continue
        b = box if isinstance(box, Box) else Box.from_list(box)
        b = b.clipped(width, height)
        if b.area == 0:
            continue
        painted.append((b.y0, b.y1, b.x0, b.x1, conv.box_value(_check_score(score, f"region score {i}"))))

    base = conv.base if uncovered_score is None else conv.box_value(_check_score(uncovered_score, "the uncovered pixels' score"))
    covered = np.zeros((height, width), dtype=bool)
    if rule == "max" and conv.base_in_max:
        out = np.full((height, width), conv.base, dtype=np.float64)
        for y0, y1, x0, x1, v in painted:
            np.maximum(out[y0:y1, x0:x1], v, out=out[y0:y1, x0:x1])
            covered[y0:y1, x0:x1] = True
        return np.where(covered, out, base).astype(np.float32)

    if rule == "mean":
        acc = np.zeros((height, width), dtype=np.float64)
        count = np.zeros((height, width), dtype=np.int64)
        for y0, y1, x0, x1, v in painted:
            acc[y0:y1, x0:x1] += v
            count[y0:y1, x0:x1] += 1
        covered = count > 0
        acc[covered] /= count[covered]
    else:
        init = {"max": -np.inf, "min": np.inf, "last": 0.0}[rule]
        acc = np.full((height, width), init, dtype=np.float64)
        for y0, y1, x0, x1, v in painted:
            window = acc[y0:y1, x0:x1]
            if rule == "max":
                np.maximum(window, v, out=window)
            elif rule == "min":
                np.minimum(window, v, out=window)
            else:
                window[...] = v
            covered[y0:y1, x0:x1] = True
    return np.where(covered, acc, base).astype(np.float32)


def _area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` weights: the share of output cell i covered by input pixel j."""
    scale = n_in / n_out
    i = np.arange(n_out, dtype=np.float64)[:, None]
    j = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.minimum(j + 1, (i + 1) * scale) - np.maximum(j, i * scale)
    return torch.from_numpy(np.clip(overlap, 0.0, None) / scale)


def to_latent_grid(R: np.ndarray | torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Area-average resize of reward maps to the latent grid.

    When ``H % h == 0`` and ``W % w == 0`` this is adaptive average pooling (each latent cell
    is the plain mean of its ``H/h x W/w`` block). Otherwise it is exact area interpolation:
    each latent cell spans ``[i*H/h, (i+1)*H/h)`` in pixel units and is the mean of the
    pixels under it, each weighted by the length of its overlap with the cell (a separable
    ``A_h @ R @ A_w^T``). Both keep the map's global mean and its range; upsampling
    (``h > H``) repeats pixels the same way.

    Args:
        R: ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` map(s), numpy or torch.
        h, w: latent height and width.

    Returns:
        float32 tensor ``[B, 1, h, w]`` (``B = 1`` for a 2-D input), on R's device.
    """
    t = torch.as_tensor(R)
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"reward map must be [H, W] or [B, H, W], got shape {tuple(t.shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"latent grid must be positive, got {h}x{w}")
    t = t.to(torch.float32)
    H, W = t.shape[-2:]
    if H % h == 0 and W % w == 0:
        return F.adaptive_avg_pool2d(t[:, None], (h, w))
    a_h = _area_matrix(H, h).to(t.device)
    a_w = _area_matrix(W, w).to(t.device)
    out = torch.einsum("iy,byx,jx->bij", a_h, t.to(torch.float64), a_w)
    return out.to(torch.float32)[:, None]


def sample_weight_map(
    R_image: np.ndarray | torch.Tensor | None,
    global_score: float | None,
    convention: str,
    ablation: str,
    latent_hw: tuple[int, int],
) -> tuple[torch.Tensor, float]:
    """Per-element loss weight ``alpha * R`` of one sample at the latent grid, per ablation.

    * ``none`` / ``no_constraint``: ``alpha * resize(R)``.
    * ``sample_level``: R becomes the mean of the dense map (one constant).
    * ``binarized``: ``1[resize(R) > neutral] * 1[g > 0]`` with neutral 0 (paper) or 0.5
      (public_code); the map is resized first and then thresholded, so weights are in {0, 1}.
    * ``no_global``: alpha = 1, weight ``resize(R)``.
    * ``sft``: weight 1 everywhere (R and g are ignored and may be None).

    Args:
        R_image: dense map ``[H, W]`` from :func:`dense_reward_map` (before alpha).
        global_score: judge score g in [-1, 1]; needed unless the ablation ignores it.
        convention: ``paper`` or ``public_code``.
        ablation: a name in :data:`ABLATIONS`.
        latent_hw: ``(h, w)`` of the latent grid.

    Returns:
        ``(weight, alpha)``: float32 ``[1, 1, h, w]`` and the alpha the weight used
        (1.0 for ``no_global`` and ``sft``; 0.0 or 1.0 for ``binarized``).
    """
    conv = get_convention(convention)
    spec = get_ablation(ablation)
    h, w = (int(v) for v in latent_hw)
    if spec.name == "sft":
        return torch.ones(1, 1, h, w, dtype=torch.float32), 1.0
    if R_image is None:
        raise ValueError(f"ablation {ablation!r} needs the dense reward map, got None")
    if torch.as_tensor(R_image).dim() != 2:
        raise ValueError(f"R_image must be [H, W], got shape {tuple(np.shape(R_image))}")
    if spec.uses_global:
        if global_score is None:
            raise ValueError(
                f"ablation {ablation!r} needs a global score; apply resolve_missing first"
            )
        alpha = alpha_from_global(global_score)  # validates g (NaN raises)
        if spec.name == "binarized":
            alpha = 1.0 if float(global_score) > 0 else 0.0
    else:
        alpha = 1.0

    if spec.name == "sample_level":
        mean = float(torch.as_tensor(R_image, dtype=torch.float64).mean())
        return torch.full((1, 1, h, w), alpha * mean, dtype=torch.float32), alpha
    R = to_latent_grid(R_image, h, w)
    if spec.name == "binarized":
        R = (R > conv.neutral).to(torch.float32)
    return alpha * R, alpha


class MissingResolution(NamedTuple):
    """Result of :func:`resolve_missing`; unpacks as a 4-tuple."""

    scores: list[float | None]
    global_score: float | None
    drop_sample: bool
    counts: dict[str, int]

    @property
    def drop_reason(self) -> str | None:
        """``missing_global`` / ``missing_region`` when the sample is dropped, else None."""
        if not self.drop_sample:
            return None
        return "missing_global" if self.counts["global_dropped"] else "missing_region"


_REGION_POLICIES = ("drop_region", "neutral", "drop_sample")
_GLOBAL_POLICIES = ("drop_sample", "neutral")


def resolve_missing(
    region_scores: Sequence[float | None],
    global_score: float | None,
    on_missing_region: str,
    on_missing_global: str,
) -> MissingResolution:
    """Apply the judge config's missing-score policies (``JudgeConfig.on_missing_*``).

    * region ``drop_region``: the missing score stays None (the box is not painted).
    * region ``neutral``: it becomes 0.0 (paints 0 in paper, 0.5 in public_code).
    * region ``drop_sample`` / global ``drop_sample``: the sample is not trained.
    * global ``neutral``: it becomes 0.0 (alpha 0.5).

    Returns:
        ``(scores_for_map, global_for_alpha, drop_sample, counts)``; counts has
        ``region_missing``, ``region_dropped``, ``region_neutral``, ``global_missing``,
        ``global_neutral``, ``global_dropped`` and ``sample_dropped``.
    """
    for what, name, allowed in (("on_missing_region", on_missing_region, _REGION_POLICIES),
                                ("on_missing_global", on_missing_global, _GLOBAL_POLICIES)):
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(allowed)}")
    missing = sum(s is None for s in region_scores)
    counts = dict.fromkeys(
        ("region_missing", "region_dropped", "region_neutral", "global_missing",
         "global_neutral", "global_dropped", "sample_dropped"), 0)
    counts["region_missing"] = missing
    scores = list(region_scores)
    drop = False
    if missing:
        if on_missing_region == "neutral":
            scores = [0.0 if s is None else s for s in scores]
            counts["region_neutral"] = missing
        elif on_missing_region == "drop_region":
            counts["region_dropped"] = missing
        else:
            drop = True
    g = global_score
    if g is None:
        counts["global_missing"] = 1
        if on_missing_global == "neutral":
            g = 0.0
            counts["global_neutral"] = 1
        else:
            counts["global_dropped"] = 1
            drop = True
    counts["sample_dropped"] = int(drop)
    return MissingResolution(scores, g, drop, counts)


def reward_stats(
    R: np.ndarray | torch.Tensor,
    alpha: float | None,
    weight: np.ndarray | torch.Tensor,
    convention: str = "paper",
) -> dict[str, float]:
    """Summary numbers of one reward for logs and metrics.

    Args:
        R: dense map (any shape; usually ``[H, W]`` before alpha).
        alpha: the alpha used, or None (a dropped sample): then the ``alpha`` key is left out.
        weight: the loss weight (any shape; usually ``[1, 1, h, w]``).
        convention: sets the neutral value (0 for paper, 0.5 for public_code) that splits
            pixels into positive / negative / neutral shares.

    Returns:
        ``alpha`` (when given), ``r_mean``/``r_min``/``r_max``, ``weight_mean``/``weight_min``/
        ``weight_max`` and ``frac_positive``/``frac_negative``/``frac_neutral`` of R.
    """
    neutral = get_convention(convention).neutral
    r = torch.as_tensor(R, dtype=torch.float64).flatten()
    wt = torch.as_tensor(weight, dtype=torch.float64).flatten()
    if r.numel() == 0 or wt.numel() == 0:
        raise ValueError("reward_stats needs a non-empty map and weight")
    n = float(r.numel())
    stats = {} if alpha is None else {"alpha": float(alpha)}
    return stats | {
        "r_mean": float(r.mean()),
        "r_min": float(r.min()),
        "r_max": float(r.max()),
        "weight_mean": float(wt.mean()),
        "weight_min": float(wt.min()),
        "weight_max": float(wt.max()),
        "frac_positive": float((r > neutral).sum()) / n,
        "frac_negative": float((r < neutral).sum()) / n,
        "frac_neutral": float((r == neutral).sum()) / n,
    }
