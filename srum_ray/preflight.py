"""Checks that run before anything expensive: every path a config names, the prompts, the
output directory. Each failure is one line naming the key and the problem."""

from __future__ import annotations

import os
from pathlib import Path

from srum_ray.config.schema import SrumConfig
from srum_ray.data import PromptFileError, cwd_hint, load_prompts


class PreflightError(ValueError):
    """A config names something that cannot work (message names key and path)."""


def _check_readable(key: str, path: str, want_dir: bool | None = None) -> None:
    p = Path(path)
    if not p.exists():
        raise PreflightError(f"{key}: path not found: {p}{cwd_hint(p)}")
    if want_dir is True and not p.is_dir():
        raise PreflightError(f"{key}: expected a directory, got a file: {p}")
    if want_dir is False and not p.is_file():
        raise PreflightError(f"{key}: expected a file, got a directory: {p}")
    if not os.access(p, os.R_OK):
        raise PreflightError(f"{key}: not readable: {p}")
    if p.is_file():
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            raise PreflightError(f"{key}: cannot read {p}: {e.strerror}") from e


def check_config(cfg: SrumConfig, *, check_output: bool = True) -> int:
    """Raise :class:`PreflightError` on the first problem; return the number of prompts."""
    try:
        n = len(load_prompts(cfg.data.prompts))
    except PromptFileError as e:
        raise PreflightError(f"data.prompts: {e}") from e
    from srum_ray.models.registry import check_backend

    try:
        check_backend(cfg.model)
    except ValueError as e:
        raise PreflightError(str(e)) from e
    if cfg.model.checkpoint is not None:
        _check_readable("model.checkpoint", cfg.model.checkpoint, want_dir=True)
    from srum_ray.models.registry import check_checkpoint

    try:
        check_checkpoint(cfg.model)
    except FileNotFoundError as e:
        key = "model.checkpoint" if cfg.model.backend == "tiny" else f"model ({cfg.model.backend})"
        raise PreflightError(f"{key}: {e}") from e
    und = cfg.model.understanding
    if und.extra_objects != "ignore" and cfg.model.backend != "shapes":
        raise PreflightError(
            f"model.understanding.extra_objects = {und.extra_objects} is read by the shapes backend's "
            f"judge only; model.backend is {cfg.model.backend} (a VLM judge follows its question text)"
        )
    if cfg.model.backend == "diffusers" and not und.share_with_generator:
        from srum_ray.models._vlm_families import checkpoint_family

        try:  # reads config.json only: the family, and a package its processor needs
            checkpoint_family(Path(und.path).expanduser(), und.family)
        except (ValueError, ImportError) as e:
            raise PreflightError(f"model.understanding: {e}") from e
    if cfg.grounder.kind == "sam_hf":
        if cfg.grounder.sam.checkpoint is None:
            raise PreflightError("grounder.sam.checkpoint is required for grounder.kind=sam_hf "
                                 "(a transformers SamModel directory)")
        _check_readable("grounder.sam.checkpoint", cfg.grounder.sam.checkpoint, want_dir=True)
    if cfg.grounder.kind == "sam":
        sam = cfg.grounder.sam
        if sam.checkpoint is not None:
            _check_readable("grounder.sam.checkpoint", sam.checkpoint, want_dir=False)
        elif sam.model_type != "tiny":
            raise PreflightError(
                f"grounder.sam.checkpoint is required for grounder.sam.model_type={sam.model_type} "
                "(only model_type=tiny builds a random SAM without a checkpoint)"
            )
    if cfg.reward.uncovered == "global" and cfg.reward.ablation == "no_global":
        raise PreflightError(
            "reward.uncovered = global paints the judge's global score where no box is, and "
            "reward.ablation = no_global is the run without that score: use reward.uncovered = neutral"
        )
    if cfg.train.batch_size > cfg.data.prompts_per_round * cfg.data.images_per_prompt:
        raise PreflightError(
            f"train.batch_size = {cfg.train.batch_size} is larger than a round's samples "
            f"({cfg.data.prompts_per_round} prompts x {cfg.data.images_per_prompt} images)"
        )
    _check_device(cfg)
    if check_output:
        out = Path(cfg.run.output_dir)
        probe = out
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise PreflightError(f"run.output_dir: {probe} is a file, not a directory")
        if not os.access(probe, os.W_OK):
            raise PreflightError(f"run.output_dir: cannot write under {probe}")
    return n


def _check_device(cfg: SrumConfig) -> None:
    """run.device and run.dtype: a device this machine has (when the roles run here), and a
    dtype the learner can train in."""
    if cfg.run.dtype == "float16" and cfg.train.engine == "torch":
        raise PreflightError(
            "run.dtype=float16 needs train.engine=deepspeed (fp16 loss scaling and float32 "
            "master weights); the torch engine trains in float32 or bfloat16"
        )
    if cfg.runtime.mode == "local":
        from srum_ray.models.registry import resolve_device

        try:  # the check every model build makes, here before anything loads
            resolve_device(cfg.run.device)
        except RuntimeError as e:
            raise PreflightError(
                f"run.device={cfg.run.device} but torch sees no CUDA device on this machine "
                "(use run.device=auto or cpu)"
            ) from e
