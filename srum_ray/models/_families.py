"""Per-family hooks of the diffusers generator: prompt encoding, transformer call, VAE maps.

Every hook works on *unpacked* latents ``[B, C, h, w]`` in the space the transformer sees
(the VAE latent after the pipeline's own normalisation); packed families (FLUX.1,
Qwen-Image) pack 2x2 patches into tokens inside :meth:`Family.velocity` and unpack the
output, so the rest of srum-ray never sees tokens. ``t`` is always the flow time in [0, 1]
(``x_t = (1 - t) x0 + t eps``); each hook converts it to its transformer's timestep
convention. Every transformer returns ``eps - x0`` (the diffusers flow-matching
convention, identical to srum-ray's velocity target).
"""

from __future__ import annotations

import inspect

import torch


def pack(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]`` (2x2 patches, the FLUX / Qwen-Image layout)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[B, (h/2)(w/2), 4C]`` -> ``[B, C, h, w]``."""
    b, _, d = x.shape
    x = x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def _shift_factor(vae) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


class Family:
    """Hooks of one pipeline family (see the module docstring).

    Attributes:
        name: the ``model.generator.family`` value.
        pipeline_class: ``_class_name`` of ``model_index.json``.
        packed: whether the transformer takes 2x2-packed tokens.
    """

    name = ""
    pipeline_class = ""
    packed = False
    #: the pipeline passes ``sigmas = linspace(1, 1/N, N)`` to a flow-match Euler scheduler
    #: (FLUX.1, Qwen-Image); otherwise the scheduler's own ``set_timesteps(N)`` grid is used
    linspace_sigmas = False

    def latent_shape(self, pipe, resolution: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the clean latent of a ``resolution``-pixel square image."""
        channels = pipe.transformer.config.in_channels // (4 if self.packed else 1)
        side = resolution // pipe.vae_scale_factor
        if self.packed:
            side = 2 * (side // 2)
        return channels, side, side

    def encode_prompts(self, pipe, prompts: list[str], max_len: int, device) -> dict[str, torch.Tensor]:
        """Conditioning tensors of ``prompts``, batch-first, every prompt padded to one length."""
        raise NotImplementedError

    def velocity(self, pipe, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Transformer velocity ``[B, C, h, w]`` at unpacked ``x`` and flow times ``t [B]``."""
        raise NotImplementedError

    def combine_cfg(self, v_neg: torch.Tensor, v_pos: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance ``v_neg + scale (v_pos - v_neg)``."""
        return v_neg + scale * (v_pos - v_neg)

    def guidance_embedded(self, pipe) -> bool:
        """True when the transformer takes the guidance scale as an input (FLUX.1-dev)."""
        return False

    def decode(self, pipe, x0: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] of normalised latents ``x0``."""
        vae = pipe.vae
        z = x0 / vae.config.scaling_factor + _shift_factor(vae)
        return vae.decode(z, return_dict=False)[0]

    def encode(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised latents of pixels in [-1, 1]: the VAE's mean, inverse of :meth:`decode`."""
        vae = pipe.vae
        mean = vae.encode(pixels).latent_dist.mean
        return (mean - _shift_factor(vae)) * vae.config.scaling_factor


class SD3(Family):
    """Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G + T5, pooled vector, timestep ``1000 t``."""

    name, pipeline_class = "sd3", "StableDiffusion3Pipeline"

    def encode_prompts(self, pipe, prompts, max_len, device):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device,
            do_classifier_free_guidance=False, max_sequence_length=max_len,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def velocity(self, pipe, x, t, cond):
        return pipe.transformer(
            hidden_states=x, encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"], timestep=1000.0 * t,
            return_dict=False,
        )[0]


class Flux(Family):
    """FLUX.1: CLIP pooled + T5, packed tokens with position ids, timestep ``t``.

    The pipeline hands the transformer ``timestep / 1000`` = ``t`` (the transformer scales
    it by 1000 inside). FLUX.1-dev embeds the guidance scale (``cond["guidance"]``); FLUX.1
    models without that embedding use true classifier-free guidance instead.
    """

    name, pipeline_class, packed = "flux", "FluxPipeline", True
    linspace_sigmas = True

    def guidance_embedded(self, pipe) -> bool:
        return bool(pipe.transformer.config.guidance_embeds)

    def encode_prompts(self, pipe, prompts, max_len, device):
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=max_len
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def velocity(self, pipe, x, t, cond):
        b, _, h, w = x.shape
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        embeds = cond["prompt_embeds"]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = cond.get("guidance") if self.guidance_embedded(pipe) else None
        out = pipe.transformer(
            hidden_states=pack(x), timestep=t.to(x.dtype), guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=embeds,
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]
        return unpack(out, h, w)


class Sana(Family):
    """Sana: Gemma-2 text encoder with an attention mask, deep-compression VAE, ``1000 t``.

    Prompts go through the pipeline's own ``encode_prompt`` with the complex human
    instruction its ``__call__`` uses by default. The VAE latent is only scaled (no shift).
    """

    name, pipeline_class = "sana", "SanaPipeline"

    def encode_prompts(self, pipe, prompts, max_len, device):
        instruction = inspect.signature(pipe.__call__).parameters["complex_human_instruction"].default
        embeds, mask, _, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=device, clean_caption=False,
            max_sequence_length=max_len, complex_human_instruction=instruction,
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def velocity(self, pipe, x, t, cond):
        scale = float(getattr(pipe.transformer.config, "timestep_scale", 1.0))
        out = pipe.transformer(
            x, encoder_hidden_states=cond["prompt_embeds"],
            encoder_attention_mask=cond["prompt_attention_mask"],
            timestep=1000.0 * t * scale, return_dict=False,
        )[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned sigma: keep the velocity half
            out = out.chunk(2, dim=1)[0]
        return out

    def decode(self, pipe, x0):
        return pipe.vae.decode(x0 / pipe.vae.config.scaling_factor, return_dict=False)[0]

    def encode(self, pipe, pixels):
        return pipe.vae.encode(pixels).latent * pipe.vae.config.scaling_factor


class QwenImage(Family):
    """Qwen-Image: Qwen2.5-VL hidden states with a mask, packed tokens, timestep ``t``.

    The pipeline trims each prompt's embedding to its own length (the batch then pads to
    the longest); here every prompt is zero-padded to ``max_len`` with a 0/1 mask, so a
    sample's conditioning does not depend on its batch. Latents are the 3-D VAE's single
    frame, normalised per channel ``(z - latents_mean) / latents_std``. Guidance follows
    the pipeline's true CFG, which rescales the combined prediction to the norm of the
    conditional one per token.
    """

    name, pipeline_class, packed = "qwen_image", "QwenImagePipeline", True
    linspace_sigmas = True

    def guidance_embedded(self, pipe) -> bool:
        return bool(pipe.transformer.config.guidance_embeds)

    def encode_prompts(self, pipe, prompts, max_len, device):
        embeds, mask = pipe.encode_prompt(prompts, device=device, max_sequence_length=max_len)
        b, n, d = embeds.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.long, device=embeds.device)
        padded = embeds.new_zeros(b, max_len, d)
        padded[:, :n] = embeds[:, :max_len]
        full_mask = mask.new_zeros(b, max_len)
        full_mask[:, :n] = mask[:, :max_len]
        return {"prompt_embeds": padded, "prompt_embeds_mask": full_mask}

    def velocity(self, pipe, x, t, cond):
        b, _, h, w = x.shape
        guidance = cond.get("guidance") if self.guidance_embedded(pipe) else None
        out = pipe.transformer(
            hidden_states=pack(x), timestep=t.to(x.dtype), guidance=guidance,
            encoder_hidden_states=cond["prompt_embeds"],
            encoder_hidden_states_mask=cond["prompt_embeds_mask"],
            img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False,
        )[0]
        return unpack(out, h, w)

    def combine_cfg(self, v_neg, v_pos, scale):
        h, w = v_pos.shape[-2:]
        pos, neg = pack(v_pos), pack(v_neg)
        comb = neg + scale * (pos - neg)
        comb = comb * (pos.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
        return unpack(comb, h, w)

    def _stats(self, pipe, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = pipe.vae.config
        shape = (1, cfg.z_dim, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(cfg.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def decode(self, pipe, x0):
        mean, std = self._stats(pipe, x0)
        z = (x0 * std + mean)[:, :, None]
        return pipe.vae.decode(z, return_dict=False)[0][:, :, 0]

    def encode(self, pipe, pixels):
        z = pipe.vae.encode(pixels[:, :, None]).latent_dist.mean[:, :, 0]
        mean, std = self._stats(pipe, z)
        return (z - mean) / std


FAMILIES: dict[str, Family] = {f.name: f for f in (SD3(), Flux(), Sana(), QwenImage())}
BY_PIPELINE_CLASS: dict[str, str] = {f.pipeline_class: f.name for f in FAMILIES.values()}
