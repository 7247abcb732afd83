"""A deploy-only install: vitft without its dependencies plus pyproject's ``deploy`` extra (no
torch, transformers or Lightning) predicts and serves an ONNX export; a command that needs the full
install stops with one line naming the fix."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import CLASSES, ROOT, save_tiny_vit
from tests.test_export import export_cfg
from tests.test_install import _run, build_wheel, clean_env
from vitft.apps import console
from vitft.run.entry import FULL_INSTALL_FIX, missing_dependency, run_entry

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
DEPLOY = EXTRAS["deploy"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_the_deploy_extra_holds_serve_and_the_docs_install_it_as_it_is():
    assert {_name(r) for r in EXTRAS["serve"]} <= {_name(r) for r in DEPLOY}
    assert not {_name(r) for r in DEPLOY} & {"torch", "transformers", "lightning"}
    docs = (ROOT / "docs" / "serving.md").read_text()
    command = next(line for line in docs.splitlines() if line.startswith("pip install numpy"))
    assert command.split()[2:] == [_name(r) for r in DEPLOY], command
    assert "pip install --no-deps vitft" in docs


def test_the_serve_and_predict_commands_import_no_torch():
    """In a fresh interpreter: what `vitft serve` and `vitft predict` import before the model."""
    code = (
        "import sys, vitft.apps.console, vitft.deploy.serve, vitft.apps.predict\n"
        "print(' '.join(sys.modules))"
    )
    env = {**clean_env(), "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    heavy = {"torch", "torchvision", "transformers", "lightning", "matplotlib", "safetensors"}
    assert not loaded & heavy, sorted(loaded & heavy)


def _torch_missing() -> ModuleNotFoundError:
    return ModuleNotFoundError("No module named 'torch'", name="torch")


def test_a_command_that_needs_torch_stops_with_one_line(monkeypatch, capsys):
    """``vitft train`` (its module cannot import torch) and a run that imports it late."""
    assert FULL_INSTALL_FIX in missing_dependency(_torch_missing())
    assert missing_dependency(ModuleNotFoundError("x", name="yaml")) is None  # not ours to fix

    def import_fails(target):
        raise _torch_missing()

    monkeypatch.setattr(console, "resolve", import_fails)
    with pytest.raises(SystemExit) as stop:
        console.main(["train"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0
    assert err.startswith("error: vitft train: this needs torch") and FULL_INSTALL_FIX in err

    def late(cfg):
        raise _torch_missing()

    with pytest.raises(SystemExit) as stop:
        run_entry(late, {})
    assert stop.value.code == 2 and "pip install vitft" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError):  # any other missing module keeps its traceback
        run_entry(lambda cfg: __import__("no_such_module_" + uuid.uuid4().hex), {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except OSError:
        return 0, b""


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        if _get(url)[0] == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def _post_image(url: str, image: Path) -> dict:
    req = urllib.request.Request(
        url, data=image.read_bytes(), headers={"Content-Type": "image/png"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def deploy_venv(tmp_path_factory) -> Path:
    """A fresh venv (no system site packages) with the wheel (--no-deps) and the deploy extra."""
    tmp = tmp_path_factory.mktemp("deploy_only")
    env = clean_env()
    wheel = build_wheel(tmp, env)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, *DEPLOY], tmp, env)  # the documented order: the runtime set, then vitft alone
    _run([*pip, "--no-deps", str(wheel)], tmp, env)
    return venv


@pytest.mark.slow
def test_a_deploy_only_install_predicts_and_serves_an_onnx_export(deploy_venv, tmp_path, tiny_data):
    from vitft.apps.export import export

    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    py, vitft = str(deploy_venv / "bin" / "python"), str(deploy_venv / "bin" / "vitft")
    missing = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr
    model_dir = save_tiny_vit(tmp_path / "run" / "model", CLASSES)
    cfg = export_cfg(model_dir, tiny_data, "formats=[onnx]")
    export(cfg)  # here, with the full install
    onnx_dir = Path(cfg.output_dir) / "onnx"
    image = sorted((tiny_data / "test").rglob("*.png"))[0]
    hydra = f"hydra.run.dir={tmp_path / 'hydra'}"

    out = tmp_path / "p.csv"
    args = [f"model_dir={onnx_dir}", f"inputs={image}", f"output={out}", hydra]
    _run([vitft, "predict", *args], tmp_path, env, timeout=300)
    row = out.read_text().splitlines()[1].split(",")
    assert row[0] == str(image) and row[1] in CLASSES

    # A PyTorch model dir needs the full install: one line, no traceback.
    bad = subprocess.run(
        [vitft, "predict", f"model_dir={model_dir}", f"inputs={image}", hydra],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert "error: this needs " in bad.stderr and FULL_INSTALL_FIX in bad.stderr

    port = _free_port()
    log = tmp_path / "serve.log"
    args = [f"model_dir={onnx_dir}", f"port={port}", hydra]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [vitft, "serve", *args], stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(proc, base + "/ready", log)
        doc = _post_image(base + "/predict", image)
        meta = json.loads(_get(base + "/metadata")[1])
    finally:
        proc.terminate()
        proc.wait(30)
    (pred,) = doc["predictions"]
    assert pred["label"] in CLASSES and set(pred["probs"]) == set(CLASSES), doc
    assert meta["format"] == "onnx" and meta["classes"] == list(CLASSES)
    assert meta["providers"] == ["CPUExecutionProvider"] and not meta["heatmap"]
