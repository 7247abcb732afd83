"""A callback for DDP tests: each rank writes what its model holds when training ends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RankWeights(Callback):
    """``<path>/rank<N>.json``: a sha256 of the model's weights and its trainable parameters."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        h = hashlib.sha256()
        for name, tensor in pl_module.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(-1).numpy().tobytes())
        trainable = sorted(n for n, p in pl_module.model.named_parameters() if p.requires_grad)
        self.path.mkdir(parents=True, exist_ok=True)
        out = self.path / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"weights": h.hexdigest(), "trainable": trainable}))


def max_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def optimizer_tensors(ckpt: dict) -> dict:
    """Every tensor of a checkpoint's optimizer states (moments, step counts), flat."""
    return {
        f"{i}.{param}.{k}": v
        for i, opt in enumerate(ckpt["optimizer_states"])
        for param, state in opt["state"].items()
        for k, v in state.items()
    }
