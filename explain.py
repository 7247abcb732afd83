"""Attention heatmaps: python explain.py model_dir=outputs/<run>/model inputs=<image|folder>."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.explain import explain
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
def main(cfg: DictConfig) -> object:
    return run_entry(explain, cfg)


if __name__ == "__main__":
    main()
