"""pretrain(cfg): pretrain a backbone on unlabelled images, for ``train.py model.pretrained=``.

images (labels ignored) -> the method's views -> PretrainModule -> fit -> the encoder as an HF
model dir in <run>/model with pretraining.json (method, data, epochs, loss curve).
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vitft.apps.train import _instantiate_all, open_run
from vitft.models.backbone import load_backbone
from vitft.training import tracking
from vitft.training.factory import build_trainer
from vitft.training.pretraining.data import UnlabelledDataModule, find_images, screen
from vitft.training.pretraining.encoder import save_encoder, vit_encoder
from vitft.training.pretraining.module import PretrainModule

log = logging.getLogger(__name__)


def pretrain(cfg: DictConfig) -> tuple[dict, dict]:
    """Pretrain ``cfg.model``'s encoder with ``cfg.pretraining``; returns (summary, objects)."""
    run, ckpt_path = open_run(cfg)
    output_dir = run.root

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
        if not ckpt_path:
            tracking.clear_previous(run.root)
        run.write_config(resolved)
    rid = tracking.run_id(output_dir, ckpt_path)
    loggers = tracking.build_loggers(cfg.get("logger"), output_dir, rid, resolved)
    trainer = build_trainer(cfg.trainer, _instantiate_all(cfg.get("callbacks")), loggers)
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
