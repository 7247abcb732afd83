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


def export(cfg: DictConfig) -> dict[str, dict]:
    """Export ``cfg.model_dir`` to ``cfg.formats`` under ``cfg.output_dir``; returns parity."""
    formats = check_formats(list(cfg.formats))
    model_dir = Path(cfg.model_dir).expanduser()
    model, processor = load_model(model_dir)
    if cfg.get("image_size"):
        set_image_size(model, processor, int(cfg.image_size))
    scorer = load_ood(model_dir) if cfg.get("ood", True) and has_ood(model_dir) else None
    net = model if scorer is None else ScoredClassifier(model, scorer).eval()
    facts = processor_facts(processor)
    size = facts["image_size"]
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    multilabel = is_multilabel(model.config)
    # Multi-label exports carry the tuned thresholds; parity compares label sets with them.
    label_facts = multilabel_facts(model_dir, model.labels) if multilabel else {}
    point = load_operating_point(model_dir, model.labels)  # the Predictor applies it to logits
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
    reference = batched(torch_outputs(net), images.x)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            spec = FORMATS[fmt]
            folder = out / fmt
            folder.mkdir(parents=True, exist_ok=True)
            log.info("export %s -> %s", fmt, folder)
            write_format(fmt, net, folder / spec.file, size, Path(tmp), calibration, cfg.opset)
            meta = build_metadata(
                fmt=fmt,
                precision=spec.precision,
                runtime=spec.runtime,
                file=spec.file,
                labels=model.labels,
                facts=facts,
                model_dir=model_dir,
                outputs=output_names(net),
                ood=scorer,
                operating_point=point,
                description=spec.description,
                file_sha256=sha256(folder / spec.file),  # checked before TorchScript is loaded
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
            run, _ = load_outputs(folder, threads=cfg.get("threads"))
            outputs = batched(run, images.x, int(par.get("batch_size") or 1))
            thresholds = (
                [label_facts["thresholds"][c] for c in model.labels] if multilabel else None
            )
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
            + ", ".join(f"{f} ({_failure(results[f])})" for f in failed)
            + f" on {images.split} images of {images.root}; the files are kept in {out} for "
            "inspection. Lower parity.threshold / parity.int8_threshold, or raise "
            "parity.ood_rel_tol / parity.ood_int8_rel_tol, only if that is acceptable; ood=false "
            "exports the logits alone."
        )
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
