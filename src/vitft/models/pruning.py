"""Structural attention-head pruning for ViT (transformers 5 removed ``prune_heads``).

1. Score every head with the gradient-based importance of Michel et al. 2019 ("Are Sixteen Heads
   Really Better than One?"): a gate of 1.0 multiplies each head's output; the head's importance
   is the mean |d loss / d gate| over a few labelled batches, normalised per layer.
2. Remove the lowest-scoring heads physically: their rows of q/k/v_proj and columns of o_proj.
   ViT's attention reshapes with ``-1`` heads of ``head_dim``, so a pruned layer runs unchanged.
3. Record ``pruned_heads`` ({layer: [removed heads]}) in the HF config; ``load_pruned`` rebuilds
   that structure before loading weights (plain ``from_pretrained`` would see shape mismatches).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from vitft.core.errors import VitftError
from vitft.models.parts import backbone_parts

log = logging.getLogger(__name__)


def _attention(block: nn.Module) -> nn.Module:
    attn = getattr(block, "attention", None)
    if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise VitftError(
            f"head pruning needs q/k/v/o_proj attention; {type(block).__name__} has none"
        )
    return attn


def attentions(hf_model: PreTrainedModel) -> list[nn.Module]:
    """The attention module of every transformer block, in order."""
    return [_attention(b) for b in backbone_parts(hf_model).blocks]


def head_counts(hf_model: PreTrainedModel) -> list[int]:
    return [a.o_proj.in_features // a.head_dim for a in attentions(hf_model)]


@contextlib.contextmanager
def head_gates(hf_model: PreTrainedModel, gates: torch.Tensor) -> Iterator[None]:
    """Multiply head h of layer l by ``gates[l, h]`` (its slice of o_proj's input) while open."""
    handles = []
    for layer, attn in enumerate(attentions(hf_model)):

        def hook(module, args, layer=layer, head_dim=attn.head_dim):
            (x,) = args
            shape = x.shape
            gated = x.view(*shape[:-1], -1, head_dim) * gates[layer][:, None].to(x.dtype)
            return (gated.view(shape),)

        handles.append(attn.o_proj.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def head_importance(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """(layers, heads) importance of ``model`` (an ImageClassifier) on labelled ``batches``
    (class indices, or 0/1 rows for a multi-label model)."""
    hf_model = model.backbone
    counts = head_counts(hf_model)
    gates = torch.ones(len(counts), max(counts), requires_grad=True)
    scores = torch.zeros_like(gates)
    was_training = model.training
    model.eval()
    n = 0
    with head_gates(hf_model, gates):
        for x, y in batches:
            logits = model(x)
            if y.ndim == 2:  # multi-label: 0/1 per class
                loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float())
            else:
                loss = nn.functional.cross_entropy(logits, y)
            (grad,) = torch.autograd.grad(loss, gates)
            scores += grad.abs() * len(y)
            n += len(y)
    model.train(was_training)
    if n == 0:
        raise VitftError("head importance needs at least one labelled batch")
    scores /= n
    # Michel et al.: normalise per layer so layers with larger gradients don't dominate.
    scores /= scores.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return scores.detach()


def _keep_rows(linear: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.data.index_select(dim, idx).clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        bias = linear.bias.data if dim == 1 else linear.bias.data.index_select(0, idx)
        new.bias.data.copy_(bias)
    return new.to(linear.weight.device, linear.weight.dtype)


def prune_heads(hf_model: PreTrainedModel, heads: dict[int, list[int]]) -> None:
    """Remove ``heads[layer]`` (indices into the layer's current heads) from ``hf_model``."""
    atts = attentions(hf_model)
    recorded = {
        int(k): list(v) for k, v in (getattr(hf_model.config, "pruned_heads", None) or {}).items()
    }
    for layer, remove in heads.items():
        if not remove:
            continue
        attn = atts[int(layer)]
        n = attn.o_proj.in_features // attn.head_dim
        remove = sorted(set(int(h) for h in remove))
        if remove[-1] >= n or len(remove) >= n:
            raise VitftError(f"layer {layer} has {n} heads; cannot remove {remove}")
        keep = [h for h in range(n) if h not in remove]
        d = attn.head_dim
        idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, _keep_rows(getattr(attn, name), idx, 0))
        attn.o_proj = _keep_rows(attn.o_proj, idx, 1)
        attn.num_attention_heads = len(keep)
        # Keep original head numbers in the record (indices here are into current heads).
        original = [
            h
            for h in range(n + len(recorded.get(int(layer), [])))
            if h not in recorded.get(int(layer), [])
        ]
        recorded[int(layer)] = sorted(recorded.get(int(layer), []) + [original[h] for h in remove])
    hf_model.config.pruned_heads = {str(k): v for k, v in sorted(recorded.items()) if v}


def lowest_heads(scores: torch.Tensor, per_layer: int) -> dict[int, list[int]]:
    """The ``per_layer`` least important heads of every layer."""
    if per_layer <= 0:
        return {}
    if per_layer >= scores.shape[1]:
        raise VitftError(f"prune.heads={per_layer} would remove every head of a layer")
    return {layer: sorted(row.argsort()[:per_layer].tolist()) for layer, row in enumerate(scores)}


def apply_pruned_structure(hf_model: PreTrainedModel) -> None:
    """Give a freshly built model the head structure its ``config.pruned_heads`` records."""
    heads = getattr(hf_model.config, "pruned_heads", None)
    if heads:
        hf_model.config.pruned_heads = {}  # prune_heads records them again as it removes them
        prune_heads(hf_model, {int(k): v for k, v in heads.items()})


def _pruned_class(base: type) -> type:
    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        apply_pruned_structure(self)

    # Same name: saved configs keep naming the plain HF class (loadable without vitft).
    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})


def load_pruned(model_dir: str | Path, **kwargs) -> PreTrainedModel | None:
    """``from_pretrained`` for a head-pruned HF model dir; None when nothing was pruned.

    A plain ``from_pretrained`` builds the full head count and then fails on the q/k/v/o shapes;
    here the model class prunes its structure in ``__init__`` (from ``config.pruned_heads``), and
    transformers then loads the weights as usual (key renames, ``ignore_mismatched_sizes``...).
    """
    config = AutoConfig.from_pretrained(model_dir)
    if not getattr(config, "pruned_heads", None):
        return None
    base = AutoModelForImageClassification._model_mapping[type(config)]
    return _pruned_class(base).from_pretrained(model_dir, **kwargs).eval()
