"""TF and Flax (transformers 4.x, from_pt) load a fresh vitft export: builds a separate venv the
first time (minutes; reused afterwards via VITFT_COMPAT_VENV or .venv-compat), slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_tf_and_flax_load_a_fresh_export():
    venv = os.environ.get("VITFT_COMPAT_VENV", str(ROOT / ".venv-compat"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compat_tf_flax.py"), "--venv", venv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["transformers"] == "4.57.6"
    assert result["tf_max_abs_diff"] < 1e-4 and result["flax_max_abs_diff"] < 1e-4
