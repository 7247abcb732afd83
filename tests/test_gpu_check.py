"""scripts/gpu_check.py --dry-run: every check of the GPU script, CPU-sized (the GPU run itself
needs a GPU machine: python scripts/gpu_check.py)."""

import csv

from tests.test_cli import run_script


def test_gpu_check_dry_run(tmp_path):
    proc = run_script("scripts/gpu_check.py", "--dry-run", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT gpu_check " in proc.stdout
    with open(tmp_path / "gpu_check_dry_run.csv") as f:
        rows = {(r["check"], r["figure"]): r["value"] for r in csv.DictReader(f)}
    assert "CPUExecutionProvider" in rows[("machine", "ort providers")]
    assert float(rows[("loop tiny 32-true b8", "vitft / plain")]) > 0
    assert float(rows[("resume=auto vs uninterrupted", "max |weight diff|")]) >= 0.0
    assert float(rows[("ORT auto b32", "max |logit diff| vs torch fp32")]) < 1e-3
    assert any(check.startswith("benchmark.py device=cpu") for check, _ in rows)
