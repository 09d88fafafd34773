"""Types that cross role boundaries: boxes, per-sample records and the rollout batch.

One :class:`RolloutBatch` travels generate -> propose -> judge -> reward -> learn. It holds
batch-first tensors (latents, conditioning, reward weights) and one :class:`SampleRecord`
per sample; ``split``/``concat``/``select`` keep the two aligned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

#: Parse status of one judge score.
PARSED, RETRIED, MISSING, FILTERED = "parsed", "retried", "missing", "filtered"


@dataclass(frozen=True)
class Box:
    """Axis-aligned pixel box ``[x0, y0, x1, y1)`` (x1/y1 exclusive), integer pixels."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def clipped(self, width: int, height: int) -> "Box":
        """This box clipped to an image of ``width x height``."""
        return Box(
            min(max(self.x0, 0), width),
            min(max(self.y0, 0), height),
            min(max(self.x1, 0), width),
            min(max(self.y1, 0), height),
        )

    @classmethod
    def from_list(cls, xs: Sequence[float]) -> "Box":
        x0, y0, x1, y1 = (int(round(float(v))) for v in xs)
        return cls(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@dataclass
class SampleRecord:
    """Everything known about one generated image; written as one line of samples.jsonl.

    Fields filled by later stages start empty/None. ``parse`` maps ``"global"`` to one
    status and ``"regions"`` to one status per box (see the module constants).
    """

    id: str
    round: int
    prompt: str
    seed: int
    weights_version: int
    width: int = 0
    height: int = 0
    image: str | None = None  # relative path of the PNG inside the run directory
    boxes: list[list[int]] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    filter_raw: list[str] = field(default_factory=list)
    region_objects: list[str | None] = field(default_factory=list)
    region_scores: list[float | None] = field(default_factory=list)
    global_score: float | None = None
    alpha: float | None = None
    convention: str | None = None
    overlap: str | None = None
    ablation: str | None = None
    reward_map: str | None = None  # relative path of float32 .npy, image resolution, R before alpha
    reward_stats: dict[str, float] = field(default_factory=dict)
    judge_raw: dict[str, Any] = field(default_factory=lambda: {"global": [], "regions": []})
    parse: dict[str, Any] = field(default_factory=lambda: {"global": None, "regions": []})
    trained: bool = True  # False when a drop policy removed the sample from the loss
    drop_reason: str | None = None
    overlay: str | None = None  # relative path of the picture with boxes/scores/map

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SampleRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RolloutBatch:
    """Samples of one round in flight between roles.

    Attributes:
        records: one :class:`SampleRecord` per sample.
        latents: clean latents ``x0``, ``[B, C, h, w]`` (float32, CPU) or None.
        cond: conditioning tensors, each ``[B, ...]``.
        weights: per-element loss weight ``alpha * R`` at latent resolution,
            ``[B, 1, h, w]``, or None before rewarding.
        images: the PIL images (not serialized into records), or empty.
    """

    records: list[SampleRecord]
    latents: torch.Tensor | None = None
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: torch.Tensor | None = None
    images: list[Image.Image] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.records)
        for name, t in self._tensors().items():
            if t.shape[0] != n:
                raise ValueError(f"RolloutBatch.{name} has {t.shape[0]} rows for {n} records")
        if self.images and len(self.images) != n:
            raise ValueError(f"RolloutBatch.images has {len(self.images)} items for {n} records")

    def __len__(self) -> int:
        return len(self.records)

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {f"cond.{k}": v for k, v in self.cond.items()}
        if self.latents is not None:
            out["latents"] = self.latents
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    def select(self, indices: Sequence[int]) -> "RolloutBatch":
        """Rows ``indices`` (in that order) as a new batch."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return RolloutBatch(
            records=[self.records[i] for i in indices],
            latents=None if self.latents is None else self.latents[idx],
            cond={k: v[idx] for k, v in self.cond.items()},
            weights=None if self.weights is None else self.weights[idx],
            images=[self.images[i] for i in indices] if self.images else [],
        )

    def split(self, size: int) -> list["RolloutBatch"]:
        """Consecutive chunks of at most ``size`` rows."""
        if size < 1:
            raise ValueError(f"split size must be >= 1, got {size}")
        return [self.select(range(i, min(i + size, len(self)))) for i in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Iterable["RolloutBatch"]) -> "RolloutBatch":
        """Rows of all ``batches`` in order; tensors present in one must be present in all."""
        batches = list(batches)
        if not batches:
            return RolloutBatch(records=[])

        def cat(get):
            parts = [get(b) for b in batches]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError("cannot concat batches where a tensor is present in only some")
            return torch.cat(parts, dim=0)

        keys = set(batches[0].cond)
        if any(set(b.cond) != keys for b in batches):
            raise ValueError("cannot concat batches with different cond keys")
        with_images = [bool(b.images) for b in batches]
        if any(with_images) and not all(with_images):
            raise ValueError("cannot concat batches where only some carry images")
        return RolloutBatch(
            records=[r for b in batches for r in b.records],
            latents=cat(lambda b: b.latents),
            cond={k: cat(lambda b, k=k: b.cond[k]) for k in sorted(keys)},
            weights=cat(lambda b: b.weights),
            images=[im for b in batches for im in b.images],
        )
