"""The plain ``nn.Module`` side: backbones, heads, ``ImageClassifier`` (backbone + head), pruning,
resolution, LoRA, OOD scorers. Plain torch and transformers; never Lightning.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

__all__ = ["ImageClassifier", "build_head", "build_model"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "ImageClassifier": ".classifier",
        "build_model": ".classifier",
        "build_head": ".heads",
    },
)
