"""Shared fixtures of the shapes-world tests."""

from __future__ import annotations

import pytest

from srum_ray.config.schema import GenerationConfig
from srum_ray.models.shapes_umm import ShapesGenerator, ShapesNetConfig
from srum_ray.models.shapes_understanding import ShapesUnderstanding

#: a shapes model small enough for end-to-end runs on CPU in seconds
SMALL = ShapesNetConfig(width=32, depth=1, heads=2, judge_width=32, judge_depth=1, judge_heads=2, conv_channels=(4, 8, 8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised :data:`SMALL` model saved as a ``shapes`` checkpoint directory."""
    root = tmp_path_factory.mktemp("shapes-umm")
    ShapesGenerator(SMALL, GenerationConfig(), seed=1).save_pretrained(root)
    ShapesUnderstanding(SMALL, seed=2).save_pretrained(root)
    return root
