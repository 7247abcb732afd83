"""Pretrain a backbone on unlabelled images: python pretrain.py data.roots=[/data/unlabelled]."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.pretrain import pretrain
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    run_entry(pretrain, cfg)


if __name__ == "__main__":
    main()
