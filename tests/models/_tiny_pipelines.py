"""Tiny random diffusers pipelines, one per supported family, saved with ``save_pretrained``.

Every component is the library's own class (the ones the real checkpoints load into), only
with a few channels and one or two layers. Tokenizers are the in-memory BPE of
:mod:`srum_ray.models.tokenizer` (nothing can be downloaded); the pipelines accept a
``PreTrainedTokenizerFast`` wherever they would hold a CLIP / T5 / Gemma / Qwen2 tokenizer.

All VAEs downsample 4x, so a 32 px image has an ``8 x 8`` latent; packed families (FLUX.1,
Qwen-Image) then see ``4 x 4`` tokens of ``4 C`` features.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderKLQwenImage,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    T5Config,
    T5EncoderModel,
)

from srum_ray.models.tokenizer import build_tokenizer

FAMILIES = ("sd3", "sana", "flux", "qwen_image")
#: resolution every tiny pipeline is meant to draw at, and its latent grid
RESOLUTION, LATENT_SIDE, LATENT_CHANNELS = 32, 8, 4
TEXT_DIM = 32


@functools.lru_cache(maxsize=1)
def _base_tokenizer():
    return build_tokenizer()


def tokenizer(max_length: int = 1024):
    """A fresh copy of the tiny BPE tokenizer with ``model_max_length`` set."""
    tok = copy.deepcopy(_base_tokenizer())
    tok.model_max_length = max_length
    return tok


def _clip(hidden: int, with_projection: bool):
    tok = _base_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        projection_dim=hidden, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, hidden_act="gelu", pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return CLIPTextModelWithProjection(cfg) if with_projection else CLIPTextModel(cfg)


def _t5(d_model: int = TEXT_DIM):
    cfg = T5Config(
        vocab_size=len(_base_tokenizer()), d_model=d_model, d_kv=8, d_ff=2 * d_model,
        num_layers=1, num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def _kl_vae(scaling: float = 1.5, shift: float = 0.1) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 16), layers_per_block=1, latent_channels=LATENT_CHANNELS,
        norm_num_groups=4, sample_size=RESOLUTION, scaling_factor=scaling, shift_factor=shift,
        mid_block_add_attention=False,
    )


def build_sd3() -> StableDiffusion3Pipeline:
    """SD3 / 3.5: two CLIP encoders (16 + 16 = 32 wide) and a T5 (32 wide)."""
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIDE, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
        caption_projection_dim=32, pooled_projection_dim=32, out_channels=LATENT_CHANNELS,
        pos_embed_max_size=LATENT_SIDE,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_kl_vae(), text_encoder=_clip(16, True), tokenizer=tokenizer(16),
        text_encoder_2=_clip(16, True), tokenizer_2=tokenizer(16),
        text_encoder_3=_t5(), tokenizer_3=tokenizer(),
    )


def build_flux(guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1 (dev style: a guidance embedding when ``guidance_embeds``), dynamic shifting."""
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=_kl_vae(), text_encoder=_clip(16, False), tokenizer=tokenizer(16),
        text_encoder_2=_t5(), tokenizer_2=tokenizer(), transformer=transformer,
    )


def build_sana() -> SanaPipeline:
    """Sana: Gemma-2 text encoder, deep-compression VAE, DPM-Solver with flow sigmas."""
    tok = _base_tokenizer()
    gemma = Gemma2Model(Gemma2Config(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    ))
    vae = AutoencoderDC(
        in_channels=3, latent_channels=LATENT_CHANNELS, attention_head_dim=2,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41,
    )
    transformer = SanaTransformer2DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2,
        attention_head_dim=8, num_layers=1, num_cross_attention_heads=2,
        cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=TEXT_DIM,
        sample_size=LATENT_SIDE, patch_size=1,
    )
    scheduler = DPMSolverMultistepScheduler(
        flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction",
    )
    return SanaPipeline(
        tokenizer=tokenizer(), text_encoder=gemma, vae=vae, transformer=transformer,
        scheduler=scheduler,
    )


def build_qwen_image() -> QwenImagePipeline:
    """Qwen-Image: Qwen2.5-VL text encoder, 3-D causal VAE, exponential dynamic shifting."""
    tok = _base_tokenizer()
    text_cfg = {
        "vocab_size": len(tok), "hidden_size": TEXT_DIM, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 2, 2]},
        "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    vision_cfg = {
        "depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
        "out_hidden_size": TEXT_DIM, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "fullatt_block_indexes": [0], "window_size": 28,
    }
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text_cfg, vision_config=vision_cfg, **text_cfg)
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(),
        transformer=transformer,
    )


BUILDERS = {"sd3": build_sd3, "flux": build_flux, "sana": build_sana, "qwen_image": build_qwen_image}


def save_tiny_pipeline(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` with weights from ``seed`` and save it to ``path``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = BUILDERS[family]()
    root = Path(path)
    pipe.save_pretrained(root)
    return root
