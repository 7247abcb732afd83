"""Bottom layer: errors, config resolvers, files, hardware facts, plots and HTML (arrays in,
figures out). Imports nothing of vitft above it.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from .lazy import attach

__all__ = ["VitftError", "attach", "conf_dir", "sha256"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "VitftError": ".errors",
        "conf_dir": ".resolvers",
        "sha256": ".files",
        "attach": ".lazy",
    },
)
