"""Export formats: each one reloads in its own runtime and agrees with PyTorch (budget ~40 s;
the LiteRT conversion test is marked slow: it installs tests/edge-requirements.txt into a venv of
its own unless LiteRT is installed, ~90 s)."""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tests.conftest import CLASSES, CONF, ROOT, TINY_VIT_CONFIG
from vitft.apps.export import export
from vitft.deploy.metadata import read_metadata
from vitft.deploy.runtime import load_exported
from vitft.modelio.hf import save_hf
from vitft.models.classifier import build_model
from vitft.run.entry import run_entry

TINY = TINY_VIT_CONFIG
META_KEYS = {"format", "labels", "image_size", "image_mean", "image_std", "source_sha256", "file"}


def make_model_dir(root: Path, config: dict | None = None) -> Path:
    import torch

    torch.manual_seed(0)
    model, processor = build_model({"config": config or TINY}, {"name": "linear"}, sorted(CLASSES))
    # A confident head keeps top-1 stable under int8 noise, as a trained model's would be.
    with torch.no_grad():
        model.head.fc.weight.mul_(20)
    return save_hf(model, processor, root / "model")


def export_cfg(model_dir: Path, data_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"model_dir={model_dir}", *overrides])
    with open_dict(cfg):
        cfg.data_dir = str(data_dir)
        cfg.output_dir = str(model_dir.parent / "export")
    return cfg


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("export"))


def test_onnx_and_int8_formats_reload_and_agree(model_dir, tiny_data):
    formats = ["onnx", "onnx_int8", "onnx_int8_static", "onnx_int8_trt", "torch_int8"]
    cfg = export_cfg(model_dir, tiny_data, f"formats=[{','.join(formats)}]", "calibration_images=6")
    results = export(cfg)
    out = Path(cfg.output_dir)
    assert set(results) == set(formats)
    assert json.loads((out / "parity.json").read_text()).keys() == set(formats)
    ref, _ = load_exported(model_dir)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for fmt in formats:
        meta = read_metadata(out / fmt)
        assert META_KEYS <= meta.keys() and meta["labels"] == sorted(CLASSES)
        assert meta["image_size"] == [32, 32] and meta["format"] == fmt
        assert meta["outputs"] == ["logits"] and meta["ood"] is None  # no scorer: one output
        par = json.loads((out / fmt / "parity.json").read_text())
        assert par["images"] == 9 and par["agreement"] >= par["threshold"]
        assert par["batch_size"] == 1  # one image per call, as deployed
        predict, _ = load_exported(out / fmt, threads=1)
        tol = 1e-4 if meta["precision"] == "fp32" else 0.5
        np.testing.assert_allclose(predict(x), ref(x), atol=tol)  # dynamic batch of 3
    import onnx

    graph = onnx.load(str(out / "onnx" / "model.onnx"))
    assert graph.opset_import[0].version >= 17
    assert [i.name for i in graph.graph.input] == ["pixel_values"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert (out / "onnx_int8" / "model.onnx").stat().st_size < (
        out / "onnx" / "model.onnx"
    ).stat().st_size
    for fmt in ("onnx_int8", "onnx_int8_static"):
        # 7-bit weights (reduce_range): no int16 saturation in x86 VPMADDUBSW kernels.
        qgraph = onnx.load(str(out / fmt / "model.onnx")).graph
        weights = [
            onnx.numpy_helper.to_array(t).astype(np.int32)
            for t in qgraph.initializer
            if t.data_type == onnx.TensorProto.INT8
        ]
        assert weights and max(int(np.abs(w).max()) for w in weights) <= 64
        # The classification head stays float.
        assert not [
            t.name
            for t in qgraph.initializer
            if t.name.startswith("head.") and t.data_type == onnx.TensorProto.INT8
        ]
        assert not {n.domain for n in qgraph.node} - {"", "ai.onnx"}  # standard ONNX ops only
        assert "reduce_range" in read_metadata(out / fmt)["quantization"]["weights"]
    # TensorRT's int8: every quantize/dequantize pair signed and symmetric (zero point 0).
    trt = onnx.load(str(out / "onnx_int8_trt" / "model.onnx")).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in trt.initializer}
    zero_points = [
        init[n.input[2]] for n in trt.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_torch_int8_reloads_in_fresh_process(model_dir, tiny_data):
    folder = model_dir.parent / "export" / "torch_int8"
    if not folder.is_dir():
        export(export_cfg(model_dir, tiny_data, "formats=[torch_int8]"))
    code = (
        "import sys, numpy as np; from vitft.deploy.runtime import load_exported; "
        "p, m = load_exported(sys.argv[1], threads=1); "
        "print(p(np.zeros((2, 3, 32, 32), np.float32)).shape, m['format'])"
    )
    env_path = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip().endswith("(2, 3) torch_int8")
    import torch

    scripted = dict(torch.jit.load(str(folder / "model.pt")).named_modules())
    assert hasattr(scripted["backbone.vit.layers.0.attention.q_proj"], "_packed_params")  # int8
    assert not hasattr(scripted["head.fc"], "_packed_params")  # the head stays float


def test_failing_parity_exits_nonzero_naming_format(model_dir, tiny_data, capsys):
    cfg = export_cfg(model_dir, tiny_data, "formats=[onnx]", "parity.threshold=1.01")
    with pytest.raises(SystemExit) as exc:
        run_entry(export, cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "parity check failed for onnx" in err and "101.00%" in err


def test_unknown_format_and_missing_data_are_clear_errors(model_dir, tmp_path):
    cfg = export_cfg(model_dir, tmp_path / "nope", "formats=[coreml]")
    from vitft.core.errors import VitftError

    with pytest.raises(VitftError, match="coreml"):
        export(cfg)
    with pytest.raises(VitftError, match="does not exist"):
        export(export_cfg(model_dir, tmp_path / "nope", "formats=[onnx]"))


def tflite_export(model_dir: Path, data_dir: Path) -> tuple[dict, Path]:
    cfg = export_cfg(model_dir, data_dir, "formats=[tflite,tflite_int8]", "threads=2")
    return export(cfg), Path(cfg.output_dir)


def edge_python(tmp: Path) -> Path:
    """A venv that sees this environment's packages plus the pinned LiteRT ones (the `edge`
    extra is not in `dev`: its resolution backtracks for many minutes)."""
    venv = tmp / "edge_venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    # From a venv, `venv` links to the base interpreter: a .pth shows it this venv's packages.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pins = ROOT / "tests" / "edge-requirements.txt"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(pins)]
    subprocess.run(pip, check=True)
    return python


def in_edge_venv(tmp: Path, script: str, *args: str):
    """Run ``python -c script args`` in the edge venv (this checkout importable); its last stdout
    line, read as JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    proc = subprocess.run(
        [str(edge_python(tmp)), "-c", script, *args],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tflite_formats_reload_and_agree(model_dir, tiny_data, tmp_path):
    if importlib.util.find_spec("litert_torch"):
        results, out = tflite_export(model_dir, tiny_data)
    else:
        script = (
            "import json, sys; from pathlib import Path;"
            "from tests.test_export import tflite_export;"
            "r, out = tflite_export(Path(sys.argv[1]), Path(sys.argv[2]));"
            "print(json.dumps({'results': r, 'out': str(out)}, default=float))"
        )
        answer = in_edge_venv(tmp_path, script, str(model_dir), str(tiny_data))
        results, out = answer["results"], Path(answer["out"])
    assert results["tflite"]["max_abs_diff"] < 1e-4
    assert results["tflite"]["agreement"] == 1.0
    assert results["tflite_int8"]["agreement"] >= 0.97
    tfl = (out / "tflite" / "model.tflite").stat().st_size
    # Smaller, not 4x: at width 32 the graph and float tensors dominate (ViT-Base: 0.25x).
    assert (out / "tflite_int8" / "model.tflite").stat().st_size < 0.8 * tfl
    assert read_metadata(out / "tflite")["batch"] == 1


def test_predict_runs_an_export_folder(model_dir, tiny_data):
    """predict.py's Predictor takes an export folder like a model dir, with the same answers."""
    from vitft.deploy.predictor import Predictor

    cfg = export_cfg(model_dir, tiny_data, "formats=[onnx]")
    export(cfg)
    images = sorted((tiny_data / "test").rglob("*.png"))
    onnx_preds = Predictor.from_path(Path(cfg.output_dir) / "onnx").predict(images)
    torch_preds = Predictor.from_path(model_dir).predict(images)
    assert [p.label for p in onnx_preds] == [p.label for p in torch_preds]
    assert all(
        abs(a.confidence - b.confidence) < 1e-4
        for a, b in zip(onnx_preds, torch_preds, strict=True)
    )
