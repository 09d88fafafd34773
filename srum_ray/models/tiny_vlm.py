"""The ``tiny`` understanding model: a random-weight LLaVA built offline.

A ``LlavaForConditionalGeneration`` (tiny CLIP vision tower, tiny Llama language model) with a
``LlavaProcessor`` made from the in-memory BPE (:mod:`srum_ray.models.tokenizer`) and the PIL
``CLIPImageProcessorPil`` (there is no torchvision here). Answers are generated in batches with
left padding; :class:`~srum_ray.models.base.AnswerConstraint` is enforced with logits
processors, so even random weights produce well-formed numbers and valid choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from srum_ray.config.schema import TinyModelConfig
from srum_ray.models.base import AnswerConstraint, UnderstandingModel, check_answer_args, own_weights
from srum_ray.models.constraints import generate_answers
from srum_ray.models.tiny import as_dtype, check_files
from srum_ray.models.tokenizer import build_tokenizer

#: how a question is laid out around the image placeholder
PROMPT_TEMPLATE = "USER: <image>\n{prompt}\nASSISTANT:"
VISION_PATCH = 8
_VLM_FILES = (
    "model/config.json",
    "model/model.safetensors",
    "processor/tokenizer.json",
    "processor/processor_config.json",
)


def choice_first_tokens(tokenizer: PreTrainedTokenizerFast, choices: Sequence[str]) -> list[int]:
    """First token id of ``" " + choice`` for each choice (they follow ``ASSISTANT:``).

    Raises:
        ValueError: if there are no choices or two choices share their first token.
    """
    if not choices:
        raise ValueError("a 'choice' constraint needs at least one choice")
    firsts = [tokenizer.encode(" " + c, add_special_tokens=False)[0] for c in choices]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"choices {list(choices)} share a first token; they cannot be told apart")
    return firsts


#: weight init scale of the tiny VLM: at the usual 0.02 a random model answers the same text
#: whatever the image and prompt; at this scale its answers vary with them
INIT_RANGE = 0.6


def build_llava_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """A tiny LLaVA config: CLIP vision at ``vision_image_size`` px, Llama of ``vlm_hidden``."""
    vision = CLIPVisionConfig(
        image_size=cfg.vision_image_size,
        patch_size=VISION_PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=32,
        initializer_range=INIT_RANGE,
    )
    if cfg.vlm_hidden % 2:
        raise ValueError(f"tiny vlm_hidden must be even (rotary embeddings), got {cfg.vlm_hidden}")
    heads = 2 if cfg.vlm_hidden % 4 == 0 else 1  # keeps the head size even
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.vlm_hidden,
        intermediate_size=2 * cfg.vlm_hidden,
        num_hidden_layers=cfg.vlm_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(cfg.vision_image_size // VISION_PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int) -> LlavaProcessor:
    """LLaVA processor from the in-memory tokenizer and the PIL CLIP image processor."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VISION_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


class TinyUnderstanding(UnderstandingModel):
    """Random-weight LLaVA answering questions about images.

    Args:
        cfg: sizes (``vlm_hidden``, ``vlm_layers``, ``vision_image_size``) and weight seed.
        device: torch device.
        dtype: module dtype.
    """

    def __init__(
        self,
        cfg: TinyModelConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        *,
        _parts: tuple[LlavaForConditionalGeneration, LlavaProcessor] | None = None,
    ) -> None:
        self.cfg = cfg
        self.device, self.dtype = torch.device(device), as_dtype(dtype)
        if _parts is None:
            tokenizer = build_tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                model = LlavaForConditionalGeneration(build_llava_config(cfg, tokenizer))
            _parts = (model, build_processor(tokenizer, cfg.vision_image_size))
        self.model, self.processor = _parts
        self.tokenizer: PreTrainedTokenizerFast = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model.to(self.device, self.dtype).eval().requires_grad_(False)

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

        Greedy when ``temperature == 0`` (deterministic). Sampling with a ``seed`` is
        reproducible; with ``seed=None`` it draws from torch's global RNG. Under a ``"choice"``
        constraint one token is generated among the choices' first tokens and the matching
        choice string is returned; under ``"number"`` the answer follows
        :class:`~srum_ray.models.constraints.ScoreGrammar` (a score in [-1, 1]). Answers are stripped of surrounding whitespace.
        """
        check_answer_args(images, prompts, max_new_tokens, temperature, constraint)
        if not prompts:
            return []
        firsts = None
        if constraint is not None and constraint.kind == "choice":
            firsts = {tok: i for i, tok in enumerate(choice_first_tokens(self.tokenizer, constraint.choices))}
        inputs = self.processor(
            images=[img.convert("RGB") for img in images],
            text=[PROMPT_TEMPLATE.format(prompt=p) for p in prompts],
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return generate_answers(
            self.model, self.tokenizer, inputs,
            max_new_tokens=max_new_tokens, constraint=constraint, temperature=temperature,
            seed=seed, device=self.device, choice_tokens=firsts, vocab=len(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id, bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``model/`` and ``processor/`` with the libraries' ``save_pretrained``."""
        root = Path(path)
        self.model.save_pretrained(root / "model")
        self.processor.save_pretrained(root / "processor")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> "TinyUnderstanding":
        """Load a directory written by :meth:`save_pretrained` (no network access).

        Raises:
            FileNotFoundError: (one line, naming ``path``) if the directory is incomplete.
        """
        root = check_files(path, _VLM_FILES, "tiny understanding")
        kw = {"local_files_only": True}
        model = LlavaForConditionalGeneration.from_pretrained(root / "model", **kw)
        own_weights(model)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(root / "processor", **kw)
        image_processor = CLIPImageProcessorPil.from_pretrained(root / "processor", **kw)
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=model.config.vision_config.patch_size,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            num_additional_image_tokens=1,
        )
        cfg = TinyModelConfig(
            vlm_hidden=model.config.text_config.hidden_size,
            vlm_layers=model.config.text_config.num_hidden_layers,
            vision_image_size=model.config.vision_config.image_size,
        )
        return cls(cfg, device, dtype, _parts=(model, processor))
