"""Flow-matching text-to-image generators loaded from a diffusers pipeline directory.

:class:`DiffusersGenerator` wraps a pipeline saved with ``save_pretrained`` (a directory
with ``model_index.json``) of one of the supported families: Stable Diffusion 3 / 3.5,
FLUX.1, Sana and Qwen-Image (hooks in :mod:`srum_ray.models._families`). It uses the
pipeline's own prompt encoding, latent packing, VAE normalisation, scheduler and guidance
rule, and drives the sampling loop itself so that every image's initial noise comes from its
own seed (images do not depend on their batch).

Conventions (SPEC 2.5): ``t`` in [0, 1], ``x_t = (1 - t) x0 + t eps``, velocity target
``eps - x0``. Latents are unpacked ``[B, C, h, w]`` tensors in the space the transformer
sees (for FLUX.1 / Qwen-Image, packing into 2x2 tokens happens inside each transformer call).

Shift: ``generation.shift`` replaces the scheduler's shift (``shift`` of a
``FlowMatchEulerDiscreteScheduler``, ``flow_shift`` of Sana's DPM-Solver); resolution-
dependent dynamic shifting (FLUX.1, Qwen-Image configs) is turned off, so the sampler's
noise levels are ``s t / (1 + (s - 1) t)`` at any resolution (FLUX.1-dev's dynamic rule
gives about ``s = 3.16`` at 1024 px; Qwen-Image's about ``s = 2.5`` at 1328 px).

Training: the VAE and text encoders are frozen; the transformer trains fully, or through
peft LoRA adapters (``model.generator.train: lora``). With LoRA, :meth:`trainable_module`
is a small container of the adapter layers only, so the learner optimizes, checkpoints and
pushes only adapter weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from srum_ray.config.schema import GenerationConfig, GeneratorModelConfig, ModelConfig
from srum_ray.models._families import BY_PIPELINE_CLASS, FAMILIES, Family
from srum_ray.models.base import GenerationModel, GenerationOutput, batch_times, own_weights
from srum_ray.models.tiny import as_dtype, images_to_tensor, tensor_to_images

#: attention projections LoRA adapts (present in every supported transformer)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def detect_family(path: str | Path, family: str = "auto") -> str:
    """The family of the pipeline at ``path`` from ``model_index.json``'s ``_class_name``.

    Raises:
        FileNotFoundError: the directory or its ``model_index.json`` is missing.
        ValueError: unsupported pipeline class, or ``family`` disagrees with the directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers pipeline directory not found: {root}")
    index = root / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"not a diffusers pipeline directory (no model_index.json): {root}")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"unreadable model_index.json in {root}: {e}") from None
    supported = ", ".join(f"{c} ({f})" for c, f in sorted(BY_PIPELINE_CLASS.items()))
    if cls not in BY_PIPELINE_CLASS:
        raise ValueError(f"unsupported pipeline class {cls!r} at {root}; supported: {supported}")
    found = BY_PIPELINE_CLASS[cls]
    if family not in ("auto", found):
        raise ValueError(f"model.generator.family is {family!r} but {root} holds a {cls} ({found})")
    return found


def _check_components(root: Path) -> None:
    """One-line FileNotFoundError for a component listed in model_index.json without its folder."""
    index = json.loads((root / "model_index.json").read_text())
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        if not (root / name).is_dir():
            raise FileNotFoundError(f"incomplete diffusers pipeline at {root}: missing {name}/")


class _LoraAdapters(torch.nn.Module):
    """The LoRA layers of a peft-adapted transformer, as one module (shares their parameters).

    Its ``state_dict`` / ``parameters`` hold only adapter weights, keyed
    ``<layer path with '.' -> '__'>.lora_A.<adapter>.weight``.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        from peft.tuners.lora import LoraLayer

        self.layers = torch.nn.ModuleDict()
        for name, module in transformer.named_modules():
            if isinstance(module, LoraLayer):
                holder = torch.nn.Module()
                holder.lora_A, holder.lora_B = module.lora_A, module.lora_B
                self.layers[name.replace(".", "__")] = holder
        if not len(self.layers):
            raise ValueError("LoRA found none of the target modules " + ", ".join(LORA_TARGETS))


class DiffusersGenerator(GenerationModel):
    """A diffusers flow-matching pipeline as a :class:`GenerationModel` (module docstring).

    Args:
        pipe: the loaded pipeline.
        family: key of :data:`srum_ray.models._families.FAMILIES`.
        gen_cfg: sampling settings (steps, guidance, shift, batch size).
        model_cfg: the ``model.generator`` section (resolution, text length, full / LoRA).
        device: torch device of every component.
        dtype: dtype of every component (bf16 on GPUs; sampling state stays float32).
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        family: str,
        gen_cfg: GenerationConfig,
        model_cfg: GeneratorModelConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        self.pipe, self.family = pipe, FAMILIES[family]
        self.gen_cfg, self.model_cfg = gen_cfg, model_cfg
        self.device, self.dtype = torch.device(device), as_dtype(dtype)
        self.pipe.to(self.device)
        for comp in pipe.components.values():
            if isinstance(comp, torch.nn.Module) and any(
                p.is_floating_point() and p.dtype != self.dtype for p in comp.parameters()
            ):
                comp.to(self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        for name, comp in pipe.components.items():
            if isinstance(comp, torch.nn.Module) and name != "transformer":
                comp.eval().requires_grad_(False)
        self.transformer = pipe.transformer
        self.transformer.eval()
        self._adapters: _LoraAdapters | None = None
        if model_cfg.train == "lora":
            from peft import LoraConfig

            self.transformer.requires_grad_(False)
            self.transformer.add_adapter(LoraConfig(
                r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha,
                init_lora_weights="gaussian", target_modules=list(LORA_TARGETS),
            ))
            self._adapters = _LoraAdapters(self.transformer)
            self._adapters.requires_grad_(True)
        else:
            self.transformer.requires_grad_(True)
        self._scheduler_kind = self._check_scheduler()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        gen_cfg: GenerationConfig,
        model_cfg: GeneratorModelConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> "DiffusersGenerator":
        """Load the pipeline at ``path`` (``local_files_only``: nothing is downloaded).

        Raises:
            FileNotFoundError: missing directory, ``model_index.json`` or component folder.
            ValueError: unsupported pipeline class / family mismatch, or a component that
                fails to load (one line naming the path and the error).
        """
        root = Path(path)
        family = detect_family(root, model_cfg.family)
        _check_components(root)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                root, local_files_only=True, dtype=as_dtype(dtype)
            )
        except Exception as e:  # noqa: BLE001 -- any loader failure becomes one clear line
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"could not load the diffusers pipeline at {root}: "
                             f"{type(e).__name__}: {first}") from e
        model = cls(pipe, family, gen_cfg, model_cfg, device, dtype)
        own_weights(*[c for c in pipe.components.values() if isinstance(c, torch.nn.Module)])
        return model

    # ------------------------------------------------------------------ interface
    @property
    def image_size(self) -> int:
        return self.model_cfg.resolution

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.family.latent_shape(self.pipe, self.model_cfg.resolution)

    def trainable_module(self) -> torch.nn.Module:
        """The transformer (full training) or the container of its LoRA layers."""
        return self._adapters if self._adapters is not None else self.transformer

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a weight push carries: adapter weights only under LoRA, else the transformer."""
        return {k: v.detach() for k, v in self.trainable_module().state_dict().items()}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Conditioning of ``prompts`` (family keys, e.g. ``prompt_embeds [B, L, D]``), CPU.

        Floating tensors are float32; masks keep their integer dtype. FLUX.1-dev style
        transformers also get ``guidance [B]`` (the guidance scale of ``generation``).
        """
        return {k: _to_cpu(v) for k, v in self._encode(list(prompts)).items()}

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Clean latents ``[B, C, h, w]`` (float32 CPU): the VAE mean, normalised."""
        pixels = images_to_tensor(images, self.image_size).to(self.device, self.dtype)
        return self.family.encode(self.pipe, pixels).float().cpu()

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Velocity ``[B, C, h, w]`` (dtype of ``x_t``) whose target is ``eps - x0``.

        Args:
            x_t: noisy unpacked latents ``[B, C, h, w]``.
            t: flow times in [0, 1], ``[B]`` or a scalar.
            cond: the tensors of :meth:`encode_prompts` (any device).
        """
        t = batch_times(t, x_t.shape[0], self.device)
        cond = {k: self._to_model(v) for k, v in cond.items()}
        out = self.family.velocity(self.pipe, x_t.to(self.device, self.dtype), t, cond)
        return out.to(x_t.dtype)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """Sample one image per prompt in chunks of ``generation.batch_size``.

        Image ``i`` depends only on the weights, ``prompts[i]`` and ``seeds[i]``: its
        initial noise is ``torch.randn(latent_shape)`` from ``torch.Generator`` seeded
        with ``seeds[i]`` on the CPU (in the unpacked latent layout).
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            cond = {k: v[:0] for k, v in self.encode_prompts([""]).items()}
            return GenerationOutput([], torch.zeros(0, *self.latent_shape), cond)
        images: list[Image.Image] = []
        latents, conds = [], []
        step = self.gen_cfg.batch_size
        for start in range(0, len(prompts), step):
            imgs, x0, cond = self._generate_chunk(
                list(prompts[start : start + step]), list(seeds[start : start + step])
            )
            images += imgs
            latents.append(x0)
            conds.append(cond)
        cond = {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
        return GenerationOutput(images, torch.cat(latents), cond)

    def new_scheduler(self):
        """A fresh copy of the pipeline's scheduler with ``generation.shift``, timesteps set.

        The noise-level grid is the pipeline's: FLUX.1 and Qwen-Image pass
        ``linspace(1, 1/N, N)``, SD3 and Sana use the scheduler's own ``set_timesteps(N)``.
        """
        n, config = self.gen_cfg.num_inference_steps, self.pipe.scheduler.config
        if self._scheduler_kind == "euler":
            # stretching a single noise level to shift_terminal divides by zero in diffusers
            terminal = config.get("shift_terminal") if n > 1 else None
            sched = FlowMatchEulerDiscreteScheduler.from_config(
                config, shift=self.gen_cfg.shift, use_dynamic_shifting=False,
                shift_terminal=terminal,
            )
            if self.family.linspace_sigmas:
                sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n).tolist(), device=self.device)
            else:
                sched.set_timesteps(n, device=self.device)
        else:
            sched = DPMSolverMultistepScheduler.from_config(config, flow_shift=self.gen_cfg.shift)
            sched.set_timesteps(n, device=self.device)
        return sched

    # ------------------------------------------------------------------ internals
    def _check_scheduler(self) -> str:
        sched = self.pipe.scheduler
        if isinstance(sched, FlowMatchEulerDiscreteScheduler):
            return "euler"
        if isinstance(sched, DPMSolverMultistepScheduler) and sched.config.use_flow_sigmas:
            return "dpm_flow"
        raise ValueError(
            f"scheduler {type(sched).__name__} is not a flow-matching scheduler; expected "
            "FlowMatchEulerDiscreteScheduler or DPMSolverMultistepScheduler(use_flow_sigmas=True)"
        )

    def _to_model(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.device)
        return v.to(self.dtype) if v.is_floating_point() else v

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        cond = self.family.encode_prompts(
            self.pipe, prompts, self.model_cfg.max_sequence_length, self.device
        )
        if self.family.guidance_embedded(self.pipe):
            cond["guidance"] = torch.full(
                (len(prompts),), float(self.gen_cfg.guidance_scale), device=self.device
            )
        return cond

    def _generate_chunk(self, prompts: list[str], seeds: list[int]):
        cond = self._encode(prompts)
        scale = self.gen_cfg.guidance_scale
        cfg = scale > 1.0 and not self.family.guidance_embedded(self.pipe)
        cond_in = {k: self._to_model(v) for k, v in cond.items()}
        if cfg:
            neg = {k: self._to_model(v) for k, v in self._encode([""] * len(prompts)).items()}
            cond_in = {k: torch.cat([neg[k], cond_in[k]]) for k in cond_in}
        shape = self.latent_shape
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        x = torch.stack(noise).to(self.device)  # float32 sampling state
        sched = self.new_scheduler()
        for timestep in sched.timesteps:
            x_in = torch.cat([x, x]) if cfg else x
            t = (timestep.float() / 1000.0).expand(x_in.shape[0]).to(self.device)
            v = self.family.velocity(self.pipe, x_in.to(self.dtype), t, cond_in).float()
            if cfg:
                v_neg, v_pos = v.chunk(2)
                v = self.family.combine_cfg(v_neg, v_pos, scale)
            x = sched.step(v, timestep, x, return_dict=False)[0].float()
        pixels = self.family.decode(self.pipe, x.to(self.dtype))
        return tensor_to_images(pixels), x.cpu(), {k: _to_cpu(v) for k, v in cond.items()}


def _to_cpu(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().cpu()
    return v.float() if v.is_floating_point() else v


def build_diffusers_generator(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> DiffusersGenerator:
    """The generator of ``model.generator`` (the ``diffusers`` backend's generator part).

    Raises:
        ValueError: ``model.generator.path`` is not set (or see :meth:`DiffusersGenerator.from_pretrained`).
    """
    gcfg = model_cfg.generator
    if not gcfg.path:
        raise ValueError("model.generator.path is not set: give the diffusers pipeline directory")
    return DiffusersGenerator.from_pretrained(gcfg.path, gen_cfg, gcfg, device, dtype)
