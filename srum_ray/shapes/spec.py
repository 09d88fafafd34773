"""What a shapes-world scene is made of: the vocabulary every other shapes module shares.

A scene is a plain canvas with 1 to 4 flat objects. Each object has a shape, a colour, a
size and a texture, and sits at a centre in pixels. Striped objects alternate their colour
with a darker shade of it (never with the background), so an object's hue is the same
whatever its texture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CANVAS = 64
BACKGROUND = (245, 245, 245)

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
#: half-extent (circumradius) in pixels
SIZES: dict[str, int] = {"small": 7, "large": 12}
TEXTURES = ("solid", "striped")
#: stripes: the object's colour times this factor, every other STRIPE_PERIOD/2 rows
STRIPE_SHADE = 0.5
STRIPE_PERIOD = 4
MAX_OBJECTS = 4


@dataclass(frozen=True)
class SceneObject:
    """One object; ``cx, cy`` is its centre in pixels of a ``CANVAS`` x ``CANVAS`` image."""

    shape: str
    colour: str
    size: str
    texture: str
    cx: int
    cy: int

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, tuple(SIZES)),
            ("texture", self.texture, TEXTURES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {allowed}")

    @property
    def radius(self) -> int:
        return SIZES[self.size]

    def bbox(self) -> tuple[int, int, int, int]:
        """Pixel box ``[x0, y0, x1, y1)`` the object is drawn inside."""
        r = self.radius
        return (self.cx - r, self.cy - r, self.cx + r + 1, self.cy + r + 1)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    canvas: int = CANVAS
