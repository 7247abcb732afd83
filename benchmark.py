"""Benchmark exports: python benchmark.py model_dir=outputs/<run>/model device=cpu
(see conf/benchmark.yaml; the seed's ``--model_path X --device cuda`` spelling works too).

The same as ``vitft benchmark``: the console sets OMP_WAIT_POLICY=PASSIVE before torch loads and
translates the ``--key value`` spelling (``vitft.apps.console.COMMANDS``)."""

import sys

from vitft.apps.console import main

if __name__ == "__main__":
    main(["benchmark", *sys.argv[1:]])
