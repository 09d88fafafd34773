"""Automatic-mask region proposals with transformers' SAM (``grounder.kind: sam_hf``).

An alternative to segment-anything for checkpoints in the transformers layout
(``SamModel.save_pretrained``: config.json, model weights, preprocessor_config.json). It follows
SAM's automatic mask generation (a grid of point prompts, IoU and stability filtering, NMS)
with transformers' PIL image processor (``SamImageProcessorPil``), whose only torchvision need,
the final NMS, is replaced by our pure-torch ``batched_nms``, so it runs without torchvision.
One crop layer (the whole image), like the segment-anything path's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from srum_ray.config.schema import GrounderConfig
from srum_ray.grounding._torchvision_shim import batched_nms
from srum_ray.grounding.base import Grounder, check_batch, select_boxes
from srum_ray.types import Box

#: files a transformers SAM checkpoint directory must hold
REQUIRED = ("config.json", "preprocessor_config.json")


def load_hf_sam(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """``(SamModel, SamImageProcessorPil)`` from a local directory; one-line errors."""
    from transformers import SamModel
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"transformers SAM checkpoint directory not found: {root}")
    missing = [f for f in REQUIRED if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"incomplete transformers SAM checkpoint at {root}: missing {', '.join(missing)}")
    try:
        model = SamModel.from_pretrained(root, local_files_only=True).to(device).eval()
        processor = SamImageProcessorPil.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{root} is not a loadable transformers SAM checkpoint: {first}") from e
    return model, processor


class HfSamGrounder(Grounder):
    """Boxes of SAM's automatic masks, from a transformers ``SamModel``.

    Args:
        cfg: grounder config (``sam.checkpoint`` is the checkpoint directory; the point grid,
            thresholds and NMS come from ``cfg.sam``; ``max_boxes``/``min_box_area_frac``
            select the boxes).
        device: torch device.
        model, processor: an already built model and image processor (tests).
    """

    kind = "sam_hf"

    def __init__(self, cfg: GrounderConfig, device: str = "cpu", *, model: Any = None, processor: Any = None) -> None:
        self.cfg = cfg
        self.device = device
        if model is None:
            if not cfg.sam.checkpoint:
                raise ValueError("grounder.kind sam_hf needs grounder.sam.checkpoint (a transformers SAM directory)")
            model, processor = load_hf_sam(cfg.sam.checkpoint, device)
        self.model, self.processor = model, processor

    @torch.no_grad()
    def boxes(self, image: Image.Image) -> list[tuple[Box, float]]:
        """Every mask's box (pixel, x1/y1 exclusive) and predicted IoU, after NMS."""
        sam = self.cfg.sam
        ip = self.processor
        target = ip.size.get("longest_edge", ip.size.get("height"))
        image = image.convert("RGB")
        crop_boxes, points, crops, labels = ip.generate_crop_boxes(
            image, target, 0, 512 / 1500, sam.points_per_side, 1
        )
        inputs = ip(images=crops, return_tensors="pt")
        pixel_values = inputs.pop("pixel_values").to(self.device, self.model.dtype)
        embeddings = self.model.get_image_embeddings(pixel_values[:1])
        original = inputs["original_sizes"][:1]
        full_size = original[0].tolist()
        all_boxes, all_scores = [], []
        step = 64
        for i in range(0, points.shape[1], step):
            out = self.model(
                image_embeddings=embeddings,
                input_points=points[:, i : i + step, :1, :].to(self.device),
                input_labels=labels[:, i : i + step, :1].to(self.device),
                multimask_output=True,
            )
            masks = ip.post_process_masks(
                out.pred_masks.cpu(), original.tolist(),
                reshaped_input_sizes=inputs["reshaped_input_sizes"][:1].tolist(), binarize=False,
            )
            _, scores, boxes = ip.filter_masks(
                masks[0], out.iou_scores[0].cpu(), full_size, crop_boxes[0],
                sam.pred_iou_thresh, sam.stability_score_thresh, 0.0, 1.0,
            )
            all_boxes.append(boxes)
            all_scores.append(scores)
        boxes = torch.cat(all_boxes) if all_boxes else torch.zeros(0, 4)
        scores = torch.cat(all_scores) if all_scores else torch.zeros(0)
        if boxes.numel() == 0:
            return []
        keep = batched_nms(boxes.float(), scores.float(), torch.zeros(len(boxes), dtype=torch.long), sam.box_nms_thresh)
        # SAM's mask boxes are inclusive of their last pixel; ours are exclusive
        return [
            (Box(int(b[0]), int(b[1]), int(b[2]) + 1, int(b[3]) + 1), float(scores[k]))
            for k, b in zip(keep.tolist(), boxes[keep].tolist())
        ]

    def propose(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        check_batch(images, prompts, "HfSamGrounder")
        return [
            select_boxes([b for b, _ in self.boxes(im)], im.width, im.height,
                         self.cfg.max_boxes, self.cfg.min_box_area_frac)
            for im in images
        ]


def build_tiny_hf_sam(seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """A random-weight transformers SAM small enough for tests, with its PIL processor."""
    from transformers import SamConfig, SamModel
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    cfg = SamConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "mlp_dim": 64, "image_size": image_size, "patch_size": 8, "output_channels": 16,
                       "window_size": 4, "global_attn_indexes": [0], "num_pos_feats": 8},
        prompt_encoder_config={"hidden_size": 16, "image_size": image_size, "patch_size": 8,
                               "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "iou_head_hidden_dim": 16},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(cfg).eval()
    processor = SamImageProcessorPil(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": image_size // 4}, mask_pad_size={"height": image_size // 4, "width": image_size // 4},
    )
    return model, processor
