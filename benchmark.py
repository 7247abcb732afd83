"""Benchmark exports: python benchmark.py model_dir=outputs/<run>/model device=cpu
(see conf/benchmark.yaml; the seed's ``--model_path X --device cuda`` spelling works too)."""

import os
import sys

# Set before torch loads OpenMP: on a shared or busy CPU, spinning OpenMP threads wait on each
# other for whole time slices (PyTorch eager at 2 threads measured 50x slower here). ONNX Runtime
# spinning is switched off in vitft.deploy.runtime for the same reason. OMP_WAIT_POLICY=ACTIVE
# in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import vitft  # noqa: F401, E402  (registers the config resolvers and the vitft model type)
from vitft.apps.benchmark import benchmark, translate_argv  # noqa: E402
from vitft.run.entry import run_entry  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    run_entry(benchmark, cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *translate_argv(sys.argv[1:])]
    main()
