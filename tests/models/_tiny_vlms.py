"""Tiny random vision-language models of each supported family, saved like hub checkpoints.

Each builder makes a model with the library's own config/model classes (tiny vision tower,
tiny text model), a tokenizer from :func:`srum_ray.models.tokenizer.build_tokenizer` with the
family's special tokens and a chat template shaped like the family's, and the family's PIL
image processor, then writes them with ``save_pretrained`` into one directory, the layout a
hub checkpoint has (config.json, model.safetensors, tokenizer files, preprocessor_config.json,
chat_template.jinja). Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    LlamaConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

from srum_ray.models.tokenizer import build_tokenizer

#: weight init scale: large enough that a random model's answers vary with image and prompt
INIT = 0.6
HIDDEN = 32
QWEN_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ONEVISION_TOKENS = ("<image>", "<video>", "<|im_start|>", "<|im_end|>")
ONEVISION_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
IDEFICS3_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
#: SmolVLM2: Idefics3's image tokens, turns opened with <|im_start|>
SMOLVLM_TOKENS = ("<|im_start|>", *IDEFICS3_TOKENS)
SMOLVLM_TEMPLATE = "<|im_start|>" + IDEFICS3_TEMPLATE
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "llava_onevision", "idefics3", "smolvlm")


def _text_kw(tok) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=INIT,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _qwen_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_image_processor() -> Qwen2VLImageProcessorPil:
    """8 px patches merged 2x2: a 64 x 64 image becomes 16 image tokens."""
    return Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64
    )


def build_qwen2_5_vl(tok):
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(_text_kw(tok), rope_parameters=rope),
        vision_config=dict(
            depth=1, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_heads=2, patch_size=8,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=HIDDEN, window_size=16,
            fullatt_block_indexes=[0], initializer_range=INIT,
        ),
        **_qwen_ids(tok),
    )
    return Qwen2_5_VLForConditionalGeneration(cfg), _qwen_image_processor()


def build_qwen3_vl(tok):
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    cfg = Qwen3VLConfig(
        text_config=dict(_text_kw(tok), head_dim=16, rope_parameters=rope),
        vision_config=dict(
            depth=2, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_heads=2, patch_size=8,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=HIDDEN,
            num_position_embeddings=16, deepstack_visual_indexes=[0], initializer_range=INIT,
        ),
        **_qwen_ids(tok),
    )
    return Qwen3VLForConditionalGeneration(cfg), _qwen_image_processor()


def build_llava_onevision(tok):
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            image_size=32, patch_size=8, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
            num_hidden_layers=1, num_attention_heads=2,
        ),
        text_config=Qwen2Config(**_text_kw(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )
    ip = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    return LlavaOnevisionForConditionalGeneration(cfg), ip


def _idefics3_like(tok, config_cls, model_cls, image_processor_cls):
    """Idefics3 and SmolVLM2 share a layout: a SigLIP tower, pixel shuffle, a Llama text model."""
    cfg = config_cls(
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
            num_hidden_layers=1, num_attention_heads=2, initializer_range=INIT,
        ),
        text_config=LlamaConfig(**_text_kw(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    ip = image_processor_cls(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    return model_cls(cfg), ip


def build_idefics3(tok):
    return _idefics3_like(tok, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil)


def build_smolvlm(tok):
    return _idefics3_like(tok, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil)


_BUILDERS = {
    "qwen2_5_vl": (build_qwen2_5_vl, QWEN_TOKENS, QWEN_TEMPLATE, {}),
    "qwen3_vl": (build_qwen3_vl, QWEN_TOKENS, QWEN_TEMPLATE, {}),
    "llava_onevision": (
        build_llava_onevision, ONEVISION_TOKENS, ONEVISION_TEMPLATE,
        {"num_image_tokens": 16, "vision_feature_select_strategy": "full",
         "vision_aspect_ratio": "anyres_max_9"},
    ),
    "idefics3": (build_idefics3, IDEFICS3_TOKENS, IDEFICS3_TEMPLATE, {"image_seq_len": 4}),
    "smolvlm": (build_smolvlm, SMOLVLM_TOKENS, SMOLVLM_TEMPLATE, {"image_seq_len": 4}),
}


def save_tiny_vlm(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build a tiny random VLM of ``family`` and write it in hub layout to ``path``.

    Args:
        family: one of :data:`FAMILIES`.
        path: output directory (created).
        seed: weight seed.

    Returns:
        ``path`` as a Path.
    """
    build, special, template, proc_kwargs = _BUILDERS[family]
    root = Path(path)
    tok = build_tokenizer(extra_special=special)
    tok.chat_template = template
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, image_processor = build(tok)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    image_processor.save_pretrained(root)
    if proc_kwargs:  # the processor's own settings, as a hub processor_config.json holds them
        (root / "processor_config.json").write_text(json.dumps(proc_kwargs, indent=2))
    return root
