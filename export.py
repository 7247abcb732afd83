"""Export a model dir with parity checks: python export.py model_dir=outputs/<run>/model."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.export import export
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> object:
    return run_entry(export, cfg)


if __name__ == "__main__":
    main()
