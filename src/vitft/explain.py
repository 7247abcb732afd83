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

rollout and gradattn need the attention probabilities (gradattn also their gradients), which only
the eager attention returns (SDPA does not), so the explainer switches its model to
``attn_implementation="eager"`` (same outputs, slower).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitft.data.images import load_image
from vitft.errors import VitftError
from vitft.models.backbone import backbone_parts
from vitft.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

METHODS = ("rollout", "gradattn", "gradcam")
HEAD_FUSIONS = ("mean", "max", "min")


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
    """Heatmaps for an ImageClassifier with a ViT backbone (the model is switched to eager)."""

    def __init__(
        self, model: ImageClassifier, discard_ratio: float = 0.9, head_fusion: str = "mean"
    ):
        if model.config.model_type != "vit":
            raise VitftError(
                f"explain supports ViT backbones; this model is {model.config.model_type!r}"
            )
        self.model = model.eval()
        self.model.backbone.set_attn_implementation("eager")
        self.discard_ratio = discard_ratio
        self.head_fusion = head_fusion
        self.block = backbone_parts(model.backbone).blocks[-1]

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

        handle = self.block.layernorm_before.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                x = pixel_values.detach().requires_grad_(True)  # grads flow even if frozen
                logits = self.model(x)
                if target is None:
                    target = logits.argmax(-1)
                logits.gather(1, target.view(-1, 1)).sum().backward()
        finally:
            handle.remove()
        act, grad = store["act"][:, 1:].detach(), store["act"].grad[:, 1:]
        weights = grad.mean(dim=1, keepdim=True)
        cam = torch.relu((act * weights).sum(-1))
        self.model.zero_grad(set_to_none=True)
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
        maps = {}
        for m in methods:
            if m == "rollout":
                maps[m] = self.rollout(pixel_values)
            else:
                maps[m] = getattr(self, m)(pixel_values, target)
        return maps


def upsample(heatmap: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(gh, gw)`` map bilinearly resized to ``size`` = (height, width)."""
    t = torch.as_tensor(np.asarray(heatmap), dtype=torch.float32)[None, None]
    up = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return up[0, 0].clamp(min=0).numpy()


def overlay(
    image: Image.Image, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5
) -> Image.Image:
    """The image with the heatmap (jet colormap) blended over it, at the image's size."""
    from matplotlib import colormaps

    heat = upsample(heatmap, (image.height, image.width))
    colored = colormaps["jet"](heat / max(float(heat.max()), 1e-12))[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) / 255 + alpha * colored
    return Image.fromarray((blended.clip(0, 1) * 255).astype(np.uint8))


def mask_mass(heatmap: torch.Tensor | np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(fraction of heatmap mass inside ``mask``, mask's area fraction), at the mask's size.

    Chance (a flat map) puts exactly the area fraction inside; more means the map found the defect.
    """
    mask = np.asarray(mask) > 0
    heat = upsample(heatmap, mask.shape)
    total = float(heat.sum())
    inside = float(heat[mask].sum()) / total if total > 0 else 0.0
    return inside, float(mask.mean())


def explain(cfg: Any) -> list[Path]:
    """explain.py: one PNG per input image (image | one map per method) in ``cfg.output_dir``."""
    from vitft.predict import Predictor, resolve_inputs
    from vitft.report.plots import heatmap_figure, save

    if not cfg.get("inputs"):
        raise VitftError("set inputs=<image | folder | glob> (a list works too)")
    device = cfg.get("device", "auto")
    predictor = Predictor.from_path(cfg.get("model_dir"), cfg.get("ckpt_path"), device=device)
    model = predictor.backend.model
    explainer = Explainer(model, float(cfg.discard_ratio), str(cfg.head_fusion))
    methods = list(cfg.methods)
    target = None
    if cfg.get("target"):
        if cfg.target not in predictor.labels:
            raise VitftError(
                f"target={cfg.target!r} is not a class of the model: {predictor.labels}"
            )
        target = predictor.labels.index(cfg.target)
    inputs = cfg.inputs if isinstance(cfg.inputs, str) else list(cfg.inputs)
    paths, bad = resolve_inputs(inputs)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in paths:
        try:
            image = load_image(path)
        except (OSError, ValueError) as err:
            log.warning("skipped %s: %s", path, err)
            continue
        pixels = predictor.transform(image)[None]
        probs = predictor.probabilities(pixels)[0]
        cls = int(probs.argmax()) if target is None else target
        on = next(model.parameters()).device
        maps = explainer.explain(pixels.to(on), methods, torch.tensor([cls], device=on))
        maps = {m: v.detach().cpu() for m, v in maps.items()}
        title = f"{path.name}: {predictor.labels[int(probs.argmax())]} {float(probs.max()):.2f}"
        fig = heatmap_figure(
            [image], {m: [maps[m][0]] for m in methods}, [title], explained=predictor.labels[cls]
        )
        written.append(save(fig, out_dir / f"{path.stem}_explain.png"))
    for b in bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    print(f"wrote {len(written)} heatmap figure(s) to {out_dir}")
    return written
