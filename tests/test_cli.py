"""The root scripts, as a user runs them (subprocess, real Hydra CLI)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
    )


def test_train_cli_writes_the_run_dir(tmp_path):
    run = tmp_path / "run"
    proc = run_script(
        "train.py",
        "experiment=quickstart",
        "debug=fdr",
        "data.num_workers=0",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "config.yaml",
        "summary.json",
        "train.log",
        "model/config.json",
        "model/model.safetensors",
        "model/preprocessor_config.json",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["normal", "crack", "dent"]
    assert "test/acc" in summary and "test/f1_macro" in summary


def test_user_error_is_one_clear_message(tmp_path):
    proc = run_script(
        "train.py",
        "model=vit_tiny",
        "task=folder",
        "task.data_dir=/no/such/dir",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 2
    assert "error: data dir /no/such/dir does not exist" in proc.stderr
    assert "task.data_dir=" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
