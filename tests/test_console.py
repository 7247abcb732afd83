"""The `vitft` console command in a clone (the wheel itself: test_install.py)."""

import os
import subprocess
import sys

import pytest

from vitft.apps import console
from vitft.core.resolvers import conf_dir


def test_every_command_has_its_config_and_function():
    cmds = console.available()
    assert set(console.COMMANDS) <= set(cmds)
    for command in cmds.values():
        assert (conf_dir() / f"{command.config}.yaml").is_file()
        assert callable(console.resolve(command.target))
        assert command.argv is None or callable(console.resolve(command.argv))


def test_benchmark_translates_its_argv_and_sets_openmp_before_torch_loads():
    code = (
        "import os, sys\n"
        "class Watch:\n"  # prints the setting at the moment torch is first imported
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch':\n"
        "            print(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from vitft.apps import console\n"
        "console._run_hydra = lambda name, command, rest: print(rest)\n"
        "console.main(['benchmark', '--model_path', 'm', '--device=cpu'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["PASSIVE", "['model_dir=m', 'device=cpu']"]


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
