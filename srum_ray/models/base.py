"""The model interface: what SRUM needs from a unified multimodal model (UMM).

A UMM is split in two roles that may or may not share weights:

* :class:`GenerationModel` draws images from prompts (returning the clean latents ``x0`` the
  sampler ended on), encodes images to latents, and predicts flow-matching velocity for
  training. Its trainable part is one ``torch.nn.Module``.
* :class:`UnderstandingModel` answers a text prompt about an image (text out), optionally
  under an :class:`AnswerConstraint`, and optionally grounds (boxes from image + prompt).

:class:`UnifiedModel` holds one of each. Backends register a builder in
:mod:`srum_ray.models.registry`.
"""

from __future__ import annotations

import abc
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from PIL import Image

from srum_ray.types import Box


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` / ``"bfloat16"`` / ... -> a floating ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]


def check_files(path: str | Path, required: Sequence[str], what: str) -> Path:
    """Raise a one-line ``FileNotFoundError`` naming ``path`` if any required file is absent."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} checkpoint directory not found: {root}")
    missing = [f for f in required if not (root / f).is_file()]
    if missing:
        listed = ", ".join(missing)
        raise FileNotFoundError(f"incomplete {what} checkpoint at {root}: missing {listed}")
    return root


#: CPU kernels (oneDNN) vectorise on this boundary
_ALIGN = 64


def own_weights(*modules: torch.nn.Module) -> int:
    """Copy every CPU parameter and buffer whose memory is not 64-byte aligned; returns how many.

    With safetensors 0.8 (what transformers 5.23 requires), ``from_pretrained`` of diffusers and
    transformers models hands back CPU tensors at unaligned addresses (seen: ``data_ptr() % 64``
    of 8 and 28 on every tensor). CPU kernels then take another code path, and the loaded model
    computes up to ~5e-7 away from the one that was saved, so a save / load / resume would not
    repeat itself bit for bit. A copy is aligned and no longer tied to the loaded file. Tensors
    on an accelerator, and aligned ones, are left alone (no copy).
    """
    copied = 0
    with torch.no_grad():
        for module in modules:
            for sub in module.modules():
                for store in (sub._parameters, sub._buffers):
                    for name, t in store.items():
                        if t is None or t.device.type != "cpu" or t.data_ptr() % _ALIGN == 0:
                            continue
                        if isinstance(t, torch.nn.Parameter):
                            t.data = t.data.clone()
                        else:
                            store[name] = t.clone()
                        copied += 1
    return copied


def batch_times(t: torch.Tensor | float, batch: int, device: torch.device | str) -> torch.Tensor:
    """Flow times as a float32 ``[batch]`` tensor on ``device`` (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t has {t.numel()} entries for a batch of {batch}")
    return t


def check_answer_args(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    constraint: "AnswerConstraint | None",
) -> None:
    """The argument checks every :meth:`UnderstandingModel.answer` makes (ValueError)."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if constraint is not None and constraint.kind not in ("choice", "number"):
        raise ValueError(f"unknown constraint kind {constraint.kind!r}")


@dataclass
class GenerationOutput:
    """Result of :meth:`GenerationModel.generate`.

    Attributes:
        images: one RGB PIL image per prompt, ``image_size x image_size``.
        latents: clean latents ``x0`` the sampler ended on, ``[B, C, h, w]`` float32 on CPU,
            in the space the transformer works in (after the VAE's scaling/shift).
        cond: conditioning tensors the generator needs to predict velocity for these
            prompts again during training, each batch-first on CPU
            (e.g. ``prompt_embeds [B, L, D]``, ``pooled_prompt_embeds [B, P]``).
    """

    images: list[Image.Image]
    latents: torch.Tensor
    cond: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerConstraint:
    """Restricts what an understanding model may answer.

    * ``kind="number"``: the answer may only use the characters ``0-9 . - +`` and spaces
      (guided score decoding for small models that do not follow formats).
    * ``kind="choice"``: the answer is exactly one of ``choices`` (e.g. ``("yes", "no")``).
    """

    kind: Literal["number", "choice"]
    choices: tuple[str, ...] = ()


class GenerationModel(abc.ABC):
    """Text-to-image flow-matching generator.

    Conventions (SPEC section 2.5): ``x_t = (1 - t) * x0 + t * eps`` with ``t`` in [0, 1]
    (t = 1 is pure noise) and the velocity target is ``eps - x0``.
    """

    #: version of the trainable weights currently loaded (0 = base weights)
    weights_version: int = 0

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Side of the square images this generator draws, in pixels."""

    @property
    @abc.abstractmethod
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one clean latent."""

    @abc.abstractmethod
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """Draw one image per prompt; image ``i`` is a pure function of
        ``(weights, prompts[i], seeds[i])``."""

    @abc.abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for ``prompts`` (same keys as ``GenerationOutput.cond``)."""

    @abc.abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Clean latents ``[B, C, h, w]`` of RGB images (VAE encoder mean, scaled)."""

    @abc.abstractmethod
    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Velocity ``v_theta(x_t, t, c)`` with gradients through the trainable module.

        Args:
            x_t: noisy latents ``[B, C, h, w]``.
            t: times in [0, 1], shape ``[B]``.
            cond: conditioning tensors, batch-first, on any device.

        Returns:
            ``[B, C, h, w]`` velocity prediction.
        """

    @abc.abstractmethod
    def trainable_module(self) -> torch.nn.Module:
        """The module the learner optimizes (everything else stays frozen)."""

    #: whether :meth:`null_condition` is implemented (``train.cond_dropout`` needs it)
    supports_null_condition: bool = False

    def null_condition(self, cond: dict[str, torch.Tensor], drop: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cond`` with the rows where ``drop [B]`` is true replaced by the unconditional
        prompt's conditioning (what classifier-free guidance subtracts)."""
        raise NotImplementedError(f"{type(self).__name__} has no unconditional prompt for train.cond_dropout")

    def load_trainable_state(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load refreshed trainable weights pushed by the learner and record their version."""
        self.trainable_module().load_state_dict(state)
        self.weights_version = int(version)


class UnderstandingModel(abc.ABC):
    """Vision-language understanding: text answers about images."""

    @abc.abstractmethod
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
        """Answer ``prompts[i]`` about ``images[i]``; greedy when ``temperature == 0``.

        Returns the decoded answer text (no prompt), one per input.
        """

    def ground(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        """Boxes for the objects of ``prompts[i]`` in ``images[i]``.

        The default asks :meth:`answer` for boxes and parses them
        (:func:`srum_ray.grounding.model_grounder.parse_boxes`); a backend with native
        grounding output overrides this.
        """
        from srum_ray.grounding.model_grounder import ask_for_boxes

        return ask_for_boxes(self, images, prompts)


@dataclass
class UnifiedModel:
    """A UMM as SRUM sees it: a generator and an understanding module (may share weights).

    A field is None when the builder was asked for the other part only.
    """

    generator: GenerationModel | None
    understanding: UnderstandingModel | None
