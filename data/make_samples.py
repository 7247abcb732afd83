"""Generate the two small synthetic sample datasets that ship with vitft.

The output is committed so that the quickstart and the tests run on real files in real folders:

* ``defect/{train,val,test}/{normal,crack,dent}/*.jpg`` -- industrial surface inspection.
  Brushed-metal, cast/concrete and painted surface textures with random tint, brightness,
  illumination gradient and sensor noise. ``crack`` images carry a thin dark irregular crack,
  ``dent`` images a shaded elliptical depression, ``normal`` images only the texture (plus the
  same harmless stains that may appear in every class).
* ``defect_masks/{split}/{crack,dent}/<same stem>.png`` -- binary masks (mode ``L``, 0/255) of
  where each defect was drawn, used to check that explainability heatmaps land on the defect.
  They live outside ``defect/`` so they are never scanned as training images.
* ``defect_multilabel/images/part_*.jpg`` + ``labels.csv`` (``path,labels``) -- multi-label
  inspection: the same surfaces showing none, one or both of ``crack`` and ``dent`` (an empty
  ``labels`` cell: no defect), 24 parts of each combination, no split column (vitft carves
  val/test by iterative stratification).
* ``pest/{train,val,test}/{healthy,aphids,leaf_spot,rust}/*.jpg`` -- a leaf on soil or on a
  grey bench; ``aphids`` adds clusters of small dark insects, ``leaf_spot`` brown lesions with a
  yellow halo, ``rust`` many small orange-brown pustules.

Every class has 40 train, 15 val and 15 test images of 96x96 RGB. Each image is drawn from its
own ``numpy.random.default_rng`` seeded from (seed, dataset, split, class, index), and files are
written without metadata, so reruns are byte-identical.

Regenerate (from the repository root; the script first deletes the folders it owns)::

    python data/make_samples.py                 # writes next to this script
    python data/make_samples.py --out DIR --seed 0

Only numpy and Pillow are needed.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 96
JPEG_QUALITY = 90
SPLITS: dict[str, int] = {"train": 40, "val": 15, "test": 15}
DEFECT_CLASSES = ("normal", "crack", "dent")
PEST_CLASSES = ("healthy", "aphids", "leaf_spot", "rust")
OWNED_DIRS = ("defect", "defect_masks", "defect_multilabel", "pest")
MULTILABEL_COMBOS = ((), ("crack",), ("dent",), ("crack", "dent"))
MULTILABEL_PER_COMBO = 24

# Pixel-centre coordinates shared by all renderers: XX[y, x] == x, YY[y, x] == y.
YY, XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)

Rng = np.random.Generator


# --------------------------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------------------------


def value_noise(rng: Rng, cells: int, size: int = SIZE) -> np.ndarray:
    """Smooth value noise in [0, 1] with about ``cells`` features across a ``size`` square."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size, endpoint=False) + rng.uniform(0.0, 1.0 - cells / size)
    i = np.minimum(np.floor(t).astype(int), cells - 1)
    f = t - i
    f = f * f * (3.0 - 2.0 * f)
    rows = grid[i] * (1.0 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1.0 - f)[None, :] + rows[:, i + 1] * f[None, :]


def fractal_noise(rng: Rng, cells: tuple[int, ...], gain: float = 0.55) -> np.ndarray:
    """Sum of value-noise octaves, rescaled to [0, 1]."""
    total = np.zeros((SIZE, SIZE))
    amp = 1.0
    for c in cells:
        total += amp * value_noise(rng, c)
        amp *= gain
    total -= total.min()
    return total / max(total.max(), 1e-9)


def disc(cx: float, cy: float, radius: float) -> np.ndarray:
    """Anti-aliased coverage of a filled circle."""
    d = np.hypot(XX - cx, YY - cy)
    return np.clip(radius + 0.5 - d, 0.0, 1.0)


def ellipse(cx: float, cy: float, a: float, b: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage of a filled, rotated ellipse with semi-axes ``a`` >= ``b``."""
    dx, dy = XX - cx, YY - cy
    lx = dx * np.cos(angle) + dy * np.sin(angle)
    ly = -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.hypot(lx / a, ly / b)
    return np.clip((1.0 - r) * b + 0.5, 0.0, 1.0)


def blend(img: np.ndarray, alpha: np.ndarray, color: np.ndarray | tuple[float, ...]) -> None:
    """Alpha-composite a flat ``color`` over ``img`` in place."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(color, dtype=np.float64)


def illumination(rng: Rng, strength: tuple[float, float] = (0.05, 0.2)) -> np.ndarray:
    """Multiplicative lighting: a linear gradient in a random direction plus a soft hotspot."""
    phi = rng.uniform(0.0, 2.0 * np.pi)
    amp = rng.uniform(*strength)
    ramp = ((XX - SIZE / 2) * np.cos(phi) + (YY - SIZE / 2) * np.sin(phi)) / (SIZE / 2)
    hx, hy = rng.uniform(0, SIZE, 2)
    sigma = rng.uniform(20.0, 45.0)
    spot = rng.uniform(0.0, 0.12) * np.exp(-((XX - hx) ** 2 + (YY - hy) ** 2) / (2 * sigma**2))
    return (1.0 + amp * ramp + spot)[..., None]


def finish(rng: Rng, img: np.ndarray) -> Image.Image:
    """Add mild sensor noise and convert a float image in [0, 1] to an 8-bit RGB image."""
    sigma = rng.uniform(0.005, 0.014)
    grain = rng.normal(0.0, sigma, (SIZE, SIZE, 1)) + rng.normal(0.0, sigma / 3, (SIZE, SIZE, 3))
    out = np.clip((img + grain) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _unit_tint(rng: Rng, spread: float) -> np.ndarray:
    tint = 1.0 + rng.normal(0.0, spread, 3)
    return tint / tint.mean()


# --------------------------------------------------------------------------------------------
# Defect dataset: industrial surfaces
# --------------------------------------------------------------------------------------------


def _brushed_metal(rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    theta = rng.uniform(0.0, np.pi)
    p = -XX * np.sin(theta) + YY * np.cos(theta)
    p -= p.min()
    n = int(np.ceil(p.max())) + 2
    fine = np.convolve(rng.normal(size=n + 2), [0.25, 0.5, 0.25], mode="valid")
    coarse = np.interp(np.arange(n), np.linspace(0, n, n // 6), rng.normal(size=n // 6))
    streaks = np.interp(p, np.arange(n), rng.uniform(0.04, 0.08) * fine + 0.04 * coarse)
    lum = 1.0 + streaks + 0.08 * (value_noise(rng, 3) - 0.5)
    tint = _unit_tint(rng, 0.02) * np.array([0.98, 1.0, 1.03])
    return lum, tint


def _cast_concrete(rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    lum = 1.0 + rng.uniform(0.15, 0.25) * (fractal_noise(rng, (4, 8, 16, 32)) - 0.5)
    specks = rng.random((SIZE, SIZE)) < rng.uniform(0.01, 0.03)
    lum += specks * rng.uniform(-0.22, 0.12, (SIZE, SIZE))
    pores = value_noise(rng, 30) > rng.uniform(0.86, 0.93)
    lum -= 0.12 * pores
    tint = _unit_tint(rng, 0.03) * np.array([1.04, 1.0, 0.94])
    return lum, tint


def _painted(rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    lum = 1.0 + 0.08 * (value_noise(rng, int(rng.integers(3, 6))) - 0.5)
    lum += 0.03 * (value_noise(rng, 24) - 0.5)
    paint = rng.uniform(0.2, 1.0, 3)
    sat = rng.uniform(0.2, 0.55)
    tint = (1.0 - sat) + sat * paint / paint.mean()
    return lum, tint / tint.mean()


SURFACES: tuple[Callable[[Rng], tuple[np.ndarray, np.ndarray]], ...] = (
    _brushed_metal,
    _cast_concrete,
    _painted,
)


def surface(rng: Rng) -> np.ndarray:
    """A random defect-free industrial surface (float RGB, before lighting and noise)."""
    lum, tint = SURFACES[int(rng.integers(len(SURFACES)))](rng)
    # Harmless variation shared by all classes: faint, round, unshaded stains.
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, SIZE, 2)
        sigma = rng.uniform(10.0, 25.0)
        lum *= 1.0 + rng.uniform(-0.07, 0.07) * np.exp(
            -((XX - cx) ** 2 + (YY - cy) ** 2) / (2 * sigma**2)
        )
    brightness = rng.uniform(0.35, 0.75)
    return brightness * lum[..., None] * tint[None, None, :]


def _random_walk(
    rng: Rng, start: np.ndarray, heading: float, length: float
) -> list[tuple[float, float]]:
    pts = [(float(start[0]), float(start[1]))]
    pos, angle, walked = start.astype(np.float64), heading, 0.0
    while walked < length:
        angle += rng.normal(0.0, 0.45) + 0.2 * (heading - angle)
        step = rng.uniform(1.5, 3.5)
        pos = pos + step * np.array([np.cos(angle), np.sin(angle)])
        pts.append((float(pos[0]), float(pos[1])))
        walked += step
        if not (-2 <= pos[0] <= SIZE + 1 and -2 <= pos[1] <= SIZE + 1):
            break
    return pts


def draw_crack(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Darken a thin irregular crack into ``img`` in place; return its binary mask (0/255)."""
    scale = 4  # supersampling factor for anti-aliased, sub-pixel widths
    canvas = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    draw = ImageDraw.Draw(canvas)
    start = rng.uniform(24, SIZE - 24, 2)
    heading = rng.uniform(0.0, 2.0 * np.pi)
    width = rng.uniform(1.0, 2.6)
    branches = [
        _random_walk(rng, start, heading, rng.uniform(25, 50)),
        _random_walk(rng, start, heading + np.pi, rng.uniform(25, 50)),
    ]
    if rng.random() < 0.5:
        trunk = branches[int(rng.integers(2))]
        fork = np.array(trunk[int(rng.integers(1, len(trunk)))])
        branches.append(_random_walk(rng, fork, heading + rng.choice([-1, 1]) * 0.9, 18))
    for k, pts in enumerate(branches):
        w_branch = width * (0.6 if k == 2 else 1.0)
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            w = max(1.0, w_branch * rng.uniform(0.7, 1.2))
            seg = [(x0 * scale, y0 * scale), (x1 * scale, y1 * scale)]
            draw.line(seg, fill=255, width=round(w * scale), joint="curve")
    coverage = np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX), np.float64) / 255.0
    contrast = rng.uniform(0.5, 0.8)
    img *= (1.0 - contrast * coverage)[..., None]
    mask = Image.fromarray(((coverage > 0.2) * 255).astype(np.uint8))
    return np.asarray(mask.filter(ImageFilter.MaxFilter(3)))


def draw_dent(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Shade an elliptical depression into ``img`` in place; return its binary mask (0/255)."""
    cx, cy = rng.uniform(22, SIZE - 22, 2)
    ra = rng.uniform(8.0, 20.0)
    rb = ra * rng.uniform(0.6, 1.0)
    rot = rng.uniform(0.0, np.pi)
    dx, dy = XX - cx, YY - cy
    lx = dx * np.cos(rot) + dy * np.sin(rot)
    ly = -dx * np.sin(rot) + dy * np.cos(rot)
    r2 = (lx / ra) ** 2 + (ly / rb) ** 2
    depth = np.clip(1.0 - r2, 0.0, None) ** 2  # smooth bowl, zero slope at the rim
    gy, gx = np.gradient(-depth)  # surface height is -depth
    light = rng.uniform(0.0, 2.0 * np.pi)
    shade = gx * np.cos(light) + gy * np.sin(light)
    shade /= max(np.abs(shade).max(), 1e-9)
    strength = rng.uniform(0.3, 0.5)
    img *= (1.0 + strength * shade - 0.1 * depth)[..., None]
    return ((r2 < 0.8) * 255).astype(np.uint8)


def defect_image(rng: Rng, cls: str) -> tuple[Image.Image, Image.Image | None]:
    """Render one surface-inspection image of class ``cls`` and its defect mask (or None)."""
    img = surface(rng)
    mask = None
    if cls == "crack":
        mask = draw_crack(rng, img)
    elif cls == "dent":
        mask = draw_dent(rng, img)
    elif cls != "normal":
        raise ValueError(f"unknown defect class {cls!r}")
    img *= illumination(rng)
    return finish(rng, img), None if mask is None else Image.fromarray(mask)


def multilabel_part(rng: Rng, defects: tuple[str, ...]) -> Image.Image:
    """A surface with each of ``defects`` drawn on it (crack and dent may overlap)."""
    img = surface(rng)
    for name in defects:
        {"crack": draw_crack, "dent": draw_dent}[name](rng, img)
    img *= illumination(rng)
    return finish(rng, img)


def generate_multilabel(out: Path, seed: int = 0) -> list[Path]:
    """``out/defect_multilabel``: images and a labels.csv manifest (relative paths)."""
    root = out / "defect_multilabel"
    rows, written = [], []
    for i in range(MULTILABEL_PER_COMBO * len(MULTILABEL_COMBOS)):
        defects = MULTILABEL_COMBOS[i % len(MULTILABEL_COMBOS)]
        rng = np.random.default_rng([seed, 2, i])
        path = root / "images" / f"part_{i:04d}.jpg"
        _save_jpeg(multilabel_part(rng, defects), path)
        rows.append(f"images/{path.name},{';'.join(defects)}")
        written.append(path)
    (root / "labels.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    return [*written, root / "labels.csv"]


# --------------------------------------------------------------------------------------------
# Pest dataset: leaves
# --------------------------------------------------------------------------------------------


@dataclass
class Leaf:
    """Geometry of one leaf: centre, orientation, half-length/width and its pixel coverage."""

    cx: float
    cy: float
    angle: float
    length: float
    width: float
    asym: float
    u: np.ndarray  # coordinate along the midrib (base -> tip), pixels
    v: np.ndarray  # coordinate across the leaf, pixels
    alpha: np.ndarray  # anti-aliased leaf-blade coverage

    def half_width(self, u: np.ndarray | float) -> np.ndarray:
        t = np.clip(np.asarray(u) / self.length, -1.0, 1.0)
        return self.width * (1.0 - t**2) ** 0.9 * (1.0 + self.asym * t)

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.cx + u * c - v * s, self.cy + u * s + v * c

    def sample(self, rng: Rng, spread: float = 0.8) -> tuple[float, float]:
        """A random point on the blade, at most ``spread`` of the half-width off the midrib."""
        while True:
            u = self.length * rng.uniform(-0.85, 0.85)
            v = float(self.half_width(u)) * rng.uniform(-spread, spread)
            x, y = self.to_image(u, v)
            if 3 <= x <= SIZE - 4 and 3 <= y <= SIZE - 4:
                return x, y


def make_leaf(rng: Rng) -> Leaf:
    """Random leaf pose and shape, roughly centred in the image."""
    cx, cy = SIZE / 2 + rng.uniform(-6, 6, 2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    length = rng.uniform(28.0, 40.0)
    width = length * rng.uniform(0.38, 0.55)
    dx, dy = XX - cx, YY - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    leaf = Leaf(cx, cy, angle, length, width, rng.uniform(-0.3, 0.3), u, v, np.zeros_like(u))
    inside = np.abs(u) < length
    leaf.alpha = np.clip(leaf.half_width(u) - np.abs(v) + 0.5, 0.0, 1.0) * inside
    return leaf


def pest_background(rng: Rng) -> np.ndarray:
    """Soil or a grey greenhouse bench (float RGB)."""
    if rng.random() < 0.5:
        base = np.array([0.38, 0.27, 0.17]) * rng.uniform(0.6, 1.2)
        lum = 1.0 + 0.35 * (fractal_noise(rng, (4, 8, 16)) - 0.5)
        lum += 0.15 * (value_noise(rng, 32) - 0.5)
        lum -= 0.25 * (value_noise(rng, 12) > 0.8)  # darker clods
    else:
        base = np.array([0.55, 0.56, 0.58]) * rng.uniform(0.7, 1.25)
        lum = 1.0 + 0.08 * (value_noise(rng, 4) - 0.5) + 0.03 * (value_noise(rng, 24) - 0.5)
        theta = rng.uniform(0.0, np.pi)
        p = XX * np.cos(theta) + YY * np.sin(theta) + rng.uniform(0, 100)
        pitch = rng.uniform(22.0, 32.0)
        gap = np.abs((p % pitch) - pitch / 2)
        lum -= 0.35 * np.clip(1.6 - gap, 0.0, 1.0)  # slat gaps
    return base * _unit_tint(rng, 0.03) * lum[..., None]


def leaf_colors(rng: Rng, leaf: Leaf) -> np.ndarray:
    """Green blade with shading, mottling, midrib and secondary veins (float RGB)."""
    g = rng.uniform(0.42, 0.64)
    base = np.array([g * rng.uniform(0.3, 0.6), g, g * rng.uniform(0.12, 0.38)])
    hw = np.maximum(leaf.half_width(leaf.u), 0.5)
    across = np.clip(leaf.v / hw, -1.0, 1.0)
    tone = 1.0 + rng.uniform(0.04, 0.12) * across - 0.15 * across**2
    tone += 0.08 * (value_noise(rng, 6) - 0.5)
    img = base * tone[..., None]

    t = leaf.u / leaf.length
    rib_w = 0.5 + 0.7 * np.clip(0.5 - t / 2, 0.0, 1.0)  # tapers towards the tip
    rib = np.clip(rib_w + 0.5 - np.abs(leaf.v), 0.0, 1.0) * (t < 0.95)
    k = rng.uniform(0.6, 1.2)
    spacing = rng.uniform(6.0, 9.0)
    s = (leaf.u - k * np.abs(leaf.v)) / spacing
    d = np.abs(s - np.round(s)) * spacing / np.hypot(1.0, k)
    veins = np.clip(0.9 - d, 0.0, 1.0) * np.clip(1.0 - np.abs(across), 0.0, 1.0) * 0.6
    light = np.clip(base * 1.3 + np.array([0.07, 0.05, 0.02]), 0.0, 1.0)
    blend(img, np.maximum(rib, veins), light)
    return img


def _sprinkle(
    rng: Rng, leaf: Leaf, img: np.ndarray, n: int, radius: tuple[float, float], color: np.ndarray
) -> None:
    for _ in range(n):
        x, y = leaf.sample(rng)
        blend(img, disc(x, y, rng.uniform(*radius)), color)


def add_aphids(rng: Rng, leaf: Leaf, img: np.ndarray) -> None:
    """Clusters of small dark-green to black elongated dots."""
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = leaf.sample(rng, spread=0.5)
        spread = rng.uniform(2.5, 5.0)
        for _ in range(int(rng.integers(6, 15))):
            x, y = np.array([cx, cy]) + rng.normal(0.0, spread, 2)
            if not (0 <= x < SIZE and 0 <= y < SIZE) or leaf.alpha[int(y), int(x)] < 1.0:
                continue
            a = rng.uniform(1.3, 1.9)
            body = ellipse(x, y, a, a * rng.uniform(0.6, 0.8), rng.uniform(0.0, np.pi))
            dark = rng.uniform(0.0, 1.0)
            color = (1 - dark) * np.array([0.12, 0.22, 0.07]) + dark * np.array([0.04, 0.04, 0.03])
            blend(img, body, color)


def add_leaf_spot(rng: Rng, leaf: Leaf, img: np.ndarray) -> None:
    """Several brown circular lesions, each with a dark rim and a yellow halo."""
    spots: list[tuple[float, float, float]] = []
    target = int(rng.integers(3, 8))
    for _ in range(200):
        if len(spots) == target:
            break
        x, y = leaf.sample(rng, spread=0.75)
        r = rng.uniform(2.5, 5.5)
        if all(np.hypot(x - sx, y - sy) > r + sr + 3 for sx, sy, sr in spots):
            spots.append((x, y, r))
    for x, y, r in spots:
        d = np.hypot(XX - x, YY - y)
        halo_w = rng.uniform(1.5, 3.0)
        halo = np.clip((r + halo_w - d) / halo_w, 0.0, 1.0) ** 0.7 * rng.uniform(0.7, 0.9)
        blend(img, halo, np.array([0.85, 0.78, 0.22]) * rng.uniform(0.85, 1.05))
        centre = np.array([0.46, 0.29, 0.12]) * rng.uniform(0.8, 1.15)
        blend(img, disc(x, y, r), centre)
        blend(img, np.clip(1.0 - np.abs(d - r + 0.6) / 0.9, 0.0, 1.0) * 0.7, (0.24, 0.14, 0.06))


def add_rust(rng: Rng, leaf: Leaf, img: np.ndarray) -> None:
    """Many small orange-brown pustules with a faint chlorotic ring, partly in patches."""
    n = int(rng.integers(30, 70))
    points = [leaf.sample(rng) for _ in range(n // 2)]
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = leaf.sample(rng, spread=0.6)
        for _ in range(n // 6):
            x, y = np.array([cx, cy]) + rng.normal(0.0, rng.uniform(4.0, 7.0), 2)
            if 0 <= x < SIZE and 0 <= y < SIZE and leaf.alpha[int(y), int(x)] >= 1.0:
                points.append((x, y))
    for x, y in points:
        r = rng.uniform(0.8, 1.5)
        blend(img, disc(x, y, r + 1.2) * 0.35, (0.72, 0.68, 0.24))
        color = np.array([0.82, 0.45, 0.12]) * rng.uniform(0.75, 1.1)
        blend(img, disc(x, y, r), np.clip(color, 0.0, 1.0))


SYMPTOMS: dict[str, Callable[[Rng, Leaf, np.ndarray], None] | None] = {
    "healthy": None,
    "aphids": add_aphids,
    "leaf_spot": add_leaf_spot,
    "rust": add_rust,
}


def pest_image(
    rng: Rng, cls: str, symptom: Callable[[Rng, Leaf, np.ndarray], None] | None = None
) -> Image.Image:
    """Render one leaf image of class ``cls`` (``symptom``: drawn instead of the class's)."""
    if cls not in SYMPTOMS:
        raise ValueError(f"unknown pest class {cls!r}")
    img = pest_background(rng)
    leaf = make_leaf(rng)
    blade = leaf_colors(rng, leaf)
    stalk_color = np.median(blade[leaf.alpha >= 1.0], axis=0) * 0.8
    symptom = symptom or SYMPTOMS[cls]
    if symptom is not None:
        symptom(rng, leaf, blade)

    # Petiole (leaf stalk) sticking out of the base.
    stalk_len = rng.uniform(5.0, 10.0)
    stalk = np.clip(1.3 - np.abs(leaf.v), 0.0, 1.0)
    stalk *= (leaf.u > -leaf.length - stalk_len) & (leaf.u < -leaf.length + 3)
    # Soft drop shadow of the leaf on the background.
    shift = rng.uniform(1.0, 4.0, 2)
    cover = Image.fromarray((np.maximum(leaf.alpha, stalk) * 255).astype(np.uint8))
    shadow = cover.transform(
        cover.size, Image.Transform.AFFINE, (1, 0, -shift[0], 0, 1, -shift[1])
    ).filter(ImageFilter.GaussianBlur(2))
    img *= (1.0 - 0.35 * np.asarray(shadow, np.float64) / 255.0)[..., None]

    blend(img, stalk, stalk_color)
    a = leaf.alpha[..., None]
    img = img * (1.0 - a) + blade * a
    img *= illumination(rng, (0.03, 0.15))
    return finish(rng, img)


# --------------------------------------------------------------------------------------------
# Unknown morphologies: defect types no class shows, drawn only as unknowns for the OOD benchmark
# (benchmarks/unknown_morphology.py), never written into a training split. Each has a ``scale``
# (SCALES): how much of the part it covers.
# --------------------------------------------------------------------------------------------

SCALES = {"small": 0.5, "medium": 1.0, "large": 1.7}


def _wavy_line(rng: Rng, cx: float, cy: float, length: float) -> np.ndarray:
    """Points of a smooth sinusoidal line (a scratch or a miner's trail; a crack is jagged)."""
    t = np.linspace(-0.5, 0.5, 60) * length
    amp, period = rng.uniform(0.0, 4.0), rng.uniform(15.0, 40.0)
    off = amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    a = rng.uniform(0.0, np.pi)
    return np.stack([cx + t * np.cos(a) - off * np.sin(a), cy + t * np.sin(a) + off * np.cos(a)], 1)


def _stroke(points_list: list[np.ndarray], width: float) -> np.ndarray:
    """Anti-aliased coverage of polylines ``width`` pixels wide."""
    scale = 4
    canvas = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for pts in points_list:
        draw.line([(x * scale, y * scale) for x, y in pts], 255, round(width * scale), "curve")
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX), np.float64) / 255.0


def _patch(rng: Rng, cx: float, cy: float, radius: float) -> np.ndarray:
    """Soft-edged irregular blob coverage in [0, 1] of about ``radius``."""
    wobble = 1.0 + 0.35 * (value_noise(rng, 5) - 0.5)
    d = np.hypot(XX - cx, YY - cy) / (radius * wobble)
    return np.clip((1.0 - d) * 3.0, 0.0, 1.0)


def scratches(rng: Rng, img: np.ndarray, s: float, where: Callable[[], tuple]) -> None:
    """1-3 thin, smooth, bright (specular) lines: line-like, but straight and light."""
    lines = [_wavy_line(rng, *where(), rng.uniform(20, 40) * s) for _ in range(rng.integers(1, 4))]
    cover = _stroke(lines, rng.uniform(0.8, 1.6))
    blend(img, cover * rng.uniform(0.5, 0.8), img.mean((0, 1)) * 1.8 + 0.15)


def pits(rng: Rng, img: np.ndarray, s: float, where: Callable[[], tuple]) -> None:
    """A cluster of small dark round pits, each with a faint bright rim."""
    cx, cy = where()
    for _ in range(int(rng.integers(6, 12) * s) + 2):
        x, y = np.array([cx, cy]) + rng.normal(0.0, 5.0 * s, 2)
        r = rng.uniform(0.8, 1.8)
        blend(img, np.clip(disc(x + 0.6, y + 0.6, r + 0.7) - disc(x, y, r), 0, 1) * 0.4, (1, 1, 1))
        blend(img, disc(x, y, r), img.mean((0, 1)) * 0.2)


def texture(rng: Rng, img: np.ndarray, s: float, where: Callable[[], tuple]) -> None:
    """A patch of coarse granular texture (corrosion, powdery mildew), no change of mean."""
    cover = _patch(rng, *where(), rng.uniform(9, 13) * s)
    grain = rng.random((SIZE, SIZE))
    grain = np.asarray(Image.fromarray((grain * 255).astype(np.uint8)).resize((SIZE // 2,) * 2))
    grain = np.asarray(Image.fromarray(grain).resize((SIZE, SIZE), Image.Resampling.NEAREST))
    img *= (1.0 + cover * rng.uniform(0.8, 1.1) * (grain / 255.0 - 0.5))[..., None]


def discolour(rng: Rng, img: np.ndarray, s: float, where: Callable[[], tuple]) -> None:
    """A soft patch of another colour and brightness (heat tint, bleaching, burn)."""
    cover = _patch(rng, *where(), rng.uniform(7, 11) * s)
    tint = rng.choice([(0.45, 0.35, 0.9), (1.3, 1.2, 0.5), (0.9, 0.45, 0.3), (1.6, 1.6, 1.6)])
    img *= 1.0 + cover[..., None] * (np.asarray(tint) * rng.uniform(0.8, 1.1) - 1.0)


MORPHOLOGIES: dict[str, Callable[..., None]] = {
    "scratch": scratches,
    "pits": pits,
    "texture": texture,
    "discolour": discolour,
}


def unknown_image(rng: Rng, dataset: str, kind: str, scale: str) -> Image.Image:
    """One ``dataset`` (defect: a surface; pest: a leaf) image with a ``kind`` (MORPHOLOGIES)
    defect of ``scale`` (SCALES) that none of its classes shows."""
    draw, s = MORPHOLOGIES[kind], SCALES[scale]
    if dataset == "defect":
        img = surface(rng)
        draw(rng, img, s, lambda: tuple(rng.uniform(24, SIZE - 24, 2)))
        img *= illumination(rng)
        return finish(rng, img)
    if dataset == "pest":
        blight = lambda r, leaf, blade: draw(r, blade, s, lambda: leaf.sample(r, 0.5))  # noqa: E731
        return pest_image(rng, "healthy", symptom=blight)
    raise ValueError(f"unknown dataset {dataset!r}: defect or pest")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=0)


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


def generate(out: Path, seed: int = 0) -> list[Path]:
    """(Re)create the sample datasets (OWNED_DIRS) under ``out``; return the files."""
    for name in OWNED_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    written: list[Path] = []
    for s_id, (split, count) in enumerate(SPLITS.items()):
        for c_id, cls in enumerate(DEFECT_CLASSES):
            for i in range(count):
                rng = np.random.default_rng([seed, 0, s_id, c_id, i])
                image, mask = defect_image(rng, cls)
                stem = f"{cls}_{split}_{i:04d}"
                written.append(out / "defect" / split / cls / f"{stem}.jpg")
                _save_jpeg(image, written[-1])
                if mask is not None:
                    written.append(out / "defect_masks" / split / cls / f"{stem}.png")
                    _save_png(mask, written[-1])
        for c_id, cls in enumerate(PEST_CLASSES):
            for i in range(count):
                rng = np.random.default_rng([seed, 1, s_id, c_id, i])
                written.append(out / "pest" / split / cls / f"{cls}_{split}_{i:04d}.jpg")
                _save_jpeg(pest_image(rng, cls), written[-1])
    return written + generate_multilabel(out, seed)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="output folder"
    )
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    args = parser.parse_args(argv)

    files = generate(args.out, args.seed)
    for name in OWNED_DIRS:
        sub = [f for f in files if (args.out / name) in f.parents]
        print(f"{name + '/':14s} {len(sub):4d} files")
    apparent = sum(f.stat().st_size for f in files)
    on_disk = sum(getattr(f.stat(), "st_blocks", 0) * 512 for f in files)
    print(f"total: {len(files)} files, {apparent / 1e6:.2f} MB ({on_disk / 2**20:.2f} MiB on disk)")


if __name__ == "__main__":
    main()
