"""The shapes-world unified model: interface, text answers through the judge, training, backend."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from srum_ray.config.schema import FilterConfig, GenerationConfig, JudgeConfig, ModelConfig
from srum_ray.judging.judge import Judge
from srum_ray.judging.filter import BoxFilter
from srum_ray.models.registry import build_model, check_checkpoint
from srum_ray.models.shapes_umm import ATTRIBUTE_HEADS, ShapesGenerator, ShapesNetConfig, WordTokenizer
from srum_ray.models.shapes_understanding import (
    RIGHT_SCORE,
    UNKNOWN_QUESTION,
    Seen,
    ShapesUnderstanding,
    constraint_probability,
    foreground_boxes,
)
from srum_ray.shapes.grammar import parse_prompt, sample_prompt
from srum_ray.shapes.constraints import CATEGORIES, Count, Exists, ObjectQuery, Relation
from srum_ray.shapes.render import object_mask, render
from srum_ray.shapes.sampler import satisfies, scene_for
from srum_ray.shapes.splits import make_splits
from srum_ray.shapes.train_umm import Corpus, region_examples, single_object_prompt, train_generator, train_understanding
from srum_ray.types import MISSING, PARSED, Box

SMALL = ShapesNetConfig(width=32, depth=1, heads=2, judge_width=32, judge_depth=1, judge_heads=2, conv_channels=(4, 8, 8))
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


@pytest.mark.parametrize("arch", ["dit", "udit"])
def test_both_generator_networks_round_trip_through_a_checkpoint(tmp_path, arch):
    cfg = dataclasses.replace(SMALL, arch=arch)
    gen = ShapesGenerator(cfg, GEN, seed=3)
    x = torch.randn(2, *gen.latent_shape)
    cond = gen.encode_prompts(["a red circle", "two stars"])
    v = gen.predict_velocity(x, torch.tensor([0.3, 0.9]), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    gen.save_pretrained(tmp_path)
    back = ShapesGenerator.from_pretrained(tmp_path, GEN)
    assert back.cfg.arch == arch
    assert torch.equal(back.predict_velocity(x, torch.tensor([0.3, 0.9]), cond), v)


def test_network_sizes_are_checked():
    with pytest.raises(ValueError, match="arch must be"):
        ShapesNetConfig(arch="unet")
    with pytest.raises(ValueError, match="halve it 1 times, but unshuffle is 4"):
        ShapesNetConfig(conv_channels=(8, 16))
    with pytest.raises(ValueError, match=r"width \(128\) must be a multiple of heads \(5\)"):
        ShapesNetConfig(width=128)
    with pytest.raises(ValueError, match=r"judge_width \(30\) must be a multiple of judge_heads \(4\)"):
        ShapesNetConfig(judge_width=30)


def test_checkpoints_from_before_the_arch_field_load_as_the_patch_transformer(tmp_path):
    gen = ShapesGenerator(dataclasses.replace(SMALL, arch="dit"), GEN, seed=4)
    gen.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "shapes_umm.json").read_text())
    del meta["net"]["arch"], meta["net"]["conv_channels"]
    (tmp_path / "shapes_umm.json").write_text(json.dumps(meta))
    assert ShapesGenerator.from_pretrained(tmp_path, GEN).cfg.arch == "dit"


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
        want = []
        for o in scene.objects:  # the tight box of each object's pixels
            rows, cols = np.nonzero(object_mask(o, scene.canvas))
            want.append((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
        got = [tuple(int(v) for v in b.as_list()) for b in boxes]
        assert sorted(got) == sorted(want)


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
    # the written scores are the module's reasoning over what it sees, to two decimals
    spec = parse_prompt(specs[0].text)
    seen = und.perceive([images[0]] * len(boxes[0]), boxes[0])
    assert out[0].global_score == pytest.approx(und.global_score(spec, seen), abs=0.006)
    assert out[0].region_scores[0] == pytest.approx(und.region_score(spec, seen[0]), abs=0.006)


def test_a_prompt_outside_the_grammar_gets_no_score():
    und = ShapesUnderstanding(SMALL, seed=3)
    img = render(scene_for(sample_prompt("colour", random.Random(1)), random.Random(1)))
    judge = Judge(und, JudgeConfig(answer_mode="free", max_new_tokens=64, max_retries=1))
    (j,) = judge.judge([img], ["a photo of a cat"], [foreground_boxes(img)], [[True] * len(foreground_boxes(img))])
    assert j.global_score is None and j.global_status == MISSING
    assert "cannot read this prompt" in j.global_raw[0]


def _seen(x: float, y: float, **probs: dict) -> Seen:
    full = {}
    for attr, classes in ATTRIBUTE_HEADS.items():
        p = np.full(len(classes), 0.0)
        for value, v in probs.get(attr, {classes[0]: 1.0}).items():
            p[classes.index(value)] = v
        full[attr] = p
    return Seen(Box(x - 5, y - 5, x + 5, y + 5), full)


def test_reasoning_over_seen_objects_matches_hand_computed_probabilities():
    red_circle = _seen(10, 30, colour={"red": 0.9, "blue": 0.1}, shape={"circle": 1.0})
    blue_square = _seen(50, 30, colour={"blue": 0.8, "red": 0.2}, shape={"square": 1.0})
    seen = [red_circle, blue_square]
    red, blue = ObjectQuery(shape="circle", colour="red"), ObjectQuery(shape="square", colour="blue")
    assert constraint_probability(Exists(red), seen) == pytest.approx(0.9)
    assert constraint_probability(Relation(red, "left", blue), seen) == pytest.approx(0.9 * 0.8)
    assert constraint_probability(Relation(red, "right", blue), seen) == 0.0
    # exactly one red thing of any shape: 0.9 * (1 - 0.2)
    assert constraint_probability(Count(ObjectQuery(colour="red"), 1), seen) == pytest.approx(0.9 * 0.8)
    assert constraint_probability(Count(ObjectQuery(colour="red"), 3), seen) == 0.0
    und = ShapesUnderstanding(SMALL)
    spec = parse_prompt("a red circle to the left of a blue square")
    assert und.global_score(spec, seen) == pytest.approx(2 * (0.9 + 0.8 + 0.72) / 3 - 1)
    assert und.region_score(spec, blue_square) == pytest.approx(2 * 0.8 - 1)
    assert red_circle.name() == "small red circle"


def test_counting_extra_objects_adds_one_term_that_a_duplicate_or_an_unasked_object_fails():
    red_circle = _seen(10, 30, colour={"red": 0.9, "blue": 0.1}, shape={"circle": 1.0})
    blue_square = _seen(50, 30, colour={"blue": 0.8, "red": 0.2}, shape={"square": 1.0})
    spec = parse_prompt("a red circle to the left of a blue square")
    und, plain = ShapesUnderstanding(SMALL, extra_objects="count"), ShapesUnderstanding(SMALL)

    def with_term(seen, term):  # the plain mean over 3 constraints, and one more term
        return 2 * (3 * (plain.global_score(spec, seen) + 1) / 2 + term) / 4 - 1

    # two objects named, two seen: the term holds (0.9, 0.8, 0.72 and 1)
    two = [red_circle, blue_square]
    assert und.global_score(spec, two) == pytest.approx(2 * np.mean([0.9, 0.8, 0.72, 1.0]) - 1)
    assert und.global_score(spec, two) == pytest.approx(with_term(two, 1.0))
    # a second red circle: every constraint holds at least as well, but one object too many
    three = [red_circle, blue_square, _seen(30, 50, colour={"red": 1.0}, shape={"circle": 1.0})]
    assert plain.global_score(spec, three) >= plain.global_score(spec, two)
    assert und.global_score(spec, three) == pytest.approx(with_term(three, 0.0))
    assert und.global_score(spec, three) < RIGHT_SCORE
    # counted prompts name as many objects as they count
    circles = [_seen(10 + 20 * i, 30, colour={"red": 1.0}, shape={"circle": 1.0}) for i in range(3)]
    assert und.global_score(parse_prompt("three red circles"), circles) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="extra_objects 'all'"):
        ShapesUnderstanding(SMALL, extra_objects="all")


def test_the_backend_builds_the_judge_with_the_configured_extra_objects(checkpoint):
    for value in ("ignore", "count"):
        cfg = ModelConfig(backend="shapes", checkpoint=str(checkpoint))
        cfg.understanding.extra_objects = value
        und = build_model(cfg, GenerationConfig(), "cpu", parts=("understanding",)).understanding
        assert und.extra_objects == value


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


def test_caption_noise_draws_one_off_scenes_for_train_prompts_only(splits):
    clean, noisy = Corpus(splits["train"], 0.5), Corpus(splits["train"], 0.5, caption_noise=1.0)
    rng = random.Random(0)
    specs = [clean.draw(rng) for _ in range(40)]
    singles = [s for s in specs if s.text not in {p.spec.text for p in splits["train"]}]
    assert 0 < len(singles) < len(specs)
    # noise 1: every train-split prompt gets a scene wrong in one thing, single objects stay right
    rng = random.Random(1)
    for s in specs:
        assert satisfies(s, noisy.scene(s, rng)) == (s in singles)
    # noise 0: exactly scene_for's draws, so runs before the option repeat
    a, b = random.Random(2), random.Random(2)
    assert [clean.scene(s, a) for s in specs] == [scene_for(s, b) for s in specs]
    # a share in between: both kinds, at about that rate
    half = Corpus(splits["train"], 0.0, caption_noise=0.5)
    rng = random.Random(3)
    right = [satisfies(s, half.scene(s, rng)) for s in half.train * 4]
    assert 0.35 <= sum(right) / len(right) <= 0.65
    with pytest.raises(ValueError, match="caption_noise"):
        Corpus(splits["train"], 0.5, caption_noise=1.5)


def test_relation_share_sets_how_often_a_prompt_names_a_relation(splits):
    from srum_ray.shapes.train_umm import has_relation

    natural = Corpus(splits["train"], 0.3)
    # unset: exactly the draws before the option, so the shipped weights repeat
    a, b = random.Random(5), random.Random(5)
    assert [natural.draw(a) for _ in range(50)] == [
        single_object_prompt(b) if b.random() < 0.3 else b.choice(natural.train) for _ in range(50)
    ]
    share = sum(map(has_relation, natural.train)) / len(natural.train)
    assert 0.1 < share < 0.5  # the split names relations in spatial and some complex prompts

    def drawn_share(corpus: Corpus) -> float:
        rng = random.Random(6)
        specs = [corpus.draw(rng) for _ in range(2000)]
        return sum(map(has_relation, specs)) / len(specs)

    assert drawn_share(Corpus(splits["train"], 0.0, relation_share=0.0)) == 0.0
    assert drawn_share(Corpus(splits["train"], 0.0, relation_share=1.0)) == 1.0
    assert 0.03 <= drawn_share(Corpus(splits["train"], 0.0, relation_share=0.05)) <= 0.07
    # single-object captions never name a relation, whatever the share
    assert drawn_share(Corpus(splits["train"], 1.0, relation_share=1.0)) == 0.0
    with pytest.raises(ValueError, match="relation_share"):
        Corpus(splits["train"], 0.5, relation_share=-0.1)


def test_region_examples_describe_the_object_in_the_box(splits):
    corpus = Corpus(splits["train"], 0.3)
    images, boxes, attrs = region_examples(corpus, random.Random(0), 30)
    assert len(images) == len(boxes) == len(attrs) == 30
    for img, box, a in zip(images, boxes, attrs):
        assert set(a) == {"colour", "shape", "size", "texture"}
        # a tight box (what the grounder proposes) give or take a pixel a side
        r = 7 if a["size"] == "small" else 12
        assert r - 2 <= box.x1 - box.x0 <= 2 * r + 3 and r - 2 <= box.y1 - box.y0 <= 2 * r + 3


def test_evaluation_images_do_not_depend_on_following_progress(checkpoint, monkeypatch):
    import srum_ray.shapes.measure as M
    from srum_ray.shapes.constraints import PromptSpec

    monkeypatch.setattr(M, "PROGRESS_CHUNK", 4)  # batches of 3: chunks of 3 prompts
    gen = build_model(ModelConfig(backend="shapes", checkpoint=str(checkpoint)), GEN).generator
    texts = ["a red circle", "two blue stars", "a striped star", "a green square", "a small star", "three circles", "a red star"]
    specs = [PromptSpec(text=t, category="colour", constraints=()) for t in texts]
    whole = M.generate_for(gen, specs, seed=2)
    updates: list[int] = []
    chunked = M.generate_for(gen, specs, seed=2, on_images=updates.append)
    assert updates == [3, 3, 1]
    assert [np.asarray(a).tobytes() for a in chunked] == [np.asarray(b).tobytes() for b in whole]


def test_text_encoder_switches_are_off_by_default_and_round_trip_when_on(tmp_path):
    """``text_depth``, ``segments``, ``pooled_text`` and ``word_pos_std`` (session 20's binding
    experiments): off, the network has exactly the old parameters (shipped checkpoints load);
    on, each adds, drops or rescales what it says and survives a save and load."""
    plain = ShapesGenerator(SMALL, GEN, seed=5).net
    assert not any(k.startswith(("text_blocks", "segment_emb")) for k in plain.state_dict())
    x = torch.randn(2, *ShapesGenerator(SMALL, GEN).latent_shape)
    assert float(plain.word_pos.detach().std()) < 0.05
    for extra in ({"text_depth": 2}, {"segments": True}, {"pooled_text": False}, {"word_pos_std": 1.0}):
        cfg = dataclasses.replace(SMALL, **extra)
        gen = ShapesGenerator(cfg, GEN, seed=5)
        keys = set(gen.net.state_dict())
        assert any(k.startswith("text_blocks.1.") for k in keys) == ("text_depth" in extra)
        assert ("segment_emb.weight" in keys) == ("segments" in extra)
        assert (float(gen.net.word_pos.detach().std()) > 0.5) == ("word_pos_std" in extra)
        cond = gen.encode_prompts(["a red circle and two stars", "one blue square"])
        v = gen.predict_velocity(x, torch.tensor([0.3, 0.9]), cond)
        gen.save_pretrained(tmp_path / str(extra))
        back = ShapesGenerator.from_pretrained(tmp_path / str(extra), GEN)
        assert dataclasses.asdict(back.cfg) == dataclasses.asdict(cfg)
        assert torch.equal(back.predict_velocity(x, torch.tensor([0.3, 0.9]), cond), v)
    with pytest.raises(ValueError, match="text_depth must be 0 or more"):
        ShapesNetConfig(text_depth=-1)


def test_segments_number_the_object_phrases_and_pooled_text_off_leaves_time_only():
    from srum_ray.models.shapes_nets import _condition, phrase_index

    gen = ShapesGenerator(dataclasses.replace(SMALL, segments=True, pooled_text=False), GEN, seed=6)
    words = gen.tokenizer(["a red circle and two stars left of one square", "an orange star"])
    # <cls> a red circle and two stars left of one square: phrases open at a, two, one
    assert phrase_index(words, gen.net.phrase_starts, 8)[0, :11].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    assert phrase_index(words, gen.net.phrase_starts, 8)[1, :4].tolist() == [0, 1, 1, 1]
    assert phrase_index(words, gen.net.phrase_starts, 3)[0, 9:11].tolist() == [2, 2]  # capped
    t = torch.tensor([0.4, 0.4])
    other = gen.tokenizer(["a red circle and two stars left of one square", "three green triangles"])
    cond, _ = _condition(gen.net, t, other, gen.tokenizer.pad_id)
    assert torch.equal(cond[0], cond[1])  # without the pooled prompt the vector is the time's alone
    pooled = ShapesGenerator(SMALL, GEN, seed=6)
    cond, _ = _condition(pooled.net, t, other, pooled.tokenizer.pad_id)
    assert not torch.allclose(cond[0], cond[1])
