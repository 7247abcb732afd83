"""Loggers: CSV / TensorBoard / W&B, with a W&B run id that survives resume and outages.

Tracking must never fail or hang training: with no API key, no network or a bad key, W&B records
the run offline and the log says how to ``wandb sync`` it later.
"""

from __future__ import annotations

import csv
import json
import logging
import netrc
import os
import uuid
from pathlib import Path

from hydra.utils import instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vitft.core.plots import training_curves
from vitft.modelio.card import write_card
from vitft.modelio.checkpoint import BLOCK, read_checkpoint
from vitft.modelio.hub import push_model_dir
from vitft.training.checkpoints import candidates

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Keep the rows of earlier attempts and their header, so a resumed run appends.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger, but a resumed run appends to metrics.csv instead of deleting it.

    train() removes metrics.csv itself when a run starts fresh.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir or ".", exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def run_id(output_dir: Path, ckpt_path: str | None) -> str:
    """The W&B run id: from the checkpoint we resume, else this run dir's, else a new one."""
    id_file = Path(output_dir) / RUN_ID_FILE
    rid = None
    if ckpt_path:
        # pretraining checkpoints have no vitft block: their id is in the run dir's file
        rid = (read_checkpoint(ckpt_path).get(BLOCK) or {}).get("wandb_id")
    if not rid and id_file.is_file():
        rid = id_file.read_text().strip()
    if not rid:
        rid = uuid.uuid4().hex[:8]  # W&B's id format: 8 lowercase alphanumerics
    # Under srun every rank starts at once: only rank 0 (the one that logs) keeps its id, else
    # another rank's id could overwrite it and a requeued job would open a second W&B run.
    if rank_zero_only.rank == 0:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(rid)
    return rid


def _wandb_logger(cfg: dict, rid: str, config: dict) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    mode = cfg.pop("mode", None) or os.environ.get("WANDB_MODE")
    if not mode:
        mode = "online" if _has_wandb_key() else "offline"
        if mode == "offline":
            log.warning("W&B: no API key (WANDB_API_KEY or `wandb login`): recording offline")
    # _recursive_ off: the run's config is recorded as it is, its groups' _target_ never called
    kwargs = {**cfg, "id": rid, "resume": "allow", "config": config, "_convert_": "all"}
    kwargs["_recursive_"] = False
    try:
        import wandb

        # How long going online may take before falling back (WANDB_INIT_TIMEOUT, seconds).
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))
        logger = instantiate(
            kwargs, mode=mode, settings=wandb.Settings(init_timeout=timeout, silent=True)
        )
        _ = logger.experiment  # start the run now, not deep inside training
        return logger
    except Exception as err:
        if mode == "offline":
            raise
        log.warning(
            "W&B online failed (%s: %s); recording this run offline", type(err).__name__, err
        )
        # The failed online attempt still holds the run id in wandb's service: release it.
        try:
            import wandb

            wandb.teardown()
        except Exception as teardown_err:  # noqa: BLE001  (best effort, never fatal)
            log.debug("wandb teardown after failed init: %s", teardown_err)
        plain = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        logger = WandbLogger(**plain, mode="offline")
        _ = logger.experiment
        return logger


def build_loggers(
    cfg_logger: DictConfig | dict | None, output_dir: Path, rid: str, config: dict
) -> list[Logger]:
    """Instantiate every configured logger; W&B gets the run id and the resolved config."""
    loggers: list[Logger] = []
    for lg_cfg in (cfg_logger or {}).values():
        if not lg_cfg:
            continue
        lg = (
            OmegaConf.to_container(lg_cfg, resolve=True)
            if isinstance(lg_cfg, DictConfig)
            else dict(lg_cfg)
        )
        if "WandbLogger" in lg.get("_target_", ""):
            logger = _wandb_logger(lg, rid, config)
            if logger.experiment.settings.mode == "offline" or getattr(
                logger.experiment.settings, "_offline", False
            ):
                log.info(
                    "W&B run %s is offline; sync it later with: wandb sync %s",
                    rid,
                    Path(logger.experiment.dir).parent,
                )
            loggers.append(logger)
        else:
            loggers.append(instantiate(lg))
    return loggers


def finish() -> None:
    """Close the W&B run if one is open (always, even when training failed)."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def clear_previous(output_dir: Path) -> None:
    """A fresh run in a used run dir replaces the old run's metrics, W&B id and checkpoints."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.warning(
            "%s already holds checkpoints of an earlier run; starting fresh overwrites them "
            "(use resume=auto to continue that run instead)",
            output_dir,
        )
    for old in candidates(output_dir):  # else resume=auto could pick them up later
        if old.name != last.name:
            old.unlink()
    for name in ("metrics.csv", RUN_ID_FILE, "load_failures.tsv"):
        (output_dir / name).unlink(missing_ok=True)


def publish(output_dir: Path, cfg: DictConfig, resolved: dict, loggers: list, **card) -> None:
    """The model card of ``<run>/model``, the W&B model artifact and curves, the hub push."""
    model_dir = output_dir / "model"
    write_card(model_dir, task=cfg.task.get("name"), config=resolved, **card)
    log_to_wandb(loggers, model_dir, output_dir / "metrics.csv", ["best"])
    push_model_dir(model_dir, cfg.get("hub"))


def epoch_history(metrics_csv: str | Path) -> dict[str, tuple]:
    """``{metric: (epochs, values)}`` from the CSV logger's metrics.csv (last value per epoch)."""
    import numpy as np

    per_metric: dict[str, dict[int, float]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None) or "/" not in key:
                    continue
                per_metric.setdefault(key, {})[epoch] = float(value)
    return {
        k: (np.array(sorted(v)), np.array([v[e] for e in sorted(v)])) for k, v in per_metric.items()
    }


def log_to_wandb(loggers: list[Logger], model_dir: Path, metrics_csv: Path, aliases: list[str]):
    """With a W&B logger: the model dir as a ``model`` artifact, and the curves as figures."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return None
    import matplotlib.pyplot as plt
    import wandb

    run = wandb_loggers[0].experiment
    if Path(metrics_csv).is_file():
        history = epoch_history(metrics_csv)
        if history:
            fig = training_curves(history, "epoch")
            run.log({"curves/training": wandb.Image(fig)})
            plt.close(fig)
    artifact = wandb.Artifact(
        name=f"model-{run.id}",
        type="model",
        description="vitft model dir (HF format, processor, model card)",
        metadata=json.loads((model_dir / "vitft.json").read_text())
        if (model_dir / "vitft.json").is_file()
        else {},
    )
    artifact.add_dir(str(model_dir))
    run.log_artifact(artifact, aliases=aliases)
    return artifact
