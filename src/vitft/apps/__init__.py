"""One function per command (``vitft <command>``, the root scripts, ``vitft.api``).

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

# The command functions share their modules' names (vitft.apps.train.train ...): reach them as
# ``vitft.train`` (vitft.api) or through COMMANDS.
__all__ = ["COMMANDS", "main"]

__getattr__, __dir__ = attach(__name__, {"COMMANDS": ".console", "main": ".console"})
