"""Model interfaces and backends.

The interfaces (:mod:`srum_ray.models.base`) are imported eagerly; the backends pull in
diffusers / transformers and are imported on first use, so ``import srum_ray.models.base``
stays cheap.
"""

from srum_ray.models.base import (
    AnswerConstraint,
    GenerationModel,
    GenerationOutput,
    UnderstandingModel,
    UnifiedModel,
)

_LAZY = {
    "build_model": "srum_ray.models.registry",
    "register_backend": "srum_ray.models.registry",
    "save_tiny_checkpoint": "srum_ray.models.registry",
    "BackendRegistry": "srum_ray.models.registry",
    "TinyGenerator": "srum_ray.models.tiny",
    "TinyUnderstanding": "srum_ray.models.tiny_vlm",
    "build_tokenizer": "srum_ray.models.tokenizer",
}

__all__ = [
    "AnswerConstraint",
    "GenerationModel",
    "GenerationOutput",
    "UnderstandingModel",
    "UnifiedModel",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
