"""The procedural, captioned scenes the built-in models are trained on, and the colour classifier that
measures them. Everything is drawn from a seed; nothing is downloaded.

Caption grammar (every caption it produces, and any other caption it accepts, is a valid prompt):

    caption    := count [size] colour shape[s] [position] "on" background
    count      := "a" | "an" | "one" | "two" | "three"         (a / an / one: one shape)
    size       := "small" | "large"                              (omitted: medium)
    colour     := red | orange | yellow | green | cyan | blue | purple | pink | white | gray | black
    shape      := circle | square | triangle | diamond | star    (plural with two or three)
    position   := "at the top left" | "at the top" | "at the top right" | "on the left" | "in the center"
                | "on the right" | "at the bottom left" | "at the bottom" | "at the bottom right"
                  (one shape only; omitted: anywhere)
    background := ("a" | "an") colour "background"              (solid)
                | ("a" | "an") colour "gradient"                (the colour at the top, darker below)
                | colour "and" colour "stripes"                 (four vertical bands, alternating)

The shapes' colour differs from every background colour. Examples: "a red circle on a blue
background", "two yellow squares on a white background", "a green triangle at the top left on a
black background", "three small pink stars on blue and white stripes", "a large cyan diamond on a
gray gradient".

`classify_colours` is the measuring instrument for the built-in models' quality: each pixel gets a
palette colour from its HSV value (black / white / gray by value and saturation, the rest by hue),
the background colour is the most common one on the image border, the foreground colour the most
common one among the remaining pixels. `position_matches` measures layout, which colours alone do not:
for a caption that places its one shape, whether the pixels of the shape's colour centre in the named
ninth of the image.
"""

from __future__ import annotations

import colorsys
import functools
import math
import random
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

# name -> sRGB; chosen so that every colour and its gradient shade classify as themselves
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 35),
    "green": (45, 165, 55),
    "cyan": (35, 195, 215),
    "blue": (35, 70, 205),
    "purple": (135, 55, 185),
    "pink": (235, 95, 195),
    "white": (240, 240, 240),
    "gray": (125, 125, 125),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
SIZES = {"small": (0.07, 0.10), "": (0.11, 0.16), "large": (0.18, 0.24)}  # radius / image side
POSITIONS = {
    "at the top left": (0.25, 0.25),
    "at the top": (0.5, 0.25),
    "at the top right": (0.75, 0.25),
    "on the left": (0.25, 0.5),
    "in the center": (0.5, 0.5),
    "on the right": (0.75, 0.5),
    "at the bottom left": (0.25, 0.75),
    "at the bottom": (0.5, 0.75),
    "at the bottom right": (0.75, 0.75),
}
GRADIENT_SHADE = 0.75  # the bottom of a gradient background: this fraction of the colour
STRIPE_BANDS = 4  # vertical bands across the image, alternating colours
Background = Literal["solid", "gradient", "stripes"]
VOCABULARY = sorted(
    {*COUNTS, *(s for s in SIZES if s), *COLOURS, *SHAPES, *(f"{s}s" for s in SHAPES), "on", "and"}
    | {w for p in POSITIONS for w in p.split()}
    | {"background", "gradient", "stripes"}
)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    size: str  # "small" | "" (medium) | "large"
    position: str  # a key of POSITIONS, or "" for anywhere
    background: Background
    background_colours: tuple[str, ...]  # one colour, two for stripes
    count_word: str = ""  # "a" / "an" / "one" for a single shape ("" picks the article)

    def caption(self) -> str:
        if self.count == 1:
            count = self.count_word or "a"
            if count in ("a", "an"):  # the article agrees with the next word
                count = "an" if (self.size or self.colour)[0] in "aeiou" else "a"
        else:
            count = {2: "two", 3: "three"}[self.count]
        noun = self.shape + ("s" if self.count > 1 else "")
        words = [count, self.size, self.colour, noun, self.position, "on", self.background_phrase()]
        return " ".join(w for w in words if w)

    def background_phrase(self) -> str:
        first = self.background_colours[0]
        article = "an" if first[0] in "aeiou" else "a"
        if self.background == "solid":
            return f"{article} {first} background"
        if self.background == "gradient":
            return f"{article} {first} gradient"
        return f"{first} and {self.background_colours[1]} stripes"


def sample_scene(rng: random.Random) -> Scene:
    background: Background = rng.choices(("solid", "gradient", "stripes"), weights=(0.6, 0.2, 0.2))[0]
    n_bg = 2 if background == "stripes" else 1
    colours = rng.sample(COLOURS, n_bg + 1)
    count = rng.choices((1, 2, 3), weights=(0.6, 0.2, 0.2))[0]
    return Scene(
        colour=colours[0],
        shape=rng.choice(SHAPES),
        count=count,
        size=rng.choices(("small", "", "large"), weights=(0.25, 0.5, 0.25))[0],
        position=rng.choice([*POSITIONS, ""]) if count == 1 else "",
        background=background,
        background_colours=tuple(colours[1:]),
        count_word=rng.choice(("", "", "one")) if count == 1 else "",
    )


Split = Literal["train", "calibration", "evaluation"]


def split_of(caption: str) -> Split:
    """Every caption belongs to one split, by a stable hash: the built-in models are trained on
    "train" captions only (80%), calibration prompts come from "calibration" (10%) and evaluation
    prompts from "evaluation" (10%), so the three never share a prompt (nor a scene: "one" and "an"
    hash as "a", so that the article does not move a scene to another split)."""
    words = caption.split()
    canonical = " ".join("a" if w == "an" or (i == 0 and w == "one") else w for i, w in enumerate(words))
    bucket = zlib.crc32(canonical.encode()) % 10
    return "calibration" if bucket == 0 else "evaluation" if bucket == 1 else "train"


def sample_scenes(n: int, seed: int, split: Split | None = None) -> list[Scene]:
    """`n` scenes drawn from `seed`, only those whose caption is in `split` (any split if None)."""
    rng = random.Random(seed)
    out: list[Scene] = []
    while len(out) < n:
        scene = sample_scene(rng)
        if split is None or split_of(scene.caption()) == split:
            out.append(scene)
    return out


def prompts(n: int, split: Split, seed: int = 0) -> list[str]:
    """`n` distinct captions of one split."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        caption = sample_scene(rng).caption()
        if split_of(caption) == split:
            seen.setdefault(caption)
    return list(seen)


def parse(caption: str) -> Scene:
    """The scene a caption of the grammar describes (layout details left to the renderer)."""
    words = caption.lower().replace(",", " ").split()

    def fail(why: str) -> ValueError:
        return ValueError(f"not a caption of the scene grammar ({why}): {caption!r}")

    if "on" not in words:
        raise fail("no 'on <background>'")
    split = len(words) - 1 - words[::-1].index("on")
    head, tail = words[:split], words[split + 1 :]
    if len(head) < 3 or head[0] not in COUNTS:
        raise fail("starts with a count and names a colour and a shape")
    count_word, count = head[0], COUNTS[head[0]]
    rest = head[1:]
    size = rest.pop(0) if rest and rest[0] in ("small", "large") else ""
    if len(rest) < 2 or rest[0] not in PALETTE:
        raise fail("unknown colour")
    colour, noun, position = rest[0], rest[1], " ".join(rest[2:])
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    if shape not in SHAPES:
        raise fail(f"unknown shape {noun!r}")
    if position and (position not in POSITIONS or count > 1):
        raise fail(f"position {position!r} (one shape only)")
    if len(tail) == 3 and tail[0] in ("a", "an") and tail[2] in ("background", "gradient"):
        background: Background = "solid" if tail[2] == "background" else "gradient"
        bg: tuple[str, ...] = (tail[1],)
    elif len(tail) == 4 and tail[1] == "and" and tail[3] == "stripes":
        background, bg = "stripes", (tail[0], tail[2])
    else:
        raise fail("background")
    if any(c not in PALETTE for c in bg) or colour in bg:
        raise fail("background colours, which differ from the shapes' colour")
    return Scene(colour, shape, count, size, position, background, bg, count_word if count == 1 else "")


# --- rendering -----------------------------------------------------------------------------------
def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(math.pi / 4 + k * math.pi / 2) for k in range(4)]
        return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in corners]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "triangle":
        corners = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in corners]
    # star: five points, inner radius 0.45 r
    points = [(-math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else 0.45 * r) for k in range(10)]
    return [(cx + rr * math.cos(a + angle), cy + rr * math.sin(a + angle)) for a, rr in points]


def _background(scene: Scene, size: int) -> Image.Image:
    first = np.array(PALETTE[scene.background_colours[0]], dtype=np.float32)
    if scene.background == "solid":
        arr = np.broadcast_to(first, (size, size, 3))
    elif scene.background == "gradient":
        ramp = np.linspace(1.0, GRADIENT_SHADE, size, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(first * ramp, (size, size, 3))
    else:
        second = np.array(PALETTE[scene.background_colours[1]], dtype=np.float32)
        column = (np.arange(size) * STRIPE_BANDS // size) % 2 == 1
        arr = np.broadcast_to(np.where(column[None, :, None], second, first), (size, size, 3))
    return Image.fromarray(np.ascontiguousarray(arr).round().astype(np.uint8))


def render(scene: Scene, size: int = 256, seed: int = 0) -> Image.Image:
    """The scene as an RGB image, shapes anti-aliased (drawn at 4x and downsampled)."""
    rng = random.Random(seed)
    big = size * 4
    image = _background(scene, big)
    draw = ImageDraw.Draw(image)
    lo, hi = SIZES[scene.size]
    placed: list[tuple[float, float, float]] = []
    for _ in range(scene.count):
        r = rng.uniform(lo, hi) * big
        for _attempt in range(50):
            if scene.position:
                px, py = POSITIONS[scene.position]
                cx, cy = (px + rng.uniform(-0.04, 0.04)) * big, (py + rng.uniform(-0.04, 0.04)) * big
            else:
                cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
            if all(math.hypot(cx - x, cy - y) > (r + rr) * 1.05 for x, y, rr in placed):
                break
        placed.append((cx, cy, r))
        fill = PALETTE[scene.colour]
        if scene.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_shape_points(scene.shape, cx, cy, r, rng.uniform(-0.3, 0.3)), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def shape_mask(scene: Scene, image: Image.Image) -> np.ndarray:
    """Where `image`, a render of `scene`, shows the shapes: the pixels that differ from the background."""
    shapes = np.asarray(image, dtype=np.int16)
    background = np.asarray(_background(scene, image.width), dtype=np.int16)
    return np.abs(shapes - background).sum(-1) > 24


# --- measuring -----------------------------------------------------------------------------------
_HUES = (  # upper hue bound in degrees -> colour, for saturated pixels
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (165, "green"),
    (200, "cyan"),
    (255, "blue"),
    (290, "purple"),
    (340, "pink"),
    (360, "red"),
)


def pixel_colour(r: int, g: int, b: int) -> str:
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    if v < 0.22:
        return "black"
    if s < 0.25:
        return "white" if v > 0.62 else "gray"
    degrees = h * 360
    return next(name for bound, name in _HUES if degrees < bound)


@functools.cache
def _colour_table() -> np.ndarray:
    """pixel_colour over a 32-level RGB cube, as indices into COLOURS."""
    levels = range(4, 256, 8)
    return np.array(
        [[[COLOURS.index(pixel_colour(r, g, b)) for b in levels] for g in levels] for r in levels]
    )


def _classes(image: Image.Image) -> np.ndarray:
    """Per pixel, an index into COLOURS."""
    q = np.asarray(image.convert("RGB")) // 8
    return _colour_table()[q[..., 0], q[..., 1], q[..., 2]]


def classify_colours(image: Image.Image, border: float = 0.06) -> tuple[str, str | None]:
    """(background colour, foreground colour or None when nothing but background is seen)."""
    classes = _classes(image)
    h, w = classes.shape
    bh, bw = max(1, round(h * border)), max(1, round(w * border))
    ring = np.ones_like(classes, dtype=bool)
    ring[bh:-bh, bw:-bw] = False
    border_counts = Counter(classes[ring].tolist())
    (bg, _), *others = border_counts.most_common()
    background = {bg} | {c for c, n in others if n > 0.25 * ring.sum()}  # stripes: two colours
    rest = classes[~np.isin(classes, list(background))]
    if rest.size < 0.004 * classes.size:
        return COLOURS[bg], None
    fg = Counter(rest.tolist()).most_common(1)[0][0]
    return COLOURS[bg], COLOURS[fg]


def colours_match(scene: Scene, image: Image.Image) -> tuple[bool, bool]:
    """(background matches, foreground matches) for a generated image of `scene`."""
    bg, fg = classify_colours(image)
    return bg in scene.background_colours, fg == scene.colour


def position_matches(scene: Scene, image: Image.Image) -> bool | None:
    """For a caption that places its one shape (None for any other): is the centroid of the pixels in
    the shape's colour in the third of the width and the third of the height that the position names?
    Renders keep the centre within 0.04 of the position, so a correct picture always matches; colour
    scattered over the whole image centres in the middle and matches "in the center" only."""
    if not scene.position:
        return None
    ys, xs = np.nonzero(_classes(image) == COLOURS.index(scene.colour))
    if xs.size == 0:
        return False
    h, w = image.height, image.width
    px, py = POSITIONS[scene.position]
    return int(3 * xs.mean() / w) == int(3 * px) and int(3 * ys.mean() / h) == int(3 * py)
