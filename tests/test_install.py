"""The wheel: `pip install` (not editable) into a fresh venv, `vitft ...` from another folder."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clean_env() -> dict:
    """This environment without the test run's PYTHONPATH and venv: a new venv's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["WANDB_MODE"] = "offline"
    return env


def build_wheel(tmp_path: Path, env: dict) -> Path:
    """vitft's wheel, built without its dependencies into ``tmp_path / "dist"``."""
    # Build from a copy, so the build leaves no build/ or egg-info in the clone.
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        tmp_path,
        env,
    )
    return next((tmp_path / "dist").glob("vitft-*.whl"))


def test_wheel_installs_and_runs_train_and_predict_outside_the_repo(tmp_path):
    env = clean_env()
    wheel = build_wheel(tmp_path, env)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    # When the tests themselves run in a venv, its packages (torch ...) are not the "system"
    # ones of the new venv: a .pth file makes them visible without reinstalling them.
    purelib = _run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env
    ).stdout.strip()
    (Path(purelib) / "outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", str(wheel)], tmp_path, env)

    work = tmp_path / "plant"  # any folder: the user's data/ and outputs/ live here
    shutil.copytree(ROOT / "data" / "defect", work / "data" / "defect")
    vitft = str(venv / "bin" / "vitft")
    where = _run([str(py), "-c", "import vitft; print(vitft.__file__)"], work, env).stdout
    assert where.strip().startswith(str(venv)), where  # the wheel, not the clone
    assert "train" in _run([vitft, "--help"], work, env).stdout

    _run([vitft, "train", "experiment=quickstart", "trainer.max_epochs=1"], work, env)
    model_dir = work / "outputs" / "quickstart" / "model"
    assert (model_dir / "config.json").is_file()
    _run(
        [vitft, "predict", f"model_dir={model_dir}", "inputs=data/defect/test", "output=p.csv"],
        work,
        env,
    )
    rows = (work / "p.csv").read_text().splitlines()
    assert rows[0].startswith("path,label") and len(rows) > 10

    bad = subprocess.run(
        [vitft, "predict", "inputs=nowhere"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
