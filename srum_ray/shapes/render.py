"""Draw a :class:`~srum_ray.shapes.spec.Scene` (crisp, no anti-aliasing, deterministic)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from srum_ray.shapes.spec import BACKGROUND, COLOURS, STRIPE_PERIOD, STRIPE_SHADE, Scene, SceneObject


def outline(obj: SceneObject) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``obj`` (None for a circle, drawn as an ellipse)."""
    r, cx, cy = obj.radius, obj.cx, obj.cy
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        s = r * 0.8
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if obj.shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if obj.shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(f"unknown shape {obj.shape!r}")


def object_mask(obj: SceneObject, canvas: int) -> np.ndarray:
    """``[canvas, canvas]`` bool mask of the pixels ``obj`` covers."""
    im = Image.new("L", (canvas, canvas), 0)
    d = ImageDraw.Draw(im)
    poly = outline(obj)
    if poly is None:
        r = obj.radius
        d.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=255)
    else:
        d.polygon(poly, fill=255)
    return np.asarray(im) > 0


def render(scene: Scene) -> Image.Image:
    """RGB image of the scene; later objects are drawn over earlier ones."""
    px = np.empty((scene.canvas, scene.canvas, 3), dtype=np.uint8)
    px[:] = BACKGROUND
    rows = np.arange(scene.canvas)[:, None]
    for obj in scene.objects:
        mask = object_mask(obj, scene.canvas)
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        if obj.texture == "striped":
            dark = (rows % STRIPE_PERIOD) >= STRIPE_PERIOD // 2
            fill = np.where(dark[..., None], colour * STRIPE_SHADE, colour)
            fill = np.broadcast_to(fill, (scene.canvas, scene.canvas, 3))
        else:
            fill = np.broadcast_to(colour, (scene.canvas, scene.canvas, 3))
        px[mask] = fill[mask].astype(np.uint8)
    return Image.fromarray(px, "RGB")
