"""Pick images to label next: python select_images.py model_dir=outputs/<run>/model pool=<folder>
budget=50 strategy=margin|entropy|coreset|badge (also `vitft select ...`). Not `select.py`: a
script of that name in the repo root would shadow Python's own `select` module."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.select import select
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="select")
def main(cfg: DictConfig) -> object:
    return run_entry(select, cfg)


if __name__ == "__main__":
    main()
