"""DDP with two CPU processes (gloo): trains, syncs metrics, writes once, resumes."""

import csv
import json
import re

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
