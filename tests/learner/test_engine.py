"""The plain-PyTorch learner engine on the tiny generator."""

import pytest
import torch

from srum_ray.config.load import load_config
from srum_ray.learner.engine import TorchEngine, warmup_factor
from srum_ray.models.tiny import TinyGenerator
from srum_ray.types import RolloutBatch, SampleRecord

from ._shapes_gen import random_shapes_generator


@pytest.fixture
def cfg():
    return load_config("configs/tiny.yaml", ["train.lr=1e-3", "train.warmup_steps=0"])


def make_batch(gen, n=4, weight=1.0):
    prompts = [f"a red circle {i}" for i in range(n)]
    out = gen.generate(prompts, list(range(n)))
    recs = [SampleRecord(id=str(i), round=0, prompt=p, seed=i, weights_version=0) for i, p in enumerate(prompts)]
    h, w = out.latents.shape[-2:]
    return RolloutBatch(recs, latents=out.latents, cond=out.cond, weights=torch.full((n, 1, h, w), weight))


def test_warmup_factor():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_optimizer_follows_config(cfg):
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    eng = TorchEngine(gen, cfg.train)
    group = eng.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-15 and group["weight_decay"] == 0.0
    trainable = {id(p) for p in gen.trainable_module().parameters()}
    assert {id(p) for p in group["params"]} == trainable


def test_training_reduces_loss_and_updates_only_the_transformer(cfg):
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    batch = make_batch(gen)
    eng = TorchEngine(gen, cfg.train)
    frozen = {k: v.clone() for k, v in gen.vae.state_dict().items()}
    before = {k: v.clone() for k, v in gen.trainable_module().state_dict().items()}
    # the same noise every step isolates the optimization from the sampling noise
    losses = []
    for _ in range(30):
        eng.global_step = 0
        losses.append(eng.train_batch(batch, lambda_c=0.5)["loss"])
    assert losses[-1] < 0.8 * losses[0]
    after = gen.trainable_module().state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(frozen[k], v) for k, v in gen.vae.state_dict().items())


def test_a_non_finite_loss_stops_before_the_weights_change(cfg):
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    batch = make_batch(gen)
    batch.weights[0, 0, 0, 0] = float("nan")
    eng = TorchEngine(gen, cfg.train)
    before = {k: v.clone() for k, v in gen.trainable_module().state_dict().items()}
    with pytest.raises(FloatingPointError, match="non-finite loss \\(nan\\) at learner step 0"):
        eng.train_batch(batch, lambda_c=0.5)
    after = gen.trainable_module().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and eng.global_step == 0


def test_lambda_and_weights_reach_the_loss(cfg):
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    eng = TorchEngine(gen, cfg.train)
    zero = make_batch(gen, weight=0.0)
    m = eng.train_batch(zero, lambda_c=0.0)
    assert m["reward_term"] == 0.0 and m["loss"] == 0.0
    eng.global_step = 0
    m = eng.train_batch(make_batch(gen, weight=0.0), lambda_c=0.5)
    assert m["loss"] == pytest.approx(0.5 * m["ref_term"], rel=1e-6)
    with pytest.raises(ValueError, match="rewarded batch"):
        b = make_batch(gen)
        b.weights = None
        eng.train_batch(b, 0.5)


def test_save_load_resumes_exactly(cfg, tmp_path):
    def fresh():
        g = TinyGenerator(cfg.model.tiny, cfg.generation)
        return g, TorchEngine(g, cfg.train, seed=3)

    gen_a, eng_a = fresh()
    batch = make_batch(gen_a)
    for _ in range(2):
        eng_a.train_batch(batch, 0.5)
    eng_a.save(tmp_path / "ck")
    for _ in range(2):
        eng_a.train_batch(batch, 0.5)
    gen_b, eng_b = fresh()
    eng_b.load(tmp_path / "ck")
    assert eng_b.global_step == 2
    for _ in range(2):
        eng_b.train_batch(batch, 0.5)
    for k, v in gen_a.trainable_module().state_dict().items():
        torch.testing.assert_close(gen_b.trainable_module().state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        eng_b.load(tmp_path / "nothing")


def test_cond_dropout_trains_the_unconditional_prompt(cfg):
    import copy
    import dataclasses

    base = random_shapes_generator(cfg.generation)
    batch = make_batch(base, n=6)
    null = RolloutBatch(batch.records, latents=batch.latents, cond=base.null_condition(batch.cond, torch.ones(6, dtype=torch.bool)), weights=batch.weights)
    assert (null.cond["words"] == base.tokenizer([""])).all()

    def step(gen_cfg_train, b):
        g = copy.deepcopy(base)
        eng = TorchEngine(g, gen_cfg_train)
        m = eng.train_batch(b, lambda_c=0.5)
        return m["loss"], g.trainable_module().state_dict()

    all_dropped = dataclasses.replace(cfg.train, cond_dropout=1.0)
    loss_drop, w_drop = step(all_dropped, batch)
    loss_null, w_null = step(cfg.train, null)   # the same noise: the draw for drops comes after it
    loss_keep, _ = step(cfg.train, batch)
    assert loss_drop == pytest.approx(loss_null, rel=1e-6)
    assert all(torch.allclose(w_drop[k], w_null[k]) for k in w_drop)
    assert loss_keep != pytest.approx(loss_drop, rel=1e-6)


def test_cond_dropout_needs_an_unconditional_prompt(cfg):
    import dataclasses

    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    with pytest.raises(ValueError, match="train.cond_dropout is 0.1, but TinyGenerator has no unconditional prompt"):
        TorchEngine(gen, dataclasses.replace(cfg.train, cond_dropout=0.1))


def test_base_anchor_pulls_towards_the_starting_weights(cfg):
    import dataclasses

    zero_reward = dict(weight=0.0)
    # at the starting weights the base anchor's term is exactly zero, so is its gradient
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    eng = TorchEngine(gen, dataclasses.replace(cfg.train, ref_anchor="base"))
    before = {k: v.clone() for k, v in gen.trainable_module().state_dict().items()}
    m = eng.train_batch(make_batch(gen, **zero_reward), lambda_c=0.5)
    assert m["ref_term"] == 0.0 and m["loss"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in gen.trainable_module().state_dict().items())
    # once the weights moved (a rewarded step), the anchor term measures the distance back
    eng.train_batch(make_batch(gen, weight=1.0), lambda_c=0.0)
    assert eng.train_batch(make_batch(gen, **zero_reward), lambda_c=0.5)["ref_term"] > 0.0
    # SPEC's sample anchor is plain flow matching on the rollout: never zero on noise draws
    gen2 = TinyGenerator(cfg.model.tiny, cfg.generation)
    m2 = TorchEngine(gen2, cfg.train).train_batch(make_batch(gen2, **zero_reward), lambda_c=0.5)
    assert m2["ref_term"] > 0.0


def test_guided_training_velocity_holds_the_unconditional_branch(cfg):
    from srum_ray.learner.engine import trained_velocity

    gen = random_shapes_generator(cfg.generation)
    batch = make_batch(gen, n=3)
    x_t, t = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0.2, 0.5, 0.9])
    null = gen.null_condition(batch.cond, torch.ones(3, dtype=torch.bool))
    params = list(gen.trainable_module().parameters())

    def value_and_grads(fn):
        out = fn()
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
        return out.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    v_cond, g_cond = value_and_grads(lambda: gen.predict_velocity(x_t, t, batch.cond))
    v_null = gen.predict_velocity(x_t, t, null).detach()
    assert not torch.allclose(v_cond, v_null)  # the prompt matters, so the test can fail
    v_1, g_1 = value_and_grads(lambda: trained_velocity(gen, x_t, t, batch.cond, 1.0))
    torch.testing.assert_close(v_1, v_cond)
    v_3, g_3 = value_and_grads(lambda: trained_velocity(gen, x_t, t, batch.cond, 3.0))
    torch.testing.assert_close(v_3, v_null + 3.0 * (v_cond - v_null))
    # the gradient reaches the weights through the conditional prediction only, scaled by w
    # (float32 sums in another order: compared as whole vectors)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert float((flat(g_3) - 3.0 * flat(g_cond)).norm() / (3.0 * flat(g_cond)).norm()) < 1e-5
    assert float((flat(g_1) - flat(g_cond)).norm() / flat(g_cond).norm()) < 1e-5


def test_guided_training_needs_an_unconditional_prompt(cfg):
    import dataclasses

    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    with pytest.raises(ValueError, match="train.guidance_scale is 2.0, but TinyGenerator has no unconditional prompt"):
        TorchEngine(gen, dataclasses.replace(cfg.train, guidance_scale=2.0))
