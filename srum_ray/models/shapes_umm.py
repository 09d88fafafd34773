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
(x-prediction), because a token is narrower than its patch. With ``latent: scene`` it works instead on
a 4 x 4 scene-grid latent decoded by the world's renderer (:mod:`srum_ray.shapes.scene_latent`;
experimental, not shipped). Sampling is the diffusers flow-matching Euler scheduler with shift, with
classifier-free guidance when ``generation.guidance_scale > 1`` (the null prompt is the
lone ``<cls>`` token, trained by prompt dropout).

Understanding lives in :mod:`srum_ray.models.shapes_understanding`: a learned perception
network (attributes of the object in a region), the prompt read by the shapes grammar's parser,
and probabilistic reasoning; it answers the judge's questions in text. This module holds what
both halves share (vocabulary, sizes, the transformer block, checkpoint files; the image
helpers and latent codecs are in :mod:`srum_ray.models.shapes_latent`)
and the generator.
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
from srum_ray.models.base import GenerationModel, GenerationOutput, batch_times, check_files
from srum_ray.models.shapes_latent import latent_codec

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
#: words that open an object phrase (``ShapesNetConfig.segments``)
PHRASE_STARTS = ("a", "an", "one", "two", "three", "four")
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
    #: smallest t the x-prediction divides by (``arch: dit``)
    min_t: float = 0.05
    #: ``udit``: convolutional encoder / decoder (channels per level, 64 -> 32 -> 16 px) around
    #: the transformer, velocity prediction; ``dit``: the plain patch transformer, x-prediction
    arch: str = "udit"
    conv_channels: tuple[int, ...] = (16, 32, 64)
    #: the generator's latent space: ``pixels`` (the image, space-to-depth by ``unshuffle``) or
    #: ``scene`` (a ``grid x grid`` scene-grid latent, :mod:`srum_ray.shapes.scene_latent`,
    #: decoded by the world's renderer; needs ``arch: dit``)
    latent: str = "pixels"
    grid: int = 4
    #: what ``arch: dit`` predicts: ``x`` (the clean latent, turned into a velocity; the pixel
    #: DiT, whose tokens are narrower than their patches) or ``v`` (the velocity itself: the
    #: scene latent's 17 numbers a cell fit in a token, and x-prediction's 1/t^2 weighting of
    #: the v-loss would train the low-noise end, not the layout)
    prediction: str = "x"
    #: text-only transformer layers over the prompt's words before the joint blocks (a text
    #: encoder; 0: the words enter the joint attention as embedded)
    text_depth: int = 0
    #: add an embedding of each word's object phrase (a phrase starts at an article or a number
    #: word), as a parser-aware text encoder would mark which words describe which object
    segments: bool = False
    #: modulate every block by the mean of the prompt's word embeddings as well as the time
    #: (off: the prompt reaches the image only through attention, as in PixArt)
    pooled_text: bool = True
    #: standard deviation the word position embeddings start at (0.02: 50 times below the word
    #: embeddings' N(0, 1), so word order barely registers; 1.0: the word embeddings' own scale)
    word_pos_std: float = 0.02

    def __post_init__(self) -> None:
        if self.arch not in ("dit", "udit"):
            raise ValueError(f"ShapesNetConfig.arch must be 'dit' or 'udit', got {self.arch!r}")
        for name, width, heads in (("", self.width, self.heads), ("judge_", self.judge_width, self.judge_heads)):
            if width % heads:
                raise ValueError(f"ShapesNetConfig.{name}width ({width}) must be a multiple of {name}heads ({heads})")
        if self.text_depth < 0:
            raise ValueError(f"ShapesNetConfig.text_depth must be 0 or more, got {self.text_depth}")
        if self.prediction not in ("x", "v"):
            raise ValueError(f"ShapesNetConfig.prediction must be 'x' or 'v', got {self.prediction!r}")
        if self.latent not in ("pixels", "scene"):
            raise ValueError(f"ShapesNetConfig.latent must be 'pixels' or 'scene', got {self.latent!r}")
        if self.latent == "scene" and (self.arch != "dit" or self.grid % self.patch or self.canvas % self.grid):
            raise ValueError(
                f"a scene latent needs arch 'dit', a grid ({self.grid}) that the patch ({self.patch}) divides "
                f"and that divides the canvas ({self.canvas}); got arch {self.arch!r}"
            )
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if self.arch == "udit" and 2 ** (len(self.conv_channels) - 1) != self.unshuffle:
            raise ValueError(
                f"udit's conv encoder must bring the {self.canvas} px image down to the {self.latent_side} px "
                f"latent grid: {len(self.conv_channels)} levels (conv_channels {self.conv_channels}) halve it "
                f"{len(self.conv_channels) - 1} times, but unshuffle is {self.unshuffle}"
            )

    @property
    def latent_channels(self) -> int:
        if self.latent == "scene":
            from srum_ray.shapes.scene_latent import CHANNELS

            return CHANNELS
        return 3 * self.unshuffle**2

    @property
    def latent_side(self) -> int:
        return self.grid if self.latent == "scene" else self.canvas // self.unshuffle


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


def _patchify(h: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), C p p]`` tokens, row-major."""
    b, ch, hh, ww = h.shape
    return h.reshape(b, ch, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (hh // p) * (ww // p), ch * p * p)


def _unpatchify(tok: torch.Tensor, p: int, ch: int, hh: int, ww: int) -> torch.Tensor:
    """Inverse of :func:`_patchify`."""
    b = tok.shape[0]
    return tok.reshape(b, hh // p, ww // p, ch, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, hh, ww)


def _condition(net: nn.Module, t: torch.Tensor, words: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning vector (time, + the mean of the prompt's word embeddings unless
    ``cfg.pooled_text`` is off) and the word mask."""
    word_keep = words != pad_id
    if not net.cfg.pooled_text:
        return net.t_mlp(_timestep_features(t, net.cfg.width)), word_keep
    pooled = (net.word_emb(words) * word_keep[..., None]).sum(1) / word_keep.sum(1, keepdim=True).clamp(min=1)
    return net.t_mlp(_timestep_features(t, net.cfg.width)) + net.text_mlp(pooled), word_keep


def _joint_attention(net: nn.Module, img: torch.Tensor, words: torch.Tensor, word_keep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Image tokens (already projected to width D) and the prompt's words through ``net.blocks``
    as one sequence; returns the image tokens."""
    img = img + net.img_pos
    txt = net.word_emb(words) + net.word_pos[: words.shape[1]]
    if net.cfg.segments:
        txt = txt + net.segment_emb(phrase_index(words, net.phrase_starts, net.segment_emb.num_embeddings))
    for blk in getattr(net, "text_blocks", ()):
        txt = blk(txt, src_key_padding_mask=~word_keep)
    seq = torch.cat([txt, img], dim=1)
    keep = torch.cat([word_keep, torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)], dim=1)
    for blk in net.blocks:
        seq = blk(seq, cond, keep)
    return seq[:, words.shape[1] :]


def phrase_index(words: torch.Tensor, starts: torch.Tensor, n: int) -> torch.Tensor:
    """Each word's object phrase: 0 before the first word in ``starts`` (ids), then 1, 2, ...
    counting the words in ``starts`` up to and including it; capped at ``n - 1``."""
    return torch.isin(words, starts).long().cumsum(1).clamp(max=n - 1)


def _add_text_encoder(net: nn.Module, cfg: "ShapesNetConfig", vocab: Sequence[str]) -> None:
    """``cfg.text_depth`` text-only layers and, with ``cfg.segments``, the phrase embedding
    (modules exist only when asked for, so older checkpoints load unchanged)."""
    d = cfg.width
    if cfg.text_depth:
        net.text_blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.text_depth)
        )
    if cfg.segments:
        net.segment_emb = nn.Embedding(8, d)
        nn.init.normal_(net.segment_emb.weight, std=0.02)
        # ids of the words that open an object phrase (a vocabulary without them has none)
        ids = [i for i, w in enumerate(vocab) if w in PHRASE_STARTS]
        net.register_buffer("phrase_starts", torch.tensor(ids, dtype=torch.long), persistent=False)


class ShapesDiT(nn.Module):
    """Velocity ``v(x_t, t, words)`` on ``[B, 48, 16, 16]`` latents (see the module docstring).

    The network predicts the clean latent ``x0`` and returns the velocity it implies,
    ``(x_t - x0) / max(t, min_t)`` (x-prediction, trained with the velocity loss like every
    generator here): a token's width is smaller than its patch's 192 values, so it could not
    pass per-pixel noise through, while clean flat-colour patches are easy to predict.
    """

    def __init__(self, cfg: ShapesNetConfig, vocab: Sequence[str]) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.width, cfg.patch, cfg.latent_channels
        n_img = (cfg.latent_side // p) ** 2
        self.word_emb = nn.Embedding(len(vocab), d)
        self.word_pos = nn.Parameter(torch.randn(cfg.max_words, d) * cfg.word_pos_std)
        _add_text_encoder(self, cfg, vocab)
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
        p = self.cfg.patch
        b, ch, hh, ww = x.shape
        cond, word_keep = _condition(self, t, words, pad_id)
        img = _joint_attention(self, self.patch_in(_patchify(x, p)), words, word_keep, cond)
        shift, scale = self.ada_out(cond).chunk(2, dim=-1)
        out = _unpatchify(self.patch_out(_modulate(self.norm_out(img), shift, scale)), p, ch, hh, ww)
        if self.cfg.prediction == "v":
            return out
        x0_hat = out
        # x-prediction: a token (width D) cannot carry the 192 noise values of its patch, but a
        # clean flat-colour patch lies on a low-dimensional set; v = (x_t - x0) / t
        return (x - x0_hat) / t.clamp(min=self.cfg.min_t)[:, None, None, None]


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second modulated by the conditioning vector; residual."""

    def __init__(self, c_in: int, c_out: int, cond: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.film = nn.Linear(cond, 2 * c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class ShapesUDiT(nn.Module):
    """Velocity ``v(x_t, t, words)`` on ``[B, 48, 16, 16]`` latents: a convolutional encoder
    (64 -> 32 -> 16 px, :attr:`ShapesNetConfig.conv_channels`), the joint-attention transformer
    on 2 x 2 patches of its 16 px map (8 x 8 tokens next to the prompt's words), and a
    convolutional decoder with skip connections back to 64 px (a U-Net whose middle is a DiT).

    The transformer decides the layout (which object goes where, bound to which words); the
    convolutions draw edges at pixel level and carry the noise through, so it predicts the
    velocity directly, the loss SPEC 2.5 trains, with every time weighted alike.
    """

    def __init__(self, cfg: ShapesNetConfig, vocab: Sequence[str]) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, chans = cfg.width, cfg.patch, cfg.conv_channels
        n_img = (cfg.latent_side // p) ** 2
        self.word_emb = nn.Embedding(len(vocab), d)
        self.word_pos = nn.Parameter(torch.randn(cfg.max_words, d) * cfg.word_pos_std)
        _add_text_encoder(self, cfg, vocab)
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.stem = nn.Conv2d(3, chans[0], 3, padding=1)
        self.down = nn.ModuleList(_ResBlock(c, c, d) for c in chans)
        self.downsample = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        self.patch_in = nn.Linear(chans[-1] * p * p, d)
        self.img_pos = nn.Parameter(torch.randn(n_img, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.heads) for _ in range(cfg.depth))
        self.norm_mid = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.patch_out = nn.Linear(d, chans[-1] * p * p)
        self.up = nn.ModuleList(_ResBlock(2 * c, c, d) for c in reversed(chans))
        self.upsample = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(reversed(chans[:-1]), reversed(chans[1:])))
        self.norm_out = nn.GroupNorm(min(8, chans[0]), chans[0])
        self.out = nn.Conv2d(chans[0], 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, words: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
        cfg, p = self.cfg, self.cfg.patch
        cond, word_keep = _condition(self, t, words, pad_id)
        h = self.stem(F.pixel_shuffle(x, cfg.unshuffle))
        skips = []
        for i, blk in enumerate(self.down):
            h = blk(h, cond)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        _, ch, hh, ww = h.shape
        img = _joint_attention(self, self.patch_in(_patchify(h, p)), words, word_keep, cond)
        h = _unpatchify(self.patch_out(self.norm_mid(img)), p, ch, hh, ww)
        for i, blk in enumerate(self.up):
            h = blk(torch.cat([h, skips.pop()], dim=1), cond)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        v = self.out(F.silu(self.norm_out(h)))
        return F.pixel_unshuffle(v, cfg.unshuffle)


def build_generator_net(cfg: ShapesNetConfig, vocab: Sequence[str]) -> nn.Module:
    """The generator network ``cfg.arch`` names, for the tokenizer's vocabulary ``vocab``."""
    return ShapesUDiT(cfg, vocab) if cfg.arch == "udit" else ShapesDiT(cfg, vocab)


# --------------------------------------------------------------------------- generator
META_FILE = "shapes_umm.json"
GEN_WEIGHTS = "generator.safetensors"
JUDGE_WEIGHTS = "understanding.safetensors"


def _load_meta(root: Path) -> tuple[ShapesNetConfig, WordTokenizer, dict]:
    meta = json.loads((root / META_FILE).read_text())
    # checkpoints written before ``arch`` existed hold the plain patch transformer
    cfg = ShapesNetConfig(**{"arch": "dit", **meta["net"]})
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
        self.codec = latent_codec(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = build_generator_net(cfg, self.tokenizer.vocab)
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
        return self.codec.encode_images(images)

    def encode_scenes(self, scenes: Sequence) -> torch.Tensor:
        """Latents of shapes-world scenes (training data): exact for the scene latent, the
        rendered image's for pixels."""
        return self.codec.encode_scenes(scenes)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return self.codec.decode(latents)

    def as_drawn(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent of the image a sample decodes to (see :mod:`srum_ray.models.shapes_latent`)."""
        return self.codec.as_drawn(latents)

    supports_null_condition = True

    def null_condition(self, cond: dict[str, torch.Tensor], drop: torch.Tensor) -> dict[str, torch.Tensor]:
        words = cond["words"].clone()
        words[drop.to(words.device)] = self.tokenizer([""]).to(words.device)
        return {**cond, "words": words}

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
        x0 = self.as_drawn(torch.cat(latents) if latents else torch.zeros(0, *self.latent_shape))
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
