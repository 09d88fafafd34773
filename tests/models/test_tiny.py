"""TinyGenerator: shapes, sampling maths, batch independence, frozen parts, save/load."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from srum_ray.config.schema import GenerationConfig, TinyModelConfig
from srum_ray.models.tiny import (
    VAE_SCALING,
    VAE_SHIFT,
    TinyGenerator,
    images_to_tensor,
    tensor_to_images,
)

CFG = TinyModelConfig()  # 64 px, 4 latent channels, 8x8 latents
GEN = GenerationConfig(num_inference_steps=3, guidance_scale=1.0, shift=3.0, batch_size=2)
PROMPTS = ["a red cube left of a blue ball", "two yellow stars", "a cat under a table"]


@pytest.fixture(scope="module")
def gen():
    return TinyGenerator(CFG, GEN)


def with_gen_cfg(gen, **changes):
    """The same weights under other sampling settings (shares the modules)."""
    gen_cfg = dataclasses.replace(gen.gen_cfg, **changes)
    parts = {k: getattr(gen, k) for k in ("transformer", "vae", "text_encoder", "tokenizer")}
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=gen_cfg.shift)
    return TinyGenerator(gen.cfg, gen_cfg, _parts=parts)


def noise_for(seed):
    return torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_shapes(gen):
    assert gen.image_size == 64 and gen.latent_shape == (4, 8, 8)
    out = gen.generate(PROMPTS, [1, 2, 3])  # chunks of 2 and 1
    assert [im.size for im in out.images] == [(64, 64)] * 3
    assert all(im.mode == "RGB" for im in out.images)
    assert out.latents.shape == (3, 4, 8, 8)
    assert out.latents.dtype == torch.float32 and out.latents.device.type == "cpu"
    assert out.cond["prompt_embeds"].shape == (3, CFG.text_max_length, CFG.text_hidden)
    assert out.cond["pooled_prompt_embeds"].shape == (3, CFG.text_hidden)
    enc = gen.encode_prompts(PROMPTS)
    torch.testing.assert_close(enc["prompt_embeds"], out.cond["prompt_embeds"])
    empty = gen.generate([], [])
    assert empty.images == [] and empty.latents.shape == (0, 4, 8, 8)
    assert empty.cond["pooled_prompt_embeds"].shape == (0, CFG.text_hidden)
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        gen.generate(PROMPTS[:2], [1])


def test_weights_are_seeded():
    a, b = TinyGenerator(CFG, GEN), TinyGenerator(dataclasses.replace(CFG, seed=1), GEN)
    pa, pb = a.transformer.state_dict(), TinyGenerator(CFG, GEN).transformer.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    w = "proj_out.weight"
    assert not torch.equal(pa[w], b.transformer.state_dict()[w])


def test_deterministic_and_seed_and_prompt_matter(gen):
    first, again = gen.generate(PROMPTS[:2], [5, 6]), gen.generate(PROMPTS[:2], [5, 6])
    assert torch.equal(first.latents, again.latents)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    other_seed = gen.generate(PROMPTS[:1], [7]).latents[0]
    other_prompt = gen.generate(PROMPTS[2:3], [5]).latents[0]
    assert (other_seed - first.latents[0]).abs().max() > 1e-2
    assert (other_prompt - first.latents[0]).abs().max() > 1e-4


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_batch_independence(gen, guidance):
    g = with_gen_cfg(gen, guidance_scale=guidance)
    both = g.generate(PROMPTS[:2], [11, 12]).latents
    alone = torch.cat([g.generate([p], [s]).latents for p, s in zip(PROMPTS[:2], [11, 12])])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)
    single_chunks = with_gen_cfg(gen, guidance_scale=guidance, batch_size=1)
    chunked = single_chunks.generate(PROMPTS[:2], [11, 12]).latents
    torch.testing.assert_close(chunked, both, atol=1e-5, rtol=1e-5)


def test_sigmas_follow_the_shift(gen):
    # unshifted [1, 2/3, 1/3] -> 3t / (1 + 2t) = [1, 6/7, 3/5], then the terminal 0
    torch.testing.assert_close(gen.sampling_sigmas(), torch.tensor([1.0, 6 / 7, 3 / 5, 0.0]))
    s1 = with_gen_cfg(gen, shift=1.0, num_inference_steps=2)
    torch.testing.assert_close(s1.sampling_sigmas(), torch.tensor([1.0, 0.5, 0.0]))


def test_scheduler_step_moves_toward_x0_with_eps_minus_x0():
    x0, eps = torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), -1.0)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=[1.0, 0.5])  # shifted: [1, 0.75], then 0
    s, s_next = float(sched.sigmas[1]), float(sched.sigmas[2])
    assert (s, s_next) == (0.75, 0.0)
    sched.step(eps - x0, sched.timesteps[0], (1 - 1.0) * x0 + 1.0 * eps)  # advance to sigma 0.75
    x_t = (1 - s) * x0 + s * eps  # = 2 * 0.25 - 0.75 = -0.25
    stepped = sched.step(eps - x0, sched.timesteps[1], x_t).prev_sample
    torch.testing.assert_close(stepped, x0)  # exact velocity lands on x0 at sigma 0
    assert (stepped - x0).abs().max() < (x_t - x0).abs().max()


def test_one_step_sample_is_noise_minus_velocity(gen):
    # with sigmas [1, 0]: x0 = eps + (0 - 1) * v(eps, t=1)
    g = with_gen_cfg(gen, num_inference_steps=1)
    out = g.generate(PROMPTS[:2], [3, 4])
    eps = torch.stack([noise_for(3), noise_for(4)])
    with torch.no_grad():
        v = g.predict_velocity(eps, torch.ones(2), out.cond)
    torch.testing.assert_close(out.latents, eps - v, atol=1e-5, rtol=1e-5)


def test_two_step_guided_sample_by_hand(gen):
    g = with_gen_cfg(gen, num_inference_steps=2, guidance_scale=4.0)  # sigmas [1, 0.75, 0]
    out = g.generate(PROMPTS[:1], [9])
    neg = g.encode_prompts([""])
    x = noise_for(9)[None]

    def guided(x, t):
        v_neg = g.predict_velocity(x, torch.tensor([t]), neg)
        v_pos = g.predict_velocity(x, torch.tensor([t]), out.cond)
        return v_neg + 4.0 * (v_pos - v_neg)

    with torch.no_grad():
        x = x + (0.75 - 1.0) * guided(x, 1.0)
        x = x + (0.0 - 0.75) * guided(x, 0.75)
    torch.testing.assert_close(out.latents, x, atol=1e-5, rtol=1e-5)


def test_predict_velocity_uses_sd3_timesteps(gen):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.9])
    cond = gen.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        direct = gen.transformer(
            hidden_states=x,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            timestep=torch.tensor([250.0, 900.0]),
        ).sample
        torch.testing.assert_close(gen.predict_velocity(x, t, cond), direct)
        same_t = gen.predict_velocity(x, torch.tensor(0.25), cond)
        torch.testing.assert_close(same_t[0], direct[0])
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        gen.predict_velocity(x, torch.rand(3), cond)


def test_only_the_transformer_gets_gradients():
    g = TinyGenerator(CFG, GEN)
    assert g.trainable_module() is g.transformer
    cond = g.encode_prompts(PROMPTS[:2])
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.rand(2)
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
    loss = ((g.predict_velocity(x_t, t, cond) - (eps - x0)) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None for p in g.transformer.parameters())
    for frozen in (g.vae, g.text_encoder):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


def test_vae_scaling_is_consistent(gen):
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = images_to_tensor(imgs, 64)
    assert pixels.shape == (2, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_images(pixels)[1]), np.asarray(imgs[1]))
    with torch.no_grad():
        mean = gen.vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(gen.encode_images(imgs), (mean - VAE_SHIFT) * VAE_SCALING)
    # generate decodes its latents with the inverse map
    out = gen.generate(PROMPTS[:1], [2])
    with torch.no_grad():
        decoded = gen.vae.decode(out.latents / VAE_SCALING + VAE_SHIFT).sample
    assert np.array_equal(np.asarray(tensor_to_images(decoded)[0]), np.asarray(out.images[0]))


def test_load_trainable_state_changes_outputs(gen):
    g = TinyGenerator(CFG, GEN)
    other = TinyGenerator(dataclasses.replace(CFG, seed=3), GEN).transformer.state_dict()
    before = g.generate(PROMPTS[:1], [1]).latents
    g.load_trainable_state(other, version=4)
    assert g.weights_version == 4
    assert not torch.allclose(g.generate(PROMPTS[:1], [1]).latents, before)


def test_save_and_load_round_trip(gen, tmp_path):
    gen.weights_version = 2
    gen.save_pretrained(tmp_path / "g")
    gen.weights_version = 0
    loaded = TinyGenerator.from_pretrained(tmp_path / "g")
    assert loaded.weights_version == 2 and loaded.gen_cfg == GEN and loaded.cfg == CFG
    a, b = gen.generate(PROMPTS, [1, 2, 3]), loaded.generate(PROMPTS, [1, 2, 3])
    assert torch.equal(a.latents, b.latents)
    assert np.array_equal(np.asarray(a.images[2]), np.asarray(b.images[2]))
    # a sampling config passed at load time wins, including the scheduler shift
    other_cfg = GenerationConfig(num_inference_steps=1, shift=1.0)
    other = TinyGenerator.from_pretrained(tmp_path / "g", other_cfg)
    torch.testing.assert_close(other.sampling_sigmas(), torch.tensor([1.0, 0.0]))
    (tmp_path / "g" / "vae" / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        TinyGenerator.from_pretrained(tmp_path / "g")
    msg = str(err.value)
    assert str(tmp_path / "g") in msg and "vae/config.json" in msg and "\n" not in msg


def test_bfloat16_modules(gen):
    g = TinyGenerator(CFG, dataclasses.replace(GEN, num_inference_steps=1), dtype="bfloat16")
    assert next(g.transformer.parameters()).dtype == torch.bfloat16
    out = g.generate(PROMPTS[:1], [0])
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.latents).all()
    v = g.predict_velocity(torch.randn(1, 4, 8, 8), torch.rand(1), out.cond)
    assert v.dtype == torch.float32
