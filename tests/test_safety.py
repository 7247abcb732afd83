"""Clear errors for what users get wrong, safe loading, and checkpoints that survive kills."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from tests.conftest import ROOT, make_cfg
from vitft.apps.train import resolve_ckpt_path, train
from vitft.core.errors import VitftError
from vitft.modelio.checkpoint import read_checkpoint
from vitft.modelio.hf import load_model
from vitft.models.backbone import load_backbone
from vitft.training.checkpoints import AtomicCheckpointIO, newest_checkpoint


class Payload:
    """A pickle that runs code when loaded: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_for_other_classes_is_refused_before_training(tmp_path, tiny_data):
    for labels, match in ((["a", "b"], "2 classes"), (["red", "green", "blue"], "classes")):
        ckpt = tmp_path / "other.ckpt"
        torch.save({"global_step": 3, "vitft": {"labels": labels}}, ckpt)
        with pytest.raises(VitftError, match=match) as err:
            train(make_cfg(tmp_path / "run", tiny_data, f"ckpt_path={ckpt}"))
        assert "['blue', 'green', 'red']" in str(err.value) and "task.data_dir" in str(err.value)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_image_size_the_model_cannot_take(tmp_path, tiny_data):
    with pytest.raises(VitftError, match=r"image_size=60 .*patch_size=8.*56 or 64"):
        train(make_cfg(tmp_path / "run", tiny_data, "model.config.image_size=60"))
    with pytest.raises(VitftError, match="image_size=4"):
        load_backbone({"config": {"model_type": "vit", "image_size": 4, "patch_size": 8}}, ["a"])


def test_unknown_option_and_group_value_are_one_message(tmp_path):
    # Hydra rejects both before anything runs; the CLI prints its one-line reason, no traceback.
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/vit_huge'") as e:
        make_cfg(tmp_path, None, "model=vit_huge")
    assert "vit_tiny" in str(e.value)  # and lists the options
    proc = subprocess.run(
        [sys.executable, "train.py", "optimiser.lr=1", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Could not override 'optimiser.lr'" in out, out[-2000:]
    assert "Traceback" not in out


def test_malicious_pickle_checkpoint_is_refused_and_never_runs(tmp_path, tiny_data):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save(
        {"global_step": 1, "vitft": {"labels": ["blue", "green", "red"]}, "x": Payload(marker)},
        ckpt,
    )
    with pytest.raises(VitftError, match="refused to load"):
        read_checkpoint(ckpt)
    with pytest.raises(VitftError, match="refused to load"):
        train(make_cfg(tmp_path / "run", tiny_data, f"ckpt_path={ckpt}"))
    assert not marker.exists()


def test_malicious_model_dir_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    model, _ = load_backbone(
        {
            "config": {
                "model_type": "vit",
                "image_size": 16,
                "patch_size": 8,
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 8,
            }
        },
        ["a", "b"],
    )
    evil = tmp_path / "evil_dir"
    model.config.save_pretrained(evil)
    torch.save({"state": Payload(marker)}, evil / "pytorch_model.bin")  # no safetensors
    with pytest.raises(Exception) as err:
        load_model(evil)
    assert "weights_only" in str(err.value) or "Unpickl" in str(err.value), err.value
    with pytest.raises(VitftError, match="refused to load model.pretrained"):
        load_backbone({"pretrained": str(evil)}, ["a", "b"])
    # Remote code in the dir (auto_map) is never imported: trust_remote_code stays off.
    (evil / "pytorch_model.bin").unlink()
    (evil / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = json.loads((evil / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageClassification": "evil_model.Evil"}
    (evil / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception):  # noqa: B017  (any refusal will do; the marker is the point)
        load_model(evil)
    assert not marker.exists()


def test_checkpoint_write_is_atomic(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt  # dies halfway through writing the new checkpoint

    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(10_000), "z": Boom()}, path)
    assert read_checkpoint(path)["global_step"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temp file left behind


def test_resume_auto_picks_the_newest_complete_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, None, "resume=auto")
    assert resolve_ckpt_path(cfg, tmp_path) is None  # first run: no error
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 10}, tmp_path / "checkpoints" / "last.ckpt")
    io.save_checkpoint({"global_step": 14}, tmp_path / "hpc_ckpt_1.ckpt")
    io.save_checkpoint({"global_step": 12}, tmp_path / "checkpoints" / "step.ckpt")
    assert newest_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    data = (tmp_path / "hpc_ckpt_1.ckpt").read_bytes()
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(data[: len(data) // 2])  # truncated elsewhere
    assert resolve_ckpt_path(cfg, tmp_path) == str(tmp_path / "checkpoints" / "step.ckpt")
