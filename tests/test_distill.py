"""Distillation and lower input resolution (budget ~30 s)."""

from __future__ import annotations

import csv

import torch

from tests.conftest import make_cfg
from tests.test_export import TINY, export_cfg, make_model_dir
from vitft.apps.export import export
from vitft.apps.train import train
from vitft.modelio.hf import load_model
from vitft.models.classifier import build_model
from vitft.training.distill import Teacher, kd_loss


def test_kd_loss_is_zero_for_identical_logits_and_scaled_by_t2():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    assert kd_loss(s, s, 4.0).abs() < 1e-6
    t = torch.tensor([[0.0, 2.0, -1.0]])
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s / 2, -1), torch.softmax(t / 2, -1), reduction="batchmean"
    )
    torch.testing.assert_close(kd_loss(s, t, 2.0), 4 * kl)


def test_distilled_student_trains_and_exports(tmp_path, tiny_data):
    # The teacher (32 px, 2 layers) is frozen; the student is vit_tiny (64 px, trained at 48).
    teacher_dir = make_model_dir(tmp_path / "teacher", TINY)
    teacher, _ = load_model(teacher_dir)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = make_cfg(
        tmp_path / "student",
        tiny_data,
        "debug=limit",
        f"distill.teacher={teacher_dir}",
        "distill.weight=0.7",
        "model.image_size=48",
    )
    metrics, objects = train(cfg)
    module = objects["module"]
    assert isinstance(module.teacher, Teacher) and not module.teacher.model.training
    assert not any(k.startswith("teacher") for k in module.state_dict())
    for k, v in module.teacher.model.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), k  # frozen
    rows = list(csv.DictReader(open(tmp_path / "student" / "metrics.csv")))
    assert any(r.get("train/kd_loss") for r in rows)

    student_dir = tmp_path / "student" / "model"
    student, processor = load_model(student_dir)
    assert student.config.image_size == 48 and processor.size["height"] == 48
    results = export(export_cfg(student_dir, tiny_data, "formats=[onnx]"))
    assert results["onnx"]["agreement"] == 1.0


def test_lower_resolution_interpolates_position_embeddings():
    full, _ = build_model({"config": TINY}, {"name": "linear"}, ["a", "b"])
    small, processor = build_model(
        {"config": TINY, "image_size": 16}, {"name": "linear"}, ["a", "b"]
    )
    assert small.backbone.vit.embeddings.position_embeddings.shape == (1, 1 + 4, 32)
    assert processor.size == {"height": 16, "width": 16}
    with torch.no_grad():
        assert small(torch.randn(2, 3, 16, 16)).shape == (2, 2)
    assert full.backbone.vit.embeddings.position_embeddings.shape == (1, 1 + 16, 32)
