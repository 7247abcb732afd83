"""Predict image files: python predict.py model_dir=outputs/<run>/model inputs=<folder|glob>."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.predict import predict
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> object:
    return run_entry(predict, cfg)


if __name__ == "__main__":
    main()
