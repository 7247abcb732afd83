"""export(cfg): one folder per format (model file + metadata.json + parity.json), checked.

model dir -> plain ImageClassifier -> each format -> reload with its own runtime -> parity with
PyTorch fp32 on the task's val images -> fail loudly when a format disagrees.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from vitft.data.transforms import processor_facts
from vitft.deploy import openvino
from vitft.errors import VitftError
from vitft.export import onnx as onnx_export
from vitft.export import quantize, tflite
from vitft.export.hf import load_model, multilabel_facts
from vitft.export.metadata import build_metadata, write_metadata
from vitft.export.parity import (
    ImageSet,
    batched,
    format_row,
    load_images,
    parity,
    run_data,
    write_parity,
)
from vitft.export.runtime import load_exported
from vitft.modelio.card import update_card_exports
from vitft.models.resolution import set_image_size
from vitft.multilabel import is_multilabel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Format:
    runtime: str
    precision: str
    file: str
    description: str


FORMATS: dict[str, Format] = {
    "onnx": Format("onnxruntime", "fp32", "model.onnx", "ONNX fp32, simplified"),
    "onnx_int8": Format("onnxruntime", "int8", "model.onnx", "ONNX Runtime dynamic int8"),
    "onnx_int8_static": Format(
        "onnxruntime", "int8", "model.onnx", "ONNX Runtime static int8 (QDQ, calibrated)"
    ),
    "torch_int8": Format("torchscript", "int8", "model.pt", "PyTorch dynamic int8 (Linear)"),
    "tflite": Format("litert", "fp32", "model.tflite", "LiteRT fp32"),
    "tflite_int8": Format("litert", "int8", "model.tflite", "LiteRT dynamic-range int8"),
    "openvino": Format("openvino", "fp32", "model.xml", "OpenVINO IR fp32"),
    "openvino_int8": Format(
        "openvino", "int8", "model.xml", "OpenVINO IR int8 (NNCF post-training, calibrated)"
    ),
}
# Formats that quantize with activation statistics of calibration images (train split).
CALIBRATED = ("onnx_int8_static", "openvino_int8")


def _check_formats(formats: list[str]) -> list[str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise VitftError(f"formats={unknown} unknown; choose from {sorted(FORMATS)}")
    if not formats:
        raise VitftError(f"formats=[] is empty; choose from {sorted(FORMATS)}")
    return list(dict.fromkeys(formats))


def _write_one(
    fmt: str,
    model: torch.nn.Module,
    dst: Path,
    size: list[int],
    cache: Path,
    calibration: ImageSet | None,
    opset: int,
) -> None:
    """Write format ``fmt`` of ``model`` to the file ``dst``; fp32 intermediates live in cache."""

    def fp32_onnx() -> Path:
        path = cache / "fp32.onnx"
        return path if path.is_file() else onnx_export.export_onnx(model, path, size, opset)

    def fp32_tflite() -> Path:
        path = cache / "fp32.tflite"
        return path if path.is_file() else tflite.export_tflite(model, path, size)

    if fmt == "onnx":
        shutil.copy(fp32_onnx(), dst)
    elif fmt == "onnx_int8":
        quantize.onnx_int8_dynamic(fp32_onnx(), dst)
    elif fmt == "onnx_int8_static":
        assert calibration is not None
        quantize.onnx_int8_static(fp32_onnx(), dst, calibration.x)
    elif fmt == "torch_int8":
        quantize.torch_int8_dynamic(model, dst, size)
    elif fmt == "tflite":
        shutil.copy(fp32_tflite(), dst)
    elif fmt == "tflite_int8":
        tflite.tflite_int8_dynamic(fp32_tflite(), dst)
    elif fmt == "openvino":
        openvino.export_openvino(fp32_onnx(), dst)
    elif fmt == "openvino_int8":
        assert calibration is not None
        openvino.openvino_int8(fp32_onnx(), dst, calibration.x)


def export(cfg: DictConfig) -> dict[str, dict]:
    """Export ``cfg.model_dir`` to ``cfg.formats`` under ``cfg.output_dir``; returns parity."""
    formats = _check_formats(list(cfg.formats))
    model_dir = Path(cfg.model_dir).expanduser()
    model, processor = load_model(model_dir)
    if cfg.get("image_size"):
        set_image_size(model, processor, int(cfg.image_size))
    facts = processor_facts(processor)
    size = facts["image_size"]
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    data = run_data(model_dir, cfg.get("data_dir"))
    multilabel = is_multilabel(model.config)
    # Multi-label exports carry the tuned thresholds; parity compares label sets with them.
    label_facts = multilabel_facts(model_dir, model.labels) if multilabel else {}
    par = cfg.parity
    images = load_images(
        data, model.labels, processor, par.split, par.get("max_images"), multilabel
    )
    calibration = None
    if any(f in CALIBRATED for f in formats):
        calibration = load_images(
            data, model.labels, processor, "train", cfg.calibration_images, multilabel
        )
    with torch.inference_mode():
        reference = batched(lambda x: model(torch.from_numpy(x)).numpy(), images.x)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            spec = FORMATS[fmt]
            folder = out / fmt
            folder.mkdir(parents=True, exist_ok=True)
            log.info("export %s -> %s", fmt, folder)
            _write_one(fmt, model, folder / spec.file, size, Path(tmp), calibration, cfg.opset)
            meta = build_metadata(
                fmt=fmt,
                precision=spec.precision,
                runtime=spec.runtime,
                file=spec.file,
                labels=model.labels,
                facts=facts,
                model_dir=model_dir,
                description=spec.description,
                batch="dynamic" if spec.runtime != "litert" else 1,
                opset=cfg.opset if spec.runtime == "onnxruntime" else None,
                **(
                    {"quantization": quantize.ONNX_INT8_FACTS[fmt]}
                    if fmt in quantize.ONNX_INT8_FACTS
                    else {}
                ),
                **label_facts,
            )
            write_metadata(folder, meta)
            processor.save_pretrained(folder)  # the exact preprocessing, for predict.py
            predict, _ = load_exported(folder, threads=cfg.get("threads"))
            logits = batched(predict, images.x, int(par.get("batch_size") or 1))
            thresholds = (
                [label_facts["thresholds"][c] for c in model.labels] if multilabel else None
            )
            result = parity(reference, logits, images.y, thresholds)
            threshold = float(par.int8_threshold if spec.precision == "int8" else par.threshold)
            result.update(
                format=fmt,
                split=images.split,
                data_dir=images.root,
                threshold=threshold,
                batch_size=int(par.get("batch_size") or 1),
                passed=result["agreement"] >= threshold,
                # the model file and its siblings (OpenVINO's model.bin beside model.xml)
                size_mb=sum(f.stat().st_size for f in folder.glob(Path(spec.file).stem + ".*"))
                / 1e6,
            )
            write_parity(folder, result)
            print(format_row(fmt, result), flush=True)
            results[fmt] = result
    (out / "parity.json").write_text(json.dumps(results, indent=2))
    update_card_exports(model_dir, results, out)  # model/README.md lists formats + parity
    failed = [f for f, r in results.items() if not r["passed"]]
    if failed and par.get("fail", True):
        raise VitftError(
            "parity check failed for "
            + ", ".join(
                f"{f} (agreement {results[f]['agreement']:.2%} < {results[f]['threshold']:.2%})"
                for f in failed
            )
            + f" on {images.split} images of {images.root}; the files are kept in {out} for "
            "inspection. Lower parity.threshold / parity.int8_threshold only if that is acceptable."
        )
    return results


def run(cfg: DictConfig) -> dict[str, dict]:
    """Entry point behind export.py: VitftError -> 'error: ...' and exit status 2."""
    try:
        return export(cfg)
    except VitftError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
