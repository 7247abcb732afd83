"""Evaluate a trained model: python eval.py model_dir=outputs/<run>/model (or an export folder)."""

import hydra
from omegaconf import DictConfig

import vitft  # noqa: F401  (registers the config resolvers)
from vitft.apps.evaluate import evaluate
from vitft.run.entry import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> object:
    return run_entry(evaluate, cfg)


if __name__ == "__main__":
    main()
