"""Best-of-K (srum_ray.shapes.best_of): seeds, the statistics with a judge whose answers are
known, and the command on the shipped model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_ray.shapes import grammar, sampler
from srum_ray.shapes.best_of import best_of_k, main, sample_seeds
from srum_ray.shapes.evaluate import correct
from srum_ray.shapes.measure import eval_seeds
from srum_ray.shapes.render import render
from srum_ray.models.base import GenerationOutput

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 150), seed=st.integers(0, 5))
def test_seeds_start_at_the_demos_and_never_repeat(n, k, seed):
    seeds = sample_seeds(n, k, seed)
    assert [row[0] for row in seeds] == eval_seeds(n, seed)
    assert all(len(row) == k for row in seeds)
    flat = [s for row in seeds for s in row]
    assert len(set(flat)) == len(flat)
    # another evaluation seed's first images are not among this one's extra samples
    assert not set(eval_seeds(n, seed + 1)) & {s for row in seeds for s in row[1:]}


class _Gen:
    """Draws a right scene for even seeds and a scene wrong in one attribute for odd ones."""

    def __init__(self):
        self.truth: dict[int, bool] = {}

    def generate(self, texts, seeds):
        images = []
        for text, s in zip(texts, seeds):
            spec, rng = grammar.parse_prompt(text), random.Random(s)
            img = render(sampler.scene_for(spec, rng) if s % 2 == 0 else sampler.wrong_scene_for(spec, rng)[0])
            self.truth[id(img)] = correct(spec, img)
            images.append(img)
        return GenerationOutput(images=images, latents=None, cond={})


class _Judge:
    def __init__(self, gen: _Gen, mode: str):
        self.gen, self.mode = gen, mode

    def answer(self, images, prompts, max_new_tokens):
        out = []
        for img in images:
            ok = self.gen.truth[id(img)]
            if self.mode == "unreadable_when_right" and ok:
                out.append("I cannot say.")
            else:
                score = 0.9 if ok == (self.mode != "inverted") else -0.8
                out.append(f"Score: {score}\nReason: made up")
        return out


def _specs(n=6):
    rng = random.Random(3)
    return [grammar.sample_prompt(c, rng) for c in ("colour", "spatial", "numeracy") for _ in range(n // 3)]


@pytest.mark.parametrize("mode", ["perfect", "inverted", "unreadable_when_right"])
def test_statistics_follow_the_judges_scores(mode):
    gen = _Gen()
    specs = _specs()
    res = best_of_k(gen, _Judge(gen, mode), specs, k=4, seed=1)
    assert len(res["per_prompt"]) == len(specs) and len(res["images"]) == 4 * len(specs)
    for p in res["per_prompt"]:
        ok = p["correct"]
        # the fake draws right and wrong images by seed parity, so both occur
        assert 0 < sum(ok) < 4
        assert p["first"] == float(ok[0]) and p["mean"] == pytest.approx(sum(ok) / 4) and p["any"] == 1.0
        if mode == "perfect":
            assert p["judge_best"] == 1.0
        else:
            # an inverted judge prefers a wrong image; an unreadable answer is never preferred to a read one
            assert p["judge_best"] == 0.0 and p["scores"][p["judge_pick"]] is not None
    s = res["summary"]
    assert s["any"]["overall"] == 1.0
    assert s["judge_best"]["overall"] == (1.0 if mode == "perfect" else 0.0)
    assert res["unread"] == (sum(sum(p["correct"]) for p in res["per_prompt"]) if mode == "unreadable_when_right" else 0)
    assert set(s["first"]) == {"colour", "spatial", "numeracy", "overall"}


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be at least 1"):
        best_of_k(_Gen(), None, _specs(), k=0)


def test_command_on_the_shipped_model_matches_the_demos_scoring(tmp_path, monkeypatch):
    from srum_ray.config.load import load_config
    from srum_ray.shapes.demo import PROMPT_DIR, Evaluator, subsample
    from srum_ray.shapes.splits import load_split_prompts

    monkeypatch.chdir(ROOT)
    line = main(["--k", "2", "--test-prompts", "4", "--seed", "3", "--out", str(tmp_path)])
    assert line["n_test"] == 4 and line["k"] == 2
    per_prompt = json.loads((tmp_path / "per_prompt_seed3_k2.json").read_text())
    assert [len(p["correct"]) for p in per_prompt] == [2] * 4
    assert (tmp_path / "best_of_seed3_k2.png").stat().st_size > 0
    assert json.loads((tmp_path / "best_of.jsonl").read_text().splitlines()[-1]) == line
    # the first sample of each prompt is the image the demo scores for the same seed
    test = subsample(load_split_prompts(PROMPT_DIR / "test.jsonl"), 4)
    ev = Evaluator(load_config("configs/shapes.yaml", []), 3)
    _, images = ev.score(test)
    assert [correct(p.spec, im) for p, im in zip(test, images)] == [bool(p["correct"][0]) for p in per_prompt]


def test_command_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--k", "0", "--out", str(tmp_path)])
    assert "--k must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--generator", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)])
    assert "no file at" in capsys.readouterr().err
