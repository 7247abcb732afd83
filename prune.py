"""Prune attention heads: python prune.py model_dir=outputs/<run>/model heads=3."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.export.prune import run


@hydra.main(version_base="1.3", config_path="conf", config_name="prune")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
