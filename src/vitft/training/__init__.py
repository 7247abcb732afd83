"""Training: the LightningModule, freeze strategies, datamodules, the feature cache, loggers,
pretraining methods, and the factory that builds them from the config.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

__all__ = [
    "ClassifierModule",
    "STRATEGIES",
    "build_datamodule",
    "build_freeze",
    "build_loggers",
    "build_module",
    "build_trainer",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "ClassifierModule": ".module",
        "build_freeze": ".freeze",
        "STRATEGIES": ".freeze",
        "build_datamodule": ".factory",
        "build_module": ".factory",
        "build_trainer": ".factory",
        "build_loggers": ".tracking",
    },
)
