"""The shapes-world unified model: a small flow transformer and a small understanding module.

Both halves are trained here from scratch on rendered shapes-world scenes
(:mod:`srum_ray.shapes.train_umm`); the trained weights ship in ``weights/shapes-umm/``.
SRUM sees them through the same interface as every other backend (``model.backend: shapes``).

Generation (:class:`ShapesGenerator`): a DiT-style flow-matching transformer working in a
fixed, lossless "latent" space: the 64 px RGB image in [-1, 1], space-to-depth by 4, i.e.
``[48, 16, 16]`` (there is no VAE to learn; the reward map lands on a 16 x 16 grid). Prompt
words (a closed vocabulary, :class:`WordTokenizer`) and 2 x 2 latent patches form one
sequence under joint attention; the time and the pooled prompt modulate every block
(adaLN-zero). The network predicts the clean latent and returns the velocity it implies
(x-prediction), because a token is narrower than its patch. Sampling is the diffusers flow-matching Euler scheduler with shift, with
classifier-free guidance when ``generation.guidance_scale > 1`` (the null prompt is the
lone ``<cls>`` token, trained by prompt dropout).

Understanding (:class:`ShapesUnderstanding`): a network that sees the image plus a region
mask (a fourth input channel: all ones for a question about the whole image) and the prompt
words, and predicts (from a ``<cls>`` token) whether what it sees matches what the prompt
asks for (whole image: every object, count and relation; region: the object in it is one the
prompt asks for), and the object's colour, shape, size and texture. It answers the judge's
questions in text, like a vision-language model: :meth:`ShapesUnderstanding.answer` reads the
question (the judge's prompt formats in :mod:`srum_ray.judging.prompts`: the quoted prompt,
the region boxes, which question it is), and writes ``Score: 0.83`` / ``Region 1: Object:
large red circle; Score: -0.91`` that the judge's parser reads. Scores are
``2 * sigmoid(logit) - 1``. The model is deterministic: a retry at a temperature gives the
same answer. Grounding is native (:meth:`ShapesUnderstanding.ground`): class-agnostic
connected components of non-background pixels, the shapes world's SAM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from srum_ray.config.schema import GenerationConfig
from srum_ray.models.base import (
    AnswerConstraint,
    GenerationModel,
    GenerationOutput,
    UnderstandingModel,
    batch_times,
    check_answer_args,
    check_files,
)
from srum_ray.types import Box

# ---------------------------------------------------------------------------------- words
PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
_WORDS = (
    "a", "an", "and", "to", "the", "of", "left", "right", "above", "below",
    "one", "two", "three", "four",
    "circle", "square", "triangle", "star", "circles", "squares", "triangles", "stars",
    "red", "green", "blue", "yellow", "purple", "orange",
    "small", "large", "solid", "striped",
)
#: attribute classes the understanding module names, in head order
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_NAMES = ("circle", "square", "triangle", "star")
SIZE_NAMES = ("small", "large")
TEXTURE_NAMES = ("solid", "striped")
ATTRIBUTE_HEADS = {"colour": COLOUR_NAMES, "shape": SHAPE_NAMES, "size": SIZE_NAMES, "texture": TEXTURE_NAMES}


class WordTokenizer:
    """Closed-vocabulary word tokenizer: ``<cls> w1 w2 ... <pad>...`` of fixed length.

    Words are lowercase letter runs; a word outside the vocabulary is ``<unk>`` (counted in
    :attr:`unknown_seen`, never an error: a user's prompt may say anything).
    """

    def __init__(self, words: Sequence[str] = _WORDS, max_length: int = 32) -> None:
        self.vocab = (PAD, UNK, CLS) + tuple(words)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = int(max_length)
        self.unknown_seen = 0

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def words(self, text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, max_length]`` int64 ids (longer prompts are cut, after ``<cls>``)."""
        rows = []
        for text in texts:
            ids = [self.index[CLS]]
            for w in self.words(text)[: self.max_length - 1]:
                if w not in self.index:
                    self.unknown_seen += 1
                ids.append(self.index.get(w, self.index[UNK]))
            rows.append(ids + [self.pad_id] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_length)


# ------------------------------------------------------------------------------ networks
@dataclass
class ShapesNetConfig:
    """Sizes of both networks (saved with the weights)."""

    width: int = 160
    depth: int = 5
    heads: int = 5
    judge_width: int = 128
    judge_depth: int = 3
    judge_heads: int = 4
    max_words: int = 32
    canvas: int = 64
    #: space-to-depth factor image -> latent and the latent patch side
    unshuffle: int = 4
    patch: int = 2
    #: smallest t the x-prediction divides by
    min_t: float = 0.05

    @property
    def latent_channels(self) -> int:
        return 3 * self.unshuffle**2

    @property
    def latent_side(self) -> int:
        return self.canvas // self.unshuffle


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-zero modulation by a conditioning vector."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x [B, S, D]``, ``c [B, D]``, ``keep [B, S]`` bool (keys that may be attended to)."""
        b, s, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + g1[:, None] * self.proj(a.transpose(1, 2).reshape(b, s, d))
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))


def _timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ShapesDiT(nn.Module):
    """Velocity ``v(x_t, t, words)`` on ``[B, 48, 16, 16]`` latents (see the module docstring).

    The network predicts the clean latent ``x0`` and returns the velocity it implies,
    ``(x_t - x0) / max(t, min_t)`` (x-prediction, trained with the velocity loss like every
    generator here): a token's width is smaller than its patch's 192 values, so it could not
    pass per-pixel noise through, while clean flat-colour patches are easy to predict.
    """

    def __init__(self, cfg: ShapesNetConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.width, cfg.patch, cfg.latent_channels
        n_img = (cfg.latent_side // p) ** 2
        self.word_emb = nn.Embedding(vocab_size, d)
        self.word_pos = nn.Parameter(torch.randn(cfg.max_words, d) * 0.02)
        self.patch_in = nn.Linear(c * p * p, d)
        self.img_pos = nn.Parameter(torch.randn(n_img, d) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d, cfg.heads) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.patch_out = nn.Linear(d, c * p * p)
        for lin in (self.ada_out[1], self.patch_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, words: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
        cfg, p = self.cfg, self.cfg.patch
        b, ch, hh, ww = x.shape
        img = x.reshape(b, ch, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (hh // p) * (ww // p), ch * p * p)
        img = self.patch_in(img) + self.img_pos
        txt = self.word_emb(words) + self.word_pos[: words.shape[1]]
        word_keep = words != pad_id
        pooled = (self.word_emb(words) * word_keep[..., None]).sum(1) / word_keep.sum(1, keepdim=True).clamp(min=1)
        cond = self.t_mlp(_timestep_features(t, cfg.width)) + self.text_mlp(pooled)
        seq = torch.cat([txt, img], dim=1)
        keep = torch.cat([word_keep, torch.ones(b, img.shape[1], dtype=torch.bool, device=x.device)], dim=1)
        for blk in self.blocks:
            seq = blk(seq, cond, keep)
        shift, scale = self.ada_out(cond).chunk(2, dim=-1)
        out = self.patch_out(_modulate(self.norm_out(seq[:, words.shape[1] :]), shift, scale))
        out = out.reshape(b, hh // p, ww // p, ch, p, p).permute(0, 3, 1, 4, 2, 5)
        x0_hat = out.reshape(b, ch, hh, ww)
        # x-prediction: a token (width D) cannot carry the 192 noise values of its patch, but a
        # clean flat-colour patch lies on a low-dimensional set; v = (x_t - x0) / t
        return (x - x0_hat) / t.clamp(min=self.cfg.min_t)[:, None, None, None]


class ShapesPerceptionNet(nn.Module):
    """Image + region mask -> colour / shape / size / texture logits of the region's object."""

    def __init__(self, cfg: ShapesNetConfig) -> None:
        super().__init__()
        d = cfg.judge_width
        self.stem = nn.Sequential(
            nn.Conv2d(4, 48, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(48, 96, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(96, d, 4, stride=2, padding=1),
        )
        self.img_pos = nn.Parameter(torch.randn((cfg.canvas // 8) ** 2, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.cond = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(d, cfg.judge_heads) for _ in range(cfg.judge_depth))
        for blk in self.blocks:  # gates open: plain pre-norm blocks to start with
            with torch.no_grad():
                blk.ada[1].bias[2 * d : 3 * d] = 1.0
                blk.ada[1].bias[5 * d : 6 * d] = 1.0
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({name: nn.Linear(d, len(classes)) for name, classes in ATTRIBUTE_HEADS.items()})

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pixels [B, 3, 64, 64]`` in [-1, 1], ``mask [B, 1, 64, 64]`` -> ``{"colour": [B, 6], ...}``."""
        feat = self.stem(torch.cat([pixels, mask * 2 - 1], dim=1)).flatten(2).transpose(1, 2) + self.img_pos
        seq = torch.cat([self.cls.expand(feat.shape[0], -1, -1), feat], dim=1)
        keep = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        cond = self.cond.expand(seq.shape[0], -1)
        for blk in self.blocks:
            seq = blk(seq, cond, keep)
        cls = self.norm(seq[:, 0])
        return {name: head(cls) for name, head in self.heads.items()}


# ----------------------------------------------------------------------------- helpers
def images_to_pixels(images: Sequence[Image.Image], canvas: int) -> torch.Tensor:
    """RGB PIL images -> ``[B, 3, canvas, canvas]`` float32 in [-1, 1]."""
    arrays = []
    for img in images:
        img = img.convert("RGB")
        if img.size != (canvas, canvas):
            img = img.resize((canvas, canvas), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    if not arrays:
        return torch.zeros(0, 3, canvas, canvas)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def pixels_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), "RGB") for a in arr]


def box_masks(boxes: Sequence[Box | None], canvas: int) -> torch.Tensor:
    """``[B, 1, canvas, canvas]``: ones inside each box, all ones for ``None`` (whole image)."""
    m = torch.zeros(len(boxes), 1, canvas, canvas)
    for i, box in enumerate(boxes):
        if box is None:
            m[i] = 1.0
        else:
            x0, y0, x1, y1 = (int(round(v)) for v in box.as_list())
            m[i, :, max(0, y0) : min(canvas, y1), max(0, x0) : min(canvas, x1)] = 1.0
    return m


def foreground_boxes(image: Image.Image, *, threshold: float = 60.0, min_area: int = 12) -> list[Box]:
    """Class-agnostic proposals: boxes of 8-connected components of non-background pixels.

    The background is the median colour of the image border; a pixel is foreground when
    some channel differs from it by more than ``threshold``. Components smaller than
    ``min_area`` pixels are dropped. Boxes come largest first.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    mask = np.abs(rgb - np.median(border, axis=0)).max(-1) > threshold
    from srum_ray.shapes.detect import components

    found = []
    for comp in components(mask, connectivity=8):
        if len(comp) >= min_area:
            rows, cols = comp[:, 0], comp[:, 1]
            found.append((len(comp), Box(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))))
    found.sort(key=lambda a: -a[0])
    return [b for _, b in found]


# --------------------------------------------------------------------------- generator
META_FILE = "shapes_umm.json"
GEN_WEIGHTS = "generator.safetensors"
JUDGE_WEIGHTS = "understanding.safetensors"


def _load_meta(root: Path) -> tuple[ShapesNetConfig, WordTokenizer, dict]:
    meta = json.loads((root / META_FILE).read_text())
    cfg = ShapesNetConfig(**meta["net"])
    return cfg, WordTokenizer(meta["vocab"][3:], cfg.max_words), meta


def save_meta(root: str | Path, cfg: ShapesNetConfig, tokenizer: WordTokenizer, extra: dict | None = None) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"net": dataclasses.asdict(cfg), "vocab": list(tokenizer.vocab), **(extra or {})}
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


class ShapesGenerator(GenerationModel):
    """Flow-matching generator of 64 px shapes-world images (see the module docstring)."""

    def __init__(
        self,
        cfg: ShapesNetConfig,
        gen_cfg: GenerationConfig,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer: WordTokenizer | None = None,
        seed: int = 0,
    ) -> None:
        self.cfg, self.gen_cfg = cfg, gen_cfg
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = tokenizer or WordTokenizer(max_length=cfg.max_words)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ShapesDiT(cfg, len(self.tokenizer.vocab))
        self.net.to(self.device, dtype)

    @property
    def image_size(self) -> int:
        return self.cfg.canvas

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.cfg.latent_channels, self.cfg.latent_side, self.cfg.latent_side)

    def trainable_module(self) -> torch.nn.Module:
        return self.net

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"words": self.tokenizer(prompts)}

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return F.pixel_unshuffle(images_to_pixels(images, self.cfg.canvas), self.cfg.unshuffle)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return pixels_to_images(F.pixel_shuffle(latents.float().cpu(), self.cfg.unshuffle))

    def predict_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        t = batch_times(t, x_t.shape[0], x_t.device)
        words = cond["words"].to(x_t.device)
        return self.net(x_t.to(self.dtype), t, words, self.tokenizer.pad_id)

    def sampling_sigmas(self) -> torch.Tensor:
        """The ``num_inference_steps + 1`` noise levels visited (diffusers' flow Euler with shift)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        n = self.gen_cfg.num_inference_steps
        sched = FlowMatchEulerDiscreteScheduler(shift=self.gen_cfg.shift)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n).tolist())
        return sched.sigmas.clone().float()

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """One image per prompt in chunks of ``generation.batch_size``; image ``i`` depends
        only on the weights, ``prompts[i]`` and ``seeds[i]`` (its noise is seeded by it)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        sigmas = self.sampling_sigmas().to(self.device)
        words = self.tokenizer(prompts)
        latents = []
        step = self.gen_cfg.batch_size
        for start in range(0, len(prompts), step):
            latents.append(self._sample(words[start : start + step], seeds[start : start + step], sigmas))
        x0 = torch.cat(latents) if latents else torch.zeros(0, *self.latent_shape)
        # the latent of the image as drawn (pixels live in [-1, 1]); guidance can overshoot, and
        # training on overshoot would feed it back round after round
        x0 = x0.clamp(-1.0, 1.0)
        return GenerationOutput(self.decode(x0), x0, {"words": words})

    def _sample(self, words: torch.Tensor, seeds: Sequence[int], sigmas: torch.Tensor) -> torch.Tensor:
        noise = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        x = torch.stack(noise).to(self.device)
        words = words.to(self.device)
        guided = self.gen_cfg.guidance_scale > 1.0
        if guided:
            null = self.tokenizer([""]).to(self.device).expand_as(words)
            words = torch.cat([null, words])
        for i in range(len(sigmas) - 1):
            x_in = torch.cat([x, x]) if guided else x
            t = sigmas[i].expand(x_in.shape[0])
            v = self.net(x_in.to(self.dtype), t, words, self.tokenizer.pad_id).float()
            if guided:
                v_null, v_cond = v.chunk(2)
                v = v_null + self.gen_cfg.guidance_scale * (v_cond - v_null)
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x.float().cpu()

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        root = Path(path)
        save_meta(root, self.cfg, self.tokenizer, extra)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.net.state_dict().items()}, root / GEN_WEIGHTS)

    @classmethod
    def from_pretrained(cls, path: str | Path, gen_cfg: GenerationConfig, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "ShapesGenerator":
        from safetensors.torch import load_file

        root = check_files(path, (META_FILE, GEN_WEIGHTS), "shapes generator")
        cfg, tok, _ = _load_meta(root)
        model = cls(cfg, gen_cfg, device, dtype, tokenizer=tok)
        model.net.load_state_dict(load_file(root / GEN_WEIGHTS))
        return model


# ------------------------------------------------------------------------ understanding
_PROMPT_RE = re.compile(r'^Prompt: "(.*)"$', re.MULTILINE)
_REGION_RE = re.compile(r"^Region (\d+): \[(-?[\d.]+), (-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\]$", re.MULTILINE)
_SINGLE_REGION_RE = re.compile(r"^Region: \[(-?[\d.]+), (-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\]$", re.MULTILINE)
_SCORE_TAIL_RE = re.compile(r"Region (\d+): Object: (.*); Score: $")
#: the global score from which the image counts as entirely right (see ShapesUnderstanding)
RIGHT_SCORE = 0.75
#: what the understanding module says to a question it does not know
UNKNOWN_QUESTION = "I cannot answer that question."


@dataclass
class Seen:
    """What the perception network sees in one region: its box and attribute probabilities."""

    box: Box
    probs: dict[str, np.ndarray]

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box.x0 + self.box.x1) / 2, (self.box.y0 + self.box.y1) / 2)

    def name(self) -> str:
        top = {k: ATTRIBUTE_HEADS[k][int(np.argmax(p))] for k, p in self.probs.items()}
        texture = "striped " if top["texture"] == "striped" else ""
        return f"{top['size']} {texture}{top['colour']} {top['shape']}"

    def match(self, q) -> float:
        """Probability that this object has every attribute the query ``q`` names."""
        p = 1.0
        for attr, classes in ATTRIBUTE_HEADS.items():
            want = getattr(q, attr)
            if want is not None:
                p *= float(self.probs[attr][classes.index(want)])
        return p


def constraint_probability(c, seen: Sequence[Seen]) -> float:
    """How likely constraint ``c`` holds given what was seen (objects independent)."""
    from srum_ray.shapes.constraints import Count, Exists, Relation, relation_holds

    if isinstance(c, Exists):
        miss = 1.0
        for s in seen:
            miss *= 1 - s.match(c.obj)
        return 1 - miss
    if isinstance(c, Count):
        # the n likeliest objects match and no other does
        ps = sorted((s.match(c.obj) for s in seen), reverse=True)
        if len(ps) < c.n:
            return 0.0
        return float(np.prod(ps[: c.n]) * np.prod([1 - p for p in ps[c.n :]]))
    if isinstance(c, Relation):
        best = 0.0
        for i, a in enumerate(seen):
            for j, b in enumerate(seen):
                if i != j and relation_holds(c.rel, a.centre, b.centre):
                    best = max(best, a.match(c.a) * b.match(c.b))
        return best
    raise TypeError(f"not a constraint: {c!r}")


class ShapesUnderstanding(UnderstandingModel):
    """Answers the judge's questions about shapes-world images (see the module docstring).

    It reads the prompt with the shapes grammar (:func:`srum_ray.shapes.grammar.parse_prompt`)
    into what it asks for, looks at regions with the learned perception network, and scores:

    * a region: ``2 * max_q P(object matches q) - 1`` over the prompt's object phrases ``q``
      (an object nobody asked for scores near -1);
    * the whole image: its own regions (:meth:`ground`), then ``2 * mean_c P(c holds) - 1``
      over the prompt's constraints (exists / exact count / relation, objects independent):
      1 when all hold, lower the more fail. A whole-image verdict "right" is a score of at
      least :data:`RIGHT_SCORE` (with at most four constraints, one missed scores <= 0.5).

    A prompt outside the grammar gets a one-line answer saying so and no score (the judge's
    parser then reports it missing).
    """

    def __init__(self, cfg: ShapesNetConfig, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        self.cfg = cfg
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = WordTokenizer(max_length=cfg.max_words)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ShapesPerceptionNet(cfg)
        self.net.to(self.device, dtype).eval()

    # ------------------------------------------------------------------ seeing and reasoning
    @torch.no_grad()
    def perceive(self, images: Sequence[Image.Image], boxes: Sequence[Box], batch_size: int = 128) -> list[Seen]:
        """Attribute probabilities of the object in ``boxes[i]`` of ``images[i]``."""
        out: list[Seen] = []
        for s in range(0, len(images), batch_size):
            bs = list(boxes[s : s + batch_size])
            res = self.net(
                images_to_pixels(images[s : s + batch_size], self.cfg.canvas).to(self.device, self.dtype),
                box_masks(bs, self.cfg.canvas).to(self.device, self.dtype),
            )
            probs = {k: torch.softmax(v.float(), -1).cpu().numpy() for k, v in res.items()}
            out += [Seen(b, {k: p[i] for k, p in probs.items()}) for i, b in enumerate(bs)]
        return out

    def region_score(self, spec, seen: Seen) -> float:
        from srum_ray.shapes.grammar import queries_of

        return 2 * max((seen.match(q) for q in queries_of(spec)), default=0.0) - 1

    def global_score(self, spec, seen: Sequence[Seen]) -> float:
        """``2 * mean_c P(c holds) - 1``: graded (every constraint met scores near 1, one of
        three missed about 0.33), so a partly right image is told apart from a wholly wrong one."""
        ps = [constraint_probability(c, seen) for c in spec.constraints]
        return 2 * float(np.mean(ps)) - 1 if ps else 0.0

    # ------------------------------------------------------------------ the text interface
    def answer(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        constraint: AnswerConstraint | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        from srum_ray.shapes.grammar import parse_prompt

        check_answer_args(images, prompts, max_new_tokens, temperature, constraint)
        questions = []
        for image, question in zip(images, prompts):
            kind, prompt, extra = self._read_question(question)
            spec = None
            if kind != "unknown":
                try:
                    spec = parse_prompt(prompt)
                except ValueError as e:
                    kind, extra = "unreadable", {"error": str(e)}
            if kind == "global":
                extra = {"regions": list(enumerate(self.ground([image], [prompt])[0], 1))}
            questions.append((kind, spec, extra))
        # one batched look at every region every question needs
        wanted = [(i, box) for i, (_, _, extra) in enumerate(questions) for _, box in extra.get("regions", [])]
        seen = self.perceive([images[i] for i, _ in wanted], [b for _, b in wanted])
        per_q: list[list[Seen]] = [[] for _ in questions]
        for (i, _), s in zip(wanted, seen):
            per_q[i].append(s)
        return [self._write(kind, spec, extra, per_q[i], constraint) for i, (kind, spec, extra) in enumerate(questions)]

    def _read_question(self, question: str) -> tuple[str, str, dict]:
        m = _PROMPT_RE.search(question)
        if m is None:
            return "unknown", "", {}
        prompt = m.group(1)
        regions = [(int(g[0]), Box(*(float(v) for v in g[1:]))) for g in _REGION_RE.findall(question)]
        if "Answer yes or no." in question:
            single = _SINGLE_REGION_RE.search(question)
            if single is None:
                return "unknown", prompt, {}
            return "filter", prompt, {"regions": [(0, Box(*(float(v) for v in single.groups())))]}
        if "Judge only the layout" in question:
            return "global", prompt, {}
        if not regions:
            return "unknown", prompt, {}
        tail = _SCORE_TAIL_RE.search(question)
        if tail is not None:
            return "score", prompt, {"regions": [r for r in regions if r[0] == int(tail.group(1))][:1]}
        if question.rstrip().endswith("Object:"):
            return "object", prompt, {"regions": regions[:1]}
        return "local", prompt, {"regions": regions}

    def _write(self, kind: str, spec, extra: dict, seen: list[Seen], constraint: AnswerConstraint | None) -> str:
        if kind == "unreadable":
            text = f"I cannot read this prompt: {extra['error']}"
        elif kind == "unknown" or (kind != "global" and not seen):
            text = UNKNOWN_QUESTION
        elif kind == "global":
            score = f"{self.global_score(spec, seen):.2f}"
            text = score if constraint is not None else f"Score: {score}\nReason: {len(seen)} objects seen"
        elif kind == "score":
            text = f"{self.region_score(spec, seen[0]):.2f}"
        elif kind == "object":
            text = seen[0].name()
        elif kind == "filter":
            text = "yes" if self.region_score(spec, seen[0]) > -0.5 else "no"
        else:
            lines = []
            for (rid, _), s in zip(extra["regions"], seen):
                score = self.region_score(spec, s)
                reason = "asked for by the prompt" if score > 0 else "not what the prompt asks for"
                lines.append(f"Region {rid}: Object: {s.name()}; Score: {score:.2f}; Reason: {reason}")
            text = "\n".join(lines)
        if constraint is not None and constraint.kind == "choice":
            return text if text in constraint.choices else constraint.choices[-1]
        return text

    def ground(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return [foreground_boxes(img) for img in images]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        root = Path(path)
        save_meta(root, self.cfg, self.tokenizer, extra)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.net.state_dict().items()}, root / JUDGE_WEIGHTS)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "ShapesUnderstanding":
        from safetensors.torch import load_file

        root = check_files(path, (META_FILE, JUDGE_WEIGHTS), "shapes understanding")
        cfg, _, _ = _load_meta(root)
        model = cls(cfg, device, dtype)
        model.net.load_state_dict(load_file(root / JUDGE_WEIGHTS))
        model.net.eval()
        return model
