"""What made a run: code (git commit, dirty tree), package versions, pretrained weights, data split.

``provenance.json`` and ``split_manifest.csv`` in the run dir answer "which code, weights and
images produced this model" months later, without the machine that trained it.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from vitft import __version__
from vitft.core.files import sha256
from vitft.data.folder import class_name

PROVENANCE_FILE = "provenance.json"
MANIFEST_FILE = "split_manifest.csv"
PACKAGES = ("vitft", "torch", "torchvision", "transformers", "lightning", "hydra-core", "numpy")


def git_state(path: str | Path | None = None) -> dict | None:
    """``{commit, dirty}`` of the git work tree holding ``path`` (vitft's code), else None."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        status = subprocess.run(
            ["git", "-C", top[0], "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError, IndexError):
        return None  # an installed wheel, or no git on this machine
    return {"repo": top[0], "commit": top[1], "dirty": bool(status.strip())}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions.get("vitft") is None:  # a clone run with PYTHONPATH=src, not installed
        versions["vitft"] = __version__
    return versions


def pretrained_revision(model_cfg: Any) -> dict | None:
    """Where ``model.pretrained`` came from: the hub commit it resolved to, or the local dir."""
    source = (model_cfg or {}).get("pretrained")
    if not source:
        return None
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / "model.safetensors"
        return {
            "source": source,
            "kind": "local",
            "path": str(path.resolve()),
            "weights_sha256": sha256(weights) if weights.is_file() else None,
        }
    from huggingface_hub import try_to_load_from_cache

    requested = model_cfg.get("revision") or "main"
    cached = try_to_load_from_cache(source, "config.json", revision=requested)
    commit = None
    if isinstance(cached, str):  # .../snapshots/<commit sha>/config.json
        commit = Path(cached).parent.name
    return {"source": source, "kind": "hub", "requested": requested, "commit": commit}


def write_split_manifest(output_dir: str | Path, splits: Any) -> Path:
    """``split_manifest.csv``: every image of every split (path relative to the data root), its
    label and sha256; eval, export, benchmark and prune check models on exactly these files."""
    path = Path(output_dir) / MANIFEST_FILE
    root = Path(splits.root)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "path", "label", "sha256"])
        for split in ("train", "val", "test"):
            for file, label in splits.split(split):
                file = Path(file)
                rel = file.relative_to(root) if file.is_relative_to(root) else file
                name = class_name(splits.classes, label)
                writer.writerow([split, rel.as_posix(), name, sha256(file)])
    return path


def write_provenance(output_dir: str | Path, model_cfg: Any, splits: Any) -> dict:
    """Write ``provenance.json`` and ``split_manifest.csv`` into the run dir; returns the record."""
    output_dir = Path(output_dir)
    manifest = write_split_manifest(output_dir, splits)
    record = {
        "git": git_state(),
        "versions": package_versions(),
        "pretrained": pretrained_revision(model_cfg),
        "data": {
            "root": str(splits.root),
            "classes": list(splits.classes),
            "multilabel": bool(splits.multilabel),
            "counts": {s: splits.counts(s) for s in ("train", "val", "test")},
            "origin": dict(splits.origin),
            "manifest": manifest.name,
            "manifest_sha256": sha256(manifest),
        },
    }
    (output_dir / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
    return record
