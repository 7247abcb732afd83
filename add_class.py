"""Add a class from a few images: python add_class.py model_dir=outputs/<run>/model class=scratch
images=<folder> (also `vitft add-class ...`)."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.add_class import add_class
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="add_class")
def main(cfg: DictConfig) -> object:
    return run_entry(add_class, cfg)


if __name__ == "__main__":
    main()
