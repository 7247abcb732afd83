"""Files to samples: class folders, manifests and HF datasets scanned into ``DatasetSplits``,
images decoded, the data doctor, the transforms that take their preprocessing from the model.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

__all__ = ["DatasetSplits", "load_image", "scan_data"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "DatasetSplits": ".folder",
        "scan_data": ".sources",
        "load_image": ".images",
    },
)
