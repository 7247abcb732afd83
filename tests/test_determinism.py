"""Training's random draws are functions of (seed, position): the same batches whatever the
number of loader workers, and the same after a restart mid-epoch (fast, in-process checks; the
end-to-end proof is tests/test_kill_resume.py)."""

import torch
from transformers import ViTImageProcessor

from tests.conftest import make_dataset
from vitft.data.folder import scan_dataset
from vitft.training.datamodule import FolderDataModule
from vitft.training.seeding import StepSeed


def _batches(data, workers: int, epoch: int, resume: list[int] | None = None) -> list:
    splits = scan_dataset(data, None, 0.15, 0.15, 0)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    dm = FolderDataModule(
        splits, processor, augment="industrial", batch_size=4, num_workers=workers, seed=3
    )
    if resume:
        dm.load_state_dict({"train_position": resume})
    loader = dm.train_dataloader()
    if not resume:
        loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_augmented_batches_do_not_depend_on_workers_or_restarts(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 1, "test": 1})
    one = _batches(data, 0, epoch=1)
    assert _equal(one, _batches(data, 2, epoch=1))  # 2 workers: the same augmented pixels
    assert not _equal(one, _batches(data, 0, epoch=0))  # another epoch: other draws
    # A restart after 1 of epoch 1's 3 batches continues with exactly its other 2.
    assert _equal(one[1:], _batches(data, 2, epoch=1, resume=[1, 1]))


def test_step_seed_makes_dropout_a_function_of_the_batch_number():
    class Progress:
        def __init__(self, n):
            self.fit_loop = type("L", (), {})()
            self.fit_loop.epoch_loop = type("E", (), {})()
            tracker = type("T", (), {"ready": n})()
            self.fit_loop.epoch_loop.batch_progress = type("P", (), {"total": tracker})()
            self.global_rank = 0

    seed, drop = StepSeed(7), torch.nn.Dropout(0.5)
    masks = []
    for n in (1, 2, 1):
        torch.rand(100)  # whatever ran before (a loader, validation) does not matter
        seed.on_train_batch_start(Progress(n), None, None, 0)
        masks.append(drop(torch.ones(64)))
    assert torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[1])
