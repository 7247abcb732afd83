"""A generated corpus of odd but valid image files (test helper; written into tmp_path).

Every PIL mode (in every format that stores it), sizes from 1x1 to large, extreme aspect ratios,
all 8 EXIF orientations, multi-frame GIF and TIFF, 16-bit TIFF and PNG (grey and RGB), CMYK and
progressive JPEG, WebP, BMP, upper-case extensions, names with spaces and non-ASCII characters.
``write_image`` is also what the property-based tests draw from.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# mode -> formats that can store it (PIL writers; tried in order, each one a corpus file).
MODE_FORMATS = {
    "1": ["png", "bmp", "tiff", "gif"],
    "L": ["png", "jpg", "bmp", "tiff", "webp", "gif"],
    "LA": ["png", "tiff", "webp"],
    "La": ["tiff"],
    "P": ["png", "gif", "bmp", "tiff"],
    "PA": ["png"],
    "RGB": ["png", "jpg", "bmp", "tiff", "webp", "gif"],
    "RGBA": ["png", "tiff", "webp"],
    "RGBa": ["tiff"],
    "RGBX": ["tiff"],
    "CMYK": ["jpg", "tiff"],
    "YCbCr": ["jpg", "tiff"],
    "LAB": ["tiff"],
    "HSV": ["tiff", "png"],
    "I": ["png", "tiff"],
    "I;16": ["png", "tiff"],
    "I;16L": ["tiff"],
    "I;16B": ["png", "tiff"],
    "I;16N": ["tiff"],
    "F": ["tiff"],
}
SAVE_FORMAT = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}
SAVE_FORMAT["gif"] = "GIF"


def pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A (height, width, 3) uint8 picture with structure (gradients + noise), not a flat colour."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    arr = np.stack(np.broadcast_arrays(x + 0 * y, y + 0 * x, (x + y) / 2), axis=-1)
    if width * height <= 1 << 20:  # noise only where it is cheap
        arr = arr + np.random.default_rng(seed).normal(0, 12, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def in_mode(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A ``width`` x ``height`` image in PIL ``mode`` made from ``pattern``."""
    rgb = Image.fromarray(pattern(width, height, seed))
    grey = np.asarray(rgb.convert("L"), dtype=np.uint32)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return (
            Image.fromarray((grey * 257).astype(np.uint16)).convert(mode)
            if mode != "I;16"
            else Image.fromarray((grey * 257).astype(np.uint16))
        )
    if mode == "I":
        return Image.fromarray((grey * 257).astype(np.int32))
    if mode == "F":
        return Image.fromarray((grey / 255.0).astype(np.float32))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "PA":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        return p.convert("PA")
    return rgb.convert(mode)


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    with open(path, "wb") as f:
        img.save(f, format=SAVE_FORMAT[fmt], **kw)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _cv2(path: Path, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok, path
    path.write_bytes(buf.tobytes())


def corpus(root: Path) -> dict[str, str]:
    """Write the corpus into ``root``; returns file name -> what it is. Cases that no PIL writer
    can store are left out and named in the value of the key ``"(not stored) <mode>.<fmt>"``."""
    root.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def add(name: str, what: str, write: Callable[[Path], None]) -> None:
        try:
            write(root / name)
            made[name] = what
        except (OSError, ValueError, KeyError, TypeError) as err:
            (root / name).unlink(missing_ok=True)
            made[f"(not stored) {name}"] = f"{what}: {type(err).__name__}: {err}"

    for mode, formats in MODE_FORMATS.items():
        for fmt in formats:
            name = f"mode_{mode.replace(';', '_')}.{fmt}"
            add(
                name,
                f"PIL mode {mode} as {fmt}",
                lambda p, m=mode, f=fmt: _save(in_mode(m, 24, 20), p, f),
            )
    sizes = {
        "1x1": (1, 1),
        "1x2": (1, 2),
        "2x1": (2, 1),
        "3x5": (3, 5),
        "5x3": (5, 3),
        "3x3": (3, 3),
        "1x3000": (1, 3000),
        "3000x1": (3000, 1),
        "10000x2": (10000, 2),
    }
    for label, (w, h) in sizes.items():
        for fmt in ("png", "jpg"):
            add(
                f"size_{label}.{fmt}",
                f"{w}x{h} RGB {fmt}",
                lambda p, w=w, h=h, f=fmt: _save(in_mode("RGB", w, h), p, f),
            )
    add(
        "size_4000x3000.jpg",
        "4000x3000 RGB JPEG (12 Mpx)",
        lambda p: _save(in_mode("RGB", 4000, 3000), p, "jpg"),
    )
    # Over PIL's decompression-bomb limit (2 x 89.5 Mpx): 1-bit, so the file stays small.
    add(
        "size_20000x10000_1bit.png",
        "200 Mpx 1-bit PNG (over PIL's decompression-bomb limit)",
        lambda p: Image.new("1", (20000, 10000), 1).save(p),
    )
    for o in range(1, 9):
        add(
            f"exif_orientation_{o}.jpg",
            f"JPEG with EXIF orientation {o} (40x20 stored)",
            lambda p, o=o: _save(in_mode("RGB", 40, 20), p, "jpg", exif=_exif(o)),
        )
    frames = [in_mode("RGB", 30, 20, seed=s) for s in range(3)]
    add(
        "multiframe.gif",
        "3-frame animated GIF",
        lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0),
    )
    add(
        "multiframe.tiff",
        "3-page TIFF",
        lambda p: frames[0].save(p, save_all=True, append_images=frames[1:]),
    )
    rgb16 = (pattern(24, 20).astype(np.uint16) * 257)[..., ::-1]  # cv2 writes BGR
    add("rgb_16bit.png", "16-bit RGB PNG (48 bpp)", lambda p: _cv2(p, rgb16))
    add("rgb_16bit.tiff", "16-bit RGB TIFF (48 bpp)", lambda p: _cv2(p, rgb16))
    add(
        "rgba_16bit.png",
        "16-bit RGBA PNG (64 bpp)",
        lambda p: _cv2(p, np.dstack([rgb16, np.full(rgb16.shape[:2], 65535, np.uint16)])),
    )
    add(
        "progressive.jpg",
        "progressive JPEG",
        lambda p: _save(in_mode("RGB", 40, 30), p, "jpg", progressive=True),
    )
    add(
        "cmyk_progressive.jpg",
        "progressive CMYK JPEG",
        lambda p: _save(in_mode("CMYK", 40, 30), p, "jpg", progressive=True),
    )
    add(
        "lossless.webp",
        "lossless WebP",
        lambda p: _save(in_mode("RGB", 40, 30), p, "webp", lossless=True),
    )
    add(
        "animated.webp",
        "animated WebP",
        lambda p: frames[0].save(p, format="WEBP", save_all=True, append_images=frames[1:]),
    )
    add("bmp_rle8.bmp", "8-bit palette BMP", lambda p: _save(in_mode("P", 30, 20), p, "bmp"))
    for ext in ("JPG", "JPEG", "PNG", "TIF", "WEBP", "BMP"):
        fmt = {"JPG": "jpg", "JPEG": "jpg", "TIF": "tiff"}.get(ext, ext.lower())
        add(
            f"upper_case.{ext}",
            f"upper-case extension .{ext}",
            lambda p, f=fmt: _save(in_mode("RGB", 30, 20), p, f),
        )
    for name in ("name with spaces.png", "näme_ünïcödé_画像.jpg", "ملف صورة.png", "emoji_📷.png"):
        fmt = name.rsplit(".", 1)[1]
        add(
            name,
            "file name with spaces / non-ASCII",
            lambda p, f=fmt: _save(in_mode("RGB", 30, 20), p, f),
        )
    return made


def write_image(
    path: Path, mode: str, fmt: str, width: int, height: int, orientation: int = 1, seed: int = 0
) -> None:
    """One image (for property-based tests): ``mode`` saved as ``fmt`` with an EXIF orientation
    where the format stores EXIF (JPEG, PNG, WebP, TIFF)."""
    img = in_mode(mode, width, height, seed)
    kw = {"exif": _exif(orientation)} if orientation != 1 and fmt in ("jpg", "png", "webp") else {}
    buf = io.BytesIO()
    img.save(buf, format=SAVE_FORMAT[fmt], **kw)
    path.write_bytes(buf.getvalue())


def storable() -> list[tuple[str, str]]:
    """The (mode, format) pairs of MODE_FORMATS that PIL can write."""
    pairs = []
    for mode, formats in MODE_FORMATS.items():
        for fmt in formats:
            try:
                in_mode(mode, 4, 3).save(io.BytesIO(), format=SAVE_FORMAT[fmt])
            except (OSError, ValueError, KeyError):
                continue
            pairs.append((mode, fmt))
    return pairs
