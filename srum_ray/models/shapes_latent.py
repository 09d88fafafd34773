"""The shapes generator's latent spaces, one codec each, chosen once from ``ShapesNetConfig.latent``.

* :class:`PixelLatent` (``latent: pixels``, the shipped default): the 64 px RGB image in
  [-1, 1], space-to-depth by ``unshuffle``; lossless, so encode and decode are reshapes.
* :class:`SceneLatent` (``latent: scene``): the ``grid x grid`` scene-grid latent of
  :mod:`srum_ray.shapes.scene_latent`, decoded by the world's renderer as a VAE decoder would be.

Both answer the same four questions for :class:`~srum_ray.models.shapes_umm.ShapesGenerator`:
the latent of images, of shapes-world scenes (training data), the images of latents, and the
latent of the image a sample actually decodes to (``as_drawn``: what self-training trains on).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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


class LatentCodec(Protocol):
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...

    def encode_scenes(self, scenes: Sequence) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> list[Image.Image]: ...

    def as_drawn(self, latents: torch.Tensor) -> torch.Tensor: ...


class PixelLatent:
    """The image itself, space-to-depth by ``unshuffle``; a sample as drawn is its latent
    clamped to [-1, 1] (guidance can overshoot, and training on the overshoot would feed it
    back round after round)."""

    def __init__(self, canvas: int, unshuffle: int) -> None:
        self.canvas, self.unshuffle = canvas, unshuffle

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return F.pixel_unshuffle(images_to_pixels(images, self.canvas), self.unshuffle)

    def encode_scenes(self, scenes: Sequence) -> torch.Tensor:
        from srum_ray.shapes.render import render

        return self.encode_images([render(s) for s in scenes])

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return pixels_to_images(F.pixel_shuffle(latents.float().cpu(), self.unshuffle))

    def as_drawn(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)


class SceneLatent:
    """The scene-grid latent: scenes encode exactly, images through the exact detector, and a
    sample as drawn is the latent re-encoded from the scene it decodes to."""

    def __init__(self, canvas: int, grid: int) -> None:
        from srum_ray.shapes import scene_latent

        self.canvas, self.grid, self._codec = canvas, grid, scene_latent

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        images = list(images)
        if not images:
            return torch.zeros(0, self._codec.CHANNELS, self.grid, self.grid)
        return torch.stack([self._codec.encode_image(im, self.grid) for im in images])

    def encode_scenes(self, scenes: Sequence) -> torch.Tensor:
        return self._codec.encode_scenes(scenes, self.grid)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        from srum_ray.shapes.render import render

        return [render(self._codec.decode_scene(z, self.canvas)) for z in latents]

    def as_drawn(self, latents: torch.Tensor) -> torch.Tensor:
        return self._codec.canonical(latents, self.canvas)


def latent_codec(cfg) -> LatentCodec:
    """The codec of ``cfg.latent`` (a validated :class:`~srum_ray.models.shapes_umm.ShapesNetConfig`)."""
    if cfg.latent == "scene":
        return SceneLatent(cfg.canvas, cfg.grid)
    return PixelLatent(cfg.canvas, cfg.unshuffle)
