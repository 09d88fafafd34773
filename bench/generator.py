"""Images per second of our batched sampler vs the diffusers pipeline, same SD3 model.

    python bench/generator.py --preset sd3-medium --device cuda --batch 8 --images 32
    python bench/generator.py --preset cpu --batch 8 --images 16
    python bench/generator.py --preset tiny --steps 4 --batch 4 --images 8      # smoke size

The pipeline is a diffusers ``StableDiffusion3Pipeline`` built from config with random
weights (``--preset sd3-medium``: the 2.03 B transformer, SD3's 16-channel VAE, CLIP-L,
CLIP-G and T5-XXL sizes; 512 px = 64x64 latents; tokenizers are the in-memory BPE of
:mod:`srum_ray.models.tokenizer`). All ways draw the same prompts and seeds with the
scheduler's usual step count (28) and guidance (7.0, classifier-free: two transformer
rows per image). After one untimed warm-up call each, ``--repeats`` full passes are timed
with the ways interleaved; the best pass counts:

* ``ours_batched``: :meth:`srum_ray.models.diffusers_gen.DiffusersGenerator.generate` in
  chunks of ``--batch`` (what a generator worker runs);
* ``ours_batch1``: the same at ``generation.batch_size: 1``;
* ``pipe_per_prompt``: ``pipe(prompt=...)`` once per prompt (what the public SRUM code does);
* ``pipe_batched``: ``pipe(prompt=[...])`` with ``--batch`` prompts per call (a plain batched
  loop on the same model).

Reported: images/s per way, the speed-up of ``ours_batched`` over ``pipe_per_prompt`` and
its ratio to ``pipe_batched``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

from srum_ray.config.schema import GenerationConfig, GeneratorModelConfig  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # the tests' tiny SD3 (tests/models/_tiny_pipelines.py): 32 px, 4x VAE, 8x8 latents
    "tiny": dict(resolution=32, layers=1, heads=2, head_dim=16, latent_channels=4,
                 vae_channels=(8, 8, 16), vae_layers=1, vae_groups=4, vae_attention=False,
                 clip=((16, 2, 2), (16, 2, 2)), t5=(32, 1, 2, 8, 64), vocab=(0, 0, 0), text_len=16),
    # a few layers at 128 px with an 8x VAE (16x16 latents, 64 image tokens)
    "cpu": dict(resolution=128, layers=4, heads=4, head_dim=32, latent_channels=16,
                vae_channels=(16, 32, 32, 64), vae_layers=1, vae_groups=8, vae_attention=False,
                clip=((64, 2, 2), (64, 2, 2)), t5=(128, 2, 2, 32, 256), vocab=(0, 0, 0), text_len=77),
    # SD3-medium: transformer 24 x 1536, VAE 16 ch, CLIP-L 768 x 12, CLIP-G 1280 x 32, T5-XXL
    "sd3-medium": dict(resolution=512, layers=24, heads=24, head_dim=64, latent_channels=16,
                       vae_channels=(128, 256, 512, 512), vae_layers=2, vae_groups=32, vae_attention=True,
                       clip=((768, 12, 12), (1280, 32, 20)), t5=(4096, 24, 64, 64, 10240),
                       vocab=(49408, 49408, 32128), text_len=77),
}
WAYS = ("ours_batched", "ours_batch1", "pipe_per_prompt", "pipe_batched")
PROMPTS = ("a red cube left of a blue ball", "two yellow stars above a green car",
           "a cat under a wooden table", "three apples and a glass bottle")


def build_pipeline(size: dict[str, Any], device: torch.device, seed: int = 0):
    """A random-weight ``StableDiffusion3Pipeline`` of ``size`` (float32, on ``device``)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from srum_ray.models.tokenizer import build_tokenizer

    base = build_tokenizer()

    def tokenizer(max_len: int):
        tok = copy.deepcopy(base)
        tok.model_max_length = max_len
        return tok

    def clip(spec, vocab):
        hidden, layers, heads = spec
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=max(len(base), vocab), hidden_size=hidden, intermediate_size=4 * hidden,
            projection_dim=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            max_position_embeddings=size["text_len"], hidden_act="gelu", pad_token_id=base.pad_token_id,
            bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id))

    d_model, t5_layers, t5_heads, d_kv, d_ff = size["t5"]
    (c1, c2), n_vae = size["clip"], len(size["vae_channels"])
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=size["resolution"] // 2 ** (n_vae - 1), patch_size=2,
            in_channels=size["latent_channels"], out_channels=size["latent_channels"],
            num_layers=size["layers"], attention_head_dim=size["head_dim"], num_attention_heads=size["heads"],
            joint_attention_dim=d_model, caption_projection_dim=size["heads"] * size["head_dim"],
            pooled_projection_dim=c1[0] + c2[0], pos_embed_max_size=max(size["resolution"] // 2 ** n_vae, 8))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n_vae,
            up_block_types=("UpDecoderBlock2D",) * n_vae, block_out_channels=tuple(size["vae_channels"]),
            layers_per_block=size["vae_layers"], latent_channels=size["latent_channels"],
            norm_num_groups=size["vae_groups"], sample_size=size["resolution"], scaling_factor=1.5305,
            shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
            mid_block_add_attention=size["vae_attention"])
        t5 = T5EncoderModel(T5Config(
            vocab_size=max(len(base), size["vocab"][2]), d_model=d_model, d_kv=d_kv, d_ff=d_ff,
            num_layers=t5_layers, num_heads=t5_heads, relative_attention_num_buckets=32,
            decoder_start_token_id=0, feed_forward_proj="gated-gelu"))
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=clip(c1, size["vocab"][0]), tokenizer=tokenizer(size["text_len"]),
            text_encoder_2=clip(c2, size["vocab"][1]), tokenizer_2=tokenizer(size["text_len"]),
            text_encoder_3=t5, tokenizer_3=tokenizer(1024))
    return pipe


def count_params(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in pipe.components.items()
            if isinstance(m, torch.nn.Module)}


def main(argv=None) -> int:
    p = C.parser(__doc__, "generator.json")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--resolution", type=int, default=None, help="overrides the preset")
    p.add_argument("--steps", type=int, default=28, help="sampling steps (SD3's usual 28)")
    p.add_argument("--guidance", type=float, default=7.0, help="CFG scale (SD3's usual 7.0)")
    p.add_argument("--batch", type=int, default=8, help="images per call of the batched ways")
    p.add_argument("--images", type=int, default=16, help="images drawn by each way")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per way, interleaved (best is reported)")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    C.add_device_args(p)
    a = p.parse_args(argv)
    device = C.setup(a)
    ways = C.selected_ways(p, a.ways, WAYS)
    size = dict(PRESETS[a.preset])
    if a.resolution:
        size["resolution"] = a.resolution
    dtype = getattr(torch, a.dtype)

    from srum_ray.models.diffusers_gen import DiffusersGenerator

    pipe = build_pipeline(size, device)
    params = count_params(pipe)
    res, text_len = size["resolution"], size["text_len"]
    gen_cfg = GenerationConfig(num_inference_steps=a.steps, guidance_scale=a.guidance, shift=3.0,
                               batch_size=a.batch)
    model_cfg = GeneratorModelConfig(resolution=res, max_sequence_length=text_len)
    ours = {"ours_batched": DiffusersGenerator(pipe, "sd3", gen_cfg, model_cfg, device, dtype)}
    ours["ours_batch1"] = DiffusersGenerator(pipe, "sd3", GenerationConfig(**{**vars(gen_cfg), "batch_size": 1}),
                                             model_cfg, device, dtype)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.images)]
    seeds = list(range(1000, 1000 + a.images))

    def pipe_call(ps: list[str], ss: list[int]):
        return pipe(prompt=ps, height=res, width=res, num_inference_steps=a.steps,
                    guidance_scale=a.guidance, max_sequence_length=text_len,
                    generator=[torch.Generator().manual_seed(s) for s in ss], output_type="pil").images

    def run(way: str, ps: list[str], ss: list[int]) -> int:
        if way in ours:
            return len(ours[way].generate(ps, ss).images)
        step = 1 if way == "pipe_per_prompt" else a.batch
        return sum(len(pipe_call(ps[i:i + step], ss[i:i + step])) for i in range(0, len(ps), step))

    print(f"SD3 pipeline ({', '.join(f'{k} {v / 1e6:.1f} M' for k, v in params.items())}), {res} px, "
          f"{a.steps} steps, guidance {a.guidance}, {a.images} images, batch {a.batch}, {a.dtype} on {device}",
          flush=True)
    for way in ways:  # one untimed call each (first-call allocations, caches)
        warm = min(a.batch, a.images) if way in ("ours_batched", "pipe_batched") else 1
        run(way, prompts[:warm], seeds[:warm])
    times: dict[str, list[float]] = {w: [] for w in ways}
    peaks: dict[str, int] = {w: 0 for w in ways}
    for _ in range(a.repeats):  # ways interleaved, so that load from other processes hits all alike
        for way in ways:
            with C.PeakMemory(device) as mem:
                times[way] += C.time_calls(lambda: run(way, prompts, seeds), repeats=1, warmup=0, device=device)
            peaks[way] = max(peaks[way], mem.peak_bytes if device.type == "cuda" else mem.delta_bytes)
    results: dict[str, Any] = {}
    for way in ways:
        s = C.summary(times[way])
        results[way] = {**s, "images_per_s": a.images / s["best_s"], "peak_mem_gb": peaks[way] / 1e9}
        print(f"  {way}: {results[way]['images_per_s']:.3f} images/s", flush=True)
    rate = {w: r["images_per_s"] for w, r in results.items()}
    ratios = {
        "ours_batched_vs_pipe_per_prompt": C.ratio(rate.get("ours_batched"), rate.get("pipe_per_prompt")),
        "ours_batched_vs_pipe_batched": C.ratio(rate.get("ours_batched"), rate.get("pipe_batched")),
        "ours_batch1_vs_pipe_per_prompt": C.ratio(rate.get("ours_batch1"), rate.get("pipe_per_prompt")),
    }
    C.print_table(
        f"generation, SD3 {params['transformer'] / 1e6:.1f} M transformer, {res} px, {a.steps} steps, "
        f"CFG {a.guidance}, {a.images} images, {a.dtype}, {device}",
        ["way", "batch", "images/s", "best s", "peak GB"],
        [[w, 1 if w in ("ours_batch1", "pipe_per_prompt") else a.batch, r["images_per_s"], r["best_s"],
          r["peak_mem_gb"]] for w, r in results.items()],
    )
    print("ratios: " + ", ".join(f"{k} {C.fmt(v, '.2f')}x" for k, v in ratios.items()))
    C.write_json(a.out, {
        "preset": a.preset, "size": size, "params": params, "resolution": res, "steps": a.steps,
        "guidance": a.guidance, "batch": a.batch, "images": a.images, "dtype": a.dtype,
        "device": str(device), "ways": results, "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
