"""The one entry wrapper every command runs through (lightning-hydra-template's task_wrapper).

A user-fixable error (VitftError) prints one line, ``error: ...``, and exits with code 2, without
a traceback; trackers are always closed, and the run dir is always logged, even on failure.
A leaf: a predict or serve must not load the training stack to be wrapped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from vitft.core.errors import VitftError

log = logging.getLogger(__name__)

T = TypeVar("T")
TRACKING = "vitft.training.tracking"  # only training opens trackers (W&B), and it loads this


def run_entry(fn: Callable[[Any], T], cfg: Any) -> T:
    """Call ``fn(cfg)``; a VitftError becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return fn(cfg)
    except VitftError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        close_trackers()
        output_dir = _output_dir(cfg)
        if output_dir:
            log.info("outputs: %s", output_dir)


def close_trackers() -> None:
    """Close W&B's run if training opened one (always, even when the command failed)."""
    if TRACKING in sys.modules:
        sys.modules[TRACKING].finish()


def _output_dir(cfg: Any) -> str | None:
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # a config without paths (tests, plain dicts) has no run dir to name
        return None
