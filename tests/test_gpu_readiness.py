"""GPU and cluster code paths, checked on a CPU: CUDA-saved checkpoints, mocked CPU flags and
devices, SLURM environments, ONNX Runtime's GPU providers (mocked: the CPU session runs, the
session reports the providers a GPU machine would), the OOD fit after training, TorchScript's
sha256 check. (The GPU itself: scripts/gpu_check.py.)"""

from __future__ import annotations

import csv
import json
import os
import shutil
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.serialization
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from tests.conftest import CONF, TINY_VIT_CONFIG, make_cfg
from tests.test_export import export_cfg, make_model_dir
from vitft.apps.benchmark import benchmark, torch_runners
from vitft.apps.evaluate import evaluate
from vitft.apps.export import export
from vitft.apps.train import train
from vitft.core import hardware
from vitft.core.errors import VitftError
from vitft.core.files import sha256
from vitft.data.folder import scan_dataset
from vitft.deploy import ood as deploy_ood
from vitft.deploy.metadata import read_metadata, write_metadata
from vitft.deploy.predictor import Predictor
from vitft.deploy.runtime import load_exported
from vitft.modelio.hf import load_model, model_info, save_hf
from vitft.modelio.ood import load_ood
from vitft.models.classifier import build_model
from vitft.training.datamodule import FolderDataModule


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


TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_data):
    """An onnx and a torch_int8 export of a tiny model (``<root>/export/<format>``)."""
    model_dir = make_model_dir(tmp_path_factory.mktemp("gpu_exports"))
    export(export_cfg(model_dir, tiny_data, "formats=[onnx,torch_int8]", "parity.fail=false"))
    return model_dir.parent / "export"


class _GpuOrt:
    """onnxruntime as on a GPU machine: TensorRT and CUDA providers listed, and sessions that
    report ``started`` as their providers (they run on the CPU provider underneath)."""

    def __init__(self, monkeypatch, started: list[str]):
        import onnxruntime as ort

        self.requested: list[list[str]] = []
        real, fake = ort.InferenceSession, self

        class Session(real):
            def __init__(self, path, opts=None, providers=None, **kwargs):
                fake.requested.append([p[0] if isinstance(p, tuple) else p for p in providers])
                super().__init__(path, opts, providers=[CPU])

            def get_providers(self):
                return list(started)

        monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
        monkeypatch.setattr(ort, "InferenceSession", Session)


def test_device_cuda_on_an_export_runs_on_the_gpu_providers_everywhere(
    exports, tiny_data, tmp_path, monkeypatch
):
    fastapi = pytest.importorskip("fastapi.testclient")
    from vitft.deploy.serve import ServeSettings, create_app

    gpu = _GpuOrt(monkeypatch, started=[CUDA, CPU])
    onnx = exports / "onnx"
    predictor = Predictor.from_path(onnx, device="cuda")
    assert gpu.requested == [[TRT, CUDA, CPU]]  # best first; ORT places what TRT can't run
    assert predictor.backend.providers == [CUDA, CPU]
    assert len(predictor.predict_files(tiny_data / "test").predictions) == 9

    # serve: /metadata names the providers the session really has
    app = create_app(onnx, predictor, ServeSettings())
    assert fastapi.TestClient(app).get("/metadata").json()["providers"] == [CUDA, CPU]

    # eval: metrics.json's backend block
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[f"model_dir={onnx}", "device=cuda", "task=folder",
                       f"task.data_dir={tiny_data}", "data.num_workers=0", "explain.per_class=0"],
        )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    metrics = evaluate(cfg)
    assert metrics["backend"]["providers"] == [CUDA, CPU]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["backend"]["providers"] == [CUDA, CPU]


def test_device_cuda_never_falls_back_to_the_cpu_quietly(exports, monkeypatch):
    onnx = exports / "onnx"
    # the CPU onnxruntime (the dev/onnx extras): no GPU provider
    with pytest.raises(VitftError, match=r'pip install "vitft\[gpu\]"') as err:
        Predictor.from_path(onnx, device="cuda")
    assert "\n" not in str(err.value) and "CUDAExecutionProvider" in str(err.value)
    # auto on a machine without a GPU provider: the CPU, and it says so in every output
    assert Predictor.from_path(onnx, device="auto").backend.providers == [CPU]
    # onnxruntime-gpu installed, but its CUDA libraries fail to load: the session has the CPU
    _GpuOrt(monkeypatch, started=[CPU])
    with pytest.raises(VitftError, match="could not start") as err:
        Predictor.from_path(onnx, device="cuda")
    assert "\n" not in str(err.value)
    # runtimes that have no GPU path refuse cuda instead of running on the CPU
    with pytest.raises(VitftError, match="runs on the CPU"):
        Predictor.from_path(exports / "torch_int8", device="cuda")


def test_benchmark_csv_records_the_providers(exports, tiny_data, tmp_path):
    model_dir = exports.parent / "model"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("benchmark", overrides=[f"model_dir={model_dir}", "formats=[onnx]"])
    with open_dict(cfg):
        cfg.update(
            export_dir=str(exports), output_dir=str(tmp_path / "bench"), data_dir=str(tiny_data),
            rounds=1, iters=1, warmup=0, batch_size=2, threads=1,
        )  # fmt: skip
    benchmark(cfg)
    with open(tmp_path / "bench" / "benchmark.csv") as f:
        providers = {r["format"]: r["providers"] for r in csv.DictReader(f)}
    assert providers == {"pytorch": "pytorch cpu", "onnx": CPU}


def test_torch_int8_checks_the_recorded_sha256_before_loading(exports, tmp_path):
    folder = tmp_path / "torch_int8"
    shutil.copytree(exports / "torch_int8", folder)
    meta = read_metadata(folder)
    assert meta["file_sha256"] == sha256(folder / "model.pt")
    load_exported(folder)  # the file as exported loads

    with open(folder / "model.pt", "ab") as f:
        f.write(b"\0")  # any change: TorchScript is code, so it is not run
    with mock.patch.object(torch.jit, "load", side_effect=AssertionError("loaded")):
        with pytest.raises(VitftError, match="sha256") as err:
            load_exported(folder)
    assert "\n" not in str(err.value) and "model.pt" in str(err.value)

    shutil.copy(exports / "torch_int8" / "model.pt", folder / "model.pt")
    del meta["file_sha256"]  # an export that records no hash: re-export, never load unchecked
    write_metadata(folder, meta)
    with pytest.raises(VitftError, match="re-export"):
        load_exported(folder)


def test_serving_a_model_dir_on_cuda_uses_tf32_and_the_training_precision(tmp_path, monkeypatch):
    # A model trained in bf16-mixed on a GPU is served under bf16 autocast, with TF32 matmuls.
    model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, ["a", "b"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    # no GPU here: moving to "cuda" is a no-op, the autocast state is what is checked
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    tf32 = torch.backends.cuda.matmul.allow_tf32  # a flag of torch's C++ side: set back below
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _serve_on_mocked_cuda(tmp_path, model, processor)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _serve_on_mocked_cuda(tmp_path, model, processor) -> None:
    model_dir = save_hf(
        model, processor, tmp_path / "model", meta={"training_precision": "bf16-mixed"}
    )
    predictor = Predictor.from_path(model_dir, device="cuda", ood=False)
    seen = []
    predictor.backend.model.head.register_forward_hook(
        lambda *_: seen.append(
            (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        )
    )
    predictor.probabilities(torch.zeros(2, 3, 32, 32))
    assert seen == [(True, torch.bfloat16)]
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert predictor.backend.providers == ["pytorch cuda bf16-mixed"]
    # fp32-trained: TF32 only; and on the CPU nothing changes
    fp32_dir = save_hf(model, processor, tmp_path / "fp32", meta={"training_precision": "32-true"})
    seen.clear()
    fp32 = Predictor.from_path(fp32_dir, device="cuda", ood=False)
    fp32.backend.model.head.register_forward_hook(
        lambda *_: seen.append(torch.is_autocast_enabled("cuda"))
    )
    fp32.probabilities(torch.zeros(1, 3, 32, 32))
    assert seen == [False]
    assert Predictor.from_path(model_dir, device="cpu").backend.providers == ["pytorch cpu"]


def test_ood_fit_runs_on_the_training_device_with_the_loader_workers(tmp_path, tiny_data, caplog):
    """The scorer is fitted on the trainer's device, from the datamodule's loader (its workers),
    with a progress bar and its time in the log; the scorer equals one fitted image by image."""
    seen = {}
    real = deploy_ood.fit_scorer

    def spy(model, train_batches, val_batches, **kwargs):
        seen.update(kwargs, workers=train_batches.num_workers)
        return real(model, train_batches, val_batches, **kwargs)

    cfg = make_cfg(tmp_path / "run", tiny_data, "data.num_workers=1", "ood.views=flip")
    with mock.patch("vitft.apps.train.fit_scorer", spy), caplog.at_level("INFO"):
        _, objects = train(cfg)
    assert seen["device"] == objects["trainer"].strategy.root_device
    assert seen["workers"] == 1 and seen["progress"] is True
    assert any("ood: fitted in" in r.getMessage() for r in caplog.records)

    # the same scorer as features taken one file at a time by a Predictor
    model_dir = tmp_path / "run" / "model"
    stored = load_ood(model_dir)
    assert model_info(model_dir)["training_precision"] == "32-true"  # what serving follows
    model, processor = load_model(model_dir)
    predictor = deploy_ood.feature_predictor(model, processor)
    train_files = objects["datamodule"].splits.split("train")
    feats, names, _ = predictor.features_files([p for p, _ in train_files], views="flip")
    label = {str(p): y for p, y in train_files}
    ref = deploy_ood.OODScorer.fit(
        "mahalanobis", feats, torch.tensor([label[n] for n in names]), views="flip"
    )
    for name, tensor in ref.tensors.items():
        torch.testing.assert_close(stored.tensors[name], tensor, rtol=1e-5, atol=1e-5)
