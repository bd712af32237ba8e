"""The procedural world: attributes → RGB images and captions, fully determined by a seed.

An image is one object (a shape of some colour, solid or patterned, of some size and position)
over a textured ground ("terrain"), with pixel noise. Everything is rendered with vectorised
torch operations on whole batches: shapes are signed-distance functions evaluated on the pixel
grid (which also gives one pixel of anti-aliasing for free), terrains and patterns are periodic
or low-resolution-noise fields. Randomness comes only from a ``torch.Generator`` seeded from the
world seed and a stream name, so the same seed gives byte-identical images and captions.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clipdrift.core.errors import UserFacingError

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "heart", "crescent", "arrow")
# The first ten colours make the held-out zero-shot classes; the last four (each a near neighbour
# of one of the ten) make the Pets-like task's classes, so the two never share a class.
COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "white", "black",
           "brown", "navy", "lime", "magenta")
N_ZEROSHOT_COLOURS = 10
PATTERNS = ("solid", "striped", "dotted", "checkered")
TERRAINS = ("desert", "field", "meadow", "forest", "river", "road", "farm", "town", "lake", "hills")

# Plain numbers at import: the warm job server imports this module before it forks, and runs no
# tensor operation there (colour_rgb makes the tensor, once, in the job).
_RGB_VALUES = (
    (0.86, 0.12, 0.12),  # red
    (0.98, 0.55, 0.05),  # orange
    (0.95, 0.88, 0.12),  # yellow
    (0.15, 0.70, 0.20),  # green
    (0.05, 0.62, 0.62),  # teal
    (0.12, 0.28, 0.90),  # blue
    (0.56, 0.20, 0.80),  # purple
    (0.98, 0.52, 0.76),  # pink
    (0.97, 0.97, 0.97),  # white
    (0.04, 0.04, 0.04),  # black
    (0.50, 0.30, 0.12),  # brown
    (0.05, 0.10, 0.42),  # navy
    (0.62, 0.92, 0.12),  # lime
    (0.88, 0.10, 0.62),  # magenta
)


@functools.cache
def colour_rgb() -> torch.Tensor:
    """The RGB value of every colour in COLOURS, (n_colours, 3) in [0, 1]."""
    return torch.tensor(_RGB_VALUES)

_CHUNK = 1024  # images rendered at once: bounds memory, and fixes how noise is drawn


class WorldConfigError(UserFacingError, ValueError):
    """A world or world-task setting is invalid (the message names the config key)."""


@dataclass(frozen=True)
class Shift:
    """A global visual shift applied after rendering (the EuroSAT-like task's "sensor")."""

    contrast: float = 1.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra_noise: float = 0.0


@dataclass(frozen=True)
class WorldConfig:
    """The world's generating parameters; the seed fixes every image and caption.

    ``min_radius``/``max_radius`` are the object radius as a fraction of the image side;
    ``max_offset`` bounds how far the object centre strays from the image centre (fraction of the
    side; it also stays where the object fits). ``noise`` is the pixel noise standard deviation (images in [0, 1]);
    ``texture`` and ``pattern_contrast`` scale how strongly terrains and object patterns show.
    """

    seed: int = 0
    image_size: int = 32
    min_radius: float = 0.28
    max_radius: float = 0.42
    max_offset: float = 0.12
    noise: float = 0.03
    texture: float = 0.07
    pattern_contrast: float = 0.3
    colour_jitter: float = 0.04
    objects: bool = True

    def __post_init__(self):
        if self.image_size < 16:
            raise WorldConfigError(f"world.image_size must be >= 16 pixels, got {self.image_size}")
        if not 0 < self.min_radius <= self.max_radius < 0.5:
            raise WorldConfigError(
                f"world radii must satisfy 0 < min_radius <= max_radius < 0.5, got {self.min_radius}, {self.max_radius}"
            )


@dataclass
class Attributes:
    """Per-image attribute indices (int64) and continuous parameters, one row per image."""

    shape: torch.Tensor
    colour: torch.Tensor
    pattern: torch.Tensor
    terrain: torch.Tensor
    radius: torch.Tensor  # fraction of the image side
    centre: torch.Tensor  # (N, 2) x, y as fractions of the image side
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.shape.shape[0]

    def slice(self, start: int, stop: int) -> Attributes:
        return Attributes(
            *(getattr(self, name)[start:stop] for name in ("shape", "colour", "pattern", "terrain", "radius", "centre")),
            extras={key: value[start:stop] for key, value in self.extras.items()},
        )


def stream_generator(seed: int, *names: str) -> torch.Generator:
    """A generator for one named random stream of a world (stable across Python runs)."""
    digest = hashlib.sha256("/".join([str(seed), *names]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_attributes(world: WorldConfig, n: int, generator: torch.Generator, **fixed: torch.Tensor) -> Attributes:
    """Draw ``n`` images' attributes uniformly; ``fixed`` overrides some (e.g. ``shape=...``)."""

    def categorical(count: int) -> torch.Tensor:
        return torch.randint(count, (n,), generator=generator)

    drawn = {
        "shape": categorical(len(SHAPES)),
        "colour": categorical(len(COLOURS)),
        "pattern": categorical(len(PATTERNS)),
        "terrain": categorical(len(TERRAINS)),
    }
    radius = world.min_radius + (world.max_radius - world.min_radius) * torch.rand(n, generator=generator)
    # The object may touch the border but its centre stays inside by (radius - 10%).
    reach = (0.5 - (radius - 0.1).clamp(min=0.0)).clamp(max=world.max_offset).unsqueeze(1)
    centre = 0.5 + reach * (2 * torch.rand(n, 2, generator=generator) - 1)
    extras = {
        "ground": torch.rand(n, generator=generator),  # ground brightness
        "tint": torch.rand(n, 3, generator=generator),  # ground colour cast
        "phase": torch.rand(n, 2, generator=generator),  # texture / pattern offsets
        "jitter": torch.rand(n, 3, generator=generator),  # object colour jitter
        "caption": torch.rand(n, 3, generator=generator),  # caption choices
    }
    for name, value in fixed.items():
        drawn[name] = value.to(torch.int64)
    return Attributes(radius=radius, centre=centre, extras=extras, **drawn)


def render(world: WorldConfig, attrs: Attributes, generator: torch.Generator, shift: Shift = Shift()) -> torch.Tensor:
    """Render uint8 images ``(N, 3, S, S)``; pixel noise is drawn from ``generator``."""
    chunks = [
        _render_chunk(world, attrs.slice(start, start + _CHUNK), generator, shift)
        for start in range(0, len(attrs), _CHUNK)
    ]
    size = world.image_size
    return torch.cat(chunks) if chunks else torch.empty(0, 3, size, size, dtype=torch.uint8)


def _render_chunk(world: WorldConfig, attrs: Attributes, generator: torch.Generator, shift: Shift) -> torch.Tensor:
    size = world.image_size
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # pixel centres, y down
    image = _ground(world, attrs, xs, ys, generator)
    if world.objects:
        colour, coverage = _object(world, attrs, xs, ys)
        image = image * (1 - coverage) + colour * coverage
    image = image * shift.contrast + torch.tensor(shift.tint).view(1, 3, 1, 1) + (1 - shift.contrast) * 0.5
    noise = world.noise + shift.extra_noise
    image = image + noise * torch.randn(image.shape, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _ground(world: WorldConfig, attrs: Attributes, xs, ys, generator) -> torch.Tensor:
    """Low-saturation mid-grey ground with a terrain texture in [-1, 1] scaled by ``texture``."""
    n, size = len(attrs), world.image_size
    level = 0.38 + 0.2 * attrs.extras["ground"]
    tint = 0.08 * (attrs.extras["tint"] - 0.5)
    base = (level.unsqueeze(1) + tint).view(n, 3, 1, 1)
    # Drawn for every image whatever its terrain, so the stream does not depend on the terrains.
    blobs = torch.rand(n, 1, 5, 5, generator=generator)
    texture = torch.zeros(n, size, size)
    for index, terrain in enumerate(TERRAINS):
        chosen = (attrs.terrain == index).nonzero().squeeze(1)
        if chosen.numel():
            phase = attrs.extras["phase"][chosen].view(-1, 2, 1, 1) * 2 * math.pi
            texture[chosen] = _TERRAIN_FIELDS[terrain](xs, ys, phase, blobs[chosen], size)
    return base + world.texture * texture.unsqueeze(1)


def _wave(u: torch.Tensor, period: float, phase: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * u / period + phase)


def _square_wave(u: torch.Tensor, period: float, phase: torch.Tensor) -> torch.Tensor:
    return torch.sign(_wave(u, period, phase))


def _upsampled_blobs(blobs: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(blobs, size=(size, size), mode="bicubic", align_corners=False)[:, 0] * 2 - 1


# Each terrain: (xs, ys, phase (n, 2, 1, 1), blobs (n, 1, 5, 5), size) -> (n, S, S) in about [-1, 1].
_TERRAIN_FIELDS = {
    "desert": lambda xs, ys, ph, bl, s: torch.zeros(ph.shape[0], s, s),
    "field": lambda xs, ys, ph, bl, s: _square_wave(ys, 6.0, ph[:, 0]),
    "meadow": lambda xs, ys, ph, bl, s: _square_wave(xs, 6.0, ph[:, 0]),
    "forest": lambda xs, ys, ph, bl, s: (_upsampled_blobs(bl, s) * 2.5).clamp(-1, 1),
    "river": lambda xs, ys, ph, bl, s: _wave(ys + 2.5 * torch.sin(2 * math.pi * xs / 16 + ph[:, 1]), 8.0, ph[:, 0]),
    "road": lambda xs, ys, ph, bl, s: (
        (_wave(xs, 10.0, ph[:, 0]) > 0.8) | (_wave(ys, 10.0, ph[:, 1]) > 0.8)).float() * 2 - 1,
    "farm": lambda xs, ys, ph, bl, s: _square_wave(xs, 8.0, ph[:, 0]) * _square_wave(ys, 8.0, ph[:, 1]),
    "town": lambda xs, ys, ph, bl, s: ((_wave(xs, 6.0, ph[:, 0]) + _wave(ys, 6.0, ph[:, 1])) > 1.0).float() * 2 - 1,
    "lake": lambda xs, ys, ph, bl, s: torch.cos(ph[:, 0]) * (xs / s * 2 - 1) + torch.sin(ph[:, 0]) * (ys / s * 2 - 1),
    "hills": lambda xs, ys, ph, bl, s: _square_wave(xs + ys, 9.0, ph[:, 0]),
}


def _object(world: WorldConfig, attrs: Attributes, xs, ys) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel object colour ``(n, 3, S, S)`` and anti-aliased coverage ``(n, 1, S, S)``."""
    n, size = len(attrs), world.image_size
    radius_px = (attrs.radius * size).view(n, 1, 1)
    cx, cy = (attrs.centre * size).unbind(1)
    u = (xs - cx.view(n, 1, 1)) / radius_px  # object frame: unit radius
    v = (ys - cy.view(n, 1, 1)) / radius_px
    distance = torch.zeros(n, size, size)
    for index, shape in enumerate(SHAPES):
        chosen = (attrs.shape == index).nonzero().squeeze(1)
        if chosen.numel():
            distance[chosen] = _SHAPE_SDF[shape](u[chosen], v[chosen])
    coverage = (0.5 - distance * radius_px).clamp(0, 1).unsqueeze(1)

    rgb = colour_rgb()[attrs.colour] + world.colour_jitter * (2 * attrs.extras["jitter"] - 1)
    on = _pattern_mask(attrs, xs, ys, size)
    # Pattern "off" pixels move the colour towards mid-grey: visible on black and white alike.
    faded = rgb * (1 - world.pattern_contrast) + 0.5 * world.pattern_contrast
    colour = faded.view(n, 3, 1, 1) + (rgb - faded).view(n, 3, 1, 1) * on.unsqueeze(1)
    return colour.clamp(0, 1), coverage


def _pattern_mask(attrs: Attributes, xs, ys, size: int) -> torch.Tensor:
    """1 where the object shows its full colour, 0 where a pattern fades it; (n, S, S)."""
    n = len(attrs)
    phase = attrs.extras["phase"].view(n, 2, 1, 1) * 2 * math.pi
    period = 5.0 * size / 32
    masks = {
        "solid": torch.ones(n, size, size),
        "striped": (_wave(xs + ys, period * 1.2, phase[:, 0]) > 0).float(),
        "dotted": ((_wave(xs, period, phase[:, 0]) + _wave(ys, period, phase[:, 1])) < 1.0).float(),
        "checkered": (_wave(xs, period, phase[:, 0]) * _wave(ys, period, phase[:, 1]) > 0).float(),
    }
    stacked = torch.stack([masks[name] for name in PATTERNS], dim=1)
    return stacked[torch.arange(n), attrs.pattern]


def _box(u, v, half_w, half_h):
    return torch.maximum(u.abs() - half_w, v.abs() - half_h)


def _circle(u, v, r=1.0, cu=0.0, cv=0.0):
    return torch.sqrt((u - cu) ** 2 + (v - cv) ** 2) - r


def _half_planes(u, v, normals, offsets):
    """Convex polygon as an intersection of half-planes n·p <= offset (approximate distance)."""
    return torch.stack([nu * u + nv * v - c for (nu, nv), c in zip(normals, offsets)]).amax(0)


_SIN30, _COS30 = 0.5, math.sqrt(3) / 2


def _star(u, v):
    angle, r = torch.atan2(v, u), torch.sqrt(u * u + v * v)
    outline = 0.45 + 0.6 * ((torch.cos(5 * (angle + math.pi / 2)) + 1) / 2) ** 1.5
    return (r - outline) * 0.6  # scale: the polar distance overstates the true one at the tips


def _heart(u, v):
    lobes = torch.minimum(_circle(u, v, 0.52, -0.45, -0.35), _circle(u, v, 0.52, 0.45, -0.35))
    point = _half_planes(u, v, [(0.0, -1.0), (0.77, 0.64), (-0.77, 0.64)], [0.35, 0.6, 0.6])
    return torch.minimum(lobes, point)


def _arrow(u, v):
    shaft = _box(u + 0.45, v, 0.55, 0.22)
    head = _half_planes(u, v, [(-1.0, 0.0), (0.62, 0.78), (0.62, -0.78)], [0.1, 0.62, 0.62])
    return torch.minimum(shaft, head)


# Signed distance in the unit-radius object frame: negative inside.
_SHAPE_SDF = {
    "circle": lambda u, v: _circle(u, v, 0.92),
    "square": lambda u, v: _box(u, v, 0.8, 0.8),
    "triangle": lambda u, v: _half_planes(
        u, v, [(0.0, 1.0), (_COS30, -_SIN30), (-_COS30, -_SIN30)], [0.55, 0.55, 0.55]
    ),
    "diamond": lambda u, v: (u.abs() + v.abs() - 1.05) / math.sqrt(2),
    "cross": lambda u, v: torch.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95)),
    "star": _star,
    "ring": lambda u, v: (torch.sqrt(u * u + v * v) - 0.72).abs() - 0.26,
    "heart": _heart,
    "crescent": lambda u, v: torch.maximum(_circle(u, v, 0.95), -_circle(u, v, 0.8, 0.45, -0.25)),
    "arrow": _arrow,
}


def size_word(world: WorldConfig, radius: float) -> str | None:
    """"small"/"large" for the bottom/top quarter of the world's radius range, else nothing."""
    fraction = (radius - world.min_radius) / max(world.max_radius - world.min_radius, 1e-9)
    return "small" if fraction < 0.25 else "large" if fraction > 0.75 else None


def position_word(world: WorldConfig, centre: tuple[float, float]) -> str | None:
    """A position phrase when the object sits clearly off-centre, else nothing."""
    x, y = centre
    offsets = {"on the left": 0.5 - x, "on the right": x - 0.5, "at the top": 0.5 - y, "at the bottom": y - 0.5}
    phrase, offset = max(offsets.items(), key=lambda item: item[1])
    return phrase if offset > 0.75 * world.max_offset else None


_TEMPLATES = (
    "a photo of a {obj}",
    "a photo of a {obj} {place}",
    "a {obj}",
    "a {obj} {place}",
    "a picture of a {obj} {where}",
    "there is a {obj} {place}",
    "a photo of the {obj} {where}",
    "{obj} {place}",
)


def captions(world: WorldConfig, attrs: Attributes) -> list[str]:
    """One caption per image naming its attributes through varied templates.

    Colour and shape are always named; pattern, size, terrain and position sometimes, chosen by
    the per-image ``caption`` draws so captions are as deterministic as the images.
    """
    draws = attrs.extras["caption"].tolist()
    rows = zip(attrs.shape.tolist(), attrs.colour.tolist(), attrs.pattern.tolist(), attrs.terrain.tolist(),
               attrs.radius.tolist(), attrs.centre.tolist(), draws)
    return [_caption(world, *row) for row in rows]


def _caption(world, shape, colour, pattern, terrain, radius, centre, draw) -> str:
    words = [COLOURS[colour], SHAPES[shape]]
    if draw[1] < 0.3:  # a nuisance attribute: named rarely, so captions hinge on colour and shape
        words.insert(0, PATTERNS[pattern])
    size = size_word(world, radius)
    if size and draw[2] < 0.5:
        words.insert(0, size)
    where = position_word(world, centre) or f"in the {TERRAINS[terrain]}"
    place = f"in the {TERRAINS[terrain]}"
    template = _TEMPLATES[min(int(draw[0] * len(_TEMPLATES)), len(_TEMPLATES) - 1)]
    return template.format(obj=" ".join(words), place=place, where=where)
