"""The shipped shapes-world model (weights/shapes-umm), loaded through the backend like any checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from srum_ray.config.load import load_config
from srum_ray.models.registry import build_model
from srum_ray.shapes.demo import subsample
from srum_ray.shapes.measure import agreement, generation_report, global_verdicts, rendered_pairs, understanding_vs_generation
from srum_ray.shapes.splits import load_split_prompts
from srum_ray.shapes.train_umm import single_object_prompt

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "shapes-umm"


@pytest.fixture(scope="module")
def model():
    cfg = load_config(ROOT / "configs" / "shapes.yaml", [f"model.checkpoint={WEIGHTS}"])
    return build_model(cfg.model, cfg.generation, "cpu")


def test_weights_fit_the_budget_and_have_a_card():
    size = sum(f.stat().st_size for f in WEIGHTS.glob("*.safetensors"))
    assert 0 < size <= 20 * 2**20
    card = json.loads((WEIGHTS / "card.json").read_text())
    assert card["generator"]["steps"] > 0 and card["understanding"]["steps"] > 0
    assert "generation accuracy" in (WEIGHTS / "MODEL_CARD.md").read_text()


def test_understanding_reads_rendered_scenes(model):
    prompts = subsample(load_split_prompts(ROOT / "configs/prompts/shapes/val.jsonl"), 30)
    specs, images, truth = rendered_pairs([p.spec for p in prompts], seed=5)
    acc = agreement(specs, global_verdicts(model.understanding, specs, images), truth)
    assert acc["overall"] >= 0.95


def test_base_generator_draws_single_objects_better_than_compositions(model):
    rng = random.Random(7)
    singles = [single_object_prompt(rng) for _ in range(40)]
    multi = [p.spec for p in subsample(load_split_prompts(ROOT / "configs/prompts/shapes/val.jsonl"), 40)]
    single_acc = generation_report(model.generator, singles, seed=1)[0].overall
    multi_acc = generation_report(model.generator, multi, seed=1)[0].overall
    # a base model as the issue asks: good at single objects, weaker at compositions
    assert single_acc >= 0.5 and multi_acc < single_acc / 2


def test_gap_from_images_already_drawn_equals_the_gap_drawn_anew(model):
    # the demo hands the base's test images to the gap measurement instead of drawing them again
    specs = [p.spec for p in subsample(load_split_prompts(ROOT / "configs/prompts/shapes/test.jsonl"), 12)]
    report, images = generation_report(model.generator, specs, seed=3)
    drawn = understanding_vs_generation(model.generator, model.understanding, specs, seed=3)
    given = understanding_vs_generation(model.generator, model.understanding, specs, seed=3, images=images)
    assert given == drawn
    assert given["generation"]["overall"] == report.overall
    # the images given are the ones scored: ground-truth renders make every prompt right
    _, truth_images, truth = rendered_pairs(specs, seed=3)
    right = [im for im, ok in zip(truth_images, truth) if ok]
    assert understanding_vs_generation(model.generator, model.understanding, specs, seed=3, images=right)["generation"]["overall"] == 1.0
    assert report.overall < 1.0
    with pytest.raises(ValueError, match="11 images for 12 prompts"):
        understanding_vs_generation(model.generator, model.understanding, specs, seed=3, images=images[:11])
