"""An export's preprocessing with PIL and numpy alone: image -> float32 ``(3, H, W)``.

The steps are the ones the model's image processor runs (resize, center crop, rescale, normalise,
channel order), read from the export folder's own files: ``preprocessor_config.json`` (what
export.py saves beside the model) for the steps, ``metadata.json`` when there is no such file
(resize to ``image_size``, then ``(x/255 - mean) / std``, its ``input_layout``). No torch, no
transformers: a predict on an export starts in a fraction of a second. The resize is PIL's, on
8-bit pixels, which transformers' torchvision processors match to within one intensity level.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitft.core.errors import VitftError

log = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"
# The image processors of vitft's backbones (conf/model/*): their steps are the standard ones
# below; ConvNeXt resizes by crop_pct, MobileViT never normalises and flips RGB to BGR.
STANDARD = {"ViTImageProcessor", "DeiTImageProcessor", "BitImageProcessor"}
KNOWN = STANDARD | {"ConvNextImageProcessor", "MobileViTImageProcessor"}


@dataclass(frozen=True)
class ExportPreprocess:
    """The steps of one image processor, as data; ``__call__`` runs them on an RGB PIL image."""

    kind: str  # the processor class, e.g. ViTImageProcessor
    size: dict  # {"height", "width"} or {"shortest_edge"}
    resample: int = Image.Resampling.BILINEAR  # PIL's code, as HF processors record it
    do_resize: bool = True
    do_center_crop: bool = False
    crop_size: dict | None = None
    crop_pct: float | None = None  # ConvNeXt: resize to shortest_edge / crop_pct, then crop
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    bgr: bool = False  # MobileViT's do_flip_channel_order

    @classmethod
    def from_config(cls, config: dict) -> ExportPreprocess:
        """From a ``preprocessor_config.json`` of one of the ``KNOWN`` processors."""
        kind = _kind(config)
        if kind not in KNOWN:
            raise VitftError(f"no torch-free preprocessing for {kind}; known: {sorted(KNOWN)}")
        mobilevit = kind == "MobileViTImageProcessor"
        return cls(
            kind=kind,
            size=dict(config["size"]),
            resample=int(config.get("resample", Image.Resampling.BILINEAR)),
            do_resize=bool(config.get("do_resize", True)),
            do_center_crop=bool(config.get("do_center_crop", False)),
            crop_size=config.get("crop_size"),
            crop_pct=config.get("crop_pct") if kind == "ConvNextImageProcessor" else None,
            do_rescale=bool(config.get("do_rescale", True)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            do_normalize=not mobilevit and config.get("do_normalize", True) is not False,
            image_mean=tuple(float(v) for v in config.get("image_mean") or (0.0,) * 3),
            image_std=tuple(float(v) for v in config.get("image_std") or (1.0,) * 3),
            bgr=mobilevit and bool(config.get("do_flip_channel_order", True)),
        )

    @classmethod
    def from_metadata(cls, meta: dict) -> ExportPreprocess:
        """From metadata.json alone: resized to ``image_size``, then ``(x/255 - mean) / std``."""
        height, width = meta["image_size"]
        return cls(
            kind="metadata.json",
            size={"height": int(height), "width": int(width)},
            image_mean=tuple(float(v) for v in meta["image_mean"]),
            image_std=tuple(float(v) for v in meta["image_std"]),
        )

    def __call__(self, img: Image.Image) -> np.ndarray:
        """``(3, H, W)`` float32 pixels of an RGB image."""
        if self.do_resize:
            img = self._resize(img)
        arr = np.asarray(img, dtype=np.uint8)
        if self.do_center_crop and self.crop_size:
            arr = center_crop(arr, int(self.crop_size["height"]), int(self.crop_size["width"]))
        x = arr.astype(np.float32)
        mean, std = np.asarray(self.image_mean, np.float32), np.asarray(self.image_std, np.float32)
        if self.do_rescale and self.do_normalize:  # fused as torchvision does: one division
            scale = np.float32(1 / self.rescale_factor)
            x = (x - scale * mean) / (scale * std)
        elif self.do_normalize:
            x = (x - mean) / std
        elif self.do_rescale:
            x = x * np.float32(self.rescale_factor)
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _resize(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        if "height" in self.size and "width" in self.size:
            return img.resize((int(self.size["width"]), int(self.size["height"])), self.resample)
        if "shortest_edge" not in self.size:
            raise VitftError(f"{self.kind}: size {self.size} has no height/width or shortest_edge")
        edge = int(self.size["shortest_edge"])
        if self.crop_pct is not None:  # ConvNeXt: warp at 384 and over, else resize + crop
            if edge >= 384:
                return img.resize((edge, edge), self.resample)
            new_h, new_w = shortest_edge_size(height, width, int(edge / self.crop_pct))
            resized = np.asarray(img.resize((new_w, new_h), self.resample))
            return Image.fromarray(center_crop(resized, edge, edge))
        new_h, new_w = shortest_edge_size(height, width, edge)
        return img.resize((new_w, new_h), self.resample)


def _kind(config: dict) -> str:
    """The processor class of a config, whichever backend saved it (ViTImageProcessorFast...)."""
    kind = str(config.get("image_processor_type", ""))
    for suffix in ("Fast", "Pil"):
        if kind.endswith(suffix) and kind[: -len(suffix)] in KNOWN:
            return kind[: -len(suffix)]
    return kind


def shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``edge`` and the aspect ratio kept (as HF does)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def center_crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre ``height x width`` of an ``(H, W, C)`` array, zero-padded where it is smaller
    (the arithmetic of transformers' center_crop)."""
    h, w = arr.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        padded = np.zeros((max(h, height), max(w, width), *arr.shape[2:]), arr.dtype)
        padded[top : top + h, left : left + w] = arr
        arr, (h, w) = padded, padded.shape[:2]
    top, left = int((h - height) / 2.0), int((w - width) / 2.0)
    return arr[top : top + height, left : left + width]


class ProcessorPreprocess:
    """Any other image processor, through transformers (numpy out): correct, not lean."""

    def __init__(self, folder: Path):
        from transformers import AutoImageProcessor  # only for processors ExportPreprocess lacks

        self.processor = AutoImageProcessor.from_pretrained(folder)

    def __call__(self, img: Image.Image) -> np.ndarray:
        out = self.processor(images=[img], return_tensors="np", input_data_format="channels_last")
        return np.asarray(out["pixel_values"][0], np.float32)


Preprocess = Callable[[Image.Image], np.ndarray]


def export_preprocess(folder: str | Path, meta: dict) -> Preprocess:
    """The preprocessing of an export folder: its processor's steps, else metadata.json's."""
    path = Path(folder) / PROCESSOR_FILE
    if not path.is_file():
        return ExportPreprocess.from_metadata(meta)
    config = json.loads(path.read_text())
    if _kind(config) in KNOWN:
        return ExportPreprocess.from_config(config)
    log.warning("%s: %s has no torch-free preprocessing; using transformers'", path, _kind(config))
    return ProcessorPreprocess(Path(folder))
