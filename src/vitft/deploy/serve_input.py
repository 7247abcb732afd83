"""What a /predict or /explain request carries, checked before anything is decoded.

A request is parsed into (name, bytes) items; each item is then checked from its header alone
(format allowlist, pixel count) and only then decoded. A bad item becomes an ``ItemError`` with
its own status and reason, so the good images of the same request are still answered.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from vitft.data.images import to_rgb

# PIL format names; anything else (EPS runs Ghostscript, PSD, ICO, ...) is never even opened.
DEFAULT_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class BadInput(Exception):
    """A request the client must fix: answered with ``status`` and the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class ItemError:
    """One image of a request that cannot be answered, and why."""

    name: str
    status: int
    reason: str

    def as_dict(self) -> dict:
        return {"name": self.name, "error": self.reason, "status": self.status}


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS


def check_header(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """The opened (not decoded) image, once its format and pixel count pass ``limits``."""
    if not data:
        raise BadInput(400, f"{name}: zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.UnidentifiedImageError as err:
        allowed = ", ".join(limits.formats)
        raise BadInput(
            400, f"{name}: not an image of an allowed format ({allowed}; image_formats)"
        ) from err
    except Image.DecompressionBombError as err:
        raise BadInput(413, f"{name}: too many pixels for PIL ({err})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise BadInput(400, f"{name}: unreadable image header ({type(err).__name__})") from err
    w, h = img.size
    if w * h > limits.max_pixels:
        raise BadInput(
            413,
            f"{name}: {w}x{h} = {w * h / 1e6:.1f} Mpx is over max_pixels="
            f"{limits.max_pixels / 1e6:g} Mpx; resize it or raise max_pixels",
        )
    return img


def decode(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """8-bit RGB from the bytes of one image file; a bad file raises BadInput (400 or 413)."""
    img = check_header(data, name, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = ImageOps.exif_transpose(img)
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise BadInput(400, f"{name}: unreadable image ({type(err).__name__}: {err})") from err
    except Image.DecompressionBombError as err:  # pragma: no cover - max_pixels is lower
        raise BadInput(413, f"{name}: too many pixels ({err})") from err


def decode_all(
    raw: list[tuple[str, bytes | BadInput]], limits: ImageLimits
) -> list[Image.Image | ItemError]:
    """Each item decoded, or its ItemError: one bad file never sinks the others."""
    out: list[Image.Image | ItemError] = []
    for name, data in raw:
        try:
            if isinstance(data, BadInput):
                raise data
            out.append(decode(data, name, limits))
        except BadInput as err:
            out.append(ItemError(name, err.status, err.reason))
    return out


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadInput(422, f"{name}: expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL from a browser
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadInput(400, f"{name}: not valid base64 ({err})") from err


def json_images(doc: Any) -> list[tuple[str, bytes | BadInput]]:
    """``{"image": b64}``, ``{"images": [b64, ...]}`` or ``{"images": [{"name", "data"}]}``;
    an item that is not valid base64 is kept as its BadInput (an item error, not the request's)."""
    if not isinstance(doc, dict) or not ({"image", "images"} & set(doc)):
        raise BadInput(422, 'JSON body must be {"image": "<base64>"} or {"images": [...]}')
    items = [doc["image"]] if "image" in doc else doc["images"]
    if not isinstance(items, list):
        raise BadInput(422, '"images" must be a list of base64 strings or {name, data} objects')
    out: list[tuple[str, bytes | BadInput]] = []
    for i, item in enumerate(items):
        name = f"images[{i}]"
        if isinstance(item, dict):
            name = str(item.get("name") or name)[:200]
            item = item.get("data")
        try:
            out.append((name, _b64(item, name)))
        except BadInput as err:
            out.append((name, err))
    return out


async def request_images(
    request: Any, max_bytes: int, max_files: int = 1000
) -> list[tuple[str, bytes | BadInput]]:
    """The (name, bytes) of every image in a multipart, JSON or raw-image request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=max_files, max_part_size=max(max_bytes, 1024))
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        return [(f.filename or f"file[{i}]", await f.read()) for i, f in enumerate(files)]
    if ctype == "application/json":
        try:
            doc = await request.json()
        except ValueError as err:
            raise BadInput(400, f"body is not valid JSON ({type(err).__name__})") from err
        return json_images(doc)
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [("body", await request.body())]
    raise BadInput(
        415,
        f"Content-Type {ctype[:80] or '(none)'} is not supported: send multipart/form-data "
        'files, JSON {"images": [<base64>]}, or a raw image/* body',
    )
