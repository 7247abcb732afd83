"""The Run: one run dir's layout, and the only code that knows it.

```
<run>/config.yaml         the resolved config of the training run
<run>/split_manifest.csv  the split: every file of train/val/test (path relative to the data
                          root, label, sha256), written with provenance.json once screened
<run>/checkpoints/        last.ckpt, best checkpoints (Lightning), step.ckpt
<run>/model/              HF model dir: weights, config, image processor, vitft.json
<run>/export/<format>/    export.py's folders (model file, metadata.json, parity.json)
<run>/summary.json        metrics and where everything is
```

Every later command (eval, export, benchmark, prune) opens the Run of the model it is given and
takes the split from ``split_manifest.csv``: it never re-splits the data with another seed.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from vitft.core.errors import VitftError
from vitft.core.files import sha256
from vitft.data.folder import SPLITS, DatasetSplits, Sample
from vitft.data.sources import infer_source, scan_data
from vitft.deploy.parity import ImageSet, load_images
from vitft.modelio.hf import save_hf
from vitft.run.provenance import MANIFEST_FILE, PROVENANCE_FILE, write_provenance

log = logging.getLogger(__name__)

SPLIT_FILE = MANIFEST_FILE  # split_manifest.csv: split, path, label, sha256
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class Run:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def split_file(self) -> Path:
        return self.root / SPLIT_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / "last.ckpt"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    @classmethod
    def of(cls, path: str | Path | None) -> Run | None:
        """The Run that holds ``path`` (run dir, model/, export/<fmt>/, checkpoints/x.ckpt)."""
        if not path:
            return None
        here = Path(path).expanduser().resolve()
        for candidate in [here, *here.parents][:4]:
            if (candidate / CONFIG_FILE).is_file() or (candidate / SPLIT_FILE).is_file():
                return cls(candidate)
        return None

    def config(self) -> dict[str, Any]:
        if not self.config_file.is_file():
            return {}
        return OmegaConf.to_container(OmegaConf.load(self.config_file)) or {}

    def write_config(self, resolved: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(OmegaConf.to_yaml(resolved))

    def start(self, resolved: dict[str, Any], splits: DatasetSplits, model_cfg: Any) -> dict:
        """Write the config, the provenance and the split manifest; returns the provenance."""
        self.write_config(resolved)
        return write_provenance(self.root, model_cfg, splits)

    def finish(self, model: Any, processor: Any, meta: dict, summary: dict) -> None:
        """Save ``model/`` (HF format, with its processor and ``meta``) and summary.json."""
        save_hf(model, processor, self.model_dir, meta=meta)
        self.summary_file.write_text(json.dumps(summary, indent=2))

    def read_split(self) -> tuple[DatasetSplits, dict[str, str]]:
        """The run's split exactly as training used it, and each file's recorded sha256 (see
        ``run_samples`` for the checks). Paths in the manifest are relative to the data root
        that provenance.json records."""
        if not self.split_file.is_file():
            raise VitftError(
                f"{self.root} has no {SPLIT_FILE}: pass data_dir=/path/to/dataset to split the "
                "data again"
            )
        data = json.loads((self.root / PROVENANCE_FILE).read_text())["data"]
        root, classes = Path(data["root"]), list(data["classes"])
        multilabel = bool(data.get("multilabel"))
        parts: dict[str, list[Sample]] = {name: [] for name in SPLITS}
        recorded: dict[str, str] = {}
        with self.split_file.open(newline="") as f:
            for row in csv.DictReader(f):
                path = root / row["path"]
                parts[row["split"]].append((path, _label(classes, row["label"], multilabel)))
                recorded[str(path)] = row["sha256"]
        origin = dict.fromkeys(SPLITS, SPLIT_FILE)
        splits = DatasetSplits(root, classes, **parts, origin=origin, multilabel=multilabel)
        return splits, recorded


def _label(classes: list[str], name: str, multilabel: bool) -> int | tuple[int, ...]:
    """A manifest label: a class name, or a multi-label set ``a;b`` (``(none)``: no class)."""
    if name in classes and not multilabel:
        return classes.index(name)
    names = set() if name == "(none)" else set(name.split(";"))
    return tuple(int(c in names) for c in classes)


def check_files(samples: list[Sample], split_file: Path, recorded: dict[str, str]) -> None:
    """Each sample still exists with its recorded sha256: else the split is not the one the model
    was trained and selected on."""
    for path, _ in samples:
        if not path.is_file():
            raise VitftError(
                f"{path} is listed in {split_file} but missing: pass data_dir= pointing at the "
                "dataset the run was trained on"
            )
        if sha256(path) != recorded[str(path)]:
            raise VitftError(
                f"{path} changed since training (sha256 differs from {split_file}): the split is "
                "no longer the run's; restore the file or pass data_dir= for other data"
            )


def _data_on_command_line() -> bool:
    """Whether the command line chose the data (``task=``, ``data=``, ``task.data_dir=`` ...)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # a direct call, not through Hydra: cfg.data is the caller's choice
        return True
    return any(o.lstrip("+~").split("=")[0].split(".")[0] in ("task", "data") for o in overrides)


def own_run(cfg: Any) -> Run | None:
    """The run of ``cfg.model_dir`` (or ``ckpt_path``) when eval checks the model on that run's
    split: the run wrote one, and eval's data is the run's dataset or was left at its default."""
    run = Run.of(cfg.get("model_dir") or cfg.get("ckpt_path"))
    if run is None or not run.split_file.is_file():
        return None
    root = Path(cfg.data.data_dir).expanduser().resolve()
    recorded = run.read_split()[0].root.resolve()
    return run if recorded in (root, root.parent) or not _data_on_command_line() else None


def run_samples(
    model_path: str | Path | None,
    split: str,
    data_dir: str | Path | None = None,
    labels: list[str] | None = None,
) -> tuple[Path, list[str], list[Sample]]:
    """(data root, classes, samples) of ``split`` for a model.

    Without ``data_dir``: the run's split manifest, each file checked against its sha256. With
    ``data_dir`` (other data, on purpose): that folder, split with the run's split settings.
    """
    run = Run.of(model_path)
    if run is not None and run.split_file.is_file() and not data_dir:
        splits, recorded = run.read_split()
        samples = splits.split(split)
        check_files(samples, run.split_file, recorded)
        return splits.root, splits.classes, samples
    data = dict((run.config() if run else {}).get("data") or {})
    if data_dir:
        data.update(data_dir=str(data_dir), source=infer_source(data_dir))
    if not data.get("data_dir"):
        where = run.root if run else Path(model_path or ".").parent
        raise VitftError(
            f"no images to check the model on: {where} has no {SPLIT_FILE} or config.yaml with "
            "data.data_dir; pass data_dir=/path/to/dataset (with train/ and val/ class folders)"
        )
    splits = scan_data({**data, "classes": list(labels) if labels else None})
    return splits.root, splits.classes, splits.split(split)


def model_images(
    model_path: str | Path,
    labels: list[str],
    processor: Any,
    split: str,
    data_dir: str | Path | None = None,
    max_images: int | None = None,
) -> ImageSet:
    """The preprocessed images of ``split`` that a model is checked on (see ``run_samples``)."""
    root, classes, samples = run_samples(model_path, split, data_dir, list(labels))
    if list(classes) != list(labels):
        raise VitftError(
            f"the split's classes {classes} are not the model's {list(labels)}: pass data_dir= "
            "pointing at the dataset the model was trained on"
        )
    return load_images(samples, processor, split, root, max_images)
