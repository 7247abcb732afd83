"""Model I/O: the HF model dir (``save_hf``, ``load_model``, model_type ``vitft``), the
checkpoint's vitft block, the model card, the OOD scorer files, the hub push.

Public names are imported on first use (``vitft.core.lazy``); a leading ``_`` marks what is
private."""

from vitft.core.lazy import attach

__all__ = ["load_model", "read_checkpoint", "register_hf", "save_hf", "write_card"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "save_hf": ".hf",
        "load_model": ".hf",
        "register_hf": ".hf",
        "read_checkpoint": ".checkpoint",
        "write_card": ".card",
    },
)
