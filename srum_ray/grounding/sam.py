"""SAM automatic-mask region proposals (SPEC 2.2), on segment-anything 1.0.

SAM's automatic mask generator prompts the model with a grid of points, keeps masks that
pass its quality filters and non-maximum suppression, and reports each mask's bounding box;
:class:`SamGrounder` turns those boxes into our exclusive pixel boxes and keeps the largest
``max_boxes`` (:func:`~srum_ray.grounding.base.select_boxes`). SAM is class-agnostic: the
prompt plays no part here (the judge's box filter uses it later).

Models come from a local checkpoint (``vit_b`` / ``vit_l`` / ``vit_h``; nothing is ever
downloaded) or, for tests and the tiny run, ``model_type: tiny``: a random-weight SAM of
about 136k parameters built from segment-anything's own modules (:func:`build_tiny_sam`).
A tiny model saved with :func:`save_sam_checkpoint` loads back through the same
:func:`load_sam` path real checkpoints use.

Random tiny weights produce low predicted-IoU and low stability scores, so SAM's default
filters (0.88 / 0.95) drop every mask; :data:`TINY_SAM_PRESET` holds thresholds that give
several boxes on a 64x64 image.
"""

from __future__ import annotations

import functools
import os
import types
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from srum_ray.config.schema import GrounderConfig
from srum_ray.grounding._torchvision_shim import torchvision_shim
from srum_ray.grounding.base import Grounder, check_batch, select_boxes
from srum_ray.types import Box

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

#: SamConfig values for the random tiny SAM: 0.0 switches SAM's predicted-IoU and stability
#: filters off (random weights score far below the ViT-H defaults 0.88 / 0.95); NMS at 0.7
#: still removes near-duplicate masks.
TINY_SAM_PRESET: dict[str, Any] = {
    "model_type": "tiny",
    "points_per_side": 8,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
}

# Tiny architecture. The image side is the only free choice (read back from a checkpoint's
# positional embedding); everything else is fixed so a tiny checkpoint is self-describing.
_TINY_PATCH = 8
_TINY_ENCODER = {"embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "window_size": 4}
_TINY_PROMPT_DIM = 32
_TINY_QK_SCALE = 3.0
#: default weight seed of the tiny SAM: of seeds 0-29 one of those giving 9-10 boxes on each
#: of three 64-pixel test images under TINY_SAM_PRESET (many seeds give a single box)
TINY_SAM_SEED = 7
_CHECKPOINT_TYPES = ("tiny", "vit_b", "vit_l", "vit_h")


@functools.lru_cache(maxsize=1)
def import_segment_anything() -> types.ModuleType:
    """Import segment-anything, supplying its torchvision functions if torchvision is absent.

    Raises:
        ImportError: segment-anything is not installed (``pip install srum-ray[sam]``).
    """
    with torchvision_shim():
        try:
            import segment_anything
            import segment_anything.automatic_mask_generator  # noqa: F401
            import segment_anything.utils.transforms  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"the SAM grounder needs segment-anything==1.0 ({e}); "
                "install it with `pip install srum-ray[sam]`"
            ) from e
    return segment_anything


def build_tiny_sam(seed: int = TINY_SAM_SEED, img_size: int = 64) -> "Sam":
    """A random-weight SAM of about 136k parameters, identical for the same arguments.

    Built from segment-anything's ImageEncoderViT (2 blocks, width 64, 8-pixel patches,
    windowed + global attention with relative positions), PromptEncoder and a MaskDecoder
    on a 2-layer TwoWayTransformer of width 32. Weights are drawn inside ``fork_rng`` from
    ``seed``, so the caller's random state is untouched.

    Args:
        seed: weight seed.
        img_size: side of the square input SAM resizes images to; a multiple of 32.

    Returns:
        The model in eval mode, on CPU.
    """
    if img_size < 32 or img_size % (_TINY_PATCH * _TINY_ENCODER["window_size"]) != 0:
        raise ValueError(f"tiny SAM img_size must be a multiple of 32 (>= 32), got {img_size}")
    sa = import_segment_anything()
    m = sa.modeling
    grid = img_size // _TINY_PATCH
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = m.Sam(
            image_encoder=m.ImageEncoderViT(
                img_size=img_size,
                patch_size=_TINY_PATCH,
                out_chans=_TINY_PROMPT_DIM,
                qkv_bias=True,
                norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                global_attn_indexes=(_TINY_ENCODER["depth"] - 1,),
                **_TINY_ENCODER,
            ),
            prompt_encoder=m.PromptEncoder(
                embed_dim=_TINY_PROMPT_DIM,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(
                    depth=2, embedding_dim=_TINY_PROMPT_DIM, mlp_dim=64, num_heads=2
                ),
                transformer_dim=_TINY_PROMPT_DIM,
                iou_head_depth=2,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        _shape_random_init(sam)
    return sam.eval()


def _shape_random_init(sam: "Sam") -> None:
    """Make a random SAM's automatic masks image- and point-dependent (in place).

    With plain random init every point prompt yields the same three speckled,
    near-whole-image masks (random 2x2 transposed-convolution kernels print a
    checkerboard, and near-uniform attention ignores the point), so NMS leaves a single
    box. Three changes fix that without training: each transposed-convolution kernel is
    made the same at its 2x2 positions and its bias zeroed (smooth, block-wise masks that
    follow image content), the decoder's query/key projections are scaled by 3 (sharper
    attention, so different points read different image content), and the encoder's
    zero-initialised absolute position embedding gets small random values.
    """
    from segment_anything.modeling.transformer import Attention

    with torch.no_grad():
        sam.image_encoder.pos_embed.normal_(0.0, 0.02)
        for module in sam.mask_decoder.transformer.modules():
            if isinstance(module, Attention):
                module.q_proj.weight.mul_(_TINY_QK_SCALE)
                module.k_proj.weight.mul_(_TINY_QK_SCALE)
        for conv in sam.mask_decoder.output_upscaling:
            if isinstance(conv, torch.nn.ConvTranspose2d):
                conv.weight.copy_(conv.weight.mean(dim=(2, 3), keepdim=True).expand_as(conv.weight))
                conv.bias.zero_()


def save_sam_checkpoint(model: "Sam", path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict (the format of Meta's released SAM checkpoints)."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, os.fspath(path))


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        first = first.split(". ")[0][:160]
        raise ValueError(f"{path} is not a SAM checkpoint: torch.load failed ({type(e).__name__}: {first})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a SAM checkpoint: expected a state_dict of tensors")
    return state


def _tiny_img_size(state: dict[str, torch.Tensor], path: str) -> int:
    pos = state.get("image_encoder.pos_embed")
    if pos is None or pos.ndim != 4:
        raise ValueError(f"{path} is not a tiny SAM checkpoint: no image_encoder.pos_embed")
    return int(pos.shape[1]) * _TINY_PATCH


def load_sam(
    model_type: str, checkpoint: str | os.PathLike | None = None, *, seed: int = TINY_SAM_SEED
) -> "Sam":
    """Build a SAM and load its weights from a local checkpoint.

    Args:
        model_type: ``vit_b`` / ``vit_l`` / ``vit_h`` (segment-anything's own builders;
            a checkpoint is required) or ``tiny`` (random weights from ``seed`` when
            ``checkpoint`` is None, else the tiny architecture loaded from it).
        checkpoint: path of a state_dict file (``torch.save(model.state_dict())``).
        seed: weight seed for ``tiny`` without a checkpoint.

    Returns:
        The model in eval mode, on CPU.

    Raises:
        FileNotFoundError: the checkpoint path does not exist.
        ValueError: unknown ``model_type``, a missing checkpoint for a ViT model, or a file
            that is not a SAM checkpoint of that type.
    """
    if model_type not in _CHECKPOINT_TYPES:
        raise ValueError(
            f"unknown SAM model_type {model_type!r}; expected one of {_CHECKPOINT_TYPES}"
        )
    if checkpoint is None:
        if model_type == "tiny":
            return build_tiny_sam(seed=seed)
        raise ValueError(
            f"SAM {model_type} needs grounder.sam.checkpoint (a local .pth; nothing is "
            "downloaded), or use grounder.sam.model_type: tiny"
        )
    path = os.fspath(checkpoint)
    state = _read_state_dict(path)
    if model_type == "tiny":
        model = build_tiny_sam(seed=seed, img_size=_tiny_img_size(state, path))
    else:  # the registry builds the architecture; the weights come from our reader
        model = import_segment_anything().sam_model_registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a SAM {model_type} checkpoint: {first}") from e
    return model.eval()


def ann_to_box(ann: dict[str, Any]) -> Box | None:
    """Our exclusive box for one automatic-mask record, or None for an empty mask.

    SAM writes ``bbox`` as ``[x, y, w, h]`` where ``x + w`` is the last mask column
    (inclusive), so the exclusive right edge is ``x + w + 1`` (likewise for rows).
    """
    if int(ann.get("area", 1)) <= 0:
        return None
    x, y, w, h = (int(round(float(v))) for v in ann["bbox"])
    return Box(x, y, x + w + 1, y + h + 1)


class SamGrounder(Grounder):
    """Boxes of SAM's automatic masks, largest ``cfg.max_boxes`` kept (``kind: sam``).

    Args:
        cfg: grounder config; ``cfg.sam`` picks the model and the mask-generator
            thresholds (points_per_side, pred_iou_thresh, stability_score_thresh,
            box_nms_thresh, min_mask_region_area).
        device: torch device for SAM.
        model: an already built SAM to use instead of loading ``cfg.sam``.
        seed: weight seed for ``model_type: tiny`` without a checkpoint.
    """

    kind = "sam"

    def __init__(
        self,
        cfg: GrounderConfig,
        device: str | torch.device = "cpu",
        *,
        model: "Sam | None" = None,
        seed: int = TINY_SAM_SEED,
    ) -> None:
        self.cfg = cfg
        s = cfg.sam
        if s.min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401
            except ImportError as e:
                raise ImportError(
                    "grounder.sam.min_mask_region_area > 0 needs opencv (cv2) for SAM's "
                    "small-region cleanup; install opencv-python-headless or set it to 0"
                ) from e
        sa = import_segment_anything()
        if model is None:
            model = load_sam(s.model_type, s.checkpoint, seed=seed)
        self.model = model
        self.model.to(device).eval()
        self.generator = sa.SamAutomaticMaskGenerator(
            self.model,
            points_per_side=s.points_per_side,
            pred_iou_thresh=s.pred_iou_thresh,
            stability_score_thresh=s.stability_score_thresh,
            box_nms_thresh=s.box_nms_thresh,
            min_mask_region_area=s.min_mask_region_area,
            output_mode="binary_mask",
        )

    def masks(self, image: Image.Image) -> list[dict[str, Any]]:
        """SAM's raw automatic-mask records for one image (``bbox`` XYWH, ``segmentation``)."""
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        with torch.inference_mode():
            return self.generator.generate(arr)

    def propose(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        check_batch(images, prompts, type(self).__name__)
        out = []
        for image in images:
            boxes = [b for b in map(ann_to_box, self.masks(image)) if b is not None]
            out.append(
                select_boxes(
                    boxes, image.width, image.height, self.cfg.max_boxes, self.cfg.min_box_area_frac
                )
            )
        return out
