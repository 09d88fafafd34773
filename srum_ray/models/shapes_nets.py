"""The shapes-world generator networks and the sizes of both networks.

:class:`ShapesNetConfig` (saved with the weights) and the two generator architectures: the
plain patch transformer (:class:`ShapesDiT`) and the U-Net whose middle is a DiT
(:class:`ShapesUDiT`), which share the joint attention over the prompt's words and the latent's
tokens (:class:`Block`, adaLN-zero) and the optional text encoder in front of it
(``text_depth``, ``segments``, ``pooled_text``, ``word_pos_std``; docs/RESULTS.md, "Binding").
:mod:`srum_ray.models.shapes_umm` wraps them as a :class:`~srum_ray.models.base.GenerationModel`
and re-exports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: words that open an object phrase (``ShapesNetConfig.segments``)
PHRASE_STARTS = ("a", "an", "one", "two", "three", "four")


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


def _add_prompt_embeddings(net: nn.Module, cfg: "ShapesNetConfig", vocab: Sequence[str]) -> None:
    """The word and word-position embeddings, then ``cfg.text_depth`` text-only layers and, with
    ``cfg.segments``, the phrase embedding (those exist only when asked for, so older
    checkpoints load unchanged); created in this order, the same in both networks."""
    d = cfg.width
    net.word_emb = nn.Embedding(len(vocab), d)
    net.word_pos = nn.Parameter(torch.randn(cfg.max_words, d) * cfg.word_pos_std)
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
        _add_prompt_embeddings(self, cfg, vocab)
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
        _add_prompt_embeddings(self, cfg, vocab)
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
