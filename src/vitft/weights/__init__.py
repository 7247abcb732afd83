"""Pretrained weights that ship inside vitft, and the sha256 check that guards them.

Each folder here is an HF model dir made by vitft's own scripts (docs/pretraining.md has the
commands); conf/model/<name>.yaml points at it with ``${vitft_weights:<name>}`` and records its
sha256, which is checked before every load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vitft.errors import VitftError

WEIGHTS_FILE = "model.safetensors"


def weights_dir(name: str) -> str:
    """The installed folder of the shipped weights ``name``."""
    path = Path(__file__).parent / name
    if not (path / "config.json").is_file():
        raise VitftError(
            f"vitft ships no weights named {name!r} (looked in {path}); shipped: "
            f"{sorted(p.name for p in Path(__file__).parent.iterdir() if p.is_dir())}"
        )
    return str(path)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(model_dir: str | Path, expected: str) -> None:
    """Refuse weights whose sha256 is not the one recorded for them."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise VitftError(f"{path} is missing: model.sha256 is set, so the weights must be there")
    actual = sha256(path)
    if actual != expected:
        raise VitftError(
            f"{path} has sha256 {actual} but model.sha256={expected}: the file is damaged or was "
            "replaced. Reinstall vitft, rebuild the weights (docs/pretraining.md), or unset "
            "model.sha256 for weights of your own"
        )
