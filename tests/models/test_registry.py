"""Backend registry and build_model (tiny backend, with and without a checkpoint)."""

import pytest
import torch

from srum_ray.config.schema import GenerationConfig, ModelConfig, TinyModelConfig
from srum_ray.models.base import UnifiedModel
from srum_ray.models.registry import (
    BACKENDS,
    BackendRegistry,
    build_model,
    register_backend,
    resolve_device,
    save_tiny_checkpoint,
)
from srum_ray.models.tiny import TinyGenerator
from srum_ray.models.tiny_vlm import TinyUnderstanding

GEN = GenerationConfig(num_inference_steps=2, batch_size=4)


def test_tiny_is_registered_and_builds():
    assert "tiny" in BACKENDS.names()
    model = build_model(ModelConfig(), GEN, device="cpu", dtype="float32")
    assert isinstance(model, UnifiedModel)
    assert isinstance(model.generator, TinyGenerator)
    assert isinstance(model.understanding, TinyUnderstanding)
    assert model.generator.image_size == 64 and model.generator.gen_cfg is GEN


def test_unknown_backend_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown model backend 'bagel'; allowed: .*tiny"):
        build_model(ModelConfig(backend="bagel"), GEN)
    with pytest.raises(ValueError, match="unknown dtype"):
        build_model(ModelConfig(), GEN, dtype="float8")


def test_local_registry_does_not_touch_the_global_one():
    reg = BackendRegistry()
    calls = []

    @register_backend("fake", registry=reg)
    def fake(model_cfg, gen_cfg, device, dtype, parts=()):
        calls.append((model_cfg.backend, device, dtype))
        return "built"

    built = build_model(ModelConfig(backend="fake"), GEN, "auto", "bfloat16", registry=reg)
    assert built == "built"
    assert calls == [("fake", resolve_device("auto"), torch.bfloat16)]
    assert "fake" not in BACKENDS.names() and reg.names() == ("fake",)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("fake")(fake)
    with pytest.raises(ValueError, match="allowed: fake"):
        reg.get("tiny")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_a_cuda_device_without_cuda_is_refused_before_building():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for name in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with pytest.raises(RuntimeError, match="but torch sees no CUDA device"):
            resolve_device(name)
    reg, calls = BackendRegistry(), []
    reg.register("fake")(lambda *a, **k: calls.append(a))
    with pytest.raises(RuntimeError, match="run.device is cuda but"):
        build_model(ModelConfig(backend="fake"), GEN, "cuda", registry=reg)
    assert calls == []


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = ModelConfig(tiny=TinyModelConfig(image_size=32, seed=4))
    model = build_model(cfg, GEN)
    save_tiny_checkpoint(model, tmp_path / "ckpt")
    loaded = build_model(ModelConfig(checkpoint=str(tmp_path / "ckpt")), GEN)
    assert loaded.generator.image_size == 32
    a = model.generator.generate(["two red cubes"], [1]).latents
    assert torch.equal(loaded.generator.generate(["two red cubes"], [1]).latents, a)
    imgs = model.generator.generate(["x", "y"], [1, 2]).images
    kw = {"max_new_tokens": 6}
    want = model.understanding.answer(imgs, ["a", "b"], **kw)
    assert loaded.understanding.answer(imgs, ["a", "b"], **kw) == want

    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"not found: {missing}"):
        build_model(ModelConfig(checkpoint=str(missing)), GEN)
    (tmp_path / "ckpt" / "understanding" / "processor" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing processor/tokenizer.json") as err:
        build_model(ModelConfig(checkpoint=str(tmp_path / "ckpt")), GEN)
    assert str(tmp_path / "ckpt" / "understanding") in str(err.value)
