"""Formula-driven images: fractal classes from random iterated function systems (IFS).

Each class is one random IFS (2 to 4 contractive affine maps), drawn as in Anderson & Farrell
(2022, "Improving fractal pre-training"): singular values are sampled until the system's
sigma-factor lies in the band that gives neither dust nor blobs, then the attractor is rendered by
the chaos game. Instances of a class re-render the same system with slightly perturbed maps and
new colours, as FractalDB does (Kataoka et al. 2020); with ``instances=1`` it is OFDB's one image
per class (Nakamura et al. 2023), which strong augmentation then varies.

Everything is a function of ``(seed, class index, instance)``: the same call always writes the
same pixels, so a shipped backbone can be rebuilt from its command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class IFS:
    """Affine maps ``x -> A_i x + b_i``, drawn with probabilities ``p_i``."""

    A: np.ndarray  # (n, 2, 2)
    b: np.ndarray  # (n, 2)
    p: np.ndarray  # (n,)


def _rotation(theta: np.ndarray) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def sample_ifs(rng: np.random.Generator, max_tries: int = 10_000) -> IFS:
    """A random contractive IFS whose sigma-factor sum(s1 + 2 s2) is in [(5+n)/2, (6+n)/2]."""
    n = int(rng.integers(2, 5))
    low, high = (5 + n) / 2, (6 + n) / 2
    for _ in range(max_tries):
        s1 = rng.uniform(0.2, 1.0, n)
        s2 = rng.uniform(0.0, 1.0, n) * s1
        if low <= float(np.sum(s1 + 2 * s2)) <= high:
            break
    else:  # pragma: no cover - the band holds ~10% of draws
        raise RuntimeError("could not draw an IFS in the sigma-factor band")
    reflect = np.eye(2)[None].repeat(n, 0) * rng.choice([-1.0, 1.0], (n, 1, 2))
    A = (
        _rotation(rng.uniform(0, 2 * np.pi, n))
        @ (np.eye(2)[None] * np.stack([s1, s2], -1)[:, None, :])
        @ _rotation(rng.uniform(0, 2 * np.pi, n))
        @ reflect
    )
    b = rng.uniform(-1, 1, (n, 2))
    det = np.abs(np.linalg.det(A)) + 1e-3
    return IFS(A=A, b=b, p=det / det.sum())


def perturb(ifs: IFS, rng: np.random.Generator, scale: float) -> IFS:
    """The same system with each parameter nudged (FractalDB's intra-class variation)."""
    if scale <= 0:
        return ifs
    A = ifs.A * (1 + rng.uniform(-scale, scale, ifs.A.shape))
    b = ifs.b + rng.uniform(-scale, scale, ifs.b.shape)
    return IFS(A=A, b=b, p=ifs.p)


def render(
    ifs: IFS,
    rng: np.random.Generator,
    size: int = 128,
    walkers: int = 1024,
    steps: int = 96,
    burn_in: int = 16,
) -> Image.Image:
    """The attractor by the chaos game: each point takes the colour of the map that placed it."""
    pts = rng.uniform(-1, 1, (walkers, 2))
    xs, maps = [], []
    for t in range(steps):
        k = rng.choice(len(ifs.p), size=walkers, p=ifs.p)
        pts = np.einsum("nij,nj->ni", ifs.A[k], pts) + ifs.b[k]
        if t >= burn_in:
            xs.append(pts)
            maps.append(k)
    xy, k = np.concatenate(xs), np.concatenate(maps)
    lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    span = float(np.max(hi - lo)) or 1.0
    margin = 0.06 * size
    centre = (lo + hi) / 2
    pix = ((xy - centre) / span * (size - 2 * margin) + size / 2).astype(np.int64)
    keep = np.all((pix >= 0) & (pix < size), axis=1)
    pix, k = pix[keep], k[keep]

    background = rng.uniform(0, 255, 3) * rng.uniform(0.1, 0.6)
    colours = rng.uniform(64, 255, (len(ifs.p), 3))
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    img[pix[:, 1], pix[:, 0]] = colours[k]
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def fractal_image(
    seed: int, cls: int, instance: int, size: int = 128, jitter: float = 0.05
) -> Image.Image:
    """Instance ``instance`` of class ``cls``: deterministic in all three."""
    system = sample_ifs(np.random.default_rng([seed, cls]))
    rng = np.random.default_rng([seed, cls, instance + 1])
    return render(perturb(system, rng, jitter if instance else 0.0), rng, size)


def write_dataset(
    out: str | Path,
    classes: int = 1000,
    instances: int = 1,
    val_instances: int = 1,
    size: int = 128,
    seed: int = 0,
    test_instances: int = 1,
) -> Path:
    """``out/{train,val,test}/f<class>/<instance>.png``: a folder dataset for ``task=folder``.

    Every split holds its own instances (renders) of each class, so no split is carved from
    the one or two training images a class has."""
    out = Path(out)
    width = len(str(classes - 1))
    counts = {"train": instances, "val": val_instances, "test": test_instances}
    for c in range(classes):
        name = f"f{c:0{width}d}"
        first = 0
        for split, count in counts.items():
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(first, first + count):
                fractal_image(seed, c, i, size).save(folder / f"{i}.png")
            first += count
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=1, help="train images per class")
    parser.add_argument("--val-instances", type=int, default=1, help="val images per class")
    parser.add_argument("--test-instances", type=int, default=1, help="test images per class")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_dataset(
        args.out,
        args.classes,
        args.instances,
        args.val_instances,
        args.size,
        args.seed,
        args.test_instances,
    )
    print(f"wrote {args.classes} classes to {root}")


if __name__ == "__main__":
    main()
