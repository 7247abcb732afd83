"""Load HF image backbones: from the hub, from a local HF directory, or built from a config.

Where each architecture keeps its embeddings, blocks and norm is in ``vitft.models.parts``.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from vitft.core.errors import VitftError
from vitft.models.parts import ARCHITECTURES
from vitft.models.pruning import load_pruned
from vitft.weights import check_sha256

log = logging.getLogger(__name__)


def _label_kwargs(labels: list[str]) -> dict[str, Any]:
    id2label = dict(enumerate(labels))
    return {
        "num_labels": len(labels),
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }


def _offline_error(source: str, err: Exception) -> VitftError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    return VitftError(
        f"could not load model.pretrained={source!r}: it is not a local directory, and the HF hub "
        f"{'is disabled (HF_HUB_OFFLINE=1)' if offline else 'could not be reached'} with no cached "
        "copy. Fixes: run once with network access to fill the HF cache (then HF_HUB_OFFLINE=1 "
        "works), or point model.pretrained=/path/to/local/hf_dir at a mirrored copy, or use "
        "vitft's shipped offline backbones (pretrained on formula-driven images, no download): "
        "experiment=small_data (model=mobilevit_fractal) for a few hundred to a few thousand "
        f"real images, or model=vit_fractal. ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''})"
    )


def default_image_processor(config: transformers.PretrainedConfig):
    """Preprocessing for a model built from a config (random weights, so no pretraining to
    match): resize to the config's image size, normalise to [-1, 1]."""
    size = getattr(config, "image_size", 224)
    return transformers.ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def check_image_size(config: transformers.PretrainedConfig) -> None:
    """A patch model needs an image size that is a whole number of patches (and at least one)."""
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not isinstance(size, int) or not isinstance(patch, int):
        return
    if size < patch or size % patch:
        fits = sorted({max(patch, size // patch * patch), (size // patch + 1) * patch})
        raise VitftError(
            f"model.config.image_size={size} does not fit patch_size={patch}: the image must be "
            f"a whole number of {patch}x{patch} patches. Use model.config.image_size="
            f"{' or '.join(map(str, fits))}"
        )


def load_backbone(model_cfg: dict, labels: list[str]) -> tuple[PreTrainedModel, Any]:
    """HF image classifier with ``len(labels)`` outputs, plus its image processor.

    ``model_cfg.pretrained``: a hub id or a local HF directory (pretrained weights; the
    classifier is re-initialised when the label count differs). Else ``model_cfg.config``:
    an architecture built from config with random weights. Never falls back from one to the other.
    """
    pretrained = model_cfg.get("pretrained")
    config = model_cfg.get("config")
    extra = {}
    if model_cfg.get("drop_path_rate") is not None:
        extra["drop_path_rate"] = float(model_cfg["drop_path_rate"])
    if pretrained:
        return _from_pretrained(model_cfg, str(pretrained), labels, extra)
    if config:
        return _from_config(config, labels, extra)
    raise VitftError(
        "set model.pretrained (hub id or local dir) or model.config (build from config)"
    )


def _from_pretrained(
    model_cfg: dict, source: str, labels: list[str], extra: dict
) -> tuple[PreTrainedModel, Any]:
    """The pretrained classifier and processor at ``source``: a local save_pretrained dir
    (checked against ``model_cfg.sha256``; a pruned one keeps its shape) or a hub id."""
    local = Path(source).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise VitftError(
            f"model.pretrained={source!r} is a local path but has no config.json: it must be "
            "a directory written by save_pretrained (config.json + model.safetensors)"
        )
    source = str(local) if local.exists() else source
    if model_cfg.get("sha256"):
        check_sha256(local, str(model_cfg["sha256"]))
    try:
        model = (
            load_pruned(source, **_label_kwargs(labels)) if local.exists() else None
        ) or AutoModelForImageClassification.from_pretrained(
            source,
            ignore_mismatched_sizes=True,
            dtype=torch.float32,  # transformers 5 would keep fp16 weights' dtype
            **_label_kwargs(labels),
            **extra,
        )
        processor = AutoImageProcessor.from_pretrained(source)
    except pickle.UnpicklingError as err:
        raise VitftError(
            f"refused to load model.pretrained={source!r}: its weights are a pickle that would "
            "run code (torch.load weights_only=True rejected it). Use a safetensors copy "
            "(save_pretrained(..., safe_serialization=True))"
        ) from err
    except OSError as err:
        if local.exists():
            raise VitftError(f"could not load model.pretrained={source!r}: {err}") from err
        raise _offline_error(source, err) from err
    _check_drop_path(model.config.model_type, extra)
    return model, processor


def _from_config(config: Any, labels: list[str], extra: dict) -> tuple[PreTrainedModel, Any]:
    """A classifier built from ``model.config`` with random weights, and the default processor
    for its image size."""
    # plain lists/dicts: HF's strict config dataclasses reject OmegaConf containers
    config = OmegaConf.to_container(config) if OmegaConf.is_config(config) else dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise VitftError("model.config needs a model_type (e.g. vit)")
    _check_drop_path(model_type, extra)
    hf_config = AutoConfig.for_model(model_type, **{**config, **extra}, **_label_kwargs(labels))
    if not hf_config.architectures:
        # Auto classes with two heads per type (DeiT, LeViT) need the architecture named.
        hf_config.architectures = [_classifier_class_name(model_type)]
    check_image_size(hf_config)
    model = AutoModelForImageClassification.from_config(hf_config)
    if model_type in KAIMING_CONV_INIT:
        kaiming_conv_init(model)
    return model, default_image_processor(hf_config)


# BatchNorm conv nets whose HF init (transformers 5) draws conv weights and even BatchNorm scales
# from normal(0, 0.02). Their reference code (apple/ml-cvnets for MobileViT) uses Kaiming convs
# and BatchNorm scales of 1: with 0.02 every layer shrinks the signal ~50x, the pooled features of
# a fresh MobileViT start near 1e-3, and training from random weights stalls at the uniform
# prediction (256-class fractal pretraining never left ln(256)).
KAIMING_CONV_INIT = ("mobilevit", "mobilevitv2")


def kaiming_conv_init(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)


def _check_drop_path(model_type: str, extra: dict) -> None:
    """Stochastic depth exists only where the architecture implements it."""
    if "drop_path_rate" in extra and not hasattr(
        AutoConfig.for_model(model_type), "drop_path_rate"
    ):
        supported = [t for t in ARCHITECTURES if hasattr(AutoConfig.for_model(t), "drop_path_rate")]
        raise VitftError(
            f"model.drop_path_rate is not supported by model_type={model_type!r} (HF's "
            f"implementation has no stochastic depth); it is for {supported}. Unset it"
        )


def _classifier_class_name(model_type: str) -> str:
    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if not names:
        raise VitftError(
            f"model.config.model_type={model_type!r} has no image-classification model in "
            f"transformers {transformers.__version__}"
        )
    return names[0] if isinstance(names, tuple) else names
