"""Pictures a person would rather look at than read: image, boxes, scores and reward map.

Only PIL and numpy. Colours: boxes are green for positive scores, red for negative, grey for
filtered boxes and amber for missing scores; the reward map uses a blue (negative) - white
(neutral) - red (positive) scale around the convention's neutral value.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from srum_ray.types import SampleRecord

PANEL = 256
CAPTION = 62


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def diverging_rgb(values: np.ndarray, neutral: float, span: float) -> np.ndarray:
    """Map ``values [H, W]`` to RGB uint8: blue below ``neutral``, white at it, red above.

    ``span`` is the distance from neutral to full colour.
    """
    x = np.clip((values - neutral) / max(span, 1e-8), -1.0, 1.0)
    pos, neg = np.clip(x, 0, 1), np.clip(-x, 0, 1)
    r = 255 * (1 - neg)
    g = 255 * (1 - np.maximum(pos, neg))
    b = 255 * (1 - pos)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _box_colour(score: float | None, kept: bool) -> tuple[int, int, int]:
    if not kept:
        return (150, 150, 150)
    if score is None:
        return (255, 176, 0)
    return (0, 200, 60) if score >= 0 else (230, 30, 30)


def overlay_picture(image: Image.Image, rec: SampleRecord, reward_map: np.ndarray) -> Image.Image:
    """Two panels (image with boxes, reward map blended over it) and a caption.

    Args:
        image: the generated RGB image.
        rec: its record (boxes, kept flags, region scores, global score, alpha).
        reward_map: ``[H, W]`` R before alpha.
    """
    scale = PANEL / max(image.width, image.height)
    size = (round(image.width * scale), round(image.height * scale))
    base = image.convert("RGB").resize(size, Image.NEAREST)
    left = base.copy()
    draw = ImageDraw.Draw(left)
    font = _font()
    for i, box in enumerate(rec.boxes):
        kept = rec.kept[i] if i < len(rec.kept) else True
        score = rec.region_scores[i] if i < len(rec.region_scores) else None
        colour = _box_colour(score, kept)
        xy = [v * scale for v in box]
        draw.rectangle([xy[0], xy[1], xy[2] - 1, xy[3] - 1], outline=colour, width=2)
        label = f"{i}:" + ("filtered" if not kept else ("?" if score is None else f"{score:+.2f}"))
        draw.text((xy[0] + 3, xy[1] + 2), label, fill=colour, font=font)
    neutral, span = (0.5, 0.5) if rec.convention == "public_code" else (0.0, 1.0)
    heat = Image.fromarray(diverging_rgb(reward_map, neutral, span)).resize(size, Image.NEAREST)
    right = Image.blend(base, heat, 0.65)
    out = Image.new("RGB", (size[0] * 2 + 6, size[1] + CAPTION), "white")
    out.paste(left, (0, 0))
    out.paste(right, (size[0] + 6, 0))
    d = ImageDraw.Draw(out)
    g = "missing" if rec.global_score is None else f"{rec.global_score:+.2f}"
    a = "-" if rec.alpha is None else f"{rec.alpha:.2f}"
    prompt = rec.prompt if len(rec.prompt) <= 80 else rec.prompt[:77] + "..."
    d.text((4, size[1] + 4), prompt, fill="black", font=font)
    status = "" if rec.trained else "  (not trained: " + (rec.drop_reason or "dropped") + ")"
    d.text(
        (4, size[1] + 22),
        f"global {g}  alpha {a}  v{rec.weights_version}  {rec.convention}/{rec.overlap}{status}",
        fill="black",
        font=font,
    )
    _reward_legend(d, (4, size[1] + 42), neutral, span, font)
    return out


def _reward_legend(d: ImageDraw.ImageDraw, xy: tuple[int, int], neutral: float, span: float, font) -> None:
    """The reward map's colour scale, ``neutral - span`` (blue) to ``neutral + span`` (red)."""
    x, y = xy
    lo, hi = neutral - span, neutral + span
    label = f"reward map  {lo:g}"
    d.text((x, y), label, fill="black", font=font)
    x0 = x + round(d.textlength(label, font=font)) + 6
    ramp = diverging_rgb(np.linspace(lo, hi, 120)[None, :], neutral, span)[0]
    for i, colour in enumerate(ramp):
        d.line([x0 + i, y + 1, x0 + i, y + 10], fill=tuple(int(c) for c in colour))
    d.rectangle([x0, y + 1, x0 + 119, y + 10], outline=(120, 120, 120))
    d.text((x0 + 126, y), f"{hi:g}   (white: {neutral:g}, neutral)", fill="black", font=font)


def contact_sheet(pictures: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    """Pictures on a grid (all assumed the same size as the first)."""
    if not pictures:
        return Image.new("RGB", (1, 1), "white")
    w, h = pictures[0].size
    cols = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / cols)
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, p in enumerate(pictures):
        sheet.paste(p, ((i % cols) * w, (i // cols) * h))
    return sheet


#: line colours of :func:`line_plot`, in series order
SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75), (127, 127, 127))


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], int]:
    """Round tick values covering ``[lo, hi]`` and the decimals their labels need.

    The step is 1, 2, 2.5 or 5 times a power of ten, the smallest that cuts ``hi - lo`` into
    at most ``target`` intervals; the ticks run from the last multiple of the step at or below
    ``lo`` to the first at or above ``hi`` (so up to ``target + 2`` intervals). Returns
    ``(ticks, decimals)``: the labels need ``decimals`` digits after the point.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        hi = lo + 1.0
    raw = (hi - lo) / target
    power = 10.0 ** math.floor(math.log10(raw))
    mantissa = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * (1 - 1e-9))
    step = mantissa * power
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    # 2.5 x 10^k needs one decimal more than 10^k
    decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if mantissa == 2.5 else 0))
    return [round(k * step, decimals + 3) for k in range(first, last + 1)], decimals


def line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (640, 400),
    x_tick_labels: dict[float, str] | None = None,
) -> Image.Image:
    """A line chart of named ``(x, y)`` series with axes, ticks and a legend (PIL only).

    Every x value of the data gets a tick, labelled with the number or ``x_tick_labels[x]``."""
    w, h = size
    left, right, top, bottom = 56, 150, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = _font()
    points = [p for s in series.values() for p in s]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    if y_range is not None:  # the axis is the range asked for; ticks inside it
        y0, y1 = y_range
        y1 = y1 if y1 > y0 else y0 + 1
        y_ticks, decimals = nice_ticks(y0, y1)
        y_ticks = [t for t in y_ticks if y0 - 1e-9 * (y1 - y0) <= t <= y1 + 1e-9 * (y1 - y0)]
    else:  # the axis ends on round ticks around the data
        y_ticks, decimals = nice_ticks(min(ys), max(ys))
        y0, y1 = y_ticks[0], y_ticks[-1]

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for yv in y_ticks:
        _, yp = px(x0, yv)
        d.line([left - 4, yp, left, yp], fill=(0, 0, 0))
        d.line([left, yp, w - right, yp], fill=(230, 230, 230))
        d.text((4, yp - 6), f"{yv:.{decimals}f}", fill=(0, 0, 0), font=font)
    for xv in sorted({p[0] for p in points}):
        xp, _ = px(xv, y0)
        d.line([xp, h - bottom, xp, h - bottom + 4], fill=(0, 0, 0))
        label = (x_tick_labels or {}).get(xv, f"{xv:g}")
        d.text((xp - 3 * len(label), h - bottom + 6), label, fill=(0, 0, 0), font=font)
    d.text((left, 8), title, fill=(0, 0, 0), font=font)
    d.text(((w - right + left) / 2 - 20, h - 16), x_label, fill=(0, 0, 0), font=font)
    d.text((4, top - 16), y_label, fill=(0, 0, 0), font=font)
    for i, (name, pts) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        pts = sorted(pts)
        if len(pts) > 1:
            d.line([px(*p) for p in pts], fill=colour, width=2)
        for p in pts:
            cx, cy = px(*p)
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        ly = top + 8 + 16 * i
        d.line([w - right + 10, ly + 6, w - right + 30, ly + 6], fill=colour, width=3)
        d.text((w - right + 36, ly), name, fill=(0, 0, 0), font=font)
    return img
