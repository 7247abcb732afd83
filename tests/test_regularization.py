"""Regularisation options: drop path, MixUp/CutMix, label smoothing, EMA."""

import pytest
import torch

from tests.conftest import make_cfg
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.models.backbone import load_backbone


def test_drop_path_reaches_the_model_where_supported():
    model, _ = load_backbone(
        {
            "config": {
                "model_type": "convnext",
                "image_size": 32,
                "hidden_sizes": [8, 16],
                "depths": [1, 1],
                "num_stages": 2,
            },
            "drop_path_rate": 0.2,
        },
        ["a", "b"],
    )
    assert model.config.drop_path_rate == 0.2
    rates = [m.drop_prob for m in model.modules() if type(m).__name__.endswith("DropPath")]
    assert rates and max(rates) > 0


def test_drop_path_on_vit_is_a_clear_error():
    with pytest.raises(VitftError, match="drop_path_rate"):
        load_backbone(
            {
                "config": {
                    "model_type": "vit",
                    "image_size": 32,
                    "patch_size": 8,
                    "hidden_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                },
                "drop_path_rate": 0.1,
            },
            ["a", "b"],
        )


def test_mixup_cutmix_label_smoothing_and_ema_train(tmp_path, tiny_data):
    cfg = make_cfg(
        tmp_path / "run",
        tiny_data,
        "loss.mixup_alpha=0.2",
        "loss.cutmix_alpha=1.0",
        "loss.label_smoothing=0.1",
        "ema_decay=0.9",
        "trainer.max_epochs=2",
    )
    metrics, objects = train(cfg)
    module, trainer = objects["module"], objects["trainer"]
    assert module.mix is not None and module.criterion.label_smoothing == 0.1
    ema = [c for c in trainer.callbacks if type(c).__name__ == "EMAWeightAveraging"]
    assert ema
    # the best checkpoint holds the EMA weights, and those are what was exported
    best = torch.load(objects["summary"]["best_checkpoint"], weights_only=True)
    assert "current_model_state" in best  # Lightning keeps the raw weights beside the EMA ones
    assert not all(
        torch.equal(best["state_dict"][k], best["current_model_state"][k])
        for k in best["state_dict"]
        if k.startswith("model.")
    )
    assert 0.0 <= metrics["val/acc"] <= 1.0


def test_ema_decay_warms_up_so_a_short_run_is_not_its_initial_weights():
    from vitft.training.factory import warmup_ema

    avg = warmup_ema(0.998)
    ema, current = torch.zeros(3), torch.ones(3)
    # the first update takes 90% of the current weights, not 0.2%
    assert torch.allclose(avg(ema, current, torch.tensor(0)), torch.full((3,), 0.9))
    for n in range(240):
        ema = avg(ema, current, torch.tensor(n))
    assert float(ema[0]) > 0.99  # a fixed 0.998 would leave 1 - 0.998**240 = 0.38
    # late in a long run the decay is the one asked for
    late = avg(torch.zeros(1), torch.ones(1), torch.tensor(10**6))
    assert float(late) == pytest.approx(1 - 0.998, rel=1e-4)
