"""Deployment: exports (ONNX, int8, TFLite, OpenVINO) with their metadata and parity checks,
runtimes, the ``Predictor`` and the REST service. Never imports training or Lightning.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

__all__ = ["FORMATS", "Predictor", "create_app", "export_onnx", "load_exported"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "Predictor": ".predictor",
        "FORMATS": ".formats",
        "export_onnx": ".onnx",
        "load_exported": ".runtime",
        "create_app": ".serve",
    },
)
