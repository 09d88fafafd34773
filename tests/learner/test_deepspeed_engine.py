"""The DeepSpeed ZeRO engine in this process (world size 1, gloo on CPU)."""

import json
import os

import pytest
import torch

from srum_ray import distributed
from srum_ray.config.load import load_config
from srum_ray.learner import build_engine
from srum_ray.learner.deepspeed_engine import DeepSpeedEngine
from srum_ray.learner.engine import TorchEngine
from srum_ray.models.tiny import TinyGenerator
from srum_ray.types import RolloutBatch, SampleRecord

from ._shapes_gen import random_shapes_generator

pytest.importorskip("deepspeed")

DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "DS_ACCELERATOR")


@pytest.fixture(scope="module", autouse=True)
def own_process_group():
    """Engines here share one world-of-one group; leave none (and no env) behind."""
    saved = {k: os.environ.get(k) for k in DIST_VARS}
    yield
    distributed.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_cfg(stage, *extra):
    return load_config(
        "configs/tiny.yaml",
        ["train.engine=deepspeed", f"train.zero_stage={stage}", "train.lr=2e-3",
         "train.warmup_steps=2", "train.grad_clip=0.5", *extra],
    )


@pytest.fixture(scope="module")
def batch():
    cfg = make_cfg(1)
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    n = 4
    out = gen.generate([f"a red circle {i}" for i in range(n)], list(range(n)))
    recs = [SampleRecord(id=str(i), round=0, prompt="p", seed=i, weights_version=0) for i in range(n)]
    h, w = out.latents.shape[-2:]
    weights = torch.rand((n, 1, h, w), generator=torch.Generator().manual_seed(0)) * 2 - 0.5
    return RolloutBatch(recs, latents=out.latents, cond=out.cond, weights=weights)


def fresh(cfg, engine_cls, seed=3):
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    return gen, engine_cls(gen, cfg.train, seed)


def repeat_steps(engine, batch, n):
    """``n`` steps with the same noise (global step reset) on one batch; their metrics."""
    out = []
    for _ in range(n):
        engine.global_step = 0
        out.append(engine.train_batch(batch, 0.5))
    return out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_matches_torch_engine_and_loss_falls(stage, batch):
    cfg = make_cfg(stage)
    steps = 6 if stage == 3 else 10
    gen_t, torch_eng = fresh(cfg, TorchEngine)
    gen_d, ds_eng = fresh(cfg, DeepSpeedEngine)
    assert (ds_eng.rank, ds_eng.world_size) == (0, 1)
    ref, got = repeat_steps(torch_eng, batch, steps), repeat_steps(ds_eng, batch, steps)
    assert got[-1]["loss"] < 0.9 * got[0]["loss"]
    # the warm-up (lr 1e-3 then 2e-3) and the clipping (grad norm above 0.5) both act
    assert [m["lr"] for m in got[:3]] == pytest.approx([1e-3, 2e-3, 2e-3])
    assert got[0]["grad_norm"] > 0.5
    for a, b in zip(ref, got):
        assert b.keys() == a.keys()
        for key in ("loss", "reward_term", "ref_term", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    synced = ds_eng.state_dict_for_sync()
    expected = gen_t.trainable_module().state_dict()
    assert synced.keys() == expected.keys()
    for k, v in expected.items():
        assert synced[k].device.type == "cpu"
        torch.testing.assert_close(synced[k], v, rtol=1e-5, atol=1e-6)
    if stage < 3:  # ZeRO-1/2 keep full weights in the module itself
        for k, v in gen_d.trainable_module().state_dict().items():
            assert torch.equal(synced[k], v)


def test_gradient_accumulation_is_the_same_step(batch):
    _, one = fresh(make_cfg(2), DeepSpeedEngine)
    _, two = fresh(make_cfg(2, "train.grad_accum_steps=2"), DeepSpeedEngine)
    assert two.ds_config["train_micro_batch_size_per_gpu"] == 2
    a, b = repeat_steps(one, batch, 3), repeat_steps(two, batch, 3)
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    for k, v in one.state_dict_for_sync().items():
        torch.testing.assert_close(two.state_dict_for_sync()[k], v, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of train.grad_accum_steps"):
        two.train_batch(batch.select([0, 1, 2]), 0.5)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_save_load_resumes_exactly(stage, batch, tmp_path):
    cfg = make_cfg(stage)
    _, eng_a = fresh(cfg, DeepSpeedEngine)
    for _ in range(2):
        eng_a.train_batch(batch, 0.5)
    eng_a.save(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "engine.json").read_text())
    assert meta == {"engine": "deepspeed", "step": 2, "zero_stage": stage, "world_size": 1,
                    "dtype": "float32"}
    saved = eng_a.state_dict_for_sync()
    after_a = [eng_a.train_batch(batch, 0.5) for _ in range(2)]

    _, eng_b = fresh(cfg, DeepSpeedEngine)
    eng_b.load(tmp_path / "ck")
    assert eng_b.global_step == 2
    from safetensors.torch import load_file

    on_disk = load_file(str(tmp_path / "ck" / "trainable.safetensors"))
    assert all(torch.equal(on_disk[k], v) for k, v in saved.items())
    after_b = [eng_b.train_batch(batch, 0.5) for _ in range(2)]
    assert [m["loss"] for m in after_b] == [m["loss"] for m in after_a]
    assert [m["lr"] for m in after_b] == [m["lr"] for m in after_a]
    final_a, final_b = eng_a.state_dict_for_sync(), eng_b.state_dict_for_sync()
    for k, v in final_a.items():
        assert torch.equal(final_b[k], v), k


def test_load_rejects_other_checkpoints(batch, tmp_path):
    cfg = make_cfg(1)
    _, eng = fresh(cfg, DeepSpeedEngine)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        eng.load(tmp_path / "nothing")
    eng.save(tmp_path / "z1")
    _, other = fresh(make_cfg(2), DeepSpeedEngine)
    with pytest.raises(ValueError, match="zero_stage 1 .this run: 2."):
        other.load(tmp_path / "z1")
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    TorchEngine(gen, cfg.train).save(tmp_path / "torch")
    (tmp_path / "torch" / "ds").mkdir()
    with pytest.raises(ValueError, match="engine 'torch'"):
        eng.load(tmp_path / "torch")


def test_cpu_shm_comm_op_is_not_built(batch):
    import deepspeed.ops
    from deepspeed.ops.op_builder.builder import OpBuilder

    fresh(make_cfg(1), DeepSpeedEngine)
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert deepspeed.ops.__compatible_ops__[distributed.SHM_COMM_OP] is False
    assert distributed.SHM_COMM_OP not in OpBuilder._loaded_ops


def test_build_engine_picks_by_name():
    cfg = make_cfg(1)
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    assert isinstance(build_engine(gen, cfg.train, 0), DeepSpeedEngine)
    cfg.train.engine = "torch"
    assert isinstance(build_engine(gen, cfg.train, 0), TorchEngine)
    with pytest.raises(ValueError, match="train.engine=deepspeed"):
        build_engine(gen, cfg.train, 0, world_size=2)


def test_bfloat16_mixed_precision_trains(batch):
    cfg = make_cfg(1, "run.dtype=bfloat16")
    gen = TinyGenerator(cfg.model.tiny, cfg.generation, dtype="bfloat16")
    eng = DeepSpeedEngine(gen, cfg.train, 0, dtype="bfloat16")
    assert eng.ds_config["bf16"] == {"enabled": True, "check_grad_overflow": False}
    metrics = repeat_steps(eng, batch, 6)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert metrics[-1]["loss"] < 0.95 * metrics[0]["loss"]
    state = eng.state_dict_for_sync()
    assert {v.dtype for v in state.values()} == {torch.bfloat16}


def test_distributed_helpers():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for("cuda:0") == "nccl"
    assert distributed.learner_device("cpu", remote=True, num_gpus=1) == "cpu"
    # a remote rank without a GPU share trains on CPU even if the node has GPUs
    assert distributed.learner_device("auto", remote=True, num_gpus=0) == "cpu"
    with pytest.raises(RuntimeError, match="num_gpus is 0"):
        distributed.learner_device("cuda", remote=True, num_gpus=0)
    with pytest.raises(ValueError, match="rank 2 is outside a world of size 2"):
        distributed.set_dist_env("127.0.0.1", 1234, 2, 2)
    port = distributed.free_port()
    assert 0 < port < 65536


def test_base_anchor_is_refused_before_deepspeed_starts():
    import dataclasses

    cfg = load_config("configs/tiny.yaml", ["train.engine=deepspeed"])
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    with pytest.raises(ValueError, match="train.ref_anchor: base is supported by train.engine: torch only"):
        DeepSpeedEngine(gen, dataclasses.replace(cfg.train, ref_anchor="base"))


@pytest.mark.parametrize("stage", [1, 3])
def test_guided_training_matches_torch_engine(stage):
    import copy
    import dataclasses

    cfg = make_cfg(stage, "train.guidance_scale=2.5")
    base = random_shapes_generator(cfg.generation)
    n = 4
    out = base.generate([f"a red circle {i}" for i in range(n)], list(range(n)))
    recs = [SampleRecord(id=str(i), round=0, prompt="p", seed=i, weights_version=0) for i in range(n)]
    rows = RolloutBatch(recs, latents=out.latents, cond=out.cond, weights=torch.ones((n, 1, 16, 16)))
    gen_t, gen_d = copy.deepcopy(base), copy.deepcopy(base)
    ref = repeat_steps(TorchEngine(gen_t, cfg.train, 3), rows, 3)
    got = repeat_steps(DeepSpeedEngine(gen_d, cfg.train, 3), rows, 3)
    unguided = repeat_steps(TorchEngine(copy.deepcopy(base), dataclasses.replace(cfg.train, guidance_scale=1.0), 3), rows, 1)
    # the scale reaches the loss: the gradient flows through w * v_cond (w = 2.5)
    assert ref[0]["grad_norm"] > 2.0 * unguided[0]["grad_norm"]
    for a, b in zip(ref, got):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
