"""Train the shapes-world unified model from scratch on rendered scenes (CPU, deterministic).

    python -m srum_ray.shapes.train_umm --out weights/shapes-umm [--gen-steps 2400] [--judge-steps 1500]

Data (nothing is downloaded): the ``train`` split of :func:`srum_ray.shapes.splits.make_splits`
(seed 0) plus single-object captions ("a large striped red circle"), both without the held-out
attribute-object combinations; a fresh scene satisfying the prompt is drawn and rendered for
every example (``--caption-noise P``: a share P of the train-split examples gets a scene wrong in
one thing instead, under the same caption, as noisy web captions would; ``--relation-share S``:
a share S of the train-split examples names a relation instead of the split's ~24%, as web
captions rarely say where things are; the shipped weights use neither). Every draw is a
function of ``(seed, step)``, so a run is repeatable (on the same torch build and thread count:
CPU reductions may round differently across thread counts).

* Generator: plain flow matching (SPEC 2.5 without reward weights), prompt dropout 10% for
  classifier-free guidance, AdamW with warm-up, EMA of the weights (the EMA is shipped). It is
  trained only so far (``--gen-steps``): good at single objects, weaker at binding, relations
  and counting, as a base UMM is.
  ``--latent scene`` trains the DiT on the scene-grid latent instead (experimental; docs/RESULTS.md,
  "A scene-latent base").
* Understanding: its perception network learns the colour, shape, size and texture of the
  object in a region (cross-entropy), on objects of rendered scenes for training prompts
  (right or wrong in one attribute, sometimes with a distractor), with blur and noise so it
  also reads imperfect images. Reading the prompt and reasoning over what it sees need no
  training (srum_ray/models/shapes_umm.py).

Then it measures (:mod:`srum_ray.shapes.measure`) and writes ``MODEL_CARD.md`` and
``card.json`` next to the weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from srum_ray.config.schema import GenerationConfig
from srum_ray.losses import sample_timesteps
from srum_ray.models.shapes_latent import images_to_pixels
from srum_ray.models.shapes_umm import (
    ATTRIBUTE_HEADS,
    META_FILE,
    ShapesGenerator,
    ShapesNetConfig,
    _load_meta,
)
from srum_ray.models.shapes_understanding import ShapesUnderstanding, box_masks
from srum_ray.shapes.constraints import Exists, ObjectQuery, PromptSpec, Relation
from srum_ray.shapes.grammar import noun_phrase
from srum_ray.shapes.render import object_mask, render
from srum_ray.shapes.sampler import scene_for, wrong_scene_for
from srum_ray.shapes.spec import COLOURS, SHAPES, SIZES, TEXTURES, Scene
from srum_ray.shapes.splits import SplitPrompt, is_held_out, make_splits
from srum_ray.types import Box

#: sampling settings the base model is measured with (and the shapes configs use)
BASE_GENERATION = GenerationConfig(num_inference_steps=12, guidance_scale=3.0, shift=2.0, batch_size=64)


def single_object_prompt(rng: random.Random) -> PromptSpec:
    """"a [size] [texture] [colour] shape" with each adjective present at random, no held-out pair."""
    while True:
        q = ObjectQuery(
            shape=rng.choice(SHAPES),
            colour=rng.choice(tuple(COLOURS)) if rng.random() < 0.8 else None,
            size=rng.choice(tuple(SIZES)) if rng.random() < 0.5 else None,
            texture=rng.choice(TEXTURES) if rng.random() < 0.4 else None,
        )
        if not is_held_out(q):
            return PromptSpec(noun_phrase(q), "single", (Exists(q),))


def has_relation(spec: PromptSpec) -> bool:
    """Whether the prompt places one object relative to another (left of, above, ...)."""
    return any(isinstance(c, Relation) for c in spec.constraints)


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """Random blur (sigma up to 1.2) and pixel noise (std up to 10) so the judge reads imperfect images."""
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(sigma))
    std = rng.uniform(0.0, 10.0)
    arr = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, std, arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8), "RGB")


class Corpus:
    """Prompt sources for training: the train split and single-object captions.

    ``caption_noise`` is the share of train-split examples whose scene is wrong in one thing
    (:func:`wrong_scene_for`: an attribute, a count or a relation) while the caption stays the
    prompt, as in web captions that misdescribe binding, counts or positions; single-object
    captions stay clean. A generator trained on it learns the one-off variants too, which shows
    without guidance and hardly at guidance 3 (docs/RESULTS.md, "A noisy-caption base").
    """

    def __init__(
        self, train: list[SplitPrompt], single_share: float, caption_noise: float = 0.0,
        relation_share: float | None = None,
    ) -> None:
        if not 0.0 <= caption_noise <= 1.0:
            raise ValueError(f"caption_noise must be in [0, 1], got {caption_noise}")
        if relation_share is not None and not 0.0 <= relation_share <= 1.0:
            raise ValueError(f"relation_share must be in [0, 1], got {relation_share}")
        self.train = [p.spec for p in train]
        self._train_texts = {s.text for s in self.train}
        self.single_share = single_share
        self.caption_noise = caption_noise
        self.relation_share = relation_share
        self._relational = [s for s in self.train if has_relation(s)]
        self._plain = [s for s in self.train if not has_relation(s)]
        if relation_share is not None and not (self._relational and self._plain):
            raise ValueError("relation_share needs train prompts both with and without a relation")

    def draw(self, rng: random.Random) -> PromptSpec:
        """A single-object caption with probability ``single_share``, else a train-split prompt:
        uniformly, or (``relation_share`` set) one naming a relation with that probability."""
        if rng.random() < self.single_share:
            return single_object_prompt(rng)
        if self.relation_share is None:
            return rng.choice(self.train)
        return rng.choice(self._relational if rng.random() < self.relation_share else self._plain)

    def scene(self, spec: PromptSpec, rng: random.Random) -> Scene:
        """The training scene for ``spec``: one satisfying it, or with probability
        ``caption_noise`` (train-split prompts only) one wrong in one thing. Without noise the
        draws are exactly :func:`scene_for`'s, so earlier runs repeat."""
        if self.caption_noise > 0 and spec.text in self._train_texts and rng.random() < self.caption_noise:
            return wrong_scene_for(spec, rng)[0]
        return scene_for(spec, rng)


def _lr_at(step: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (step + 1) / max(1, warmup))


def train_generator(
    gen: ShapesGenerator, corpus: Corpus, *, steps: int, batch: int, lr: float, seed: int,
    warmup: int = 200, ema_decay: float = 0.999, log: Callable[[str], None] = print,
    snapshot: Callable[[int, torch.nn.Module], None] | None = None, snapshot_every: int = 0,
) -> dict:
    net = gen.net
    net.train()
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    null = gen.tokenizer([""])
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        rng = random.Random(f"shapes-umm/gen/{seed}/{step}")
        specs = [corpus.draw(rng) for _ in range(batch)]
        x0 = gen.encode_scenes([corpus.scene(s, rng) for s in specs])
        words = gen.tokenizer([s.text for s in specs])
        drop = torch.tensor([rng.random() < 0.1 for _ in specs])
        words[drop] = null
        g = torch.Generator().manual_seed(rng.getrandbits(63))
        t = sample_timesteps(batch, shift=gen.gen_cfg.shift, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
        v = net(x_t, t, words, gen.tokenizer.pad_id)
        loss = F.mse_loss(v, eps - x0)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, lr, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))  # warm-up: early weights fade fast
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0:
            snapshot(step + 1, ema)
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"generator step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    net.load_state_dict(ema.state_dict())
    net.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "ema_decay": ema_decay,
            "final_loss": float(np.mean(losses[-100:])), "seconds": time.perf_counter() - t0}


def region_examples(corpus: Corpus, rng: random.Random, n: int) -> tuple[list[Image.Image], list[Box], list[dict[str, str]]]:
    """``n`` (image, region box, object attributes) examples: an object of a rendered scene for
    a training prompt (the scene right or wrong in one attribute, sometimes with a distractor),
    blurred and noised, its tight box (what the grounder proposes) jittered by up to a pixel."""
    images, boxes, attrs = [], [], []
    for _ in range(n):
        spec = corpus.draw(rng)
        if rng.random() < 0.5:
            scene = scene_for(spec, rng, max_distractors=1 if rng.random() < 0.3 else 0)
        else:
            scene, _ = wrong_scene_for(spec, rng)
        o = rng.choice(scene.objects)
        rows, cols = np.nonzero(object_mask(o, scene.canvas))  # tight, as the grounder finds it
        x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
        j = [rng.randint(-1, 1) for _ in range(4)]
        images.append(degrade(render(scene), rng))
        boxes.append(Box(float(x0 + j[0]), float(y0 + j[1]), float(x1 - j[2]), float(y1 - j[3])))
        attrs.append({"colour": o.colour, "shape": o.shape, "size": o.size, "texture": o.texture})
    return images, boxes, attrs


def train_understanding(
    und: ShapesUnderstanding, corpus: Corpus, *, steps: int, batch: int, lr: float, seed: int,
    warmup: int = 100, log: Callable[[str], None] = print,
) -> dict:
    """Cross-entropy on the four attribute heads over :func:`region_examples`."""
    net = und.net
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        rng = random.Random(f"shapes-umm/judge/{seed}/{step}")
        images, boxes, attrs = region_examples(corpus, rng, batch)
        out = net(images_to_pixels(images, und.cfg.canvas), box_masks(boxes, und.cfg.canvas))
        loss = sum(
            F.cross_entropy(out[name], torch.tensor([classes.index(a[name]) for a in attrs]))
            for name, classes in ATTRIBUTE_HEADS.items()
        )
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, lr, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"understanding step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "warmup": warmup,
            "final_loss": float(np.mean(losses[-100:])), "seconds": time.perf_counter() - t0}


#: the understanding half's fields of ShapesNetConfig; ``max_words`` and ``canvas`` are shared, the
#: rest is the generator's
JUDGE_FIELDS = ("judge_width", "judge_depth", "judge_heads")
SHARED_FIELDS = ("max_words", "canvas")


def retrain_config(new: ShapesNetConfig, existing: ShapesNetConfig, part: str) -> ShapesNetConfig:
    """The config of a checkpoint of which only ``part`` (``generator`` | ``understanding``) is
    trained again: that part's fields from ``new``, the other part's from ``existing`` (the
    weights already there); a shared field that differs raises ValueError."""
    if part not in ("generator", "understanding"):
        raise ValueError(f"part must be generator or understanding, got {part!r}")
    for name in SHARED_FIELDS:
        if getattr(new, name) != getattr(existing, name):
            raise ValueError(
                f"{name} is {getattr(new, name)} here but {getattr(existing, name)} in the checkpoint's other part"
            )
    judge = {k: getattr(new if part == "understanding" else existing, k) for k in JUDGE_FIELDS}
    return replace(new if part == "generator" else existing, **judge)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/shapes-umm",
                    help="output directory (the shipped model is weights/shapes-umm: name it to replace it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-steps", type=int, default=2400)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--gen-lr", type=float, default=5e-4)
    ap.add_argument("--judge-steps", type=int, default=400)
    ap.add_argument("--judge-batch", type=int, default=128)
    ap.add_argument("--judge-lr", type=float, default=5e-4)
    ap.add_argument("--single-share", type=float, default=0.4, help="share of single-object captions in the data")
    ap.add_argument("--caption-noise", type=float, default=0.0,
                    help="share of train-split generator examples drawn wrong in one thing under the right caption")
    ap.add_argument("--relation-share", type=float, default=None,
                    help="share of train-split generator examples whose prompt names a relation (default: as the "
                         "split has them, about 24%%); small values make a base that has rarely been told where "
                         "objects go, as web captions rarely say")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", choices=("pixels", "scene"), default="pixels",
                    help="the generator's latent: the image (U-DiT) or the scene grid decoded by the renderer (DiT)")
    ap.add_argument("--grid", type=int, default=4, help="cells a side of the scene latent (--latent scene)")
    ap.add_argument("--width", type=int, default=None, help="generator transformer width (default: ShapesNetConfig's)")
    ap.add_argument("--depth", type=int, default=None, help="generator transformer depth (default: ShapesNetConfig's)")
    ap.add_argument("--heads", type=int, default=None, help="generator attention heads (default: ShapesNetConfig's)")
    ap.add_argument("--text-depth", type=int, default=None, help="text-only layers over the prompt before the joint blocks")
    ap.add_argument("--no-pooled-text", dest="pooled_text", action="store_false",
                    help="the prompt reaches the image only through attention (ShapesNetConfig.pooled_text)")
    ap.add_argument("--word-pos-std", type=float, default=None,
                    help="initial scale of the word position embeddings (ShapesNetConfig.word_pos_std)")
    ap.add_argument("--segments", action="store_true", help="mark each word's object phrase (ShapesNetConfig.segments)")
    ap.add_argument("--eval-prompts", type=int, default=600, help="test prompts measured for the card")
    ap.add_argument("--gen-init", default=None,
                    help="continue training from this generator.safetensors (e.g. a snapshot) instead of from scratch")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also save the generator's EMA every N steps under <out>/snapshots/")
    ap.add_argument("--only", choices=("both", "generator", "understanding", "measure"), default="both",
                    help="train one part (the other part's weights, card entry and half of shapes_umm.json are kept), "
                         "or only measure and write the card")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    splits = make_splits(0)
    corpus = Corpus(splits["train"], args.single_share, args.caption_noise, args.relation_share)
    sizes = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("heads", args.heads),
                               ("text_depth", args.text_depth), ("segments", args.segments or None),
                               ("pooled_text", None if args.pooled_text else False),
                               ("word_pos_std", args.word_pos_std)) if v is not None}
    cfg = ShapesNetConfig(**sizes) if args.latent == "pixels" else ShapesNetConfig(arch="dit", latent="scene", patch=1, prediction="v", grid=args.grid, **sizes)
    if args.only in ("generator", "understanding") and (out / META_FILE).exists():
        # the other part's weights stay: so does its half of the config they were built with
        try:
            cfg = retrain_config(cfg, _load_meta(out)[0], args.only)
        except ValueError as e:
            ap.error(f"--only {args.only} into {out}: {e}")
    log_path = out / "train.log"
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(log_path, "a") as f:
            f.write(msg + "\n")

    common = {"net": asdict(cfg), "torch": torch.__version__, "seed": args.seed,
              "data": {"train_prompts": len(corpus.train), "single_object_share": args.single_share,
                       "caption_noise": args.caption_noise, "relation_share": args.relation_share}}

    def update_card(**entries) -> dict:
        """card.json with ``entries`` set (read just before writing: a part trained by another
        process at the same time keeps its entry)."""
        card = json.loads((out / "card.json").read_text()) if (out / "card.json").exists() else {}
        card.update(common, **entries)
        (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        return card

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    if args.only in ("both", "generator"):
        gen = ShapesGenerator(cfg, BASE_GENERATION, seed=args.seed)
        if args.gen_init:
            from safetensors.torch import load_file

            gen.net.load_state_dict(load_file(args.gen_init))
            log(f"generator starts from {args.gen_init}")

        def snapshot(step: int, ema: torch.nn.Module) -> None:
            from safetensors.torch import save_file

            (out / "snapshots").mkdir(exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()}, out / "snapshots" / f"generator-{step:06d}.safetensors")

        info = train_generator(
            gen, corpus, steps=args.gen_steps, batch=args.gen_batch, lr=args.gen_lr, seed=args.seed, log=log,
            snapshot=snapshot, snapshot_every=args.snapshot_every,
        )
        gen.save_pretrained(out)
        update_card(generator={**info, "params": params(gen.net), "threads": args.threads})
    if args.only in ("both", "understanding"):
        und = ShapesUnderstanding(cfg, seed=args.seed)
        info = train_understanding(und, corpus, steps=args.judge_steps, batch=args.judge_batch, lr=args.judge_lr, seed=args.seed, log=log)
        und.save_pretrained(out)
        update_card(understanding={**info, "params": params(und.net), "threads": args.threads})
    if args.only in ("generator", "understanding"):
        return 0

    from srum_ray.shapes.measure import measure_checkpoint, write_model_card

    card = update_card(measured=measure_checkpoint(out, splits, n_test=args.eval_prompts, log=log))
    write_model_card(out, card)
    log(f"wrote {out}/MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
