"""Where the configs are (``conf_dir``), and the OmegaConf resolvers they use (``${vitft_root:}``,
``${vitft_run_dir:...}``; ``${vitft_weights:...}`` is registered by ``vitft/__init__``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE = Path(__file__).resolve().parents[1]  # src/vitft, or site-packages/vitft


def conf_dir() -> Path:
    """The shipped configs: ``vitft/conf`` inside an installed wheel, else the clone's conf/."""
    packaged = _PACKAGE / "conf"
    return packaged if packaged.is_dir() else _PACKAGE.parents[1] / "conf"


def project_root() -> str:
    """The folder holding conf/ (the repo root for an editable install), else the cwd."""
    here = _PACKAGE.parents[1]
    return str(here if (here / "conf").is_dir() else Path.cwd())


def run_dir_name(run_name: str | None) -> str:
    """``run_name`` when set, else ``runs/<timestamp>``."""
    if run_name:
        return str(run_name)
    return "runs/" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def register() -> None:
    OmegaConf.register_new_resolver("vitft_root", project_root, replace=True)
    OmegaConf.register_new_resolver("vitft_run_dir", run_dir_name, replace=True, use_cache=True)
