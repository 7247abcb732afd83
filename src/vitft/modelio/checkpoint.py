"""The checkpoint's ``vitft`` block: written and read here only.

A Lightning checkpoint of a vitft run carries, next to the weights, enough to rebuild the plain
model without the run's config: the backbone config, the head, the labels, the image processor
and the W&B run id. Reads are ``torch.load(weights_only=True)``: no code in a checkpoint runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForImageClassification

from vitft.core.errors import VitftError
from vitft.modelio.hf import load_model
from vitft.models.classifier import ImageClassifier

BLOCK = "vitft"
STATE_PREFIX = "model."  # the LightningModule keeps the ImageClassifier as ``self.model``


def vitft_block(
    model: ImageClassifier,
    labels: list[str],
    processor: dict,
    wandb_id: str | None,
    multilabel: bool = False,
) -> dict[str, Any]:
    """What ``on_save_checkpoint`` stores under ``checkpoint["vitft"]``."""
    return {
        "backbone_config": model.config.to_dict(),
        "head": model.head_cfg,
        "labels": list(labels),
        "multilabel": multilabel,
        "processor": processor,
        "wandb_id": wandb_id,
    }


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """A checkpoint via ``torch.load(weights_only=True)``: tensors and plain data only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise VitftError(
            f"refused to load {path}: it contains pickled objects that would run code when "
            "loaded (torch.load weights_only=True rejected it). Only load checkpoints you made; "
            f"vitft never unpickles arbitrary objects. ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise VitftError(
            f"could not read checkpoint {path}: truncated or not a torch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); is it "
            "complete and written by train.py?"
        ) from err


def read_block(path: str | Path, ckpt: dict | None = None) -> dict[str, Any]:
    """The ``vitft`` block of the checkpoint at ``path``; a checkpoint without one is an error."""
    path = Path(path).expanduser()
    if ckpt is None:
        if not path.is_file():
            raise VitftError(f"ckpt_path={path} does not exist (or is not a file)")
        ckpt = read_checkpoint(path)
    block = ckpt.get(BLOCK)
    if not block:
        raise VitftError(
            f"{path} is not a vitft checkpoint (no 'vitft' block): pass a checkpoint written by "
            "train.py (outputs/<run>/checkpoints/best.ckpt) or model_dir=outputs/<run>/model"
        )
    return block


def check_labels(path: str | Path, classes: list[str]) -> None:
    """A checkpoint trained on other classes can't continue on this data: say which differ."""
    labels = read_block(path)["labels"]
    if list(labels) == list(classes):
        return
    if len(labels) != len(classes):
        what = f"{len(labels)} classes {labels}, the data has {len(classes)}: {classes}"
    else:
        what = f"classes {labels}, the data has {classes}"
    raise VitftError(
        f"checkpoint {path} was trained on {what}. Point task.data_dir at the data it was "
        "trained on (or task.classes in the same order), or start a new run without "
        "ckpt_path/resume (a different run_name) to train on these classes"
    )


def load_checkpoint(ckpt_path: str | Path) -> tuple[ImageClassifier, Any]:
    """Rebuild the plain model + image processor from a vitft Lightning checkpoint."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise VitftError(f"ckpt_path={ckpt_path} does not exist (or is not a file)")
    ckpt = read_checkpoint(path, mmap=False)
    block = read_block(path, ckpt)
    backbone_cfg = dict(block["backbone_config"])
    config = AutoConfig.for_model(backbone_cfg.pop("model_type"), **backbone_cfg)
    model = ImageClassifier.from_hf(
        AutoModelForImageClassification.from_config(config), block["head"]
    )
    n = len(STATE_PREFIX)
    model.load_state_dict(
        {k[n:]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    )
    proc = dict(block["processor"])
    processor = getattr(transformers, proc.pop("image_processor_type")).from_dict(proc)
    return model.eval(), processor


def load_classifier(
    model_dir: str | Path | None = None, ckpt_path: str | Path | None = None
) -> tuple[ImageClassifier, Any]:
    """The model + processor from exactly one of an HF model dir or a Lightning checkpoint."""
    if bool(model_dir) == bool(ckpt_path):
        raise VitftError(
            "set exactly one of model_dir=<run>/model or ckpt_path=<run>/checkpoints/best.ckpt"
        )
    return load_model(model_dir) if model_dir else load_checkpoint(ckpt_path)
