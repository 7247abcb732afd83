"""Export a trained model: python export.py model_dir=outputs/<run>/model (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.export.formats import run


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
