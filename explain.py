"""Heatmaps of where the model looked: python explain.py model_dir=<run>/model inputs=<...>."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.cli import run_entry
from vitft.explain import explain


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    run_entry(explain, cfg)


if __name__ == "__main__":
    main()
