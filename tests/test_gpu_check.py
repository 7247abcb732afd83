"""scripts/gpu_check.py: its goals, tolerances and exit code (the module, imported), and every
check of the script run CPU-sized with --dry-run (the GPU run: python scripts/gpu_check.py)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import onnxruntime
import pytest
import torch

from tests.conftest import ROOT, TINY_VIT_CONFIG
from tests.test_cli import run_script
from vitft.models.classifier import build_model

COLUMNS = ["check", "figure", "value", "goal", "status"]


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the module sets it: set back after the test
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missed_goal_makes_the_exit_code_non_zero(gpu_check):
    gpu_check.row("loop", "vitft / plain", 0.97, ">= 0.95", True)
    gpu_check.row("machine", "gpu", "H100")  # a figure without a goal never fails
    assert gpu_check.exit_code() == 0
    gpu_check.row("ORT cuda b32", "max |logit diff|", 0.5, "<= 0.01", False)
    assert gpu_check.exit_code() == 1
    assert [r[4] for r in gpu_check.ROWS] == ["ok", "", "MISSED"]


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to TF32 (10 mantissa bits), as tensor cores read fp32 matmul inputs."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_the_logit_tolerance_accounts_for_tf32_and_no_more(gpu_check):
    # A 12-block ViT whose every Linear reads TF32-rounded inputs and weights, against fp32.
    config = {**TINY_VIT_CONFIG, "num_hidden_layers": 12, "hidden_size": 64}
    torch.manual_seed(0)
    model, _ = build_model({"config": config}, {"name": "linear"}, ["a", "b", "c"])
    model.eval()
    with torch.no_grad():
        model.head.fc.weight.mul_(20)  # logits of a trained model's scale (~10), not ~0.1
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        weights = {m: m.weight.clone() for m in model.modules() if isinstance(m, torch.nn.Linear)}
        for m, w in weights.items():
            m.weight.copy_(_tf32(w))
            m.register_forward_pre_hook(lambda _m, args: (_tf32(args[0]),))
        tf32 = model(x)
    diff = float((tf32 - ref).abs().max())
    assert diff > gpu_check.logit_tolerance(ref.numpy(), tf32=False)  # fp32's would fail it
    assert diff <= gpu_check.logit_tolerance(ref.numpy(), tf32=True)
    # ... and a real disagreement fails both
    assert 0.5 > gpu_check.logit_tolerance(ref.numpy(), tf32=True)


def test_the_script_sets_hf_hub_offline_before_the_hub_is_imported():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = (
        "import runpy, os, sys; runpy.run_path('scripts/gpu_check.py', run_name='imported'); "
        "from huggingface_hub import constants; "
        "print(os.environ['HF_HUB_OFFLINE'], constants.HF_HUB_OFFLINE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "True"]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    proc = run_script("scripts/gpu_check.py", "--dry-run", "--results", str(tmp_path))
    assert (tmp_path / "gpu_check_dry_run.csv").is_file(), proc.stderr[-3000:]
    with open(tmp_path / "gpu_check_dry_run.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [*COLUMNS, "machine"]
        table = list(reader)
    rows = {(r["check"], r["figure"]): r for r in table}
    missed = [r for r in table if r["status"] == "MISSED"]
    # the exit code follows the goals (the CPU loop ratio may miss on a busy machine)
    assert proc.returncode == (1 if missed else 0), (missed, proc.stderr[-3000:])
    assert f"RESULT gpu_check {len(table) - len(missed)}/{len(table)}" in proc.stdout

    value = {key: r["value"] for key, r in rows.items()}
    assert value[("machine", "gpu")] == "none (CPU dry run)"
    assert value[("machine", "torch")] == torch.__version__
    assert value[("machine", "onnxruntime")] == onnxruntime.__version__
    assert value[("machine", "HF_HUB_OFFLINE")] == "1"
    # the loop: interleaved reps, and the ratio is the one of the two medians
    loop = next(check for check, _ in rows if check.startswith("loop tiny"))
    assert value[(loop, "interleaved reps")] == "2"
    ratio = float(value[(loop, "vitft images/s")]) / float(value[(loop, "plain images/s")])
    assert float(value[(loop, "vitft / plain")]) == pytest.approx(ratio, rel=0.02)
    assert rows[(loop, "vitft / plain")]["goal"] == ">= 0.95"
    # the providers the sessions really had, in the ORT rows and benchmark.py's
    assert value[("ORT auto b32", "session providers")] == "CPUExecutionProvider"
    assert rows[("ORT auto b32", "max |logit diff| vs torch fp32")]["status"] == "ok"
    assert value[("benchmark.py device=cpu", "onnx providers")] == "CPUExecutionProvider"
    assert float(value[("resume=auto vs uninterrupted", "max |weight diff|")]) == 0.0
    assert rows[("total", "seconds")]["goal"] == "<= 480"
