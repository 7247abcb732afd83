"""Serve a model over HTTP: python serve.py model_dir=outputs/<run>/model (see conf/serve.yaml)."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.cli import run_entry
from vitft.deploy.serve import serve


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    run_entry(serve, cfg)


if __name__ == "__main__":
    main()
