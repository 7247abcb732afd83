"""Each conf group's ``_target_`` names what builds it: point it elsewhere and something else is
built. A config saved before the groups carried one (old run dirs) builds with the defaults."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from torch import nn

from tests.conftest import CLASSES, CONF, make_cfg
from vitft.apps.evaluate import evaluate
from vitft.apps.train import train
from vitft.training.factory import BUILDERS, build, build_classifier

HERE = __name__


class ConstantHead(nn.Module):
    """A head that answers ``value`` for every class (a stand-in for a user's own head)."""

    def __init__(self, in_features: int, num_classes: int, value: float):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 0 + self.value


def constant_head(cfg, in_features: int, num_classes: int) -> nn.Module:
    return ConstantHead(in_features, num_classes, float(cfg.get("value", 0.0)))


def echo(cfg, *args, **kwargs):
    return "echo", OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else cfg, args, kwargs


class CountingLoss(nn.CrossEntropyLoss):
    pass


def counting_loss(cfg, weight, multilabel: bool, ordinal: bool = False) -> nn.Module:
    return CountingLoss(weight=weight)


def test_a_head_target_from_the_command_line_builds_that_head(tmp_path):
    cfg = make_cfg(tmp_path, None, f"head._target_={HERE}.constant_head", "+head.value=3.0")
    model, _ = build_classifier(cfg.model, cfg.head, list(CLASSES))
    assert isinstance(model.head, ConstantHead)
    assert torch.all(model(torch.randn(2, 3, 64, 64)) == 3.0)
    # what is saved with the model (config.json, checkpoints) is settings, not Hydra's keys
    assert model.head_cfg == {"name": "linear", "dropout": 0.0, "value": 3.0}


@pytest.mark.parametrize("group", sorted(set(BUILDERS) - {"model", "head"}))
def test_every_group_calls_the_builder_its_target_names(tmp_path, group):
    cfg = make_cfg(tmp_path, None, f"{group}._target_={HERE}.echo")
    tag, settings, args, kwargs = build(cfg[group], group, 1, two=2)
    assert (tag, args, kwargs) == ("echo", (1,), {"two": 2})
    assert "_target_" not in settings and settings  # the group's own keys, Hydra's left out


def test_a_target_that_does_not_import_is_named_in_the_error(tmp_path):
    from vitft.core.errors import VitftError

    cfg = make_cfg(tmp_path, None, "freeze._target_=vitft.training.freeze.no_such_builder")
    with pytest.raises(VitftError, match="freeze._target_=.*no_such_builder"):
        build(cfg.freeze, "freeze", None)


def test_a_loss_target_reaches_the_trained_module(tmp_path, tiny_data):
    overrides = [f"loss._target_={HERE}.counting_loss", "callbacks.progress_bar=null"]
    cfg = make_cfg(tmp_path / "run", tiny_data, *overrides, "ood.method=null", "test=false")
    _, objects = train(cfg)
    assert isinstance(objects["module"].criterion, CountingLoss)
    assert "_target_" not in objects["module"].hparams.loss  # checkpoints keep settings only


def _without_targets(cfg) -> None:
    """The config as a run dir saved it before the groups carried a ``_target_``."""
    with open_dict(cfg):
        for group in BUILDERS:
            cfg[group].pop("_target_")


def test_an_old_config_without_targets_trains_evaluates_and_resumes(tmp_path, tiny_data):
    out = tmp_path / "run"
    cfg = make_cfg(out, tiny_data, "callbacks.progress_bar=null", "test=false")
    _without_targets(cfg)
    train(cfg)
    saved = OmegaConf.load(out / "config.yaml")
    assert not any("_target_" in saved[g] for g in BUILDERS)
    model, _ = build_classifier(saved.model, saved.head, list(CLASSES))  # the old run's model
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        eval_cfg = compose(
            "eval",
            overrides=[
                f"model_dir={out / 'model'}",
                "task=folder",
                f"task.data_dir={tiny_data}",
                "data.num_workers=0",
                "explain.per_class=0",
            ],
        )
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    metrics = evaluate(eval_cfg)
    assert metrics, json.dumps(metrics, default=str)

    again = make_cfg(out, tiny_data, "callbacks.progress_bar=null", "test=false", "resume=auto")
    _without_targets(again)
    with open_dict(again):
        again.trainer.max_epochs = 2
    _, objects = train(again)
    assert objects["summary"]["resumed_from"].endswith("last.ckpt")
    assert objects["summary"]["epochs"] == 2
