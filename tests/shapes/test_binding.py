"""The binding test: own vs swapped prompts, scored by the exact evaluator."""

from __future__ import annotations

import json
import random

import pytest

from srum_ray.shapes import binding
from srum_ray.shapes.render import render
from srum_ray.shapes.sampler import scene_for


def test_pairs_name_the_same_words_bound_the_other_way():
    pairs = binding.swapped_pairs(40, seed=3)
    assert pairs == binding.swapped_pairs(40, seed=3) and pairs != binding.swapped_pairs(40, seed=4)
    for own, swapped in pairs:
        assert sorted(own.text.split()) == sorted(swapped.text.split()) and own.text != swapped.text
        c1, s1, _, _, c2, s2 = own.text.split()[1:]
        assert len({s1, s2}) == 2 and len({c1, c2}) == 2
        assert swapped.text.replace("an ", "a ") == f"a {c2} {s1} and a {c1} {s2}"
    with pytest.raises(ValueError, match="at least one prompt"):
        binding.swapped_pairs(0)


def test_ground_truth_binds_and_a_bag_of_words_does_not():
    """Images drawn right for their own prompt score 100 / 0 (gap +100); the same images scored
    with the roles reversed show the test is symmetric (gap -100); images that draw each
    object's colour from the other prompt half the time sit between."""
    pairs = binding.swapped_pairs(24, seed=1)
    own, swapped = [p for p, _ in pairs], [q for _, q in pairs]
    rng = random.Random(0)
    truth = [render(scene_for(p, rng)) for p in own]
    res = binding.binding_scores(own, swapped, truth)
    assert res == {"prompts": 24, "own": 100.0, "swapped": 0.0, "gap": 100.0}
    assert binding.binding_scores(swapped, own, truth)["gap"] == -100.0
    # a bag of words: each image is right for one prompt of its pair, chosen by a coin
    mixed = [render(scene_for(p if rng.random() < 0.5 else q, rng)) for p, q in pairs]
    res = binding.binding_scores(own, swapped, mixed)
    assert res["own"] + res["swapped"] == 100.0 and 0 < res["own"] < 100


def test_the_command_scores_a_checkpoint_and_appends_its_line(tmp_path, checkpoint):
    out = tmp_path / "binding.jsonl"
    overrides = [f"model.checkpoint={checkpoint}", "generation.num_inference_steps=2", "generation.batch_size=4"]
    line = binding.main(["--prompts", "6", "--out", str(out), *overrides])
    assert line["prompts"] == 6 and line["checkpoint"] == str(checkpoint)
    assert line["gap"] == pytest.approx(line["own"] - line["swapped"])
    assert json.loads(out.read_text().splitlines()[-1]) == line
    with pytest.raises(SystemExit):
        binding.main(["--prompts", "0"])
