"""DiffusersGenerator on tiny random pipelines of every family, saved and loaded from disk.

Each family's pipeline is built with the libraries' own classes (tests/models/_tiny_pipelines),
written with ``save_pretrained`` and loaded back through ``DiffusersGenerator.from_pretrained``,
the path real checkpoints take.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from srum_ray.config.load import load_config
from srum_ray.config.schema import GenerationConfig, GeneratorModelConfig, ModelConfig, TinyModelConfig
from srum_ray.grounding import build_grounder
from srum_ray.judging.filter import BoxFilter
from srum_ray.judging.judge import Judge
from srum_ray.learner import build_engine
from srum_ray.loop import RoundLoop
from srum_ray.models._families import FAMILIES as HOOKS
from srum_ray.models._families import pack, unpack
from srum_ray.models.diffusers_gen import DiffusersGenerator, build_diffusers_generator, detect_family
from srum_ray.models.tiny_vlm import TinyUnderstanding
from srum_ray.rundir import RunDir
from srum_ray.runtime.local import Roles

from ._tiny_pipelines import FAMILIES, LATENT_CHANNELS, LATENT_SIDE, RESOLUTION, save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
GEN = GenerationConfig(num_inference_steps=2, guidance_scale=1.0, shift=3.0, batch_size=2)
PROMPTS = ["a red cube left of a blue ball", "two yellow stars", "a cat under a table"]
SEEDS = [11, 12, 13]
LATENT = (LATENT_CHANNELS, LATENT_SIDE, LATENT_SIDE)


def model_cfg(path, **kw) -> GeneratorModelConfig:
    return GeneratorModelConfig(path=str(path), resolution=RESOLUTION, max_sequence_length=16, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> directory of its saved tiny pipeline."""
    root = tmp_path_factory.mktemp("pipelines")
    return {f: save_tiny_pipeline(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def gens(saved):
    """family -> generator (full training) loaded from the saved directory."""
    return {f: DiffusersGenerator.from_pretrained(p, GEN, model_cfg(p)) for f, p in saved.items()}


def with_gen_cfg(g: DiffusersGenerator, **changes) -> DiffusersGenerator:
    """The same pipeline (shared modules) under other sampling settings."""
    return DiffusersGenerator(g.pipe, g.family.name, dataclasses.replace(g.gen_cfg, **changes), g.model_cfg)


def noise(seed):
    return torch.randn(LATENT, generator=torch.Generator().manual_seed(seed))


def test_pack_unpack_round_trip():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    packed = pack(x)
    assert packed.shape == (2, 2 * 3, 12)
    # token 0 holds the top-left 2x2 patch of every channel, channel-major
    assert packed[0, 0].tolist() == [x[0, c, i, j].item() for c in range(3) for i in (0, 1) for j in (0, 1)]
    assert torch.equal(unpack(packed, 4, 6), x)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_family_and_shapes(family, saved, gens):
    assert detect_family(saved[family]) == family
    g = gens[family]
    assert g.family.name == family and g.image_size == RESOLUTION and g.latent_shape == LATENT
    out = g.generate(PROMPTS, SEEDS)  # chunks of 2 and 1
    assert [im.size for im in out.images] == [(RESOLUTION, RESOLUTION)] * 3
    assert out.latents.shape == (3, *LATENT) and out.latents.dtype == torch.float32
    assert all(v.shape[0] == 3 and v.device.type == "cpu" for v in out.cond.values())
    enc = g.encode_prompts(PROMPTS)
    assert enc.keys() == out.cond.keys()
    for k in enc:
        torch.testing.assert_close(enc[k], out.cond[k], atol=1e-5, rtol=1e-5)
    assert g.encode_images(out.images).shape == (3, *LATENT)
    empty = g.generate([], [])
    assert empty.images == [] and empty.latents.shape == (0, *LATENT)
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        g.generate(PROMPTS[:2], [1])


def test_family_conditioning_keys(gens):
    keys = {f: set(g.encode_prompts(PROMPTS[:1])) for f, g in gens.items()}
    assert keys == {
        "sd3": {"prompt_embeds", "pooled_prompt_embeds"},
        "flux": {"prompt_embeds", "pooled_prompt_embeds", "guidance"},  # dev style
        "sana": {"prompt_embeds", "prompt_attention_mask"},
        "qwen_image": {"prompt_embeds", "prompt_embeds_mask"},
    }
    # every prompt padded to max_sequence_length (SD3: 16 CLIP + 16 T5 tokens)
    assert gens["qwen_image"].encode_prompts(PROMPTS)["prompt_embeds"].shape[1] == 16
    assert gens["sd3"].encode_prompts(PROMPTS)["prompt_embeds"].shape[1] == 32
    flux = with_gen_cfg(gens["flux"], guidance_scale=3.5)
    assert flux.encode_prompts(PROMPTS[:2])["guidance"].tolist() == [3.5, 3.5]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_deterministic_and_batch_independent(family, guidance, gens):
    g = with_gen_cfg(gens[family], guidance_scale=guidance)
    both = g.generate(PROMPTS[:2], SEEDS[:2])
    assert torch.equal(both.latents, g.generate(PROMPTS[:2], SEEDS[:2]).latents)
    alone = torch.cat([g.generate([p], [s]).latents for p, s in zip(PROMPTS[:2], SEEDS[:2])])
    torch.testing.assert_close(both.latents, alone, atol=1e-4, rtol=1e-4)
    other_seed = g.generate(PROMPTS[:1], [99]).latents[0]
    assert (other_seed - both.latents[0]).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_sample_is_noise_minus_velocity(family, gens):
    """One step from the first noise level s0 (1 for the Euler schedulers; 0.9997 for
    Sana's DPM-Solver, whose timesteps are integers) lands on eps - s0 v(eps, t0): generate
    and predict_velocity share the timestep, packing and sign conventions."""
    g = with_gen_cfg(gens[family], num_inference_steps=1)
    sched = g.new_scheduler()
    s0, t0 = float(sched.sigmas[0]), float(sched.timesteps[0]) / 1000
    assert s0 == (1.0 if family != "sana" else pytest.approx(0.9997, abs=1e-4))
    out = g.generate(PROMPTS[:2], SEEDS[:2])
    eps = torch.stack([noise(s) for s in SEEDS[:2]])
    with torch.no_grad():
        v = g.predict_velocity(eps, torch.full((2,), t0), out.cond)
    torch.testing.assert_close(out.latents, eps - s0 * v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_scheduler_with_true_velocity_lands_on_x0(family, gens):
    """Every step with v = eps - x0 keeps x on the line (1 - s) x0 + s eps and ends at x0."""
    g = with_gen_cfg(gens[family], num_inference_steps=4)
    x0, eps = noise(1)[None], noise(2)[None]
    sched = g.new_scheduler()
    s0 = float(sched.sigmas[0])
    assert s0 == pytest.approx(1.0, abs=1e-3) and float(sched.sigmas[-1]) == 0.0
    x = (1 - s0) * x0 + s0 * eps
    for timestep in sched.timesteps:
        x = sched.step(eps - x0, timestep, x, return_dict=False)[0]
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)


def test_shift_replaces_dynamic_shifting(gens):
    shift = lambda t: 3 * t / (1 + 2 * t)  # noqa: E731
    # FLUX (dynamic shifting in its config, turned off): linspace(1, 1/2, 2) shifted, then 0
    torch.testing.assert_close(gens["flux"].new_scheduler().sigmas, torch.tensor([1.0, 0.75, 0.0]))
    # SD3's own grid runs from 1 to its shifted training minimum shift(1/1000), shifted again
    sd3 = gens["sd3"].new_scheduler().sigmas
    torch.testing.assert_close(sd3, torch.tensor([1.0, shift(shift(0.001)), 0.0]))
    # Sana's DPM-Solver takes the shift as flow_shift
    assert gens["sana"].new_scheduler().config.flow_shift == 3.0


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_the_pipeline_call(family, gens):
    """Our sampling loop equals the pipeline's own __call__ from the same initial noise."""
    g = gens[family]
    pipe = g.pipe
    saved_sched = pipe.scheduler
    pipe.scheduler = g.new_scheduler().__class__.from_config(g.new_scheduler().config)
    eps = noise(SEEDS[0])[None]
    kw = dict(num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, output_type="latent",
              max_sequence_length=16, guidance_scale=1.0)
    if family == "sana":
        kw.update(clean_caption=False, use_resolution_binning=False)
    try:
        with torch.no_grad():
            ref = pipe(PROMPTS[0], latents=pack(eps) if g.family.packed else eps, **kw).images
    finally:
        pipe.scheduler = saved_sched
    ours = g.generate(PROMPTS[:1], SEEDS[:1]).latents
    ref = unpack(ref, LATENT_SIDE, LATENT_SIDE) if g.family.packed else ref
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_images_inverts_decode_normalisation(family, gens):
    g = gens[family]
    hooks = HOOKS[family]
    x0 = 0.5 * noise(3)[None]
    with torch.no_grad():
        pixels = hooks.decode(g.pipe, x0)
    assert pixels.shape == (1, 3, RESOLUTION, RESOLUTION)
    img = Image.fromarray(((pixels[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    z = g.encode_images([img])
    assert z.shape == (1, *LATENT) and torch.isfinite(z).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_full_training_grads_reach_only_the_transformer(family, gens):
    g = gens[family]
    assert g.trainable_module() is g.transformer
    out = g.generate(PROMPTS[:2], SEEDS[:2])
    v = g.predict_velocity(out.latents, torch.tensor([0.3, 0.8]), out.cond)
    assert v.shape == (2, *LATENT)
    v.square().mean().backward()
    for name, comp in g.pipe.components.items():
        if not isinstance(comp, torch.nn.Module):
            continue
        grads = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in comp.parameters()]
        if name == "transformer":
            assert any(grads)
        else:
            assert not any(p.requires_grad for p in comp.parameters()) and not any(grads)
    g.transformer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_adapters(family, saved):
    g = DiffusersGenerator.from_pretrained(
        saved[family], GEN, model_cfg(saved[family], train="lora", lora_rank=4, lora_alpha=8.0)
    )
    module = g.trainable_module()
    names = list(module.state_dict())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split("__")[-1].split(".")[0] for n in names} >= {"to_q", "to_k", "to_v"}
    trainable = {id(p) for p in g.transformer.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in module.parameters()}
    out = g.generate(PROMPTS[:1], SEEDS[:1])
    g.predict_velocity(out.latents, torch.tensor([0.5]), out.cond).square().mean().backward()
    assert all(p.grad is not None for p in module.parameters())
    # a push carries adapter weights only and loads back in place
    state = {k: v + 1.0 for k, v in g.trainable_state_dict().items()}
    full = sum(p.numel() for p in g.transformer.parameters())
    assert sum(v.numel() for v in state.values()) < full / 2
    g.load_trainable_state(state, version=3)
    assert g.weights_version == 3
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


def test_errors_name_the_path(tmp_path, saved):
    gen_cfg = model_cfg(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="directory not found: .*nowhere"):
        DiffusersGenerator.from_pretrained(tmp_path / "nowhere", GEN, gen_cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no model_index.json\): .*empty"):
        DiffusersGenerator.from_pretrained(tmp_path / "empty", GEN, gen_cfg)
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="unsupported pipeline class 'StableDiffusionPipeline'.*"
                                         "supported: FluxPipeline"):
        DiffusersGenerator.from_pretrained(other, GEN, gen_cfg)
    with pytest.raises(ValueError, match="family is 'flux' but .* holds a StableDiffusion3Pipeline"):
        DiffusersGenerator.from_pretrained(saved["sd3"], GEN, model_cfg(saved["sd3"], family="flux"))
    broken = shutil.copytree(saved["sana"], tmp_path / "broken")
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"incomplete diffusers pipeline at .*broken: missing vae/"):
        DiffusersGenerator.from_pretrained(broken, GEN, gen_cfg)
    corrupt = shutil.copytree(saved["sana"], tmp_path / "corrupt")
    (corrupt / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match=r"could not load the diffusers pipeline at .*corrupt: \w+"):
        DiffusersGenerator.from_pretrained(corrupt, GEN, gen_cfg)
    with pytest.raises(ValueError, match="model.generator.path is not set"):
        build_diffusers_generator(ModelConfig(backend="diffusers"), GEN)
    # a message is one line
    try:
        DiffusersGenerator.from_pretrained(corrupt, GEN, gen_cfg)
    except ValueError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_srum_round(family, saved, tmp_path):
    """generate, propose, filter, judge, reward, train, sync on the tiny roles."""
    cfg = load_config(ROOT / "configs/tiny.yaml", [
        f"run.output_dir={tmp_path}", "run.progress=false", "run.rounds=1",
        f"data.prompts=[{ROOT / 'configs/prompts/tiny.txt'}]", "data.prompts_per_round=2",
        "generation.num_inference_steps=2", "generation.batch_size=2",
        "train.steps_per_round=1", "train.batch_size=2", "output.overlays=false",
        "model.backend=diffusers", f"model.generator.path={saved[family]}",
        f"model.generator.resolution={RESOLUTION}", "model.generator.max_sequence_length=16",
    ])
    generator = build_diffusers_generator(cfg.model, cfg.generation)
    understanding = TinyUnderstanding(TinyModelConfig())
    roles = Roles(
        generator=generator,
        grounder=build_grounder(cfg.grounder),
        box_filter=BoxFilter(understanding, cfg.filter, batch_size=cfg.judge.batch_size),
        judge=Judge(understanding, cfg.judge, seed=cfg.run.seed),
        engine=build_engine(generator, cfg.train, seed=cfg.run.seed),
    )
    before = {k: v.clone() for k, v in generator.trainable_state_dict().items()}
    rd = RunDir.create(cfg)
    RoundLoop(cfg, rd, roles=roles).run()
    recs = [json.loads(l) for l in (rd.round_dir(0) / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and {r["weights_version"] for r in recs} == {0}
    assert (rd.checkpoint_dir(0) / "trainable.safetensors").is_file()
    assert generator.weights_version == 1
    after = generator.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
