"""The perfect-data ceiling of a preset's training budget (srum_ray.shapes.budget)."""

from __future__ import annotations

import json

import pytest

from srum_ray.shapes import budget
from srum_ray.shapes.evaluate import evaluate
from srum_ray.shapes.grammar import parse_prompt


def _overrides(checkpoint) -> list[str]:
    return [f"model.checkpoint={checkpoint}", "run.rounds=2", "data.prompts_per_round=5", "data.images_per_prompt=2",
            "generation.num_inference_steps=2", "generation.batch_size=4", "train.steps_per_round=3",
            "train.batch_size=4", "run.progress=false"]


def test_ground_truth_data_satisfies_its_train_prompts_deterministically():
    texts, images = budget.ground_truth_data(20, seed=0)
    assert len(texts) == len(images) == 20
    assert evaluate([parse_prompt(t) for t in texts], images).overall >= 0.95
    again, other = budget.ground_truth_data(20, seed=0), budget.ground_truth_data(20, seed=1)
    assert again[0] == texts and [i.tobytes() for i in again[1]] == [i.tobytes() for i in images]
    assert other[0] != texts


def test_budget_defaults_to_the_configs_run_and_scores_like_the_scan(checkpoint, tmp_path):
    line = budget.main(["--test-prompts", "6", "--seed", "3", "--out", str(tmp_path / "b"), *_overrides(checkpoint)])
    # the config's whole run: 2 rounds x 3 steps, 2 rounds x 5 prompts x 2 images, train.lr, train.batch_size
    assert (line["steps"], line["images"], line["batch"], line["lr"]) == (6, 20, 4, 2.5e-5)
    assert line["loss_first"] > 0 and line["n_test"] == 6
    assert line["change"] == pytest.approx(line["after"]["accuracy"]["overall"] - line["before"]["accuracy"]["overall"], abs=0.06)
    assert json.loads((tmp_path / "b" / "budget.jsonl").read_text()) == line
    # "before" is the base scored exactly as scripts/shapes_scan.py --arm base scores it
    import importlib.util

    spec = importlib.util.spec_from_file_location("shapes_scan", "scripts/shapes_scan.py")
    scan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scan)
    base = scan.main(["--name", "b", "--arm", "base", "--seed", "3", "--test-prompts", "6", "--out", str(tmp_path / "s"),
                      "runtime.mode=local", *_overrides(checkpoint)])
    assert line["before"]["accuracy"] == base["accuracy"]
    assert line["before"]["ink_percent"] == base["ink_percent"]


def test_budget_explicit_settings_and_bad_ones(checkpoint, tmp_path):
    line = budget.main(["--steps", "2", "--lr", "1e-3", "--images", "5", "--test-prompts", "3", "--out", str(tmp_path),
                        *_overrides(checkpoint)])
    assert (line["steps"], line["lr"], line["images"]) == (2, 1e-3, 5)
    with pytest.raises(SystemExit):
        budget.main(["--steps", "0", "--out", str(tmp_path), *_overrides(checkpoint)])
