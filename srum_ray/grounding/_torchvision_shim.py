"""The four torchvision functions segment-anything 1.0 imports, for machines without torchvision.

segment-anything imports ``torchvision.ops.boxes.{batched_nms, box_area}`` and
``torchvision.transforms.functional.{resize, to_pil_image}`` without declaring the
dependency. A CPU machine often has no usable torchvision (and a broken one breaks
transformers' image processors), so :func:`torchvision_shim` puts pure torch/PIL versions in
``sys.modules`` only when ``import torchvision`` fails, only for the duration of a ``with``
block around the import of segment-anything, and restores ``sys.modules`` afterwards: the
rest of the process (transformers, diffusers) never sees a fake torchvision. segment-anything
keeps references to the functions it imported, so it goes on working after the block.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

_NAMES = (
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.boxes",
    "torchvision.transforms",
    "torchvision.transforms.functional",
)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``[N, 4]`` boxes in ``(x0, y0, x1, y1)`` form, ``[N]`` (no +1 convention)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; kept indices (int64) in decreasing score order.

    A box is suppressed when its IoU with an already kept box is strictly greater than
    ``iou_threshold``. Equal scores keep their input order (stable sort).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order].to(torch.float64)
    areas = box_area(boxes)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = boxes[i + 1 :]
        w = torch.minimum(rest[:, 2], boxes[i, 2]) - torch.maximum(rest[:, 0], boxes[i, 0])
        h = torch.minimum(rest[:, 3], boxes[i, 3]) - torch.maximum(rest[:, 1], boxes[i, 1])
        inter = w.clamp(min=0) * h.clamp(min=0)
        union = areas[i] + areas[i + 1 :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Non-maximum suppression applied separately within each category.

    Args:
        boxes: ``[N, 4]`` boxes ``(x0, y0, x1, y1)``.
        scores: ``[N]`` scores.
        idxs: ``[N]`` category of each box; boxes of different categories never suppress
            each other.
        iou_threshold: suppress boxes whose IoU with a kept box is greater than this.

    Returns:
        int64 indices of the kept boxes, in decreasing score order.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    device = boxes.device
    boxes, scores, idxs = boxes.detach().cpu(), scores.detach().cpu(), idxs.detach().cpu()
    parts = []
    for c in idxs.unique():
        ids = torch.nonzero(idxs == c).flatten()
        parts.append(ids[_nms(boxes[ids], scores[ids], iou_threshold)])
    kept = torch.cat(parts)
    kept = kept[torch.sort(scores[kept], descending=True, stable=True).indices]
    return kept.to(device)


def to_pil_image(pic: np.ndarray | torch.Tensor, mode: str | None = None) -> Image.Image:
    """A PIL image from an ``HxWxC``/``HxW`` uint8 array or a ``CxHxW``/``HxW`` tensor.

    Float tensors in [0, 1] are scaled by 255 (as torchvision does). 1, 3 and 4 channels
    become ``L``, ``RGB`` and ``RGBA``.
    """
    if isinstance(pic, torch.Tensor):
        t = pic.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        if t.is_floating_point():
            t = (t * 255).to(torch.uint8)
        pic = t.numpy()
    if not isinstance(pic, np.ndarray):
        raise TypeError(f"to_pil_image expects an ndarray or tensor, got {type(pic).__name__}")
    arr = pic if pic.ndim == 3 else pic[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"to_pil_image expects HxW or HxWxC with C in 1/3/4, got {pic.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"to_pil_image (shim) supports uint8 arrays only, got {arr.dtype}")
    channels = arr.shape[2]
    out = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
    return out if mode is None else out.convert(mode)


def resize(
    img: Image.Image,
    size: int | Sequence[int],
    interpolation: object = None,
    max_size: int | None = None,
    antialias: bool | None = True,
) -> Image.Image:
    """Resize a PIL image (bilinear).

    ``size`` as ``(h, w)`` gives exactly that size; as an int (or a one-element sequence)
    the shorter side becomes ``size`` and the longer one ``int(size * long / short)``,
    then capped at ``max_size`` if given. ``interpolation`` and ``antialias`` are accepted
    for signature compatibility; PIL's bilinear filter is always used.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"resize (shim) supports PIL images only, got {type(img).__name__}")
    w, h = img.size
    if isinstance(size, int) or len(size) == 1:
        target = size if isinstance(size, int) else int(size[0])
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = target, int(target * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = int(size[0]), int(size[1])
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def real_torchvision_importable() -> bool:
    """True when ``import torchvision`` succeeds in this process."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken CUDA build raises OSError/RuntimeError, not ImportError
        return False
    return True


def _fake_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in _NAMES}
    for name, mod in mods.items():
        mod.__doc__ = "srum_ray stand-in for torchvision (see srum_ray.grounding._torchvision_shim)"
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(mods[parent], child, mod)
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
    mods["torchvision.ops.boxes"].batched_nms = batched_nms
    mods["torchvision.ops.boxes"].box_area = box_area
    mods["torchvision.ops"].batched_nms = batched_nms
    mods["torchvision.ops"].box_area = box_area
    mods["torchvision.transforms.functional"].resize = resize
    mods["torchvision.transforms.functional"].to_pil_image = to_pil_image
    return mods


def _is_torchvision(module_name: str) -> bool:
    return module_name == "torchvision" or module_name.startswith("torchvision.")


@contextlib.contextmanager
def torchvision_shim() -> Iterator[bool]:
    """Supply the shim's torchvision modules for the duration of the block, if needed.

    Yields:
        True when the shim was installed (real torchvision is not importable), False when
        real torchvision is used and nothing was changed.
    """
    if real_torchvision_importable():
        yield False
        return
    saved = {k: v for k, v in sys.modules.items() if _is_torchvision(k)}
    for k in saved:  # leftovers of a failed import
        del sys.modules[k]
    sys.modules.update(_fake_modules())
    try:
        yield True
    finally:
        for k in [k for k in sys.modules if _is_torchvision(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
