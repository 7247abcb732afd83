"""A hard real-image inspection proxy: graded thin dark defects on one regular background.

What a plant's graded inspection set looks like (the held-out one we steer for): ~2,600 grayscale
300 px images of one product on one regular background pattern, four ordinal severity grades
(58/11/4/27%) that experts were unsure about in the middle, and defects that are thin dark lines
(cracks 1-3 px wide), dark areas and small spots.

No such set ships in a package, so this one is assembled from real photographs and scans that
scikit-image's wheel carries (no download, on every machine with the dev extra):

- background: crops of ``brick.png`` (a real photo of a brick pavement: one regular pattern whose
  own dark joints look like the defects), with flips, exposure, gamma, vignetting and sensor noise;
- thin dark lines: the vessel tree of the real fundus photo ``retina.jpg`` (Sato ridge filter,
  skeletonised), cropped, scaled and drawn 1 to 3 px wide;
- dark areas: the dark maria of the real ``moon.png``;
- small spots: the galaxies of the real ``hubble_deep_field.jpg``.

Each pixel comes from a real image, but the images are composites: the defects are real shapes
placed by this script, not real defects. Severity sets the extent and contrast of what is
placed; the grade is the severity bin, and graders' doubt is modelled as label noise between
neighbouring grades (mostly between the two middle ones) in every split, as in the real set.

    python benchmarks/inspection_proxy.py --out /tmp/proxy           # writes the folder set
    python benchmarks/inspection_proxy.py --out /tmp/proxy --preview  # + a preview PNG per grade
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

GRADES = ("g0_ok", "g1_mild", "g2_moderate", "g3_severe")
SHARES = (0.58, 0.11, 0.04, 0.27)
SPLITS = {"train": 1000, "val": 200, "test": 300}
SIZE = 300
# P(label = neighbouring grade) per true grade: graders unsure about the middle grades.
NOISE = {0: {1: 0.04}, 1: {0: 0.08, 2: 0.2}, 2: {1: 0.25, 3: 0.1}, 3: {2: 0.04}}


def _skimage_image(name: str) -> np.ndarray:
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.float32)


@cache
def _sources() -> dict[str, np.ndarray]:
    """The real source images, prepared once: background, crack skeleton, dark areas, spots."""
    from skimage.color import rgb2gray
    from skimage.filters import gaussian, sato
    from skimage.morphology import remove_small_objects, skeletonize

    brick = _skimage_image("brick") / 255.0
    retina = _skimage_image("retina")[..., 1] / 255.0  # green: vessels have the most contrast
    ridges = sato(retina, sigmas=(2, 4), black_ridges=True)
    ridges[retina < 0.08] = 0  # outside the fundus disc
    vessels = ridges > np.quantile(ridges, 0.88)
    vessels = remove_small_objects(vessels, max_size=200)
    moon = gaussian(_skimage_image("moon") / 255.0, 3)
    dark = np.clip((np.quantile(moon, 0.35) - moon) / 0.15, 0, 1)
    hubble = rgb2gray(_skimage_image("hubble_deep_field") / 255.0)
    spots = np.clip((hubble - 0.25) / 0.5, 0, 1)
    return {"brick": brick, "skeleton": skeletonize(vessels), "dark": dark, "spots": spots}


def _crop(src: np.ndarray, rng: np.random.Generator, side: int, out: int) -> np.ndarray:
    """A random side x side crop of ``src`` resized to out x out, randomly flipped."""
    y, x = (rng.integers(0, s - side + 1) for s in src.shape[:2])
    patch = src[y : y + side, x : x + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    img = Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32), "F")
    return np.asarray(img.resize((out, out), Image.BILINEAR))


def _background(rng: np.random.Generator) -> np.ndarray:
    src = _sources()["brick"]
    bg = _crop(src, rng, int(rng.integers(280, 420)), SIZE)
    bg = np.clip(bg * rng.uniform(0.75, 1.15) + rng.uniform(-0.06, 0.06), 0, 1) ** rng.uniform(
        0.8, 1.25
    )
    yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    vignette = 1 - rng.uniform(0, 0.25) * np.clip(np.hypot(yy, xx) - 0.6, 0, None)
    return bg * vignette


def _crack(rng: np.random.Generator, extent: float, width: int) -> np.ndarray:
    """A mask of a real vessel-tree piece spanning ``extent`` of the image, ``width`` px wide."""
    from scipy.ndimage import binary_dilation, label

    skel = _sources()["skeleton"]
    box = max(24, int(extent * SIZE))
    for _ in range(20):  # find a crop that holds a long enough piece of the tree
        side = int(rng.integers(160, 420))
        y, x = (rng.integers(0, s - side + 1) for s in skel.shape)
        piece = skel[y : y + side, x : x + side]
        lab, n = label(piece, structure=np.ones((3, 3)))
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        comp = lab == (1 + int(np.argmax(sizes)))
        if sizes.max() * box / side > 0.8 * box:
            break
    img = Image.fromarray(comp.astype(np.uint8) * 255).resize((box, box), Image.BILINEAR)
    mask = np.asarray(img) > 40
    if width > 1:
        mask = binary_dilation(mask, iterations=width - 1)
    return _place(mask.astype(np.float32), rng)


def _place(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``patch`` at a random position of an empty SIZE x SIZE mask."""
    out = np.zeros((SIZE, SIZE), np.float32)
    h, w = patch.shape
    y, x = rng.integers(0, SIZE - h + 1), rng.integers(0, SIZE - w + 1)
    out[y : y + h, x : x + w] = patch
    return out


def _dark_area(rng: np.random.Generator, extent: float) -> np.ndarray:
    box = max(16, int(extent * SIZE))
    return _place(_crop(_sources()["dark"], rng, int(rng.integers(100, 300)), box), rng)


def _spots(rng: np.random.Generator, extent: float) -> np.ndarray:
    box = max(16, int(extent * SIZE))
    return _place(_crop(_sources()["spots"], rng, int(rng.integers(60, 160)), box), rng)


def _defects(grade: int, rng: np.random.Generator) -> np.ndarray:
    """The darkening mask (0..1) of an image of true ``grade``: more, longer, darker with grade."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    if grade == 0:
        if rng.random() < 0.3:  # benign: faint specks an expert lets pass
            mask = np.maximum(mask, 0.12 * _spots(rng, rng.uniform(0.1, 0.25)))
        return mask
    n_cracks = {1: 1, 2: int(rng.integers(1, 3)), 3: int(rng.integers(1, 4))}[grade]
    extent = {1: (0.12, 0.3), 2: (0.25, 0.5), 3: (0.4, 0.95)}[grade]
    contrast = {1: (0.18, 0.4), 2: (0.3, 0.55), 3: (0.3, 0.65)}[grade]
    kind = rng.random()
    if grade == 1 and kind < 0.35:  # a few small spots instead of a crack
        return rng.uniform(0.3, 0.6) * _spots(rng, rng.uniform(0.12, 0.3))
    for _ in range(n_cracks):
        width = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        mask = np.maximum(mask, rng.uniform(*contrast) * _crack(rng, rng.uniform(*extent), width))
    if grade >= 2 and kind < (0.3 if grade == 2 else 0.6):
        area = rng.uniform(0.15, 0.35) if grade == 2 else rng.uniform(0.3, 0.8)
        mask = np.maximum(mask, rng.uniform(0.25, 0.6) * _dark_area(rng, area))
    if grade == 3 and rng.random() < 0.3:
        mask = np.maximum(mask, rng.uniform(0.3, 0.6) * _spots(rng, rng.uniform(0.2, 0.5)))
    return mask


# Defect types no grade shows, drawn only as unknowns (benchmarks/unknown_morphology.py), each from
# another real image of scikit-image's wheel: a bright line (the crack tree with the opposite
# polarity: a reflective scratch), printed text (a scanned page), a coin (a photo of coins: a
# bright textured blob) and a patch of gravel texture (a surface change), at 3 sizes.
UNKNOWN_KINDS = ("bright_line", "text", "coin", "grain")
UNKNOWN_SIZES = {"small": 0.12, "medium": 0.25, "large": 0.45}


@cache
def _unknown_sources() -> dict[str, np.ndarray]:
    text = _skimage_image("text") / 255.0
    return {
        "text": np.clip((0.55 - text) / 0.3, 0, 1),  # dark strokes on a light page -> 0..1
        "coins": _skimage_image("coins") / 255.0,
        "gravel": _skimage_image("gravel") / 255.0,
    }


def _pasted(
    img: np.ndarray, patch: np.ndarray, edge: float, rng: np.random.Generator
) -> np.ndarray:
    """``img`` with square ``patch`` blended in at a random place through a round mask whose
    edge is softer for a smaller ``edge``."""
    box = len(patch)
    yy, xx = np.mgrid[-1 : 1 : box * 1j, -1 : 1 : box * 1j]
    alpha = _place(np.clip((1 - np.hypot(yy, xx)) * edge, 0, 1).astype(np.float32), rng)
    y0, x0 = np.argwhere(alpha > 0).min(0)  # the mask's first lit pixel: a pixel or two in
    canvas = np.zeros((SIZE, SIZE), np.float32)  # from its box, so a box at the edge is cut
    canvas[y0 : y0 + box, x0 : x0 + box] = patch[: SIZE - y0, : SIZE - x0]
    return img * (1 - alpha) + canvas * alpha


def unknown_image(kind: str, size: str, rng: np.random.Generator) -> Image.Image:
    """An ok part's image with one ``kind`` (UNKNOWN_KINDS) of ``size`` (UNKNOWN_SIZES)."""
    extent = UNKNOWN_SIZES[size] * rng.uniform(0.8, 1.2)
    img = _background(rng)
    box = max(16, int(extent * SIZE))
    if kind == "bright_line":
        mask = rng.uniform(0.3, 0.6) * _crack(rng, extent * 1.5, int(rng.integers(1, 3)))
        img = img + mask * (1 - img)
    elif kind == "text":
        src = _unknown_sources()["text"]
        patch = _crop(src, rng, int(rng.integers(60, 160)), box)
        img = img * (1 - rng.uniform(0.4, 0.7) * _place(patch, rng))
    elif kind == "coin":  # a bright textured disc
        patch = _crop(_unknown_sources()["coins"], rng, int(rng.integers(30, 45)), box)
        img = _pasted(img, patch, 4, rng)  # mostly inside a coin
    elif kind == "grain":  # a soft-edged patch of gravel at the part's brightness
        patch = _crop(_unknown_sources()["gravel"], rng, int(rng.integers(100, 250)), box)
        img = _pasted(img, patch * img.mean() / max(patch.mean(), 1e-3), 3, rng)
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {UNKNOWN_KINDS}")
    img = img + rng.normal(0, rng.uniform(0.005, 0.02), img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")


def _noisy_label(grade: int, rng: np.random.Generator) -> int:
    r, acc = rng.random(), 0.0
    for other, p in NOISE[grade].items():
        acc += p
        if r < acc:
            return other
    return grade


def make_image(grade: int, rng: np.random.Generator, contrast: float = 1.0) -> Image.Image:
    img = _background(rng) * (1 - contrast * _defects(grade, rng))
    img = img + rng.normal(0, rng.uniform(0.005, 0.02), img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")


def build(root: Path, scale: float = 1.0, seed: int = 0, contrast: float = 1.0) -> Path:
    """root/{train,val,test}/<grade>/*.png; ``scale`` shrinks every split (quick modes);
    ``contrast`` scales how much every defect darkens the part (the same images otherwise)."""
    rng = np.random.default_rng(seed)
    for split, n in SPLITS.items():
        counts = [max(2, round(n * scale * s)) for s in SHARES]
        for grade, count in enumerate(counts):
            for i in range(count):
                label = _noisy_label(grade, rng)
                out = root / split / GRADES[label]
                out.mkdir(parents=True, exist_ok=True)
                make_image(grade, rng, contrast).save(out / f"{split}_{grade}_{i:04d}.png")
    return root


def preview(root: Path, out: Path, per_grade: int = 4) -> None:
    """One PNG: ``per_grade`` test images of each label, a row per grade."""
    rows = []
    for g in GRADES:
        files = sorted((root / "test" / g).glob("*.png"))[:per_grade]
        tiles = [np.asarray(Image.open(f).convert("L")) for f in files]
        tiles += [np.zeros((SIZE, SIZE), np.uint8)] * (per_grade - len(tiles))
        rows.append(np.concatenate(tiles, 1))
    Image.fromarray(np.concatenate(rows, 0)).save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contrast", type=float, default=1.0, help="scale every defect's darkening")
    ap.add_argument("--preview", action="store_true")
    args = ap.parse_args()
    build(args.out, args.scale, args.seed, args.contrast)
    if args.preview:
        preview(args.out, args.out / "preview.png")


if __name__ == "__main__":
    main()
