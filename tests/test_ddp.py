"""DDP with two CPU processes (gloo): trains, syncs metrics, writes once, resumes."""

import csv
import json
import re

import pytest
import torch

from tests.conftest import make_dataset
from tests.test_cli import run_script


def _rank_metrics(log_text: str) -> dict[int, dict]:
    found = re.findall(r"rank (\d) of 2: (\{.*\})", log_text)
    return {int(rank): json.loads(values) for rank, values in found}


def test_ddp_two_cpu_processes_train_sync_and_resume(tmp_path):
    data = make_dataset(tmp_path / "data")  # 24 train, 9 val, 9 test images
    run = tmp_path / "run"
    args = [
        "train.py",
        "model=vit_tiny",
        "freeze=none",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.num_workers=0",
        "data.batch_size=4",
        "task=folder",
        f"task.data_dir={data}",
        "logger=csv",
        "run_name=ddp",
        "resume=auto",
        f"hydra.run.dir={run}",
    ]
    first = run_script(*args, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    # One set of outputs, from rank 0; rank 1 logs to its own Hydra job log.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    ranks = _rank_metrics((run / "train.log").read_text())
    ranks.update(_rank_metrics((run / "train_ddp_process_1.log").read_text()))
    assert set(ranks) == {0, 1}
    assert ranks[0] == ranks[1]  # metrics synchronised: the same numbers on both ranks
    summary = json.loads((run / "summary.json").read_text())
    # Final val/test: every image counted exactly once across the two ranks (no padding).
    assert sum(map(sum, summary["confusion_matrix"]["test"])) == 9
    assert sum(map(sum, summary["confusion_matrix"]["val"])) == 9
    # 24 train images / 2 ranks / batch 4 = 3 optimizer steps per epoch.
    assert summary["global_step"] == 3

    second = run_script(*args, "trainer.max_epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "resume=auto: continuing from" in log
    ranks = _rank_metrics(log.split("resume=auto: continuing from")[-1])
    rank1_log = (run / "train_ddp_process_1.log").read_text()
    ranks.update(_rank_metrics(rank1_log.split("continuing")[-1]))
    assert ranks[0] == ranks[1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["epochs"] == 2
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 6
    with open(run / "metrics.csv") as f:
        rows = [(row["epoch"], row["step"]) for row in csv.DictReader(f) if row.get("val/acc")]
    assert {"0", "1"} <= {epoch for epoch, _ in rows}  # epoch 0's row kept, epoch 1 appended
    assert len(rows) == len(set(rows))  # written by rank 0 only: no duplicated rows


def _ddp_train(tmp_path, *overrides: str):
    """train.py under 2-process gloo DDP on 3 x 4 train images; returns each rank's weights."""
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 1, "test": 1})
    weights = tmp_path / "weights"
    proc = run_script(
        "train.py",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.num_workers=0",
        "data.batch_size=2",
        "task=folder",
        f"task.data_dir={data}",
        "logger=none",
        "callbacks=none",
        "+trainer.enable_progress_bar=false",
        "test=false",
        "+callbacks.rank_weights._target_=tests.ddp_helpers.RankWeights",
        f"+callbacks.rank_weights.path={weights}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((weights / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_dinov2_trains_every_parameter_it_uses(tmp_path):
    # DINOv2's mask token is only used for masked-image pretraining: DDP refuses a trainable
    # parameter that gets no gradient, so it stays frozen under every strategy.
    ranks = _ddp_train(tmp_path, "model=dinov2_tiny", "freeze=none", "trainer.max_epochs=1")
    assert ranks[0] == ranks[1]
    assert "backbone.dinov2.embeddings.mask_token" not in ranks[0]["trainable"]
    assert "backbone.dinov2.embeddings.patch_embeddings.projection.weight" in ranks[0]["trainable"]


@pytest.mark.parametrize(
    "freeze",
    [
        ["freeze=freeze_unfreeze", "freeze.unfreeze_epoch=1"],
        ["freeze=unfreeze_milestones", "freeze.milestones=[1,1]", "freeze.n=1"],
    ],
    ids=["freeze_unfreeze", "unfreeze_milestones"],
)
def test_ddp_staged_unfreezing_keeps_the_ranks_identical(tmp_path, freeze):
    # Parameters unfrozen after DDP wrapped the model must be all-reduced like the others: after
    # the unfreeze epoch both ranks (which saw different images) hold the same weights.
    ranks = _ddp_train(tmp_path, "model=vit_tiny", *freeze, "trainer.max_epochs=2")
    assert "backbone.vit.embeddings.patch_embeddings.projection.weight" in ranks[0]["trainable"]
    assert ranks[0] == ranks[1]


def test_loader_workers_start_by_forkserver_inside_a_process_group(tmp_path):
    """Forked workers of a rank whose gloo threads hold a lock can hang; inside a process group
    every vitft DataLoader asks for forkserver."""
    import torch.distributed as dist

    from vitft.core.hardware import worker_start

    assert worker_start(2) == {}
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert worker_start(2) == {"multiprocessing_context": "forkserver"}
        assert worker_start(0) == {}
    finally:
        dist.destroy_process_group()
