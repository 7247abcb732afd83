"""What every root script shares: user-fixable errors print one line and exit 2, no traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from vitft import tracking
from vitft.errors import VitftError

log = logging.getLogger(__name__)


def run_entry(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Call ``fn(cfg)``; a VitftError becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return fn(cfg)
    except VitftError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        tracking.finish()
