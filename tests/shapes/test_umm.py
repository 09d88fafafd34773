"""The shapes-world unified model: interface, text answers through the judge, training, backend."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from srum_ray.config.schema import FilterConfig, GenerationConfig, JudgeConfig, ModelConfig
from srum_ray.judging.judge import Judge
from srum_ray.judging.filter import BoxFilter
from srum_ray.models.registry import build_model, check_checkpoint
from srum_ray.models.shapes_umm import (
    UNKNOWN_QUESTION,
    ShapesGenerator,
    ShapesNetConfig,
    ShapesUnderstanding,
    WordTokenizer,
    foreground_boxes,
)
from srum_ray.shapes.grammar import sample_prompt
from srum_ray.shapes.constraints import CATEGORIES
from srum_ray.shapes.render import render
from srum_ray.shapes.sampler import scene_for
from srum_ray.shapes.splits import make_splits
from srum_ray.shapes.train_umm import Corpus, judge_examples, single_object_prompt, train_generator, train_understanding
from srum_ray.types import PARSED

SMALL = ShapesNetConfig(width=32, depth=1, heads=2, judge_width=32, judge_depth=1, judge_heads=2)
GEN = GenerationConfig(num_inference_steps=3, guidance_scale=2.0, shift=2.0, batch_size=3)


@pytest.fixture(scope="module")
def splits():
    return make_splits(0, n_train=60, n_val=12, n_test=24)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-umm")
    ShapesGenerator(SMALL, GEN, seed=1).save_pretrained(root)
    ShapesUnderstanding(SMALL, seed=2).save_pretrained(root)
    return root


def test_every_grammar_word_is_in_the_vocabulary():
    tok = WordTokenizer()
    rng = random.Random(0)
    texts = [sample_prompt(c, rng).text for c in CATEGORIES for _ in range(150)]
    texts += [single_object_prompt(rng).text for _ in range(100)]
    ids = tok(texts)
    assert tok.unknown_seen == 0
    assert ids.shape == (len(texts), tok.max_length)
    assert (ids[:, 0] == tok.index["<cls>"]).all()
    tok(["a magenta hexagon"])
    assert tok.unknown_seen == 2  # counted, not an error


def test_latents_are_a_lossless_view_of_the_image():
    gen = ShapesGenerator(SMALL, GEN)
    img = render(scene_for(sample_prompt("complex", random.Random(3)), random.Random(3)))
    x = gen.encode_images([img])
    assert x.shape == (1, *gen.latent_shape) == (1, 48, 16, 16)
    assert np.array_equal(np.asarray(gen.decode(x)[0]), np.asarray(img))


def test_generation_is_per_sample_deterministic_and_batch_independent(checkpoint):
    model = build_model(ModelConfig(backend="shapes", checkpoint=str(checkpoint)), GEN)
    gen = model.generator
    prompts = ["a red circle", "two blue stars", "a small square above a green star", "a striped star"]
    out = gen.generate(prompts, [5, 6, 7, 8])
    alone = gen.generate(prompts[2:3], [7])
    assert len(out.images) == 4 and out.latents.shape == (4, 48, 16, 16)
    assert torch.allclose(out.latents[2], alone.latents[0], atol=1e-5)
    assert out.cond["words"].dtype == torch.long and out.cond["words"].shape[0] == 4
    v = gen.predict_velocity(out.latents, torch.full((4,), 0.5), out.cond)
    assert v.shape == out.latents.shape and v.requires_grad


def test_backend_checkpoint_check_names_missing_files(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="model.checkpoint is not set"):
        check_checkpoint(ModelConfig(backend="shapes"))
    (tmp_path / "shapes_umm.json").write_text((checkpoint / "shapes_umm.json").read_text())
    with pytest.raises(FileNotFoundError, match="generator.safetensors"):
        check_checkpoint(ModelConfig(backend="shapes", checkpoint=str(tmp_path)))
    check_checkpoint(ModelConfig(backend="shapes", checkpoint=str(checkpoint)))


def test_grounding_finds_every_rendered_object():
    rng = random.Random(4)
    for _ in range(20):
        scene = scene_for(sample_prompt(rng.choice(CATEGORIES), rng), rng)
        boxes = foreground_boxes(render(scene))
        want = [o.bbox() for o in scene.objects]
        got = [tuple(int(v) for v in b.as_list()) for b in boxes]
        assert len(got) == len(want)
        for a0, b0, a1, b1 in want:
            # exactly one proposal lies inside each object's drawing box and covers much of it
            inside = [(c0, d0, c1, d1) for c0, d0, c1, d1 in got if a0 <= c0 and b0 <= d0 and c1 <= a1 and d1 <= b1]
            assert len(inside) == 1
            c0, d0, c1, d1 = inside[0]
            assert (c1 - c0) * (d1 - d0) >= 0.4 * (a1 - a0) * (b1 - b0)


@pytest.mark.parametrize("mode", ["free", "guided"])
def test_answers_are_read_by_the_judges_parser(mode):
    und = ShapesUnderstanding(SMALL, seed=3)
    rng = random.Random(5)
    specs = [sample_prompt(c, rng) for c in ("colour", "spatial", "numeracy")]
    images = [render(scene_for(s, rng)) for s in specs]
    boxes = [foreground_boxes(im) for im in images]
    judge = Judge(und, JudgeConfig(answer_mode=mode, max_new_tokens=256, max_retries=0))
    out = judge.judge(images, [s.text for s in specs], boxes, [[True] * len(b) for b in boxes])
    for j, bx in zip(out, boxes):
        assert j.global_status == PARSED and -1 <= j.global_score <= 1
        assert j.region_status == [PARSED] * len(bx)
        assert all(-1 <= s <= 1 for s in j.region_scores)
        # the object names are the attribute heads' words
        assert all(name.split()[-1] in ("circle", "square", "triangle", "star") for name in j.region_objects)
    # scores are the network's outputs, written with two decimals
    direct = und.predict(images[:1], [specs[0].text], [None])["score"]
    assert out[0].global_score == pytest.approx(float(direct[0]), abs=0.006)


def test_filter_and_unknown_questions():
    und = ShapesUnderstanding(SMALL, seed=3)
    img = render(scene_for(sample_prompt("colour", random.Random(1)), random.Random(1)))
    boxes = foreground_boxes(img)
    filt = BoxFilter(und, FilterConfig(enabled=True))
    kept, raw = filt.filter([img], ["a red circle and a blue square"], [boxes])
    assert len(kept[0]) == len(boxes) and filt.stats.unparsed == 0
    assert set(raw[0]) <= {"yes", "no"}
    assert und.answer([img], ["What colour is the sky?"], max_new_tokens=8) == [UNKNOWN_QUESTION]


def test_training_is_deterministic_and_lowers_the_loss(splits):
    corpus = Corpus(splits["train"], 0.3)
    runs = []
    for _ in range(2):
        gen = ShapesGenerator(SMALL, GEN, seed=0)
        info = train_generator(gen, corpus, steps=4, batch=4, lr=1e-3, seed=0, warmup=1, ema_decay=0.0, log=lambda m: None)
        runs.append((info, {k: v.clone() for k, v in gen.net.state_dict().items()}))
    assert runs[0][0]["final_loss"] == runs[1][0]["final_loss"]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])

    und = ShapesUnderstanding(SMALL, seed=0)
    first = train_understanding(und, corpus, steps=1, batch=16, lr=3e-3, seed=0, warmup=1, log=lambda m: None)
    later = train_understanding(und, corpus, steps=25, batch=16, lr=3e-3, seed=1, warmup=1, log=lambda m: None)
    assert later["final_loss"] < first["final_loss"]


def test_judge_examples_label_what_the_scene_shows(splits):
    corpus = Corpus(splits["train"], 0.3)
    images, prompts, boxes, labels, attrs = judge_examples(corpus, random.Random(0), 40)
    assert len(images) == len(prompts) == len(boxes) == len(labels) == 40
    assert all(b is None for b in boxes[0::2]) and all(b is not None for b in boxes[1::2])
    assert all(a is None for a in attrs[0::2]) and all(set(a) == {"colour", "shape", "size", "texture"} for a in attrs[1::2])
    assert 0 < sum(labels[0::2]) < 20  # both right and wrong whole-image examples
