"""The commands as a user runs them (subprocess, real Hydra CLI): the root scripts of the main
commands, and ``vitft <command>`` (as ``python -m vitft``) for the rest."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# The root keeps a script for the README's main commands only; every command runs as `vitft <cmd>`.
ROOT_SCRIPTS = ["benchmark.py", "eval.py", "export.py", "predict.py", "train.py"]


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


def run_vitft(command: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``vitft <command> ...``, run as ``python -m vitft`` (the console script's own code)."""
    return run_script("-m", "vitft", command, *args, env=env)


def test_the_root_holds_only_the_main_commands_scripts():
    assert sorted(p.name for p in ROOT.glob("*.py") if p.name != "setup.py") == ROOT_SCRIPTS


# check-data, explain and prune run for real in test_cli_errors.py; these answer their --help.
@pytest.mark.parametrize("command", ["add-class", "pretrain", "select", "serve"])
def test_a_command_without_a_root_script_runs_as_vitft(command):
    proc = run_vitft(command, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== Config ==" in proc.stdout and "Traceback" not in proc.stderr


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
