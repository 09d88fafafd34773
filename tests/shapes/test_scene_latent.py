"""The scene-grid latent (srum_ray/shapes/scene_latent.py) and the generator working in it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_ray.config.schema import GenerationConfig
from srum_ray.models.shapes_umm import ShapesGenerator, ShapesNetConfig
from srum_ray.models.shapes_understanding import ShapesUnderstanding
from srum_ray.shapes import scene_latent as sl
from srum_ray.shapes.render import render
from srum_ray.shapes.sampler import scene_for, wrong_scene_for
from srum_ray.shapes.splits import make_splits

SCENE_NET = ShapesNetConfig(width=32, depth=1, heads=2, judge_width=32, judge_depth=1, judge_heads=2, arch="dit", latent="scene", patch=1, prediction="v")


@pytest.fixture(scope="module")
def scenes():
    train = make_splits(0)["train"]
    out = []
    for i in range(400):
        rng = random.Random(f"scene-latent/{i}")
        spec = rng.choice(train).spec
        # right, with a distractor, and wrong in one thing: every kind of scene the world draws
        out.append([scene_for(spec, rng), scene_for(spec, rng, max_distractors=1), wrong_scene_for(spec, rng)[0]][i % 3])
    return out


def _key(scene):
    return sorted((o.shape, o.colour, o.size, o.texture, o.cx, o.cy) for o in scene.objects)


def test_scenes_of_the_world_round_trip_exactly(scenes):
    """No two objects of a world scene share a cell (boxes are 3 px apart, so centres are at
    least 17 px apart on some axis, more than a 16 px cell)."""
    for scene in scenes:
        z = sl.encode_scene(scene)
        assert z.shape == (sl.CHANNELS, 4, 4)
        assert _key(sl.decode_scene(z)) == _key(scene)
        assert int((z[0] > 0).sum()) == len(scene.objects)


def test_an_image_is_encoded_through_the_detector(scenes):
    """Attributes and cells are exact; a centre is the detector's centroid, so it may move by a
    pixel for shapes whose centroid is not their drawn centre (triangles, stars)."""
    for scene in scenes[:20]:
        z = sl.encode_image(render(scene))
        want = sl.encode_scene(scene)
        assert torch.equal(z[:-2], want[:-2])
        got = _key(sl.decode_scene(z))
        for a, b in zip(got, _key(scene)):
            assert a[:4] == b[:4] and abs(a[4] - b[4]) <= 1 and abs(a[5] - b[5]) <= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 4.0))
def test_any_latent_decodes_to_a_drawable_scene_and_canonical_is_idempotent(seed, scale):
    z = torch.randn((2, sl.CHANNELS, 4, 4), generator=torch.Generator().manual_seed(seed)) * scale
    for zi in z:
        scene = sl.decode_scene(zi)
        assert len(scene.objects) == int((zi[0] > 0).sum())
        assert all(0 <= o.cx < 64 and 0 <= o.cy < 64 for o in scene.objects)
        assert render(scene).size == (64, 64)
    c = sl.canonical(z)
    assert set(torch.unique(c[:, :-2]).tolist()) <= {-1.0, 1.0}
    assert torch.equal(sl.canonical(c), c)
    assert [_key(sl.decode_scene(a)) for a in c] == [_key(sl.decode_scene(a)) for a in z]


def test_bad_latents_and_configs_are_refused():
    with pytest.raises(ValueError, match="scene latent is"):
        sl.decode_scene(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="needs arch 'dit'"):
        ShapesNetConfig(latent="scene")
    with pytest.raises(ValueError, match="latent must be"):
        ShapesNetConfig(latent="vae")


def test_the_scene_generator_returns_the_latent_of_what_it_drew(tmp_path):
    gen = ShapesGenerator(SCENE_NET, GenerationConfig(num_inference_steps=3, guidance_scale=2.0, batch_size=4), seed=0)
    # make the untrained network draw something: a velocity that raises presence as t falls
    with torch.no_grad():
        gen.net.patch_out.bias[0] = -5.0
    out = gen.generate(["a red circle", "two blue stars", "a green square"], [1, 2, 3])
    assert all(len(sl.decode_scene(z).objects) > 0 for z in out.latents)
    assert out.latents.shape == (3, sl.CHANNELS, 4, 4)
    assert torch.equal(sl.canonical(out.latents), out.latents)
    for img, z in zip(out.images, out.latents):
        assert np.array_equal(np.asarray(img), np.asarray(render(sl.decode_scene(z))))
    # the same checkpoint path real weights use
    gen.save_pretrained(tmp_path)
    again = ShapesGenerator.from_pretrained(tmp_path, gen.gen_cfg)
    assert again.cfg.latent == "scene" and again.latent_shape == (sl.CHANNELS, 4, 4)
    assert torch.equal(again.generate(["a red circle"], [1]).latents, out.latents[:1])


def test_encode_scenes_is_the_training_latent_for_both_spaces(scenes):
    gen = ShapesGenerator(SCENE_NET, GenerationConfig(), seed=0)
    assert torch.equal(gen.encode_scenes(scenes[:3]), torch.stack([sl.encode_scene(s) for s in scenes[:3]]))
    pix = ShapesGenerator(ShapesNetConfig(width=32, depth=1, heads=2, conv_channels=(4, 8, 8)), GenerationConfig(), seed=0)
    assert torch.equal(pix.encode_scenes(scenes[:3]), pix.encode_images([render(s) for s in scenes[:3]]))


def test_train_umm_trains_and_saves_a_scene_generator(tmp_path):
    """The training CLI's scene path writes a checkpoint that loads back as a scene generator
    through the backend's own loader, and training on scene latents lowers the loss."""
    from srum_ray.shapes.train_umm import BASE_GENERATION, Corpus, main, train_generator

    out = tmp_path / "scene-umm"
    assert main(["--only", "generator", "--latent", "scene", "--gen-steps", "3", "--gen-batch", "4",
                 "--width", "32", "--depth", "1", "--heads", "2", "--threads", "1", "--out", str(out)]) == 0
    assert "generator step 3/3" in (out / "train.log").read_text().splitlines()[-1]
    gen = ShapesGenerator.from_pretrained(out, BASE_GENERATION)
    assert (gen.cfg.latent, gen.cfg.grid, gen.cfg.prediction, gen.cfg.width) == ("scene", 4, "v", 32)
    assert gen.generate(["a red circle"], [0]).latents.shape == (1, sl.CHANNELS, 4, 4)
    # training the understanding into the same directory keeps the generator's half of the config
    assert main(["--only", "understanding", "--judge-steps", "1", "--judge-batch", "4", "--threads", "1",
                 "--out", str(out)]) == 0
    again = ShapesGenerator.from_pretrained(out, BASE_GENERATION)
    assert again.cfg == gen.cfg
    assert torch.equal(again.generate(["a red circle"], [0]).latents, gen.generate(["a red circle"], [0]).latents)
    assert ShapesUnderstanding.from_pretrained(out).cfg.judge_width == ShapesNetConfig().judge_width

    corpus = Corpus(make_splits(0)["train"], 0.4)
    losses = []
    for steps in (1, 60):
        fresh = ShapesGenerator(SCENE_NET, BASE_GENERATION, seed=0)
        info = train_generator(fresh, corpus, steps=steps, batch=16, lr=3e-3, seed=0, warmup=1, ema_decay=0.0, log=lambda m: None)
        losses.append(info["final_loss"])
    assert losses[1] < 0.5 * losses[0], losses


def test_retrain_config_takes_each_half_from_where_its_weights_come_from():
    from srum_ray.shapes.train_umm import retrain_config

    scene = ShapesNetConfig(arch="dit", latent="scene", patch=1, prediction="v", width=32, depth=1, heads=2)
    pixels = ShapesNetConfig(judge_width=64, judge_heads=2)
    # a judge trained again next to a scene generator: the scene generator's fields stay
    both = retrain_config(pixels, scene, "understanding")
    assert (both.latent, both.width, both.judge_width, both.judge_heads) == ("scene", 32, 64, 2)
    # a generator trained again next to a judge: the judge's fields stay
    both = retrain_config(scene, pixels, "generator")
    assert (both.latent, both.width, both.judge_width, both.judge_heads) == ("scene", 32, 64, 2)
    with pytest.raises(ValueError, match="max_words is 16 here but 32"):
        retrain_config(ShapesNetConfig(max_words=16), pixels, "generator")
    with pytest.raises(ValueError, match="part must be"):
        retrain_config(scene, pixels, "both")
