"""Predict images: python predict.py model_dir=outputs/<run>/model inputs=<image|folder|glob>."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.cli import run_entry
from vitft.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_entry(predict, cfg)


if __name__ == "__main__":
    main()
