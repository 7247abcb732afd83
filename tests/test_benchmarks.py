"""Each benchmark script runs in its short --quick mode and ends with its RESULT line.

No timing is asserted (figures depend on the machine); this keeps the scripts working. Slow: each
script is a fresh process that imports torch, transformers and Lightning."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "feature_cache",
    "loop_overhead",
    "data_pipeline",
    "memory",
    "unknown_defect",
    "active_learning",
    "add_class",
    "small_data",
    "inspection",
    "unknown_morphology",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_quick_mode(name, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "WANDB_MODE": "disabled",
        "VITFT_RESULTS_DIR": str(tmp_path),  # quick-mode tables never replace the measured ones
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("|--") for line in lines)  # a table was printed
    tag, got, value = lines[-1].split()
    assert (tag, got) == ("RESULT", name)
    assert math.isfinite(float(value))  # a ratio; memory's reduction can be negative in --quick
