"""export(cfg): one folder per format (model file + metadata.json + parity.json), checked.

model dir -> plain ImageClassifier (with the model dir's OOD scorer: ``ScoredClassifier``, whose
second output is ``ood_score``) -> each format -> reload with its own runtime -> parity with
PyTorch fp32 on the task's val images -> fail loudly when a format disagrees.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from vitft.core.errors import VitftError
from vitft.core.files import sha256
from vitft.data.transforms import processor_facts
from vitft.deploy import quantize
from vitft.deploy.formats import CALIBRATED, FORMATS, check_formats, write_format
from vitft.deploy.metadata import build_metadata, write_metadata
from vitft.deploy.onnx import output_names
from vitft.deploy.parity import batched, format_row, ood_parity, parity, write_parity
from vitft.deploy.runtime import load_outputs, torch_outputs
from vitft.modelio.card import update_card_exports
from vitft.modelio.hf import load_model, multilabel_facts
from vitft.modelio.ood import has_ood, load_ood
from vitft.modelio.operating_point import load_operating_point
from vitft.models.multilabel import is_multilabel
from vitft.models.ood import ScoredClassifier
from vitft.models.resolution import set_image_size
from vitft.run.rundir import model_images

log = logging.getLogger(__name__)


def _load_net(cfg: DictConfig, model_dir: Path):
    """(model, processor, scorer, net): the model dir's classifier at the export's image size,
    and the network to export, with the OOD score as a second output when the model has a
    scorer and ``cfg.ood`` allows it."""
    model, processor = load_model(model_dir)
    if cfg.get("image_size"):
        set_image_size(model, processor, int(cfg.image_size))
    scorer = load_ood(model_dir) if cfg.get("ood", True) and has_ood(model_dir) else None
    net = model if scorer is None else ScoredClassifier(model, scorer).eval()
    return model, processor, scorer, net


def _export_images(cfg: DictConfig, model_dir: Path, model, processor, formats: list[str]):
    """The images parity runs on (``cfg.parity.split``) and, when a format is calibrated, the
    train images that calibrate it (else None)."""
    par = cfg.parity
    data_dir = cfg.get("data_dir")
    images = model_images(
        model_dir, model.labels, processor, par.split, data_dir, par.get("max_images")
    )
    calibration = None
    if any(f in CALIBRATED for f in formats):
        calibration = model_images(
            model_dir, model.labels, processor, "train", data_dir, cfg.calibration_images
        )
    return images, calibration


def _metadata(fmt: str, folder: Path, shared: dict, label_facts: dict, opset: int) -> dict:
    """One format's metadata.json: the facts every format shares, then its own spec, file
    checksum, batch and opset (and ONNX int8's quantization settings)."""
    spec = FORMATS[fmt]
    return build_metadata(
        fmt=fmt,
        precision=spec.precision,
        runtime=spec.runtime,
        file=spec.file,
        **shared,
        description=spec.description,
        file_sha256=sha256(folder / spec.file),  # checked before TorchScript is loaded
        batch="dynamic" if spec.runtime != "litert" else 1,
        opset=opset if spec.runtime == "onnxruntime" else None,
        **(
            {"quantization": quantize.ONNX_INT8_FACTS[fmt]}
            if fmt in quantize.ONNX_INT8_FACTS
            else {}
        ),
        **label_facts,
    )


def _check_parity(
    cfg: DictConfig, fmt: str, folder: Path, reference, images, thresholds, scorer
) -> dict:
    """Reload the exported format with its own runtime and compare it with PyTorch on the
    parity images: label agreement (and the OOD score's relative difference) against the
    thresholds of ``cfg.parity``."""
    spec = FORMATS[fmt]
    par = cfg.parity
    run, _ = load_outputs(folder, threads=cfg.get("threads"))
    outputs = batched(run, images.x, int(par.get("batch_size") or 1))
    result = parity(reference[0], outputs[0], images.y, thresholds)
    int8 = spec.precision == "int8"
    threshold = float(par.int8_threshold if int8 else par.threshold)
    passed = result["agreement"] >= threshold
    if scorer is not None:
        ood = ood_parity(reference[1], outputs[1], scorer.threshold)
        tolerance = float(par.ood_int8_rel_tol if int8 else par.ood_rel_tol)
        # Within it, only images that close to the threshold can change their flag.
        ood.update(tolerance=tolerance, passed=ood["max_rel_diff"] <= tolerance)
        result["ood"] = ood
        passed = passed and ood["passed"]
    result.update(
        format=fmt,
        split=images.split,
        data_dir=images.root,
        threshold=threshold,
        batch_size=int(par.get("batch_size") or 1),
        passed=passed,
        # the model file and its siblings (OpenVINO's model.bin beside model.xml)
        size_mb=sum(f.stat().st_size for f in folder.glob(Path(spec.file).stem + ".*")) / 1e6,
    )
    return result


def _raise_on_failure(results: dict[str, dict], par, images, out: Path) -> None:
    """Name every format that failed parity, unless ``parity.fail`` is false."""
    failed = [f for f, r in results.items() if not r["passed"]]
    if failed and par.get("fail", True):
        raise VitftError(
            "parity check failed for "
            + ", ".join(f"{f} ({_failure(results[f])})" for f in failed)
            + f" on {images.split} images of {images.root}; the files are kept in {out} for "
            "inspection. Lower parity.threshold / parity.int8_threshold, or raise "
            "parity.ood_rel_tol / parity.ood_int8_rel_tol, only if that is acceptable; ood=false "
            "exports the logits alone."
        )


def export(cfg: DictConfig) -> dict[str, dict]:
    """Export ``cfg.model_dir`` to ``cfg.formats`` under ``cfg.output_dir``; returns parity."""
    formats = check_formats(list(cfg.formats))
    model_dir = Path(cfg.model_dir).expanduser()
    model, processor, scorer, net = _load_net(cfg, model_dir)
    facts = processor_facts(processor)
    size = facts["image_size"]
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    multilabel = is_multilabel(model.config)
    # Multi-label exports carry the tuned thresholds; parity compares label sets with them.
    label_facts = multilabel_facts(model_dir, model.labels) if multilabel else {}
    thresholds = [label_facts["thresholds"][c] for c in model.labels] if multilabel else None
    point = load_operating_point(model_dir, model.labels)  # the Predictor applies it to logits
    shared = {
        "labels": model.labels,
        "facts": facts,
        "model_dir": model_dir,
        "outputs": output_names(net),
        "ood": scorer,
        "operating_point": point,
    }
    images, calibration = _export_images(cfg, model_dir, model, processor, formats)
    reference = batched(torch_outputs(net), images.x)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            folder = out / fmt
            folder.mkdir(parents=True, exist_ok=True)
            log.info("export %s -> %s", fmt, folder)
            write_format(
                fmt, net, folder / FORMATS[fmt].file, size, Path(tmp), calibration, cfg.opset
            )
            write_metadata(folder, _metadata(fmt, folder, shared, label_facts, cfg.opset))
            processor.save_pretrained(folder)  # the exact preprocessing, for predict.py
            result = _check_parity(cfg, fmt, folder, reference, images, thresholds, scorer)
            write_parity(folder, result)
            print(format_row(fmt, result), flush=True)
            results[fmt] = result
    (out / "parity.json").write_text(json.dumps(results, indent=2))
    update_card_exports(model_dir, results, out)  # model/README.md lists formats + parity
    _raise_on_failure(results, cfg.parity, images, out)
    return results


def _failure(result: dict) -> str:
    """What failed in one format's parity ``result``."""
    why = []
    if result["agreement"] < result["threshold"]:
        why.append(f"agreement {result['agreement']:.2%} < {result['threshold']:.2%}")
    ood = result.get("ood")
    if ood and not ood["passed"]:
        why.append(f"ood_score max rel diff {ood['max_rel_diff']:.2e} > {ood['tolerance']:.0e}")
    return ", ".join(why)
