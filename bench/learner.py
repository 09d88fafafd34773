"""One SRUM training step of a random-weight SD3-style transformer, our engines vs a plain loop.

    python bench/learner.py --preset sd3-medium --device cuda            # the issue's size
    python bench/learner.py --preset cpu --ways plain,torch_engine,deepspeed_z1,deepspeed_z2,deepspeed_z3
    python bench/learner.py --preset tiny --steps 1 --warmup 1           # smoke size

The transformer is diffusers' ``SD3Transformer2DModel`` built from config with random
weights (``--preset sd3-medium``: 24 joint blocks, 24 heads x 64 = 1536 wide, 2.03 B
parameters; 64x64x16 latents = 1024 image tokens + 154 text tokens). Every way trains the
same weights (one seed) on the same batch (latents, conditioning, reward weights) with the
SPEC loss (:func:`srum_ray.losses.srum_flow_loss`):

* ``plain``: a plain PyTorch loop: float32 weights, ``torch.autocast`` to ``--dtype``, fused
  AdamW, clipping 1.0 (what a user writes by hand);
* ``plain_compiled``: the same with ``torch.compile(model)`` (opt-in: long compile on CPU);
* ``torch_engine``: :class:`srum_ray.learner.engine.TorchEngine` on a
  :class:`~srum_ray.models.diffusers_gen.DiffusersGenerator` held in ``--dtype``;
* ``deepspeed_z1`` / ``_z2`` / ``_z3``: :class:`srum_ray.learner.deepspeed_engine.DeepSpeedEngine`
  at world size 1, DeepSpeed's ``--dtype`` mixed precision (float32 master weights);
* ``deepspeed_stock_z1`` / ``_z2``: DeepSpeed out of the box, written by hand: the issue's
  reference setup (client torch AdamW, bf16, clipping 1.0, overlap_comm,
  contiguous_gradients, DeepSpeed's other defaults), to show what our engine's settings change.

Reported per way: median step time, samples/s, peak memory (CUDA: max allocated; CPU: rise
of the process RSS while building and stepping), model FLOPs per step (forward + backward,
counted once with torch's FlopCounterMode on the plain model) and MFU = FLOPs / step time /
peak. The peak is the GPU's dense bf16 datasheet figure, or on CPU the best measured
2048^3 GEMM in ``--dtype`` (stated in the output); ``--peak-tflops`` overrides it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

from srum_ray.config.schema import GenerationConfig, GeneratorModelConfig, TrainConfig  # noqa: E402
from srum_ray.losses import noisy_latents, sample_timesteps, srum_flow_loss, velocity_target  # noqa: E402
from srum_ray.types import RolloutBatch, SampleRecord  # noqa: E402

#: transformer and batch sizes; ``caption_projection_dim`` is always heads x head_dim
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(layers=1, heads=2, head_dim=16, latent_side=8, latent_channels=4, text_tokens=8,
                 joint_dim=32, pooled_dim=32, batch=2),
    "cpu": dict(layers=4, heads=8, head_dim=64, latent_side=32, latent_channels=16, text_tokens=77,
                joint_dim=1024, pooled_dim=1024, batch=4),
    "sd3-medium": dict(layers=24, heads=24, head_dim=64, latent_side=64, latent_channels=16,
                       text_tokens=154, joint_dim=4096, pooled_dim=2048, batch=8),
}
WAYS = ("plain", "plain_compiled", "torch_engine", "deepspeed_z1", "deepspeed_z2", "deepspeed_z3",
        "deepspeed_stock_z1", "deepspeed_stock_z2")
DEFAULT_WAYS = "plain,torch_engine,deepspeed_z1,deepspeed_z2,deepspeed_z3"
LAMBDA_C = 0.5
TRAIN = TrainConfig(lr=1e-5, warmup_steps=0, grad_clip=1.0, timestep_shift=3.0)


def build_transformer(size: dict[str, int], device: torch.device, seed: int = 0):
    """The random-weight SD3 transformer of ``size`` in float32 on ``device``."""
    from diffusers import SD3Transformer2DModel

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return SD3Transformer2DModel(
            sample_size=size["latent_side"], patch_size=2, in_channels=size["latent_channels"],
            out_channels=size["latent_channels"], num_layers=size["layers"],
            attention_head_dim=size["head_dim"], num_attention_heads=size["heads"],
            joint_attention_dim=size["joint_dim"], caption_projection_dim=size["heads"] * size["head_dim"],
            pooled_projection_dim=size["pooled_dim"], pos_embed_max_size=max(size["latent_side"] // 2, 8),
        )


def as_generator(transformer, size: dict[str, int], device: torch.device, dtype: torch.dtype):
    """Our DiffusersGenerator over an SD3 pipeline holding only ``transformer`` (training
    needs no text encoder or VAE: the batch carries latents and conditioning)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from srum_ray.models.diffusers_gen import DiffusersGenerator

    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        text_encoder_3=None, tokenizer_3=None,
    )
    model_cfg = GeneratorModelConfig(resolution=max(32, 8 * size["latent_side"]))
    return DiffusersGenerator(pipe, "sd3", GenerationConfig(), model_cfg, device=device, dtype=dtype)


def make_batch(size: dict[str, int], seed: int = 0) -> RolloutBatch:
    """A rewarded batch (CPU): latents, SD3 conditioning, reward weights in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    b, c, s = size["batch"], size["latent_channels"], size["latent_side"]
    return RolloutBatch(
        records=[SampleRecord(id=f"s{i}", round=0, prompt="", seed=i, weights_version=0) for i in range(b)],
        latents=torch.randn(b, c, s, s, generator=g),
        cond={"prompt_embeds": torch.randn(b, size["text_tokens"], size["joint_dim"], generator=g),
              "pooled_prompt_embeds": torch.randn(b, size["pooled_dim"], generator=g)},
        weights=torch.rand(b, 1, s, s, generator=g) * 2 - 1,
    )


class PlainLoop:
    """The hand-written loop: float32 weights, autocast, fused AdamW, clipping."""

    def __init__(self, transformer, device: torch.device, dtype: torch.dtype, compiled: bool) -> None:
        self.device, self.dtype = device, dtype
        self.model = transformer.to(device).train()
        self.fwd = torch.compile(self.model) if compiled else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=TRAIN.lr, betas=tuple(TRAIN.betas), eps=TRAIN.eps,
                                     weight_decay=TRAIN.weight_decay, fused=True)
        self.step_i = 0

    def forward_backward(self, batch: RolloutBatch) -> torch.Tensor:
        dev = self.device
        g = torch.Generator(device=dev).manual_seed(self.step_i)
        x0 = batch.latents.to(dev)
        eps = torch.randn(x0.shape, generator=g, device=dev)
        t = sample_timesteps(x0.shape[0], TRAIN.timestep_shift, generator=g, device=dev)
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            v = self.fwd(hidden_states=noisy_latents(x0, eps, t),
                         encoder_hidden_states=batch.cond["prompt_embeds"].to(dev),
                         pooled_projections=batch.cond["pooled_prompt_embeds"].to(dev),
                         timestep=1000.0 * t, return_dict=False)[0]
        loss = srum_flow_loss(v.float(), velocity_target(x0, eps), batch.weights.to(dev), LAMBDA_C)
        loss.total.backward()
        return loss.total.detach()

    def step(self, batch: RolloutBatch) -> None:
        self.forward_backward(batch)
        torch.nn.utils.clip_grad_norm_(self.params, TRAIN.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_i += 1


class StockDeepSpeed(PlainLoop):
    """DeepSpeed as its docs show it, with the reference's settings (see the module docstring)."""

    def __init__(self, transformer, device: torch.device, dtype: torch.dtype, stage: int, batch: int) -> None:
        import deepspeed

        from srum_ray import distributed

        self.device, self.dtype, self.step_i = device, dtype, 0
        if not distributed.is_initialized() and "MASTER_ADDR" not in os.environ:
            distributed.set_dist_env("127.0.0.1", distributed.free_port("127.0.0.1"), 0, 1)
        distributed.init_deepspeed_comm(device)
        model = transformer.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=TRAIN.lr, betas=tuple(TRAIN.betas), eps=TRAIN.eps)
        config = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch,
                  "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                  "zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True},
                  "bf16": {"enabled": dtype == torch.bfloat16}, "steps_per_print": 10**9}
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        self.fwd = self.engine
        self.model_dtype = dtype

    def step(self, batch: RolloutBatch) -> None:
        dev = self.device
        g = torch.Generator(device=dev).manual_seed(self.step_i)
        x0 = batch.latents.to(dev)
        eps = torch.randn(x0.shape, generator=g, device=dev)
        t = sample_timesteps(x0.shape[0], TRAIN.timestep_shift, generator=g, device=dev)
        md = self.model_dtype
        v = self.engine(hidden_states=noisy_latents(x0, eps, t).to(md),
                        encoder_hidden_states=batch.cond["prompt_embeds"].to(dev, md),
                        pooled_projections=batch.cond["pooled_prompt_embeds"].to(dev, md),
                        timestep=1000.0 * t, return_dict=False)[0]
        loss = srum_flow_loss(v.float(), velocity_target(x0, eps), batch.weights.to(dev), LAMBDA_C)
        self.engine.backward(loss.total)
        self.engine.step()
        self.step_i += 1


def build_way(way: str, size: dict[str, int], device: torch.device, dtype: torch.dtype
              ) -> tuple[Callable[[RolloutBatch], Any], Callable[[], None]]:
    """``(step(batch), close())`` of one way, its model freshly built from the shared seed."""
    transformer = build_transformer(size, device)
    if way.startswith("plain"):
        loop = PlainLoop(transformer, device, dtype, compiled=way == "plain_compiled")
        return loop.step, lambda: None
    if way.startswith("deepspeed_stock"):
        stock = StockDeepSpeed(transformer, device, dtype, int(way[-1]), size["batch"])
        return stock.step, stock.engine.destroy
    gen = as_generator(transformer, size, device, dtype)
    if way == "torch_engine":
        from srum_ray.learner.engine import TorchEngine

        engine = TorchEngine(gen, TRAIN)
        return (lambda b: engine.train_batch(b, LAMBDA_C)), lambda: None
    from srum_ray.learner.deepspeed_engine import DeepSpeedEngine

    cfg = dataclasses.replace(TRAIN, engine="deepspeed", zero_stage=int(way[-1]), batch_size=size["batch"])
    engine = DeepSpeedEngine(gen, cfg, dtype=str(dtype).removeprefix("torch."))
    return (lambda b: engine.train_batch(b, LAMBDA_C)), engine.ds.destroy


def model_flops(size: dict[str, int], device: torch.device, dtype: torch.dtype, batch: RolloutBatch) -> tuple[int, int]:
    """(FLOPs of one forward + backward of the plain loop, parameter count)."""
    loop = PlainLoop(build_transformer(size, device), device, dtype, compiled=False)
    n_params = sum(p.numel() for p in loop.params)
    with C.count_flops() as fc:
        loop.forward_backward(batch)
    flops = int(fc.get_total_flops())
    del loop
    C.free_memory()
    return flops, n_params


def main(argv=None) -> int:
    p = C.parser(__doc__, "learner.json")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    for key in PRESETS["tiny"]:
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help="overrides the preset")
    p.add_argument("--ways", default=DEFAULT_WAYS, help=f"comma list of {', '.join(WAYS)}")
    p.add_argument("--steps", type=int, default=5, help="timed steps per way")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile: use >= 3)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    C.add_device_args(p)
    p.add_argument("--peak-tflops", type=float, default=None, help="peak the MFU divides by")
    p.add_argument("--profile", action="store_true",
                   help="profile one more step per way: top operators by self time into the JSON")
    a = p.parse_args(argv)
    device = C.setup(a)
    ways = [w for w in a.ways.split(",") if w]
    unknown = sorted(set(ways) - set(WAYS))
    if unknown:
        p.error(f"unknown ways {unknown}; known: {', '.join(WAYS)}")
    size = dict(PRESETS[a.preset])
    size.update({k: getattr(a, k) for k in size if getattr(a, k) is not None})
    dtype = getattr(torch, a.dtype)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    batch = make_batch(size)
    flops, n_params = model_flops(size, device, dtype, batch)
    peak, peak_src = C.peak_tflops(device, dtype, a.peak_tflops)
    tokens = (size["latent_side"] // 2) ** 2
    print(f"SD3 transformer: {n_params / 1e6:.1f} M parameters, {tokens} image + {size['text_tokens']} "
          f"text tokens, batch {size['batch']}, {a.dtype} on {device}; {flops / 1e12:.3f} TFLOP per "
          f"step (fwd+bwd); peak {peak:.1f} TFLOP/s ({peak_src})", flush=True)

    results: dict[str, Any] = {}
    for way in ways:
        C.free_memory()
        with C.PeakMemory(device) as mem:
            step, close = build_way(way, size, device, dtype)
            times = C.time_calls(lambda: step(batch), repeats=a.steps, warmup=a.warmup, device=device)
        ops = C.top_ops(lambda: step(batch)) if a.profile else None
        close()
        del step, close
        s = C.summary(times)
        step_s = s["median_s"]
        results[way] = {**s, "step_s": step_s, "samples_per_s": size["batch"] / step_s,
                        "peak_mem_gb": (mem.peak_bytes if device.type == "cuda" else mem.delta_bytes) / 1e9,
                        "tflops_per_s": flops / step_s / 1e12, "mfu": flops / step_s / (peak * 1e12)}
        if ops is not None:
            results[way]["top_ops"] = ops
            print(f"  {way} top ops: " + ", ".join(f"{o['name']} {o['self_ms']:.1f} ms x{o['calls']}" for o in ops[:8]))
        print(f"  {way}: {step_s:.4f} s/step", flush=True)

    plain_best = min((results[w]["step_s"] for w in ("plain", "plain_compiled") if w in results), default=None)
    for r in results.values():
        r["vs_best_plain"] = C.ratio(r["step_s"], plain_best)  # > 1: slower than the best plain loop
    C.print_table(
        f"learner step, {n_params / 1e6:.1f} M params, batch {size['batch']}, {a.dtype}, {device} "
        f"(MFU vs {peak:.1f} TFLOP/s: {peak_src})",
        ["way", "step s", "samples/s", "peak GB", "TFLOP/s", "MFU %", "vs best plain"],
        [[w, r["step_s"], r["samples_per_s"], r["peak_mem_gb"], r["tflops_per_s"], 100 * r["mfu"],
          r["vs_best_plain"]] for w, r in results.items()],
    )
    C.write_json(a.out, {
        "preset": a.preset, "size": size, "dtype": a.dtype, "device": str(device),
        "params": n_params, "image_tokens": tokens, "flops_per_step": flops,
        "peak_tflops": peak, "peak_source": peak_src,
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "cpu rss rise",
        "ways": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
