"""What differs between the vision-language families the transformers judge loads.

Per family: the config ``model_type`` values that map to it, the transformers processor and
PIL image processor classes, how images are laid out in a processor call, and how the model
writes boxes when asked to ground (Qwen2.5-VL: absolute pixels of the image as its processor
resized it; Qwen3-VL: 0..1000 normalized; the others have no native grounding format).

Processors are built with :class:`transformers.AutoProcessor` first. Where that fails because
torchvision is missing (the Qwen, LLaVA-OneVision and SmolVLM2 processors also own a video
processor, which needs torchvision), :func:`build_processor` assembles the family's processor by hand
from its PIL image processor and tokenizer, in an image-only subclass without the video part.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers

from srum_ray.types import Box


@dataclass(frozen=True)
class Family:
    """How one model family is loaded and prompted.

    Attributes:
        name: family name as ``model.understanding.family`` spells it.
        processor_class: transformers processor class name.
        image_processor_class: the PIL image processor class name (works without torchvision).
        has_video: whether the processor's ``__init__`` takes a video processor.
        nested_images: whether the processor wants one list of images per text.
        boxes: native grounding coordinates: ``"pixels"`` (of the processor-resized image),
            ``"norm1000"``, or None (no native format: the base class default is used).
        needs: a package the family's processor imports beyond transformers' own
            requirements (installed by the extra of the same name as the family).
    """

    name: str
    processor_class: str
    image_processor_class: str
    has_video: bool
    nested_images: bool = False
    boxes: str | None = None
    needs: str | None = None


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen2_5_vl", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessorPil", True, boxes="pixels"
        ),
        Family("qwen3_vl", "Qwen3VLProcessor", "Qwen2VLImageProcessorPil", True, boxes="norm1000"),
        Family(
            "llava_onevision", "LlavaOnevisionProcessor", "LlavaOnevisionImageProcessorPil", True
        ),
        Family("idefics3", "Idefics3Processor", "Idefics3ImageProcessorPil", False, True),
        Family(
            "smolvlm", "SmolVLMProcessor", "SmolVLMImageProcessorPil", True, True,
            needs="num2words",
        ),
    )
}
#: config.json ``model_type`` -> family (SmolVLM v1 checkpoints are ``idefics3``, SmolVLM2
#: checkpoints ``smolvlm``)
MODEL_TYPES: dict[str, str] = {
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "llava_onevision": "llava_onevision",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",
}

#: native grounding question for the Qwen families (our wording; JSON with bbox_2d)
GROUND_QUESTION = (
    'This image was generated for the prompt: "{prompt}".\n'
    "Locate every object the prompt mentions that is visible in the image. Output a JSON "
    'list with one entry per object: [{{"bbox_2d": [x1, y1, x2, y2], "label": "name"}}].'
)

#: chat template used when a bare Qwen tokenizer is shared as the judge (from_text_encoder):
#: the text-only Qwen template does not know image content parts
QWEN_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def family_for(model_type: str, requested: str, path: Path) -> Family:
    """The family of a checkpoint whose config says ``model_type``.

    Args:
        model_type: ``config.json``'s ``model_type``.
        requested: ``model.understanding.family`` (``"auto"`` or a family name).
        path: checkpoint directory (for messages).

    Raises:
        ValueError: (one line) unsupported model type, or a requested family that does not
            match the checkpoint.
    """
    fam = MODEL_TYPES.get(model_type)
    if fam is None:
        raise ValueError(
            f"unsupported vision-language model_type {model_type!r} in {path}/config.json; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    if requested not in ("auto", fam):
        raise ValueError(
            f"model.understanding.family is {requested!r} but {path}/config.json has "
            f"model_type {model_type!r} (family {fam!r})"
        )
    return FAMILIES[fam]


def check_needs(family: Family) -> None:
    """Raise a one-line ImportError when the package ``family.needs`` is not installed."""
    if family.needs is not None and importlib.util.find_spec(family.needs) is None:
        raise ImportError(
            f"the {family.name} processor needs the {family.needs} package; install it with "
            f"`pip install 'srum-ray[{family.name}]'`"
        )


def checkpoint_family(root: Path, requested: str) -> Family:
    """The family of checkpoint directory ``root`` (from its config.json), loading nothing.

    Args:
        root: checkpoint directory.
        requested: ``model.understanding.family`` (``"auto"`` or a family name).

    Raises:
        FileNotFoundError: (one line) missing directory or config.json.
        ValueError: (one line) unreadable config.json, unsupported model_type, or a requested
            family that does not match the checkpoint.
        ImportError: (one line) a package the family's processor needs is not installed.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"vision-language checkpoint directory {root} does not exist")
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in vision-language checkpoint {root}")
    try:
        model_type = json.loads((root / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"unreadable {root}/config.json: {e}") from e
    family = family_for(str(model_type), requested, root)
    check_needs(family)
    return family


def image_only(cls: type) -> type:
    """Subclass of processor class ``cls`` without its video processor.

    transformers reads a processor's parts from its ``__init__`` signature; this one names
    only ``image_processor`` and ``tokenizer``, so no video processor (torchvision) is needed.
    Chat templates are rendered by :class:`transformers.ProcessorMixin`'s own method: SmolVLM's
    override only adds the video processor's frame settings, which an image-only processor
    has not got (the other families do not override it).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        cls.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    return type(
        f"{cls.__name__}ImageOnly",
        (cls,),
        {"__init__": __init__, "apply_chat_template": transformers.ProcessorMixin.apply_chat_template},
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def chat_template_in(root: Path, tokenizer: Any) -> str | None:
    """The chat template a checkpoint ships: chat_template.jinja, chat_template.json,
    processor_config.json, else the tokenizer's own."""
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json"):
        template = _read_json(root / name).get("chat_template")
        if template:
            return template
    return getattr(tokenizer, "chat_template", None)


def assemble_processor(
    family: Family, image_processor: Any, tokenizer: Any, chat_template: str | None, **kwargs: Any
) -> Any:
    """The family's processor from its parts (image-only where the class wants video)."""
    cls = getattr(transformers, family.processor_class)
    if family.has_video:
        cls = image_only(cls)
    return cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
    )


def build_processor(root: Path, family: Family) -> Any:
    """The family's processor for checkpoint ``root`` (local files only).

    Tries :class:`transformers.AutoProcessor`; when that fails (typically: torchvision
    missing for the video processor), builds the family's processor by hand from the PIL
    image processor, the tokenizer, the chat template and ``processor_config.json``'s
    settings. ``family`` comes from :func:`checkpoint_family`, which has checked the package
    the processor needs.

    Raises:
        ValueError: (one line) naming the processor class and why it cannot be built.
    """
    kw = {"local_files_only": True}
    try:
        return transformers.AutoProcessor.from_pretrained(root, **kw)
    except Exception as e:  # noqa: BLE001 - any failure: try the hand-made processor
        auto_why = _one_line(e)
    try:
        image_cls = getattr(transformers, family.image_processor_class)
        image_processor = image_cls.from_pretrained(root, **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(root, **kw)
        cls = getattr(transformers, family.processor_class)
        allowed = set(inspect.signature(cls.__init__).parameters) - {
            "self", "image_processor", "tokenizer", "video_processor", "chat_template", "kwargs",
        }
        saved = _read_json(root / "processor_config.json")
        settings = {k: v for k, v in saved.items() if k in allowed}
        return assemble_processor(
            family, image_processor, tokenizer, chat_template_in(root, tokenizer), **settings
        )
    except Exception as e:  # noqa: BLE001 - reported as one line naming the class
        why = _one_line(e)
        also = "" if why == auto_why else f" (AutoProcessor: {auto_why})"
        raise ValueError(f"cannot build {family.processor_class} for {root}: {why}{also}") from e


def _one_line(error: Exception, limit: int = 240) -> str:
    """``Type: first line of the message``, cut at ``limit`` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rescale_boxes(boxes: list[Box], src: tuple[int, int], dst: tuple[int, int]) -> list[Box]:
    """Map pixel boxes from a ``src = (width, height)`` image onto a ``dst`` image.

    Corners are scaled, rounded, clipped to ``dst``; boxes left with no area are dropped.
    """
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    out = []
    for b in boxes:
        x0, x1 = (min(max(round(v * sx), 0), dst[0]) for v in (b.x0, b.x1))
        y0, y1 = (min(max(round(v * sy), 0), dst[1]) for v in (b.y0, b.y1))
        if x1 > x0 and y1 > y0:
            out.append(Box(x0, y0, x1, y1))
    return out
