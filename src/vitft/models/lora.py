"""LoRA adapters on an ImageClassifier's backbone, through peft; merged away for export."""

from __future__ import annotations

from torch import nn

from vitft.core.errors import VitftError


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: list[str] | tuple[str, ...] = ("q_proj", "v_proj"),
) -> None:
    """Wrap ``model.backbone`` with LoRA adapters on ``target_modules`` (in place)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.backbone.named_modules()}
    missing = sorted(set(target_modules) - names)
    if missing:
        raise VitftError(
            f"freeze.lora.target_modules {missing} are not module names of "
            f"{model.config.model_type}; for transformers 5 ViTs use [q_proj, v_proj]"
        )
    config = LoraConfig(
        r=int(r),
        lora_alpha=int(alpha),
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
    )
    model.backbone = get_peft_model(model.backbone, config)


def merged_backbone(backbone: nn.Module) -> nn.Module:
    """The plain HF model with LoRA weights merged in (a no-op for a model without adapters)."""
    if hasattr(backbone, "merge_and_unload"):
        return backbone.merge_and_unload()
    return backbone
