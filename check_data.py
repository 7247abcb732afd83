"""Check a dataset before training: python check_data.py task=defect | data_dir=/data/line3."""

import sys

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.check_data import check_data
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="check_data")
def main(cfg: DictConfig) -> None:
    sys.exit(run_entry(check_data, cfg))


if __name__ == "__main__":
    main()
