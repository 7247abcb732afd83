"""trainer.max_time shorter than the recipe: the run trains the epochs that fit and still ends on
an annealed learning rate (vitft.training.time_budget), also after a resume."""

import lightning as L
import torch
from lightning.pytorch.callbacks import timer as timer_module
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vitft.training import time_budget
from vitft.training.time_budget import TimeBudget, schedule_step


class Clock:
    """time.monotonic for the callback and Lightning's Timer: each training step takes a
    quarter of ``epoch_s`` (an epoch is 4 steps), and ``slow_s`` from epoch ``slow_from`` on."""

    def __init__(self, epoch_s=10.0, slow_from=None, slow_s=None):
        self.t, self.epoch_s, self.slow_from, self.slow_s = 0.0, epoch_s, slow_from, slow_s

    def monotonic(self):
        return self.t

    def step(self, epoch):
        slow = self.slow_from is not None and epoch >= self.slow_from
        self.t += (self.slow_s if slow else self.epoch_s) / 4


class Tiny(L.LightningModule):
    def __init__(self, clock):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.lrs: list[float] = []
        self.clock = clock

    def training_step(self, batch, _):
        self.clock.step(self.current_epoch)
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


def fit(tmp_path, monkeypatch, max_time, clock=None, callback=None, **kwargs):
    clock = clock or Clock()
    monkeypatch.setattr(time_budget, "time", clock)
    monkeypatch.setattr(timer_module, "time", clock)
    module = Tiny(clock)
    trainer = L.Trainer(
        max_epochs=20, max_time=max_time, callbacks=[callback or TimeBudget(margin=0.1)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip
    trainer.fit(module)
    return trainer, module


def test_the_epochs_that_fit_end_annealed(tmp_path, monkeypatch):
    # 10 s an epoch and 60 s in all: after the first, 1 + floor(0.9 * 50 / 10) = 5 epochs of 20
    trainer, module = fit(tmp_path, monkeypatch, {"seconds": 60})
    assert trainer.current_epoch == 5 and len(module.lrs) == 20
    after_warmup = module.lrs[4:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert module.lrs[-1] < 0.05  # near min_lr_rate, where a 20-epoch schedule would be near 0.9


def test_without_max_time_or_when_it_fits_nothing_changes(tmp_path, monkeypatch):
    trainer, module = fit(tmp_path, monkeypatch, None)
    assert trainer.current_epoch == 20 and len(module.lrs) == 80
    trainer, _ = fit(tmp_path, monkeypatch, {"hours": 1})
    assert trainer.current_epoch == 20
    # off (the shipped default, conf/callbacks/default.yaml): Lightning's cut-off at max_time
    trainer, _ = fit(tmp_path, monkeypatch, {"seconds": 60}, callback=TimeBudget(enabled=False))
    assert trainer.current_epoch == 6  # stopped by the Timer inside its 7th epoch


def test_a_slower_machine_mid_run_gets_a_shorter_plan_that_still_anneals(tmp_path, monkeypatch):
    # 10 s epochs, then 20 s ones from the 3rd: the plan of 10 epochs shrinks as they slow down
    trainer, module = fit(tmp_path, monkeypatch, {"seconds": 120}, Clock(10, 2, 20))
    assert 5 <= trainer.current_epoch < 10
    assert module.lrs[-1] < 0.05


def test_the_schedule_map_is_continuous_and_reaches_the_planned_end():
    knots = [[10, 10], [40, 100]]
    assert [schedule_step(s, knots) for s in range(11)] == list(range(11))
    assert schedule_step(40, knots) == 100 and schedule_step(25, knots) == 55
    knots = [[10, 10], [20, 40], [30, 100]]  # planned again at step 20
    assert schedule_step(20, knots) == 40 and schedule_step(30, knots) == 100


def test_a_resumed_run_applies_the_saved_plan(tmp_path, monkeypatch):
    trainer, _ = fit(tmp_path, monkeypatch, {"seconds": 60})
    saved = trainer.callbacks[0].state_dict()
    assert saved["max_epochs"] == 5 and saved["planned"] == 20
    resumed = TimeBudget()
    resumed.load_state_dict(saved)
    again, module = fit(tmp_path, monkeypatch, None, callback=resumed)
    assert again.current_epoch == 5 and module.lrs[-1] < 0.05
