"""The Run: one run dir's layout (config, split manifest, provenance, model/, export/), and the
one entry wrapper every command runs through.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

__all__ = ["Run", "model_images", "run_entry", "run_samples", "write_provenance"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "Run": ".rundir",
        "run_samples": ".rundir",
        "model_images": ".rundir",
        "run_entry": ".entry",
        "write_provenance": ".provenance",
    },
)
