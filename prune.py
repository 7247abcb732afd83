"""Prune attention heads: python prune.py model_dir=outputs/<run>/model heads=3."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.prune import prune
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="prune")
def main(cfg: DictConfig) -> object:
    return run_entry(prune, cfg)


if __name__ == "__main__":
    main()
