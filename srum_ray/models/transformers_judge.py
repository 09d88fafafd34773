"""Vision-language judges from transformers checkpoints on disk (backend ``diffusers``).

:class:`TransformersUnderstanding` loads a Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision or Idefics3 /
SmolVLM checkpoint with the Auto classes and its processor and chat template
(``local_files_only=True``), answers in batches with left padding, greedy when the
temperature is 0, and enforces :class:`~srum_ray.models.base.AnswerConstraint` with the same
logits processors as the tiny judge. The Qwen families ground natively (JSON ``bbox_2d``);
the others use the base class's text grounding. Family details: :mod:`._vlm_families`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText

from srum_ray.config.schema import ModelConfig, UnderstandingModelConfig
from srum_ray.grounding.model_grounder import parse_boxes
from srum_ray.models import _vlm_families as F
from srum_ray.models.base import AnswerConstraint, UnderstandingModel, check_answer_args, own_weights
from srum_ray.models.constraints import generate_answers
from srum_ray.models.tiny import as_dtype
from srum_ray.types import Box


def choice_token_map(tokenizer: Any, choices: Sequence[str]) -> dict[int, int]:
    """First token id -> choice index, for each choice written bare and after a space.

    Chat templates differ in whether the answer starts right after a newline (``"yes"``)
    or after ``"Assistant:"`` (``" yes"``), so both spellings are allowed.

    Raises:
        ValueError: no choices, or two choices that share a first token.
    """
    if not choices:
        raise ValueError("a 'choice' constraint needs at least one choice")
    first: dict[int, int] = {}
    for k, choice in enumerate(choices):
        for text in (choice, " " + choice):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if not ids or not tokenizer.decode(ids[:1]).strip():
                continue  # a bare-space first token says nothing about the choice
            if first.setdefault(ids[0], k) != k:
                raise ValueError(
                    f"choices {list(choices)} share a first token; they cannot be told apart"
                )
    return first


def fit_image(image: Image.Image, max_side: int) -> Image.Image:
    """RGB copy of ``image`` downscaled (aspect kept) so its longest side is <= ``max_side``."""
    image = image.convert("RGB")
    w, h = image.size
    if max(w, h) <= max_side:
        return image
    s = max_side / max(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


class TransformersUnderstanding(UnderstandingModel):
    """A transformers vision-language model as the SRUM judge.

    Args:
        model: an image-text-to-text model (e.g. ``Qwen2_5_VLForConditionalGeneration``).
        processor: its processor (image processor + tokenizer + chat template).
        family: family name (a key of ``_vlm_families.FAMILIES``).
        image_max_side: longest image side handed to the processor, in pixels.
        ground_max_new_tokens: answer budget of :meth:`ground`.

    The model is put in eval mode with gradients off; it is not moved (a module shared with
    a generator stays where the generator put it): use :meth:`from_pretrained` to load onto
    a device.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        family: str,
        *,
        image_max_side: int = 448,
        ground_max_new_tokens: int = 256,
    ) -> None:
        if family not in F.FAMILIES:
            raise ValueError(f"unknown family {family!r}; supported: {', '.join(F.FAMILIES)}")
        self.model, self.processor, self.family = model, processor, F.FAMILIES[family]
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"the {family} processor has no chat template")
        self.image_max_side = int(image_max_side)
        self.ground_max_new_tokens = int(ground_max_new_tokens)
        self.model.eval().requires_grad_(False)
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        model_cfg: UnderstandingModelConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> "TransformersUnderstanding":
        """Load a checkpoint directory (hub layout) with the Auto classes, offline.

        Raises:
            FileNotFoundError: (one line) missing directory or config.json.
            ValueError: (one line) unsupported model_type, family mismatch, or a processor
                that cannot be built (naming the class and why).
            ImportError: (one line) a package the family's processor needs is missing.
        """
        root = Path(path).expanduser()
        family = F.checkpoint_family(root, model_cfg.family)
        processor = F.build_processor(root, family)  # before the (large) weights load
        config = AutoConfig.from_pretrained(root, local_files_only=True)
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                root, config=config, dtype=as_dtype(dtype), local_files_only=True
            )
        except OSError as e:
            why = F._one_line(e)
            raise FileNotFoundError(f"cannot load model weights from {root}: {why}") from e
        model.to(torch.device(device))
        own_weights(model)
        return cls(model, processor, family.name, image_max_side=model_cfg.image_max_side)

    @classmethod
    def from_text_encoder(
        cls,
        module: torch.nn.Module,
        tokenizer_or_processor: Any,
        model_cfg: UnderstandingModelConfig | None = None,
        *,
        image_processor: Any = None,
        chat_template: str | None = None,
    ) -> "TransformersUnderstanding":
        """Judge sharing a generator's VLM text encoder (one copy in memory).

        Qwen-Image encodes prompts with a ``Qwen2_5_VLForConditionalGeneration``
        (``pipe.text_encoder``) and a Qwen2 tokenizer (``pipe.tokenizer``); pass them here.
        Without an ``image_processor`` a PIL Qwen2-VL image processor is made from the
        module's vision config (patch, merge and temporal patch sizes). A bare tokenizer gets
        :data:`_vlm_families.QWEN_VL_TEMPLATE` as chat template unless one is given. The
        tokenizer / processor is copied (the judge pads on the left; the generator's prompt
        encoding keeps its own settings); the module itself is shared, not copied.

        Args:
            module: the shared model (must be a ``Qwen2_5_VLForConditionalGeneration`` or
                ``Qwen3VLForConditionalGeneration``: an image-text-to-text model with a
                ``generate`` method and a vision tower).
            tokenizer_or_processor: its tokenizer, or a full processor.
            model_cfg: ``model.understanding`` (image_max_side); defaults when None.
            image_processor: optional image processor.
            chat_template: optional chat template overriding the default.

        Raises:
            ValueError: a module of an unsupported type.
        """
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if model_type not in ("qwen2_5_vl", "qwen3_vl") or not hasattr(module, "generate"):
            raise ValueError(
                f"a shared text encoder must be a Qwen2_5_VLForConditionalGeneration or "
                f"Qwen3VLForConditionalGeneration, got {type(module).__name__}"
            )
        model_cfg = model_cfg or UnderstandingModelConfig()
        family = F.FAMILIES[model_type]
        # a private copy: the judge pads on the left, the generator's prompt encoding may not
        tokenizer_or_processor = copy.deepcopy(tokenizer_or_processor)
        if hasattr(tokenizer_or_processor, "image_processor"):
            processor = tokenizer_or_processor
            if chat_template:
                processor.chat_template = chat_template
        else:
            if image_processor is None:
                import transformers

                vis = module.config.vision_config
                image_processor = getattr(transformers, family.image_processor_class)(
                    patch_size=vis.patch_size,
                    merge_size=vis.spatial_merge_size,
                    temporal_patch_size=vis.temporal_patch_size,
                )
            processor = F.assemble_processor(
                family, image_processor, tokenizer_or_processor, chat_template or F.QWEN_VL_TEMPLATE
            )
        return cls(module, processor, family.name, image_max_side=model_cfg.image_max_side)

    # ------------------------------------------------------------------ answering
    def _inputs(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
        """Processor batch (left-padded) for one image + question user turn per sample."""
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for p in prompts
        ]
        fitted = [fit_image(im, self.image_max_side) for im in images]
        imgs: list = [[im] for im in fitted] if self.family.nested_images else fitted
        inputs = self.processor(images=imgs, text=texts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        for key in list(inputs.keys()):
            if key.startswith("pixel_values") and inputs[key].is_floating_point():
                inputs[key] = inputs[key].to(self.dtype)
        return inputs

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        constraint: AnswerConstraint | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answer ``prompts[i]`` about ``images[i]`` (see :class:`UnderstandingModel`).

        Greedy when ``temperature == 0``; sampling is reproducible with a ``seed``. A
        ``"choice"`` constraint generates one token among the choices' first tokens and
        returns that choice; ``"number"`` follows
        :class:`~srum_ray.models.constraints.ScoreGrammar`. Answers are stripped.
        """
        check_answer_args(images, prompts, max_new_tokens, temperature, constraint)
        if not prompts:
            return []
        inputs = self._inputs(images, prompts)
        firsts, vocab = None, None
        if constraint is not None and constraint.kind == "choice":
            firsts = choice_token_map(self.tokenizer, constraint.choices)
            vocab = max(self.model.get_output_embeddings().weight.shape[0], len(self.tokenizer))
        return generate_answers(
            self.model, self.tokenizer, inputs,
            max_new_tokens=max_new_tokens, constraint=constraint, temperature=temperature,
            seed=seed, device=self.device, choice_tokens=firsts, vocab=vocab,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._eos_ids(),
        )

    # ------------------------------------------------------------------ grounding
    def processor_sizes(self, images: Sequence[Image.Image]) -> list[tuple[int, int]]:
        """``(width, height)`` of each image as the Qwen image processor resizes it."""
        ip = self.processor.image_processor
        fitted = [fit_image(im, self.image_max_side) for im in images]
        grid = ip(images=fitted, return_tensors="pt")["image_grid_thw"]
        patch = int(ip.patch_size)
        return [(int(g[2]) * patch, int(g[1]) * patch) for g in grid]

    def boxes_from_text(
        self, text: str, image_size: tuple[int, int], processor_size: tuple[int, int]
    ) -> list[Box]:
        """Boxes of a native grounding answer, in pixels of the original image.

        Qwen2.5-VL writes pixels of the processor-resized image (``processor_size``);
        Qwen3-VL writes 0..1000 normalized coordinates.
        """
        src = (1000, 1000) if self.family.boxes == "norm1000" else processor_size
        return F.rescale_boxes(parse_boxes(text, *src), src, image_size)

    def ground(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        """Native JSON ``bbox_2d`` grounding for the Qwen families; the base default otherwise."""
        if self.family.boxes is None:
            return super().ground(images, prompts)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        questions = [F.GROUND_QUESTION.format(prompt=p) for p in prompts]
        answers = self.answer(images, questions, max_new_tokens=self.ground_max_new_tokens)
        sizes = self.processor_sizes(images)
        return [
            self.boxes_from_text(a, im.size, s) for a, im, s in zip(answers, images, sizes)
        ]


def build_transformers_understanding(
    model_cfg: ModelConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    text_encoder: torch.nn.Module | None = None,
    tokenizer: Any = None,
) -> TransformersUnderstanding:
    """The judge of ``model_cfg.understanding`` (backend ``diffusers``).

    With ``share_with_generator: true`` the caller passes the generator's VLM text encoder
    and tokenizer (see :meth:`TransformersUnderstanding.from_text_encoder`); otherwise
    ``model.understanding.path`` is loaded.

    Raises:
        ValueError: (one line) no path set, or sharing asked without a text encoder.
        FileNotFoundError: see :meth:`TransformersUnderstanding.from_pretrained`.
    """
    ucfg = model_cfg.understanding
    if ucfg.share_with_generator:
        if text_encoder is None or tokenizer is None:
            raise ValueError(
                "model.understanding.share_with_generator is true but the generator exposes no "
                "vision-language text encoder and tokenizer to share"
            )
        return TransformersUnderstanding.from_text_encoder(text_encoder, tokenizer, ucfg)
    if not ucfg.path:
        raise ValueError("model.understanding.path is not set (a transformers VLM checkpoint dir)")
    return TransformersUnderstanding.from_pretrained(ucfg.path, ucfg, device, dtype)
