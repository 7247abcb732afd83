"""Per-image transforms: albumentations augmentation, then the model's own image processor.

Resize and normalisation come from the model's image processor (the same object that
``transformers.pipeline`` uses on the exported model), so training, evaluation and deployment see
identical inputs and match the backbone's pretraining.
"""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import numpy as np
import torch
from PIL import Image

from vitft.core.errors import VitftError

# What inspection and field images vary by: orientation, lighting, focus, sensor noise.
AUGMENT_PRESETS = {
    "none": list,
    "light": lambda: [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ],
    "industrial": lambda: [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.2),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.2),
    ],
    # Supervised pretraining on formula-driven images (one or two per class): the augmentation
    # is what makes the instances of a class, so it is strong (OFDB, Nakamura et al. 2023).
    "formula": lambda: [
        A.Affine(scale=(0.5, 1.5), rotate=(-180, 180), translate_percent=(-0.15, 0.15), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
        A.ToGray(p=0.2),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.3),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
    ],
}

# Images with a side under this many pixels are not augmented (see ImageTransform.prepare).
MIN_AUGMENT_SIDE = 8


def augmentation(preset: str | None) -> A.Compose | None:
    """The albumentations pipeline of a preset (None for ``none``)."""
    preset = preset or "none"
    if preset not in AUGMENT_PRESETS:
        raise VitftError(
            f"data.augment={preset!r} is unknown; use one of {sorted(AUGMENT_PRESETS)}"
        )
    ops = AUGMENT_PRESETS[preset]()
    return A.Compose(ops) if ops else None


def processor_facts(processor: Any) -> dict:
    """Image size, mean and std of an HF image processor (what exports must record)."""
    size = processor.size
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop:
        size = crop  # the model sees the crop, not the resized image
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or size.get("shortest_edge")
    normalize = getattr(processor, "do_normalize", True) and processor.image_mean is not None
    return {
        "image_size": [int(height), int(width)],
        "image_mean": [float(v) for v in processor.image_mean] if normalize else [0.0] * 3,
        "image_std": [float(v) for v in processor.image_std] if normalize else [1.0] * 3,
        "preprocessing": _preprocessing(processor),
    }


def _preprocessing(processor: Any) -> dict:
    """The steps between a decoded RGB image and the model's input, as an export's reader needs
    them without transformers: the resize filter, the center crop, the rescale factor and the
    channel order (MobileViT's processor flips RGB to BGR and does not normalise)."""
    resample = getattr(processor, "resample", None)
    crop = (
        getattr(processor, "crop_size", None)
        if getattr(processor, "do_center_crop", False)
        else None
    )
    return {
        "resize": dict(processor.size),
        "resample": Image.Resampling(int(resample)).name.lower() if resample is not None else None,
        "center_crop": dict(crop) if crop else None,
        "crop_pct": getattr(processor, "crop_pct", None),
        "rescale_factor": float(getattr(processor, "rescale_factor", 1 / 255)),
        "channel_order": "BGR" if getattr(processor, "do_flip_channel_order", False) else "RGB",
        "normalize": bool(
            getattr(processor, "do_normalize", True) and processor.image_mean is not None
        ),
    }


class ImageTransform:
    """PIL RGB image -> normalised ``(3, H, W)`` float tensor, optionally augmented first.

    Two halves, so a DataLoader can run the image processor once per batch: ``prepare`` (decode
    side, per image: the augmentation) and ``pixels`` (the processor's resize + rescale +
    normalise on a list of images). The processor's per-call overhead (argument validation,
    grouping) costs more than resizing a small image, and batching does not change its output.
    """

    def __init__(self, processor: Any, augment: str | None = None):
        self.processor = processor
        self.augment = augmentation(augment)

    def prepare(self, img: Image.Image, seed: int | None = None) -> Any:
        """The per-image half: the augmented image (a numpy array), or ``img`` without one.

        With ``seed`` the augmentation draws only from generators seeded by it, so an image's
        augmentation is a function of its seed, whichever process or worker computes it.
        """
        if self.augment is None:
            return img
        if seed is not None:
            # One shared stream for all ops (set_random_seed would seed each op alike, and
            # correlated ops would e.g. flip horizontally and vertically together).
            self.augment.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if min(img.size) < MIN_AUGMENT_SIDE:
            # albumentations returns wrong shapes for a few pixels (ToGray, Affine), and there
            # is nothing there to augment.
            return np.array(img)
        out = self.augment(image=np.array(img))["image"]
        # Flips return views with negative strides, which the processor's torch.from_numpy
        # refuses when numpy calls them contiguous anyway (1-pixel-high images: no copy made).
        return out.copy() if min(out.strides) < 0 else out

    def pixels(self, images: list) -> torch.Tensor:
        """The batch half: ``(N, 3, H, W)`` pixel values of prepared images."""
        # Arrays are always (H, W, 3): left to guess, the processor reads a (1, 1, 3) or
        # (3, W, 3) image as channels-first.
        out = self.processor(
            images=list(images), return_tensors="pt", input_data_format="channels_last"
        )
        return out["pixel_values"]

    def collate(self, items: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """DataLoader ``collate_fn`` over ``(prepare(img), label)`` items."""
        images, labels = zip(*items, strict=True)
        return self.pixels(images), torch.tensor(labels, dtype=torch.long)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.pixels([self.prepare(img)])[0]
