"""trainer.max_time shorter than the recipe: the run trains the epochs that fit and still ends on
an annealed learning rate (vitft.training.time_budget), also after a resume."""

import itertools

import lightning as L
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vitft.training import time_budget
from vitft.training.time_budget import TimeBudget, stretched


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.lrs: list[float] = []

    def training_step(self, batch, _):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.layer(batch[0]).sum()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(40, 4))
        return torch.utils.data.DataLoader(data, batch_size=10)  # 4 steps an epoch

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        total = self.trainer.estimated_stepping_batches
        sched = get_cosine_with_min_lr_schedule_with_warmup(
            opt, num_warmup_steps=4, num_training_steps=total, min_lr_rate=0.01
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Clock:
    """time.monotonic for the callback: every call is 10 s after the last (an epoch takes 10 s)."""

    def __init__(self):
        self.ticks = itertools.count(step=10)

    def monotonic(self):
        return float(next(self.ticks))


def fit(tmp_path, monkeypatch, max_time, **kwargs):
    monkeypatch.setattr(time_budget, "time", Clock())
    module = Tiny()
    trainer = L.Trainer(
        max_epochs=20, max_time=max_time, callbacks=[TimeBudget(margin=0.1)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip
    trainer.fit(module)
    return trainer, module


def test_the_epochs_that_fit_end_annealed(tmp_path, monkeypatch):
    # 10 s an epoch and 60 s in all: 1 + floor(0.9 * ~60 / 10) = 6 epochs instead of 20
    trainer, module = fit(tmp_path, monkeypatch, {"seconds": 60})
    assert trainer.current_epoch == 6 and len(module.lrs) == 24
    after_warmup = module.lrs[4:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))
    assert module.lrs[-1] < 0.05  # near min_lr_rate, where a 20-epoch schedule would be near 0.9


def test_without_max_time_or_when_it_fits_nothing_changes(tmp_path, monkeypatch):
    trainer, module = fit(tmp_path, monkeypatch, None)
    assert trainer.current_epoch == 20 and len(module.lrs) == 80
    trainer, _ = fit(tmp_path, monkeypatch, {"hours": 1})
    assert trainer.current_epoch == 20


def test_the_stretch_is_continuous_and_reaches_the_old_end():
    fn = lambda step: 1 - step / 100  # noqa: E731
    g = stretched(fn, start=10, old_end=100, new_end=40)
    assert [g(s) for s in range(11)] == [fn(s) for s in range(11)]
    assert g(40) == fn(100) and g(25) == fn(55)


def test_a_resumed_run_applies_the_saved_plan(tmp_path, monkeypatch):
    trainer, _ = fit(tmp_path, monkeypatch, {"seconds": 60})
    saved = trainer.callbacks[0].state_dict()
    assert saved["plan"]["max_epochs"] == 6
    resumed = TimeBudget()
    resumed.load_state_dict(saved)
    module = Tiny()
    again = L.Trainer(max_epochs=20, callbacks=[resumed], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    again.fit(module)
    assert again.current_epoch == 6 and module.lrs[-1] < 0.05
