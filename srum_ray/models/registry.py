"""Model backends by name: ``model.backend`` in YAML picks one, :func:`build_model` builds it.

A backend is a function ``(model_cfg, gen_cfg, device, dtype) -> UnifiedModel``. The default
registry :data:`BACKENDS` holds the shipped backends (only ``"tiny"`` for now); tests make
their own :class:`BackendRegistry` instead of adding to the global one.

The ``tiny`` backend builds random-weight models from ``model_cfg.tiny``, or, when
``model_cfg.checkpoint`` is set, loads the directory written by :func:`save_tiny_checkpoint`::

    <checkpoint>/generator/      TinyGenerator.save_pretrained layout
    <checkpoint>/understanding/  TinyUnderstanding.save_pretrained layout
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from srum_ray.config.schema import GenerationConfig, ModelConfig
from srum_ray.models.base import UnifiedModel

Builder = Callable[[ModelConfig, GenerationConfig, str, torch.dtype], UnifiedModel]


class BackendRegistry:
    """Name -> builder; registering a name twice is an error (no silent overwrite)."""

    def __init__(self) -> None:
        self._builders: dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """Decorator registering ``fn`` under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def deco(fn: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"model backend {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return deco

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._builders))

    def get(self, name: str) -> Builder:
        """The builder of ``name``; ``ValueError`` naming the allowed backends otherwise."""
        if name not in self._builders:
            raise ValueError(
                f"unknown model backend {name!r}; allowed: {', '.join(self.names()) or '(none)'}"
            )
        return self._builders[name]


#: the shipped backends
BACKENDS = BackendRegistry()


def register_backend(name: str, registry: BackendRegistry | None = None):
    """Decorator: register a backend builder in ``registry`` (default :data:`BACKENDS`)."""
    return (registry if registry is not None else BACKENDS).register(name)


def resolve_device(device: str | torch.device) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; anything else unchanged, except
    that a CUDA device without CUDA is a one-line error (before any weights are read)."""
    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device is {name} but torch sees no CUDA device")
    return name


def build_model(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    registry: BackendRegistry | None = None,
    parts: tuple[str, ...] = ("generator", "understanding"),
) -> UnifiedModel:
    """Build the :class:`UnifiedModel` named by ``model_cfg.backend``.

    ``parts`` names what to build: a generator worker or a learner rank needs only
    ``("generator",)``, a judge replica only ``("understanding",)``; the other field is None.

    Args:
        model_cfg: the ``model`` config section (backend, checkpoint, tiny sizes).
        gen_cfg: the ``generation`` config section (sampling settings).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        dtype: a ``torch.dtype`` or ``"float32"`` / ``"bfloat16"`` / ``"float16"``.
        registry: where to look the backend up (default :data:`BACKENDS`).

    Raises:
        ValueError: unknown backend (the message lists the allowed ones).
        FileNotFoundError: a configured checkpoint is missing or incomplete.
    """
    from srum_ray.models.base import as_dtype

    reg = registry if registry is not None else BACKENDS
    unknown = set(parts) - {"generator", "understanding"}
    if unknown or not parts:
        raise ValueError(f"parts must name generator and/or understanding, got {parts}")
    builder = reg.get(model_cfg.backend)
    model = builder(model_cfg, gen_cfg, resolve_device(device), as_dtype(dtype), parts=tuple(parts))
    return model


def save_tiny_checkpoint(model: UnifiedModel, path: str | Path) -> Path:
    """Write a tiny :class:`UnifiedModel` in the layout ``model.checkpoint`` loads."""
    root = Path(path)
    model.generator.save_pretrained(root / "generator")
    model.understanding.save_pretrained(root / "understanding")
    return root


def load_plugins(model_cfg: ModelConfig) -> None:
    """Import ``model.plugins`` (modules that register backends); one-line error if one fails."""
    import importlib

    for name in model_cfg.plugins:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any import failure is the user's plugin
            raise ValueError(f"model.plugins: cannot import {name!r}: {type(e).__name__}: {e}") from e


def check_backend(model_cfg: ModelConfig, registry: BackendRegistry | None = None) -> None:
    """Raise ValueError naming ``model.backend`` and the registered ones if it is unknown."""
    load_plugins(model_cfg)
    reg = registry if registry is not None else BACKENDS
    if model_cfg.backend not in reg.names():
        raise ValueError(
            f"model.backend = {model_cfg.backend!r} is not registered "
            f"(allowed: {', '.join(reg.names())}; a plugin can add one: model.plugins)"
        )


def check_checkpoint(model_cfg: ModelConfig) -> None:
    """Check that ``model_cfg.checkpoint`` holds every file its backend loads, loading nothing.

    Raises a one-line ``FileNotFoundError`` naming the path and the missing files.
    """
    if model_cfg.backend == "diffusers":
        from srum_ray.models.base import check_files

        if not model_cfg.generator.path:
            raise FileNotFoundError("model.generator.path is not set (a diffusers pipeline directory)")
        check_files(model_cfg.generator.path, ("model_index.json",), "diffusers pipeline")
        if not model_cfg.understanding.share_with_generator:
            if not model_cfg.understanding.path:
                raise FileNotFoundError("model.understanding.path is not set (a transformers VLM directory)")
            check_files(model_cfg.understanding.path, ("config.json",), "vision-language model")
        return
    if model_cfg.backend == "shapes":
        from srum_ray.models.base import check_files
        from srum_ray.models.shapes_umm import GEN_WEIGHTS, JUDGE_WEIGHTS, META_FILE

        if not model_cfg.checkpoint:
            raise FileNotFoundError("model.checkpoint is not set (the shapes backend loads trained weights, e.g. weights/shapes-umm)")
        check_files(model_cfg.checkpoint, (META_FILE, GEN_WEIGHTS, JUDGE_WEIGHTS), "shapes")
        return
    if model_cfg.backend == "tiny" and model_cfg.checkpoint:
        from srum_ray.models.tiny import _GEN_FILES, check_files
        from srum_ray.models.tiny_vlm import _VLM_FILES

        root = check_files(model_cfg.checkpoint, (), "tiny")
        check_files(root, [f"generator/{f}" for f in _GEN_FILES] + [f"understanding/{f}" for f in _VLM_FILES], "tiny")


@register_backend("diffusers")
def _build_diffusers(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    device: str,
    dtype: torch.dtype,
    parts: tuple[str, ...] = ("generator", "understanding"),
) -> UnifiedModel:
    """A diffusers pipeline (``model.generator``) and a transformers VLM (``model.understanding``).

    With ``model.understanding.share_with_generator`` the judge is the pipeline's own VLM text
    encoder (Qwen-Image's Qwen2.5-VL): one copy in memory, so a judge-only build loads the
    pipeline too.
    """
    from srum_ray.models.diffusers_gen import build_diffusers_generator
    from srum_ray.models.transformers_judge import build_transformers_understanding

    share = model_cfg.understanding.share_with_generator
    gen = None
    if "generator" in parts or (share and "understanding" in parts):
        gen = build_diffusers_generator(model_cfg, gen_cfg, device, dtype)
    und = None
    if "understanding" in parts:
        if share:
            und = build_transformers_understanding(
                model_cfg, device, dtype,
                text_encoder=getattr(gen.pipe, "text_encoder", None),
                tokenizer=getattr(gen.pipe, "tokenizer", None),
            )
        else:
            und = build_transformers_understanding(model_cfg, device, dtype)
    return UnifiedModel(gen if "generator" in parts else None, und)


@register_backend("tiny")
def _build_tiny(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    device: str,
    dtype: torch.dtype,
    parts: tuple[str, ...] = ("generator", "understanding"),
) -> UnifiedModel:
    from srum_ray.models.tiny import TinyGenerator, check_files
    from srum_ray.models.tiny_vlm import TinyUnderstanding

    if model_cfg.checkpoint:
        root = check_files(model_cfg.checkpoint, (), "tiny")
        for sub in ("generator", "understanding"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"incomplete tiny checkpoint at {root}: missing {sub}/")
        return UnifiedModel(
            TinyGenerator.from_pretrained(root / "generator", gen_cfg, device, dtype)
            if "generator" in parts else None,
            TinyUnderstanding.from_pretrained(root / "understanding", device, dtype)
            if "understanding" in parts else None,
        )
    return UnifiedModel(
        TinyGenerator(model_cfg.tiny, gen_cfg, device, dtype) if "generator" in parts else None,
        TinyUnderstanding(model_cfg.tiny, device, dtype) if "understanding" in parts else None,
    )


@register_backend("shapes")
def _build_shapes(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    device: str,
    dtype: torch.dtype,
    parts: tuple[str, ...] = ("generator", "understanding"),
) -> UnifiedModel:
    """The shapes world's unified model (srum_ray/models/shapes_umm.py) from ``model.checkpoint``
    (the directory ``python -m srum_ray.shapes.train_umm`` writes; weights/shapes-umm ships)."""
    from srum_ray.models.shapes_umm import ShapesGenerator
    from srum_ray.models.shapes_understanding import ShapesUnderstanding

    check_checkpoint(model_cfg)
    root = model_cfg.checkpoint
    return UnifiedModel(
        ShapesGenerator.from_pretrained(root, gen_cfg, device, dtype) if "generator" in parts else None,
        ShapesUnderstanding.from_pretrained(root, device, dtype, model_cfg.understanding.extra_objects)
        if "understanding" in parts else None,
    )
