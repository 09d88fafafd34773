"""Region proposals (SPEC 2.2): SAM automatic masks, the UMM's own grounding, or none.

:func:`build_grounder` picks the implementation named by ``GrounderConfig.kind``.
segment-anything is imported only when a SAM grounder is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from srum_ray.config.schema import GrounderConfig
from srum_ray.grounding.base import Grounder, NoGrounder, select_boxes
from srum_ray.grounding.model_grounder import ModelGrounder, ask_for_boxes, parse_boxes
from srum_ray.grounding.sam import (
    TINY_SAM_PRESET,
    TINY_SAM_SEED,
    SamGrounder,
    build_tiny_sam,
    load_sam,
    save_sam_checkpoint,
)

if TYPE_CHECKING:
    from srum_ray.models.base import UnderstandingModel

#: names accepted in ``GrounderConfig.kind``
GROUNDER_KINDS = ("sam", "sam_hf", "model", "none")


def build_grounder(
    cfg: GrounderConfig,
    understanding: "UnderstandingModel | None" = None,
    device: str = "cpu",
) -> Grounder:
    """The grounder named by ``cfg.kind``.

    Args:
        cfg: grounder config.
        understanding: the understanding module; required for ``kind: model``.
        device: torch device for SAM.

    Raises:
        ValueError: an unknown kind, or ``kind: model`` without an understanding module.
    """
    if cfg.kind == "sam":
        return SamGrounder(cfg, device=device)
    if cfg.kind == "sam_hf":
        from srum_ray.grounding.hf_sam import HfSamGrounder

        return HfSamGrounder(cfg, device=device)
    if cfg.kind == "model":
        if understanding is None:
            raise ValueError(
                "grounder.kind 'model' asks the understanding module for boxes, but "
                "build_grounder got understanding=None"
            )
        return ModelGrounder(understanding, cfg)
    if cfg.kind == "none":
        return NoGrounder()
    raise ValueError(f"unknown grounder.kind {cfg.kind!r}; expected one of {GROUNDER_KINDS}")


__all__ = [
    "GROUNDER_KINDS",
    "TINY_SAM_PRESET",
    "TINY_SAM_SEED",
    "Grounder",
    "ModelGrounder",
    "NoGrounder",
    "SamGrounder",
    "ask_for_boxes",
    "build_grounder",
    "build_tiny_sam",
    "load_sam",
    "parse_boxes",
    "save_sam_checkpoint",
    "select_boxes",
]
