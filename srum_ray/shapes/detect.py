"""Find the objects in a shapes-world image with classical image analysis (no learned model).

The pipeline, for an RGB image of ``CANVAS`` x ``CANVAS`` pixels (other sizes are resampled):

1. **Foreground**: a pixel is foreground when some channel differs from ``BACKGROUND`` by more
   than ``FG_THRESHOLD`` (about 40% of the ~200 levels every palette colour, and its darker
   stripe shade, sits away from the background). For a blurred edge the cut falls near the
   half-way mix, so areas stay close to the render's. A 3x3 majority vote then cleans the
   mask: noise along a blurred edge otherwise makes one-pixel spurs that distort the
   box-fill feature (it also shaves one pixel off each square corner and sharp tip, for
   renders and prototypes alike).
2. **Components**: 4-connected components of the foreground (a breadth-first flood fill over
   the foreground pixels only). A component holding two colours, each with a large share
   (see ``SPLIT_SHARE``), is split by colour, so touching objects of different colours stay
   apart. Components under ``MIN_AREA`` pixels are specks and are ignored: the smallest real
   object (a small star or triangle) covers about 70 pixels, noise specks a few.
3. **Colour**: each pixel votes for the palette colour with the nearest hue, weighted by its
   chroma; the darker stripe shade has the same hue, so striped objects vote like solid ones.
   A component whose median chroma is below ``MIN_CHROMA`` (grey smudge) gets colour None.
   The closest palette hues (orange 28, yellow 49 degrees) are 21 degrees apart, so a hue
   drift up to ~10 degrees, or a saturation cut to 40%, still reads the right colour.
4. **Texture**: row profile of brightness (per row, the median over the component's
   interior of max channel / the colour's max channel). Stripes make it alternate ~1,
   ~``STRIPE_SHADE`` every ``STRIPE_PERIOD / 2`` rows; the score is the amplitude of the
   profile's Fourier component at period ``STRIPE_PERIOD`` (any phase): 0.35 for a crisp
   striped render, ~0.2 after a Gaussian blur of 0.7 px, ~0.1 after 1.0 px, and under 0.06
   for a solid object under noise of std 8 levels. ``STRIPE_MIN_CONTRAST`` sits between.
5. **Shape**: scale-free geometry: bounding-box fill ratio, solidity (area over the area of
   the convex hull of the pixel corners), the vertical offset of the centroid in the box
   (positive for a triangle with its apex up) and the width/height ratio. The shape is the
   nearest prototype, where prototypes are these features measured through this very
   pipeline on renders of each shape at each size, crisp and blurred (``PROTOTYPE_BLURS``),
   computed once, so detector and renderer cannot drift apart and soft images are compared
   with soft references.
6. **Size**: nearest, in log area, among the crisp renders of that shape at each size (the
   two sizes differ ~2.8x in area; blur changes an area by well under 20%).

Every threshold is a module constant so tests and callers can see what is assumed.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from srum_ray.shapes.render import render
from srum_ray.shapes.spec import BACKGROUND, CANVAS, COLOURS, SHAPES, SIZES, STRIPE_PERIOD, Scene, SceneObject

#: a channel must differ from the background by more than this to be foreground (0-255)
FG_THRESHOLD = 80
#: components smaller than this many pixels are specks (smallest object: ~64 px)
MIN_AREA = 20
#: a second colour holding this share of a component (and MIN_AREA pixels) splits it off
SPLIT_SHARE = 0.25
#: below this median chroma (max - min channel) a component has no colour
MIN_CHROMA = 25
#: pixels with less chroma than this cast no colour vote
VOTE_CHROMA = 12
#: striped when bright rows and dark rows differ by this fraction of the object's brightness
STRIPE_MIN_CONTRAST = 0.07
#: per-feature scales of the nearest-prototype shape classifier (fill, solidity, yskew, aspect)
SHAPE_FEATURE_SCALE = np.array([0.12, 0.10, 0.06, 0.25])
#: Gaussian blur radii at which each shape is rendered to make the classifier's prototypes
PROTOTYPE_BLURS = (0.0, 0.7, 1.0)


@dataclass(frozen=True)
class Detection:
    """One object found in an image.

    Attributes:
        shape, colour, size, texture: attribute names from :mod:`srum_ray.shapes.spec`
            (``colour`` is None for an achromatic blob).
        cx, cy: centroid in pixels (continuous coordinates: pixel ``(i, j)`` covers
            ``[i, i+1) x [j, j+1)``, so a render's object centre ``cx`` is seen at ``cx + 0.5``).
        area: pixel count.
        bbox: ``(x0, y0, x1, y1)`` pixel box, end exclusive.
        fill, solidity, stripe: the raw features behind ``shape`` and ``texture``.
    """

    shape: str
    colour: str | None
    size: str
    texture: str
    cx: float
    cy: float
    area: int
    bbox: tuple[int, int, int, int]
    fill: float
    solidity: float
    stripe: float


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of ``[..., 3]`` float RGB."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return (h * 60.0) % 360.0


_PALETTE_NAMES = tuple(COLOURS)
_PALETTE_RGB = np.array([COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)
_PALETTE_HUE = _hue(_PALETTE_RGB)
_PALETTE_VALUE = _PALETTE_RGB.max(-1)


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """``[CANVAS, CANVAS, 3]`` float32 RGB from a PIL image or a uint8/float array."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected an [H, W, 3] RGB array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        image = Image.fromarray(arr, "RGB")
    if not isinstance(image, Image.Image):
        raise TypeError(f"detect needs a PIL image or an [H, W, 3] array, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (CANVAS, CANVAS):
        shrink = image.size[0] > CANVAS
        image = image.resize((CANVAS, CANVAS), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def components(mask: np.ndarray, connectivity: int = 4) -> list[np.ndarray]:
    """Connected components (``connectivity`` 4 or 8) of a ``[H, W]`` bool mask, each as
    ``[N, 2]`` (row, col) indices, in scan order of their first pixel."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, pix = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pix.append((r, c))
            for dr, dc in steps:
                rr, cc = r + dr, c + dc
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(np.array(pix, dtype=np.int64))
    return out


def _hull_area(rows: np.ndarray, cols: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares at ``rows, cols`` (monotone chain)."""
    pts = set()
    for r in np.unique(rows):
        cs = cols[rows == r]
        lo, hi = int(cs.min()), int(cs.max()) + 1
        pts.update({(lo, int(r)), (lo, int(r) + 1), (hi, int(r)), (hi, int(r) + 1)})
    p = sorted(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    hull = lower[:-1] + upper[:-1]
    return 0.5 * abs(sum(hull[i][0] * hull[i - 1][1] - hull[i - 1][0] * hull[i][1] for i in range(len(hull))))


def _shape_features(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``[4]`` (fill, solidity, yskew, aspect) and the bbox of one component."""
    x0, x1, y0, y1 = int(cols.min()), int(cols.max()) + 1, int(rows.min()), int(rows.max()) + 1
    w, h, area = x1 - x0, y1 - y0, len(rows)
    fill = area / (w * h)
    solidity = area / max(_hull_area(rows, cols), 1.0)
    yskew = (rows.mean() + 0.5 - (y0 + y1) / 2) / h
    return np.array([fill, solidity, yskew, w / h]), (x0, y0, x1, y1)


def _foreground(rgb: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: some channel differs from the background by more than FG_THRESHOLD.

    The raw mask is then cleaned by a 3x3 majority vote (a pixel is kept when at least 5 of
    the 9 in its window are foreground), which removes the one-pixel spurs and notches that
    noise makes along a blurred edge (they distort the box-fill feature).
    """
    raw = np.abs(rgb - np.array(BACKGROUND, dtype=np.float32)).max(-1) > FG_THRESHOLD
    h, w = raw.shape
    pad = np.pad(raw, 1).astype(np.int8)
    votes = sum(pad[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return votes >= 5


@functools.lru_cache(maxsize=1)
def _prototypes() -> tuple[np.ndarray, tuple[str, ...], dict[tuple[str, str], float]]:
    """Shape features of every shape x size, crisp and blurred, and crisp areas (cached).

    Each prototype is the mean feature vector over all colours and textures of one shape at
    one size and one blur radius of ``PROTOTYPE_BLURS``, measured through the same foreground
    and component steps as :func:`detect`; so a blurred image is compared with blurred
    references instead of with crisp ones its corners and points no longer resemble.
    """
    feats, names, areas = [], [], {}
    c = CANVAS // 2
    for shape in SHAPES:
        for size in SIZES:
            for blur in PROTOTYPE_BLURS:
                group, sizes_seen = [], []
                for colour in _PALETTE_NAMES:
                    for texture in ("solid", "striped"):
                        im = render(Scene((SceneObject(shape, colour, size, texture, c, c),)))
                        if blur:
                            im = im.filter(ImageFilter.GaussianBlur(blur))
                        comps = [k for k in components(_foreground(_to_array(im))) if len(k) >= MIN_AREA]
                        if len(comps) != 1:
                            raise RuntimeError(f"prototype {shape}/{size}/{colour}/{texture} blur {blur}: {len(comps)} components")
                        group.append(_shape_features(comps[0][:, 0], comps[0][:, 1])[0])
                        sizes_seen.append(len(comps[0]))
                feats.append(np.mean(group, 0))
                names.append(shape)
                if blur == 0.0:
                    areas[(shape, size)] = float(np.mean(sizes_seen))
    return np.stack(feats), tuple(names), areas


def _classify_shape(feat: np.ndarray) -> str:
    protos, names, _ = _prototypes()
    d = (((protos - feat) / SHAPE_FEATURE_SCALE) ** 2).sum(-1)
    return names[int(d.argmin())]


def _classify_size(shape: str, area: int) -> str:
    _, _, areas = _prototypes()
    return min(SIZES, key=lambda s: abs(math.log(area) - math.log(areas[(shape, s)])))


def _stripe_score(pix: np.ndarray, rows: np.ndarray, cols: np.ndarray, ref_value: float) -> float:
    """Spread of the row-wise brightness profile inside one component (0 solid, ~0.5 striped)."""
    inside = np.zeros((CANVAS + 2, CANVAS + 2), dtype=bool)
    inside[rows + 1, cols + 1] = True
    interior = inside[rows, cols + 1] & inside[rows + 2, cols + 1] & inside[rows + 1, cols] & inside[rows + 1, cols + 2]
    if interior.sum() < 8:
        interior = np.ones_like(interior)
    value = pix[interior].max(-1) / max(ref_value, 1.0)
    r = rows[interior]
    ys = np.unique(r)
    if len(ys) < STRIPE_PERIOD:
        return 0.0
    profile = np.array([np.median(value[r == y]) for y in ys])
    wave = np.exp(-2j * np.pi * ys / STRIPE_PERIOD)
    return float(2.0 * abs(((profile - profile.mean()) * wave).sum()) / len(ys))


def _describe(rgb: np.ndarray, rows: np.ndarray, cols: np.ndarray, colour_idx: int | None) -> Detection:
    pix = rgb[rows, cols]
    feat, bbox = _shape_features(rows, cols)
    shape = _classify_shape(feat)
    if colour_idx is None:
        colour, ref_value = None, float(np.quantile(pix.max(-1), 0.9))
    else:
        colour, ref_value = _PALETTE_NAMES[colour_idx], float(_PALETTE_VALUE[colour_idx])
    stripe = _stripe_score(pix, rows, cols, ref_value)
    return Detection(
        shape=shape,
        colour=colour,
        size=_classify_size(shape, len(rows)),
        texture="striped" if stripe >= STRIPE_MIN_CONTRAST else "solid",
        cx=float(cols.mean() + 0.5),
        cy=float(rows.mean() + 0.5),
        area=int(len(rows)),
        bbox=bbox,
        fill=float(feat[0]),
        solidity=float(feat[1]),
        stripe=stripe,
    )


def foreground_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: the pixels :func:`detect` reads as drawn (not background)."""
    return _foreground(_to_array(image))


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """Objects in a shapes-world image, ordered by area (largest first).

    Args:
        image: PIL image or ``[H, W, 3]`` RGB array (uint8, or float in [0, 1] / [0, 255]);
            resampled to ``CANVAS`` x ``CANVAS`` when its size differs.

    Returns:
        One :class:`Detection` per component of at least ``MIN_AREA`` pixels.
    """
    rgb = _to_array(image)
    fg = _foreground(rgb)
    chroma = rgb.max(-1) - rgb.min(-1)
    hue = _hue(rgb)
    diff = np.abs(hue[..., None] - _PALETTE_HUE)
    nearest = np.minimum(diff, 360.0 - diff).argmin(-1)
    out = []
    for comp in components(fg):
        if len(comp) < MIN_AREA:
            continue
        rows, cols = comp[:, 0], comp[:, 1]
        if np.median(chroma[rows, cols]) < MIN_CHROMA:
            out.append(_describe(rgb, rows, cols, None))
            continue
        weight = np.where(chroma[rows, cols] >= VOTE_CHROMA, chroma[rows, cols], 0.0)
        label = nearest[rows, cols]
        votes = np.bincount(label, weights=weight, minlength=len(_PALETTE_NAMES))
        counts = np.bincount(label[weight > 0], minlength=len(_PALETTE_NAMES))
        major = [k for k in range(len(votes)) if counts[k] >= MIN_AREA and counts[k] >= SPLIT_SHARE * len(comp)]
        if len(major) <= 1:
            out.append(_describe(rgb, rows, cols, int(votes.argmax())))
            continue
        # several colours: give each pixel to its nearest major colour, then re-split spatially
        sub = np.array(major)[_nearest_major(hue[rows, cols], major)]
        for k in major:
            mask = np.zeros(fg.shape, dtype=bool)
            mask[rows[sub == k], cols[sub == k]] = True
            for part in components(mask):
                if len(part) >= MIN_AREA:
                    out.append(_describe(rgb, part[:, 0], part[:, 1], k))
    return sorted(out, key=lambda d: -d.area)


def _nearest_major(hue: np.ndarray, major: list[int]) -> np.ndarray:
    """Index into ``major`` of the palette hue nearest each of ``[N]`` hues."""
    diff = np.abs(hue[:, None] - _PALETTE_HUE[major])
    return np.minimum(diff, 360.0 - diff).argmin(-1)


def scene_objects_match(scene: Scene, detections: list[Detection]) -> bool:
    """Whether ``detections`` are exactly the scene's objects' attributes (as a multiset)."""
    want = sorted((o.shape, o.colour, o.size, o.texture) for o in scene.objects)
    got = sorted((d.shape, d.colour or "", d.size, d.texture) for d in detections)
    return want == got
