"""GPU and cluster code paths, checked on a CPU: CUDA-saved checkpoints, mocked CPU flags and
devices, SLURM environments. (The GPU itself: scripts/gpu_check.py.)"""

from __future__ import annotations

import os
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.serialization

from tests.conftest import TINY_VIT_CONFIG, make_cfg
from vitft import hardware
from vitft.benchmark import torch_runners
from vitft.data.datamodule import FolderDataModule
from vitft.data.folder import scan_dataset
from vitft.errors import VitftError
from vitft.export import runtime
from vitft.models.classifier import build_model
from vitft.train import train


def _as_if_saved_on_cuda(src, dst) -> None:
    """Re-save a checkpoint with every tensor tagged cuda:0, as a GPU run writes it."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(ckpt, dst)


def test_eval_only_loads_a_gpu_checkpoint_on_a_cpu_host(tmp_path, tiny_data):
    _, first = train(make_cfg(tmp_path / "run", tiny_data))
    gpu_ckpt = tmp_path / "gpu.ckpt"
    _as_if_saved_on_cuda(tmp_path / "run" / "checkpoints" / "last.ckpt", gpu_ckpt)
    cfg = make_cfg(tmp_path / "eval", tiny_data, "train=false", f"ckpt_path={gpu_ckpt}")
    metrics, objects = train(cfg)
    trained = first["module"].model.state_dict()
    for name, tensor in objects["module"].model.state_dict().items():
        torch.testing.assert_close(tensor, trained[name])
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_benchmark_runners_keep_one_model_copy_per_dtype():
    # benchmark.py device=cuda times fp32 and fp16 side by side; on the CPU: fp32 and bf16.
    model, _ = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, ["a", "b"])
    model.eval()
    runners = torch_runners(model, "cpu", {"fp32": torch.float32, "bf16": torch.bfloat16})
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    low = runners["bf16"](x)  # built last: the fp32 runner's weights must still be fp32
    np.testing.assert_array_equal(runners["fp32"](x), expected)
    assert np.abs(low - expected).max() < 0.1
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),
        ({"avx2", "amx_tile", "amx_bf16"}, "bf16-mixed"),
        ({"avx2", "avx512f", "avx512_vnni"}, "32-true"),
    ],
    ids=["avx512_bf16", "amx", "no_native_bf16"],
)
def test_precision_auto_follows_the_cpu_flags(tmp_path, tiny_data, caplog, flags, expected):
    cfg = make_cfg(tmp_path / "run", tiny_data, "trainer.precision=auto", "debug=fdr")
    with mock.patch.object(hardware, "cpu_flags", return_value=flags), caplog.at_level("INFO"):
        _, objects = train(cfg)
    assert objects["trainer"].precision == expected
    assert f"trainer.precision=auto: {expected}" in caplog.text


def test_precision_auto_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.device_type("auto") == "cuda"
    assert hardware.auto_precision("cuda")[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4
    assert hardware.auto_precision("cuda")[0] == "32-true"
    # an explicit value is the user's; on CUDA fp32 matmuls may use TF32 either way
    with mock.patch.object(torch, "set_float32_matmul_precision") as tf32:
        assert hardware.resolve_precision("16-mixed", "gpu") == "16-mixed"
    tf32.assert_called_once_with("high")


def test_loader_workers_follow_the_cpus_and_slurm(monkeypatch, tiny_data):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert hardware.auto_workers(local_processes=4) == 7  # 32 CPUs shared by 4 GPU processes
    assert hardware.auto_workers(local_processes=1) == hardware.MAX_WORKERS
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # srun: one task (and its CPUs) per GPU
    assert hardware.auto_workers(local_processes=4) == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert hardware.loader_options("auto", "auto", True)["num_workers"] == 0  # one CPU: none

    # pinning follows the trainer's device; explicit values are kept
    splits = scan_dataset(tiny_data, None, 0.0, 0.0, 0)
    _, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, splits.classes)
    dm = FolderDataModule(splits, processor, num_workers="auto", pin_memory="auto")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert dm.loader_kwargs == {"num_workers": 3, "pin_memory": False, "persistent_workers": False}
    gpu = torch.device("cuda", 0)
    dm.trainer = SimpleNamespace(num_devices=2, strategy=SimpleNamespace(root_device=gpu))
    assert dm.loader_kwargs["pin_memory"] is True
    explicit = FolderDataModule(splits, processor, pin_memory=False)
    assert explicit.loader_kwargs["pin_memory"] is False
    with pytest.raises(VitftError, match="data.num_workers"):
        FolderDataModule(splits, processor, num_workers="many")


def test_ort_providers_follow_the_device(caplog):
    trt, cuda, cpu = runtime.GPU_PROVIDERS + (runtime.CPU_PROVIDER,)
    everything = [trt, cuda, cpu]
    assert runtime.ort_providers("cpu", everything) == [cpu]
    assert runtime.ort_providers("cuda", everything) == [trt, cuda, cpu]
    assert runtime.ort_providers("cuda", [cuda, cpu]) == [cuda, cpu]
    assert runtime.ort_providers("auto", [cpu]) == [cpu]
    assert "no GPU provider" not in caplog.text  # auto on a CPU machine: no warning
    with caplog.at_level("WARNING"):
        assert runtime.ort_providers("cuda", [cpu]) == [cpu]
    assert "no GPU provider" in caplog.text and "vitft[gpu]" in caplog.text
    with pytest.raises(VitftError, match="device='tpu'"):
        runtime.ort_providers("tpu", everything)
