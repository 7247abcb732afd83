"""Where the model looked: attention rollout, gradient-weighted attention and Grad-CAM on ViT.

Every method gives one map per image on the patch grid ``(H / patch, W / patch)``, scaled to [0, 1].

- ``rollout``, attention rollout (Abnar & Zuidema 2020): per layer, fuse the heads (mean/max/min),
  drop the weakest ``discard_ratio`` of the attention weights, add the residual path (identity),
  renormalise rows, multiply through the layers; the CLS token's row over the patch tokens is the
  map. Class-agnostic: the same map whatever class is asked about.
- ``gradattn``, gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic
  Attention-model Explainability ...", their rule for self-attention): per layer
  ``A_bar = mean over heads of relu(dlogit/dA * A)``, then ``R = I; R = R + A_bar @ R`` through the
  layers; the CLS row of ``R`` over the patch tokens is the map. Class-specific (the gradient of
  the target logit) and the default gradient-based map: on the synthetic defect data it lands on
  the defect (see benchmarks/explain_localization.py).
- ``gradcam``, Grad-CAM (Selvaraju et al. 2017) on the input of the last block's attention (its
  LayerNorm output: the last layer where patch tokens still get a gradient, since the head reads
  only CLS), the usual ViT recipe (e.g. pytorch-grad-cam's): channel weights are the token-mean
  gradients of the target logit, the map is the ReLU of the weighted channel sum per patch token.
  In a CLS-token ViT the patch tokens reach the logit only through the last block's CLS
  attention, and the one weight per channel often scores the background instead of the defect:
  on the defect data it is well behind the other two and inverted on many images (see README).

Convolutional and hybrid backbones (MobileViT, ConvNeXt) get Grad-CAM as its authors defined it: on
the last convolutional feature map ``(C, h, w)``, channel weights are the spatial-mean gradients
of the target logit. Attention rollout has no meaning there, so ``methods_for`` leaves it out.

rollout and gradattn need the attention probabilities (gradattn also their gradients), which only
the eager attention returns (SDPA does not), so the explainer switches its model to
``attn_implementation="eager"`` (same outputs, slower).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from vitft.core.errors import VitftError
from vitft.core.plots import upsample
from vitft.models.classifier import ImageClassifier
from vitft.models.ood import OODScorer, ood_descriptor, ood_hidden
from vitft.models.parts import backbone_parts

log = logging.getLogger(__name__)

METHODS = ("rollout", "gradattn", "gradcam")
HEAD_FUSIONS = ("mean", "max", "min")
# model_type -> its last convolutional feature map (Grad-CAM's layer)
FEATURE_MAPS = {
    "mobilevit": lambda backbone: backbone.mobilevit.conv_1x1_exp,
    "convnext": lambda backbone: backbone.convnext.encoder.stages[-1],
}


def methods_for(model: ImageClassifier) -> tuple[str, ...]:
    """The heatmap methods that apply to ``model``'s backbone (none: no heatmaps)."""
    kind = model.config.model_type
    return METHODS if kind == "vit" else ("gradcam",) if kind in FEATURE_MAPS else ()


def patch_grid(model: ImageClassifier, pixel_values: torch.Tensor) -> tuple[int, int]:
    patch = model.config.patch_size
    return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch


def attention_rollout(
    attentions: list[torch.Tensor] | tuple[torch.Tensor, ...],
    discard_ratio: float = 0.9,
    head_fusion: str = "mean",
    prefix_tokens: int = 1,
) -> torch.Tensor:
    """Per-layer attentions ``(B, heads, T, T)`` -> the CLS row over patches ``(B, T - prefix)``."""
    if head_fusion not in HEAD_FUSIONS:
        raise VitftError(f"head_fusion={head_fusion!r} is unknown; use one of {HEAD_FUSIONS}")
    if not 0.0 <= discard_ratio < 1.0:
        raise VitftError(f"discard_ratio={discard_ratio} must be in [0, 1)")
    batch, _, tokens, _ = attentions[0].shape
    eye = torch.eye(tokens)
    result = eye.expand(batch, tokens, tokens).clone()
    for attn in attentions:
        attn = attn.detach().float().cpu()
        fused = getattr(attn, head_fusion)(dim=1)
        fused = fused if isinstance(fused, torch.Tensor) else fused.values
        if discard_ratio > 0:
            flat = fused.reshape(batch, -1)
            k = int(flat.shape[-1] * discard_ratio)
            _, low = flat.topk(k, dim=-1, largest=False)
            keep = torch.ones_like(flat, dtype=torch.bool).scatter_(-1, low, False)
            keep[:, 0] = True  # never drop CLS -> CLS: it carries the residual of the class token
            fused = (flat * keep).reshape(batch, tokens, tokens)
        a = (fused + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result[:, 0, prefix_tokens:]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    lo = maps.flatten(1).min(1).values[:, None, None]
    hi = maps.flatten(1).max(1).values[:, None, None]
    return (maps - lo) / (hi - lo).clamp(min=1e-12)


class Explainer:
    """Heatmaps for an ImageClassifier with a ViT (switched to eager attention), MobileViT or
    ConvNeXt backbone."""

    def __init__(
        self, model: ImageClassifier, discard_ratio: float = 0.9, head_fusion: str = "mean"
    ):
        self.kind = model.config.model_type
        self.methods = methods_for(model)
        if not self.methods:
            raise VitftError(
                f"explain supports ViT, MobileViT and ConvNeXt backbones; this model is "
                f"{self.kind!r}"
            )
        self.model = model.eval()
        self.discard_ratio = discard_ratio
        self.head_fusion = head_fusion
        if self.kind == "vit":
            self.model.backbone.set_attn_implementation("eager")
            self.layer = backbone_parts(model.backbone).blocks[-1].layernorm_before
        else:
            self.layer = FEATURE_MAPS[self.kind](model.backbone)

    def rollout(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.model.backbone(pixel_values=pixel_values, output_attentions=True)
        if not out.attentions:
            raise VitftError("the backbone returned no attention weights (eager attention needed)")
        flat = attention_rollout(out.attentions, self.discard_ratio, self.head_fusion)
        return _normalise(flat.reshape(-1, *patch_grid(self.model, pixel_values)))

    def gradcam(
        self, pixel_values: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Grad-CAM for ``target`` class indices (default: the predicted class)."""
        store: dict[str, torch.Tensor] = {}

        def hook(_module, _inputs, output):
            output.retain_grad()
            store["act"] = output

        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                x = pixel_values.detach().requires_grad_(True)  # grads flow even if frozen
                logits = self.model(x)
                if target is None:
                    target = logits.argmax(-1)
                logits.gather(1, target.view(-1, 1)).sum().backward()
        finally:
            handle.remove()
        self.model.zero_grad(set_to_none=True)
        act, grad = store["act"].detach(), store["act"].grad
        if self.kind != "vit":  # (B, C, h, w) feature map
            weights = grad.mean(dim=(2, 3), keepdim=True)
            return _normalise(torch.relu((act * weights).sum(1)))
        act, grad = act[:, 1:], grad[:, 1:]
        weights = grad.mean(dim=1, keepdim=True)
        cam = torch.relu((act * weights).sum(-1))
        return _normalise(cam.reshape(-1, *patch_grid(self.model, pixel_values)))

    def gradattn(
        self, pixel_values: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gradient-weighted attention rollout for ``target`` (default: the predicted class)."""
        with torch.enable_grad():
            x = pixel_values.detach().requires_grad_(True)  # grads flow even if frozen
            out = self.model.backbone(pixel_values=x, output_attentions=True)
            if not out.attentions:
                raise VitftError("the backbone returned no attention weights (eager needed)")
            attentions = list(out.attentions)
            for attn in attentions:
                attn.retain_grad()
            logits = self.model.head(out.logits)
            if target is None:
                target = logits.argmax(-1)
            logits.gather(1, target.view(-1, 1)).sum().backward()
        batch, _, tokens, _ = attentions[0].shape
        relevance = torch.eye(tokens).expand(batch, tokens, tokens).clone()
        for attn in attentions:
            weighted = torch.relu(attn.grad.float() * attn.detach().float()).mean(dim=1)
            relevance = relevance + weighted.cpu() @ relevance
        self.model.zero_grad(set_to_none=True)
        flat = relevance[:, 0, 1:]
        return _normalise(flat.reshape(-1, *patch_grid(self.model, pixel_values)))

    def explain(
        self,
        pixel_values: torch.Tensor,
        methods: tuple[str, ...] | list[str] = METHODS,
        target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{method: (B, grid_h, grid_w)}`` maps in [0, 1]."""
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise VitftError(f"methods={sorted(unknown)} unknown; use some of {list(METHODS)}")
        unfit = [m for m in methods if m not in self.methods]
        if unfit:
            raise VitftError(
                f"methods={unfit} need a ViT's attention; a {self.kind} model has "
                f"methods={list(self.methods)}"
            )
        maps = {}
        for m in methods:
            if m == "rollout":
                maps[m] = self.rollout(pixel_values)
            else:
                maps[m] = getattr(self, m)(pixel_values, target)
        return maps


def unknown_map(
    model: ImageClassifier, scorer: OODScorer, pixel_values: torch.Tensor
) -> torch.Tensor:
    """Where an image is unfamiliar: gradient x activation of its OOD score (the image as given,
    one view) at each hidden state the OOD features take maxima from, summed over channels,
    upsampled to the finest grid and averaged; ``(B, h, w)`` in [0, 1]. The maxima pass the
    gradient only to the positions that supplied them, so the map marks the responses that made
    the image novel (on held-out cracks: the crack), where a class's Grad-CAM would explain
    what the image resembles. Grad-CAM's channel-mean weights would smear that over the map."""
    with torch.enable_grad():
        x = pixel_values.detach().requires_grad_(True)  # grads flow even if frozen
        pooled, hidden = ood_hidden(model, x)
        for h in hidden:
            h.retain_grad()
        scorer(ood_descriptor(pooled, hidden)[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)
    cams = []
    for h in hidden:
        act, grad = h.detach(), h.grad
        if act.dim() == 3:  # (B, tokens, C): leading class/register tokens, then a square grid
            side = math.isqrt(act.shape[1])
            act, grad = (t[:, -side * side :].transpose(1, 2) for t in (act, grad))
            act, grad = (t.reshape(t.shape[0], t.shape[1], side, side) for t in (act, grad))
        cams.append(_normalise(torch.relu((act * grad).sum(1))))
    size = max((c.shape[-2:] for c in cams), key=lambda s: s[0] * s[1])
    ups = [F.interpolate(c[:, None], size=tuple(size), mode="bilinear")[:, 0] for c in cams]
    return _normalise(torch.stack(ups).mean(0))


def usable_methods(explainer: Explainer, requested) -> list[str]:
    """``requested`` less the methods ``explainer``'s backbone has none of (the default list asks
    for all three; a MobileViT only has Grad-CAM), said in the log; an error if none is left."""
    methods = [m for m in requested if m in explainer.methods]
    dropped = [m for m in requested if m not in explainer.methods]
    if dropped:
        log.info("explain: %s has no %s; showing %s", explainer.kind, dropped, methods)
    if not methods:
        raise VitftError(
            f"methods={list(requested)}: none applies to a {explainer.kind} model; use "
            f"methods={list(explainer.methods)}"
        )
    return methods


def mask_mass(heatmap: torch.Tensor | np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(fraction of heatmap mass inside ``mask``, mask's area fraction), at the mask's size.

    Chance (a flat map) puts exactly the area fraction inside; more means the map found the defect.
    """
    mask = np.asarray(mask) > 0
    heat = upsample(heatmap, mask.shape)
    total = float(heat.sum())
    inside = float(heat[mask].sum()) / total if total > 0 else 0.0
    return inside, float(mask.mean())
