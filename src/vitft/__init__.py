"""vitft: fine-tuning Vision Transformers for industrial transfer learning."""

from pathlib import Path

from omegaconf import OmegaConf

from vitft.weights import weights_dir

__version__ = "0.1.0"


def _project_root() -> str:
    """The folder holding conf/ (the repo root for an editable install), else the cwd."""
    here = Path(__file__).resolve().parents[2]
    return str(here if (here / "conf").is_dir() else Path.cwd())


def _run_dir_name(run_name: str | None) -> str:
    if run_name:
        return str(run_name)
    from datetime import datetime

    return "runs/" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


OmegaConf.register_new_resolver("vitft_root", _project_root, replace=True)
OmegaConf.register_new_resolver("vitft_weights", weights_dir, replace=True)
OmegaConf.register_new_resolver("vitft_run_dir", _run_dir_name, replace=True, use_cache=True)
