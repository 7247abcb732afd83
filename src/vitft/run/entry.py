"""The one entry wrapper every command runs through (lightning-hydra-template's task_wrapper).

A user-fixable error (VitftError) prints one line, ``error: ...``, and exits with code 2, without
a traceback; trackers are always closed, and the run dir is always logged, even on failure.
So does a package of the full install that this install lacks (a deploy-only install: vitft with
``--no-deps`` plus the ``deploy`` extra, which predicts and serves ONNX exports without torch).
A leaf: a predict or serve must not load the training stack to be wrapped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from vitft.core.errors import VitftError

log = logging.getLogger(__name__)

T = TypeVar("T")
TRACKING = "vitft.training.tracking"  # only training opens trackers (W&B), and it loads this
# Import names of pyproject's base dependencies that the `deploy` extra leaves out.
FULL_INSTALL = frozenset(
    {
        "torch",
        "torchvision",
        "transformers",
        "safetensors",
        "lightning",
        "pytorch_lightning",
        "albumentations",
        "torchmetrics",
        "wandb",
        "matplotlib",
        "tensorboard",
        "peft",
        "lightly",
        "iterstrat",
        "hydra_plugins",
    }
)
FULL_INSTALL_FIX = 'pip install vitft (the full install; in a clone: pip install -e ".[dev]")'


def missing_dependency(err: ImportError) -> str | None:
    """One line naming the fix when ``err`` is a full-install package this install lacks (a
    deploy-only install runs predict and serve on ONNX Runtime exports only), else None."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    if name not in FULL_INSTALL:
        return None
    return (
        f"this needs {name}, which is not installed (a deploy-only install predicts and serves "
        f"ONNX Runtime exports only): {FULL_INSTALL_FIX}"
    )


def run_entry(fn: Callable[[Any], T], cfg: Any) -> T:
    """Call ``fn(cfg)``; a VitftError (or a full-install package this install lacks) becomes
    ``error: ...`` on stderr and exit code 2."""
    try:
        return fn(cfg)
    except VitftError as err:
        stop(str(err))
    except ImportError as err:
        line = missing_dependency(err)
        if line is None:
            raise
        stop(line)
    finally:
        close_trackers()
        output_dir = _output_dir(cfg)
        if output_dir:
            log.info("outputs: %s", output_dir)


def stop(message: str) -> NoReturn:
    """``error: message`` on stderr (and in the log, once Hydra set it up), then exit code 2:
    no traceback."""
    if log.hasHandlers():  # before Hydra, logging's last resort would print it a second time
        log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def close_trackers() -> None:
    """Close W&B's run if training opened one (always, even when the command failed)."""
    if TRACKING in sys.modules:
        sys.modules[TRACKING].finish()


def _output_dir(cfg: Any) -> str | None:
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # a config without paths (tests, plain dicts) has no run dir to name
        return None
