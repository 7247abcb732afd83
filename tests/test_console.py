"""The `vitft` console command in a clone (the wheel itself: test_install.py)."""

import subprocess
import sys

import pytest

from vitft.apps import console


def test_every_command_has_its_config_and_function():
    cmds = console.available()
    assert set(console.COMMANDS) <= set(cmds)
    for config_name, target in cmds.values():
        assert (console.conf_dir() / f"{config_name}.yaml").is_file()
        assert callable(console._resolve(target))


def test_help_and_unknown_command(capsys):
    console.main(["--help"])
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        console.main(["trian"])
    assert exc.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err


def test_a_command_runs_through_hydra_with_overrides(tmp_path):
    # A subprocess: Hydra configures the process's logging, which must not leak into other tests.
    proc = subprocess.run(
        [sys.executable, "-m", "vitft", "predict", f"hydra.run.dir={tmp_path}", "inputs=x.png"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2  # no model_dir: the one-line error, not a traceback
    assert "set exactly one of model_dir" in proc.stderr and "Traceback" not in proc.stderr
