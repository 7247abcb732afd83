"""Every command (root script or ``vitft <command>``) answers a bad override with one line,
``error: ...``, and exit code 2: no traceback, and the line names the key or file at fault."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run_script, run_vitft

MISSING = "/no/such/vitft/dir"

# (a root script or `-m vitft <command>`, overrides, text the error line must contain)
CASES = [
    ("train.py", ["model=vit_tiny", "head.name=nope"], "head='nope' is unknown"),
    ("train.py", ["model=vit_tiny", "resume=sometimes"], "resume='sometimes' is unknown"),
    ("eval.py", [f"model_dir={MISSING}"], "is not an HF model directory"),
    ("predict.py", [f"model_dir={MISSING}", "inputs=x.png", "format=xml"], "format='xml'"),
    ("export.py", [f"model_dir={MISSING}", "formats=[coreml]"], "formats=['coreml'] unknown"),
    ("benchmark.py", [f"model_dir={MISSING}", "device=tpu"], "device='tpu'"),
    ("benchmark.py", ["--model_path", MISSING], "is not an HF model directory"),
    ("-m vitft prune", [f"model_dir={MISSING}"], "is not an HF model directory"),
    ("-m vitft explain", [f"model_dir={MISSING}"], "set inputs="),
]


@pytest.mark.parametrize(("script", "overrides", "expected"), CASES)
def test_bad_override_is_one_line_and_exit_2(script, overrides, expected, tmp_path):
    writes = script.endswith(("export.py", "benchmark.py", "prune"))
    out = [f"output_dir={tmp_path}"] if writes else []
    proc = run_script(*script.split(), *overrides, *out, f"hydra.run.dir={tmp_path}")
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-3000:]
    assert "Traceback" not in both, both[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]


def test_check_data_reports_into_its_own_run_dir(tmp_path):
    """check_data's answer is its report (exit 1: training can't proceed), written into its run
    dir, never into the working directory."""
    proc = run_vitft("check-data", f"data_dir={MISSING}", f"hydra.run.dir={tmp_path}")
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "NOT OK" in proc.stdout, both[-3000:]
    assert "Traceback" not in both
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert not report["can_train"] and MISSING in " ".join(report["reasons"])
