"""Ordered severity grades (task.ordinal) and the channels-last training layout."""

import pytest
import torch

from tests.conftest import make_cfg
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.training.factory import use_channels_last
from vitft.training.metrics import GradeError
from vitft.training.module import ordinal_targets


def test_ordinal_targets_favour_neighbouring_grades():
    kernel = ordinal_targets(4, alpha=2.0)
    assert torch.allclose(kernel.sum(1), torch.ones(4))
    for y in range(4):
        row = kernel[y]
        assert int(row.argmax()) == y
        # the further a grade is from the true one, the less target it gets, on both sides
        assert all(row[k] > row[k + 1] for k in range(y, 3))
        assert all(row[k] > row[k - 1] for k in range(1, y + 1))
    assert torch.allclose(kernel, kernel.flip(0).flip(1))  # symmetric in grade distance


def test_grade_error_is_the_mean_absolute_grade_distance():
    metric = GradeError()
    metric.update(torch.tensor([0, 3, 1, 2]), torch.tensor([0, 1, 1, 3]))
    assert float(metric.compute()) == pytest.approx((0 + 2 + 0 + 1) / 4)


def test_ordinal_training_reports_the_grade_error(tmp_path, tiny_data):
    metrics, objects = train(make_cfg(tmp_path / "run", tiny_data, "task.ordinal=true"))
    module = objects["module"]
    assert module.ordinal and module.label_smoothing == 0.0
    assert 0.0 <= metrics["test/mae_grade"] <= 2.0
    assert "val/mae_grade" in metrics
    plain, _ = train(make_cfg(tmp_path / "plain", tiny_data))
    assert "test/mae_grade" not in plain


def test_channels_last_auto_follows_the_backbone():
    from transformers import AutoConfig, AutoModelForImageClassification

    def tiny(model_type, **kw):
        cfg = AutoConfig.for_model(model_type, num_labels=2, **kw)
        return AutoModelForImageClassification.from_config(cfg)

    vit = tiny("vit", image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=32)  # fmt: skip
    conv = tiny("convnext", hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    assert not use_channels_last("auto", vit)
    assert use_channels_last("auto", conv)
    assert use_channels_last(True, vit) and not use_channels_last(False, conv)
    with pytest.raises(VitftError, match="channels_last='yes'"):
        use_channels_last("yes", conv)
