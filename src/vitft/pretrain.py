"""pretrain(cfg): pretrain a backbone on unlabelled images, for ``train.py model.pretrained=``.

images (labels ignored) -> the method's views -> PretrainModule -> fit -> the encoder as an HF
model dir in <run>/model with pretraining.json (method, data, epochs, loss curve).
"""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vitft import checkpoints, tracking
from vitft.hardware import resolve_precision
from vitft.models.backbone import load_backbone
from vitft.pretraining.data import UnlabelledDataModule, find_images, screen
from vitft.pretraining.encoder import save_encoder, vit_encoder
from vitft.pretraining.module import PretrainModule
from vitft.train import _instantiate_all, _start_fresh, open_run

log = logging.getLogger(__name__)


def pretrain(cfg: DictConfig) -> tuple[dict, dict]:
    """Pretrain ``cfg.model``'s encoder with ``cfg.pretraining``; returns (summary, objects)."""
    output_dir, ckpt_path = open_run(cfg)

    data = cfg.data
    images = screen(find_images(data.roots), output_dir, data.get("check", "header"))
    log.info("pretraining on %d images from %s (labels ignored)", len(images), data.roots)
    backbone, processor = load_backbone(cfg.model, labels=["image"])
    vit_encoder(backbone)  # a clear error for other architectures, before the method is built
    method = instantiate(cfg.pretraining, backbone=backbone, processor=processor)
    datamodule = UnlabelledDataModule(
        images,
        method.views,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        persistent_workers=data.persistent_workers,
        seed=cfg.seed,
    )
    module = PretrainModule(method, cfg.optimizer, cfg.get("scheduler"))

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if rank_zero_only.rank == 0:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        if not ckpt_path:
            _start_fresh(output_dir)
    rid = tracking.run_id(output_dir, ckpt_path)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator")),
        callbacks=[*_instantiate_all(cfg.get("callbacks")), checkpoints.SpentHpcCheckpoints()],
        logger=tracking.build_loggers(cfg.get("logger"), output_dir, rid, resolved) or False,
        plugins=[checkpoints.AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    summary = {
        "method": method.name,
        "data": {"roots": resolved["data"]["roots"], "images": len(images)},
        "started_from": resolved["model"].get("pretrained") or "random init",
        "architecture": resolved["model"].get("name"),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "loss_curve": module.loss_curve,
        "seed": cfg.seed,
        "run_dir": str(output_dir),
        "resumed_from": ckpt_path,
    }
    if trainer.is_global_zero:
        model_dir = save_encoder(method.encoder(), processor, output_dir / "model", summary)
        log.info(
            "pretrained encoder: %s (fine-tune with model.pretrained=%s)", model_dir, model_dir
        )
    return summary, {"trainer": trainer, "module": module, "method": method}
