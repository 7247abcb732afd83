"""Evaluate a trained model: python eval.py ckpt_path=outputs/<run>/checkpoints/best.ckpt."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.cli import run_entry
from vitft.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_entry(evaluate, cfg)


if __name__ == "__main__":
    main()
