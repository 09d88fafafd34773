"""The ``tiny`` backend: random-weight diffusers / transformers models, fully offline.

* :class:`TinyGenerator`: an SD3-style flow-matching generator (a 1-2 layer
  ``SD3Transformer2DModel``, a tiny ``AutoencoderKL`` with an 8x downsampling, a tiny
  ``CLIPTextModelWithProjection`` on the in-memory BPE of :mod:`srum_ray.models.tokenizer`,
  and a ``FlowMatchEulerDiscreteScheduler``).
* :class:`TinyUnderstanding` (defined in :mod:`srum_ray.models.tiny_vlm`, importable from
  here too): a tiny LLaVA.

Both save every component with its library's ``save_pretrained`` and load back with
``from_pretrained(local_files_only=True)``: the path real checkpoints take.

Latent convention: the transformer works on ``(z - shift_factor) * scaling_factor`` where ``z``
is the VAE latent; :meth:`TinyGenerator.encode_images` and the decode in
:meth:`TinyGenerator.generate` are exact inverses of that map.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from srum_ray.config.schema import GenerationConfig, TinyModelConfig
from srum_ray.models.base import as_dtype, check_files  # noqa: F401 - re-exported
from srum_ray.models.base import GenerationModel, GenerationOutput, batch_times, own_weights
from srum_ray.models.tokenizer import build_tokenizer

#: file written beside the components with the configs the generator was built from
META_FILE = "srum_tiny.json"
_GEN_FILES = (
    META_FILE,
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "scheduler/scheduler_config.json",
)
#: VAE latent normalisation (deliberately not 1/0 so that the conversion is exercised)
VAE_SCALING, VAE_SHIFT = 1.5, 0.1


def _build_components(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> dict:
    """Random-weight transformer, VAE and text encoder for ``cfg`` (caller seeds the RNG)."""
    latent = cfg.image_size // 8
    inner = cfg.transformer_heads * cfg.head_dim
    transformer = SD3Transformer2DModel(
        sample_size=latent,
        patch_size=2,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        num_layers=cfg.transformer_layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.transformer_heads,
        joint_attention_dim=cfg.text_hidden,
        caption_projection_dim=inner,
        pooled_projection_dim=cfg.text_hidden,
        pos_embed_max_size=max(latent // 2, 2),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=4,
        sample_size=cfg.image_size,
        scaling_factor=VAE_SCALING,
        shift_factor=VAE_SHIFT,
        mid_block_add_attention=False,
    )
    heads = 2 if cfg.text_hidden % 2 == 0 else 1
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=2 * cfg.text_hidden,
            projection_dim=cfg.text_hidden,
            num_hidden_layers=1,
            num_attention_heads=heads,
            max_position_embeddings=cfg.text_max_length,
            hidden_act="gelu",
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder}


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB PIL images -> ``[B, 3, size, size]`` float32 in [-1, 1] (resized if needed)."""
    arrays = []
    for img in images:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] -> RGB PIL images (values clamped)."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), "RGB") for a in arr]


class TinyGenerator(GenerationModel):
    """Random-weight SD3-style generator (see the module docstring).

    Args:
        cfg: sizes and the weight seed.
        gen_cfg: sampling settings (steps, guidance, shift, chunk size).
        device: torch device for the modules.
        dtype: module dtype (``float32``; ``bfloat16`` on CUDA also works).
    """

    def __init__(
        self,
        cfg: TinyModelConfig,
        gen_cfg: GenerationConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        *,
        _parts: dict | None = None,
    ) -> None:
        self.cfg, self.gen_cfg = cfg, gen_cfg
        self.device, self.dtype = torch.device(device), as_dtype(dtype)
        if _parts is None:
            tokenizer = build_tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                _parts = _build_components(cfg, tokenizer)
            _parts["tokenizer"] = tokenizer
            _parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=gen_cfg.shift)
        self.tokenizer: PreTrainedTokenizerFast = _parts["tokenizer"]
        self.scheduler: FlowMatchEulerDiscreteScheduler = _parts["scheduler"]
        self.transformer: SD3Transformer2DModel = _parts["transformer"]
        self.vae: AutoencoderKL = _parts["vae"]
        self.text_encoder: CLIPTextModelWithProjection = _parts["text_encoder"]
        for module in (self.transformer, self.vae, self.text_encoder):
            module.to(self.device).eval()
            if next(module.parameters()).dtype != self.dtype:
                module.to(self.dtype)
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.transformer.requires_grad_(True)

    # ------------------------------------------------------------------ interface
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.cfg.image_size // 8
        return (self.cfg.latent_channels, side, side)

    def trainable_module(self) -> torch.nn.Module:
        return self.transformer

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"prompt_embeds": [B, L, D], "pooled_prompt_embeds": [B, P]}``, float32 CPU."""
        embeds, pooled = self._encode_text(prompts)
        return {"prompt_embeds": embeds.float().cpu(), "pooled_prompt_embeds": pooled.float().cpu()}

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Clean latents ``[B, C, h, w]`` (float32 CPU): ``(mean(z) - shift) * scaling``."""
        pixels = images_to_tensor(images, self.image_size).to(self.device, self.dtype)
        mean = self.vae.encode(pixels).latent_dist.mean.float()
        return ((mean - self.vae.config.shift_factor) * self.vae.config.scaling_factor).cpu()

    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Velocity ``[B, C, h, w]`` (dtype of ``x_t``) for ``x_t = (1 - t) x0 + t eps``.

        The target is ``eps - x0``; ``t`` in [0, 1] (shape ``[B]`` or scalar) is passed to
        the transformer as ``1000 t``, the SD3 timestep convention.
        """
        t = batch_times(t, x_t.shape[0], self.device)
        out = self._transformer_call(
            x_t.to(self.device, self.dtype),
            1000.0 * t,
            cond["prompt_embeds"].to(self.device, self.dtype),
            cond["pooled_prompt_embeds"].to(self.device, self.dtype),
        )
        return out.to(x_t.dtype)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """Sample one image per prompt in chunks of ``gen_cfg.batch_size``.

        Image ``i`` depends only on the weights, ``prompts[i]`` and ``seeds[i]``: its initial
        noise is drawn from ``torch.Generator().manual_seed(seeds[i])`` on the CPU.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        images: list[Image.Image] = []
        latents, embeds, pooled = [], [], []
        step = self.gen_cfg.batch_size
        for start in range(0, len(prompts), step):
            imgs, x0, emb, pool = self._generate_chunk(
                list(prompts[start : start + step]), list(seeds[start : start + step])
            )
            images += imgs
            latents.append(x0)
            embeds.append(emb)
            pooled.append(pool)
        if not prompts:
            empty = self.encode_prompts([""])
            latents = [torch.zeros(0, *self.latent_shape)]
            embeds, pooled = [empty["prompt_embeds"][:0]], [empty["pooled_prompt_embeds"][:0]]
        return GenerationOutput(
            images,
            torch.cat(latents),
            {"prompt_embeds": torch.cat(embeds), "pooled_prompt_embeds": torch.cat(pooled)},
        )

    def sampling_sigmas(self) -> torch.Tensor:
        """The ``num_inference_steps + 1`` noise levels the sampler visits (last is 0).

        Unshifted times ``linspace(1, 1/N, N)`` go through the scheduler's shift
        ``s t / (1 + (s - 1) t)``.
        """
        return self._new_scheduler().sigmas.clone()

    # ------------------------------------------------------------------ internals
    def _new_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        n = self.gen_cfg.num_inference_steps
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n).tolist(), device=self.device)
        return sched

    def _encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``<bos> prompt <eos> <pad>...`` of fixed length L -> ``[B, L, D]``, ``[B, P]``."""
        length = self.cfg.text_max_length
        tok = self.tokenizer
        ids = tok(list(prompts), truncation=True, max_length=length - 1)["input_ids"]
        rows = [r + [tok.eos_token_id] + [tok.pad_token_id] * (length - 1 - len(r)) for r in ids]
        input_ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        out = self.text_encoder(input_ids=input_ids, output_hidden_states=False)
        return out.last_hidden_state, out.text_embeds

    def _transformer_call(self, x, timestep, embeds, pooled) -> torch.Tensor:
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=timestep,
            return_dict=False,
        )[0]

    def _generate_chunk(self, prompts: list[str], seeds: list[int]):
        embeds, pooled = self._encode_text(prompts)
        guided = self.gen_cfg.guidance_scale > 1.0
        if guided:
            neg_e, neg_p = self._encode_text([""])
            embeds_in = torch.cat([neg_e.expand_as(embeds), embeds])
            pooled_in = torch.cat([neg_p.expand_as(pooled), pooled])
        else:
            embeds_in, pooled_in = embeds, pooled
        noise = [
            torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]
        x = torch.stack(noise).to(self.device)  # float32 sampling state
        sched = self._new_scheduler()
        for t in sched.timesteps:
            x_in = torch.cat([x, x]) if guided else x
            ts = t.to(torch.float32).expand(x_in.shape[0])
            v = self._transformer_call(x_in.to(self.dtype), ts, embeds_in, pooled_in).float()
            if guided:
                v_neg, v_pos = v.chunk(2)
                v = v_neg + self.gen_cfg.guidance_scale * (v_pos - v_neg)
            x = sched.step(v, t, x, return_dict=False)[0]
        z = x / self.vae.config.scaling_factor + self.vae.config.shift_factor
        pixels = self.vae.decode(z.to(self.dtype), return_dict=False)[0]
        return tensor_to_images(pixels), x.float().cpu(), embeds.float().cpu(), pooled.float().cpu()

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> None:
        """Write every component with its library's ``save_pretrained`` plus ``srum_tiny.json``."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(root / "transformer")
        self.vae.save_pretrained(root / "vae")
        self.text_encoder.save_pretrained(root / "text_encoder")
        self.tokenizer.save_pretrained(root / "tokenizer")
        self.scheduler.save_pretrained(root / "scheduler")
        meta = {
            "tiny": dataclasses.asdict(self.cfg),
            "generation": dataclasses.asdict(self.gen_cfg),
            "weights_version": self.weights_version,
        }
        (root / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        gen_cfg: GenerationConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> "TinyGenerator":
        """Load a directory written by :meth:`save_pretrained` (no network access).

        Args:
            path: the directory.
            gen_cfg: sampling settings; ``None`` keeps the saved ones. Its ``shift`` replaces
                the saved scheduler's.
            device: torch device.
            dtype: module dtype.

        Raises:
            FileNotFoundError: (one line, naming ``path``) if the directory is incomplete.
        """
        root = check_files(path, _GEN_FILES, "tiny generator")
        meta = json.loads((root / META_FILE).read_text())
        cfg = TinyModelConfig(**meta["tiny"])
        gen_cfg = gen_cfg if gen_cfg is not None else GenerationConfig(**meta["generation"])
        kw = {"local_files_only": True}
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler", **kw)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder", **kw)
        parts = {
            "transformer": SD3Transformer2DModel.from_pretrained(root / "transformer", **kw),
            "vae": AutoencoderKL.from_pretrained(root / "vae", **kw),
            "text_encoder": text_encoder,
            "tokenizer": PreTrainedTokenizerFast.from_pretrained(root / "tokenizer", **kw),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_config(
                scheduler.config, shift=gen_cfg.shift
            ),
        }
        own_weights(parts["transformer"], parts["vae"], text_encoder)
        model = cls(cfg, gen_cfg, device, dtype, _parts=parts)
        model.weights_version = int(meta.get("weights_version", 0))
        return model


def __getattr__(name: str):
    # TinyUnderstanding lives in tiny_vlm (which imports helpers from here): import lazily
    if name == "TinyUnderstanding":
        from srum_ray.models.tiny_vlm import TinyUnderstanding

        return TinyUnderstanding
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
