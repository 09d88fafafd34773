"""A scene-grid latent: the shapes world's analogue of a latent diffusion model's VAE space.

The canvas is cut into ``grid x grid`` cells (4 x 4 cells of 16 px on the 64 px canvas). A cell
holds at most one object, the one whose centre falls in it, as :data:`CHANNELS` numbers in
[-1, 1]: presence, a +1/-1 code for each shape, colour, size and texture value, and the centre's
offset inside the cell. An empty cell is -1 everywhere but its offsets (0).

* **decode** (the "VAE decoder"): a cell with presence > 0 is an object with the attribute
  values of its largest entries, centred at its offsets; the objects are drawn by the world's
  renderer, so any latent, however far off, decodes to a crisp image of some scene.
* **encode** (the "VAE encoder"): a scene's objects into their cells; an image is read by the
  exact detector first (:func:`encode_image`).

``canonical(x)`` = ``encode(decode(x))``: the latent of the image as drawn. A generator working
here returns it for its samples, as the pixel generator returns its clamped latent, so
self-training sees the scene it drew, not the overshoot of guidance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from srum_ray.shapes.spec import CANVAS, COLOURS, SHAPES, SIZES, TEXTURES, Scene, SceneObject

#: attribute blocks of a cell, in channel order after presence
BLOCKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", tuple(SIZES)), ("texture", TEXTURES),
)
#: presence + one channel per attribute value + (dx, dy)
CHANNELS = 1 + sum(len(values) for _, values in BLOCKS) + 2


def _slices() -> dict[str, slice]:
    out, start = {}, 1
    for name, values in BLOCKS:
        out[name] = slice(start, start + len(values))
        start += len(values)
    out["offset"] = slice(start, start + 2)
    return out


SLICES = _slices()


def _cell(grid: int, canvas: int) -> float:
    if canvas % grid:
        raise ValueError(f"the canvas ({canvas} px) must split into {grid} equal cells")
    return canvas / grid


def encode_scene(scene: Scene, grid: int = 4) -> torch.Tensor:
    """``[CHANNELS, grid, grid]`` latent of ``scene``. Two objects centred in one cell keep the
    one drawn last (it is the one on top); the world's layouts never do that (boxes 3 px apart)."""
    cell = _cell(grid, scene.canvas)
    z = torch.full((CHANNELS, grid, grid), -1.0)
    z[SLICES["offset"]] = 0.0
    for o in scene.objects:
        col = min(grid - 1, max(0, int(o.cx // cell)))
        row = min(grid - 1, max(0, int(o.cy // cell)))
        z[:, row, col] = -1.0
        z[0, row, col] = 1.0
        for name, values in BLOCKS:
            z[SLICES[name].start + values.index(getattr(o, name)), row, col] = 1.0
        # centre (pixel cx, as render draws it) -> offset in [-1, 1] across the cell
        z[SLICES["offset"].start, row, col] = float(np.clip((o.cx + 0.5 - col * cell) / cell * 2 - 1, -1, 1))
        z[SLICES["offset"].start + 1, row, col] = float(np.clip((o.cy + 0.5 - row * cell) / cell * 2 - 1, -1, 1))
    return z


def decode_scene(z: torch.Tensor, canvas: int = CANVAS) -> Scene:
    """The scene a ``[CHANNELS, grid, grid]`` latent says (see the module docstring)."""
    if z.ndim != 3 or z.shape[0] != CHANNELS or z.shape[1] != z.shape[2]:
        raise ValueError(f"a scene latent is [{CHANNELS}, grid, grid], got {list(z.shape)}")
    grid = z.shape[1]
    cell = _cell(grid, canvas)
    z = z.detach().float().cpu()
    objects = []
    for row, col in torch.nonzero(z[0] > 0).tolist():
        v = z[:, row, col]
        attrs = {name: values[int(v[SLICES[name]].argmax())] for name, values in BLOCKS}
        dx, dy = v[SLICES["offset"]].clamp(-1, 1).tolist()
        # the centre stays inside its cell, so the scene encodes back to the same cells
        cx = min(int(np.floor(col * cell + (dx + 1) / 2 * cell)), int(np.ceil((col + 1) * cell)) - 1)
        cy = min(int(np.floor(row * cell + (dy + 1) / 2 * cell)), int(np.ceil((row + 1) * cell)) - 1)
        objects.append(SceneObject(cx=cx, cy=cy, **attrs))
    return Scene(tuple(objects), canvas)


def canonical(latents: torch.Tensor, canvas: int = CANVAS) -> torch.Tensor:
    """``encode(decode(z))`` for each of ``[B, CHANNELS, grid, grid]``: the latent of the scene drawn."""
    grid = latents.shape[-1]
    return torch.stack([encode_scene(decode_scene(z, canvas), grid) for z in latents]) if len(latents) else latents.float()


def scene_from_image(image: Image.Image) -> Scene:
    """The objects the exact detector finds in ``image`` (an achromatic blob gets the nearest
    palette colour to its mean, since a latent cell always names one)."""
    from srum_ray.shapes.detect import detect

    arr = np.asarray(image.convert("RGB").resize((CANVAS, CANVAS)), dtype=np.float32)
    objects = []
    for d in detect(image):
        colour = d.colour
        if colour is None:
            x0, y0, x1, y1 = d.bbox
            mean = arr[y0:y1, x0:x1].reshape(-1, 3).mean(0)
            colour = min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - mean) ** 2)))
        # the detector's centroid is continuous (pixel i covers [i, i+1)); render's centre is an int
        objects.append(SceneObject(d.shape, colour, d.size, d.texture, int(d.cx), int(d.cy)))
    return Scene(tuple(reversed(objects)), CANVAS)  # largest last: it is drawn on top


def encode_image(image: Image.Image, grid: int = 4) -> torch.Tensor:
    return encode_scene(scene_from_image(image), grid)


def encode_scenes(scenes: Sequence[Scene], grid: int = 4) -> torch.Tensor:
    return torch.stack([encode_scene(s, grid) for s in scenes])
