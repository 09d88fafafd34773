"""A small shapes-world generator with random weights: the learner tests' generator that has an
unconditional prompt (``null_condition``), unlike the tiny one."""

from __future__ import annotations

import dataclasses

import torch

from srum_ray.config.schema import GenerationConfig
from srum_ray.models.shapes_umm import ShapesGenerator, ShapesNetConfig


def random_shapes_generator(generation: GenerationConfig) -> ShapesGenerator:
    """Width 32, depth 1, 2 sampling steps, no guidance; weights drawn from N(0, 0.2) with seed 0,
    away from the zero-initialized output, so the prompt changes the velocity."""
    small = ShapesNetConfig(width=32, depth=1, heads=2, conv_channels=(4, 8, 8))
    gen = ShapesGenerator(small, dataclasses.replace(generation, num_inference_steps=2, guidance_scale=1.0), seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in gen.net.parameters():
            prm.normal_(0.0, 0.2)
    return gen
