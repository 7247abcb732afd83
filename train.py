"""Train a classifier: python train.py task=defect freeze=backbone (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.train import objective
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> object:
    return run_entry(objective, cfg)


if __name__ == "__main__":
    main()
