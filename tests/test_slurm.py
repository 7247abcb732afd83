"""SLURM preemption against a real scheduler: ``scripts/slurm/train.sbatch`` on a one-node cluster
(Debian's munged, slurmctld and slurmd, started on localhost by scripts/slurm/local_cluster.py).

The job hits its time limit: SLURM sends SIGUSR1, Lightning writes hpc_ckpt_1.ckpt and requeues
the job, SLURM starts the same script again (SLURM_RESTART_COUNT=1), resume=auto continues from
the checkpoint and the run finishes with its HF export. Needs root (apt-get installs slurm-wlm
and munge when slurmctld is missing, about 15 s); skipped only where that is impossible.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, make_dataset
from vitft.checkpoints import newest_checkpoint
from vitft.export.hf import load_model

pytestmark = pytest.mark.slow

# Training stops after 120 s of fit time (Lightning's Timer, kept in checkpoints), whatever the
# machine's speed. The first allocation (--time=2) is signalled 85-115 s after it starts (SLURM
# checks limits every 30 s and signals up to 30 s early), minus ~10-40 s of start-up, so it can't
# finish, and the second allocation has the rest to do.
MAX_TIME_S = 120
# The test cluster has no GPUs: clear the script's GPU request (command-line options win).
SBATCH = ["--time=2", "--signal=USR1@5", "--cpus-per-task=2", "--gpus-per-node=0"]
RUN_NAME = "slurm-test"


def _local_cluster():
    path = ROOT / "scripts" / "slurm" / "local_cluster.py"
    spec = importlib.util.spec_from_file_location("vitft_local_cluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cluster():
    lc = _local_cluster()
    try:
        took = lc.install()
    except lc.Unavailable as err:  # not root or no apt-get: nothing to install SLURM with
        pytest.skip(f"no SLURM here: {err}")
    if took is not None:
        print(f"\napt-get install {' '.join(lc.PACKAGES)}: {took:.1f} s")
    # A short folder: munged's socket path must stay under 108 characters.
    folder = Path(tempfile.mkdtemp(prefix="vitft-slurm-"))
    # Requeue delay (cred_expire) 5 s instead of 120 s, KillWait 5 s instead of 30 s.
    cluster = lc.LocalCluster(folder, cpus=2, requeue_delay_s=5, kill_wait_s=5)
    try:
        with cluster:
            yield cluster
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _job(cluster, job_id: str) -> dict[str, str]:
    out = cluster.run("scontrol", "show", "job", "-o", job_id, check=False)
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _timer_s(ckpt: dict) -> float:
    return float(ckpt["callbacks"]["Timer"]["time_elapsed"]["train"])


def test_time_limit_signal_checkpoint_requeue_resume_export(cluster, tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 8, "val": 3, "test": 2})
    log_file = tmp_path / "job.out"
    run = tmp_path / "outputs" / RUN_NAME
    overrides = [
        "model=vit_tiny",
        "task=folder",
        f"task.data_dir={data}",
        "freeze=none",
        "trainer=cpu",
        "trainer.max_epochs=100000",
        f"+trainer.max_time=00:00:{MAX_TIME_S // 60:02d}:{MAX_TIME_S % 60:02d}",
        "+trainer.num_sanity_val_steps=0",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.augment=none",
        "logger=csv",
        "seed=0",
        "~callbacks.progress_bar",
        "~callbacks.early_stopping",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    env = {**cluster.env, "PYTHON": sys.executable, "VITFT_DIR": str(ROOT), "RUN_NAME": RUN_NAME}
    submit = subprocess.run(
        ["sbatch", "--parsable", *SBATCH, f"--output={log_file}",
         str(ROOT / "scripts" / "slurm" / "train.sbatch"), *overrides],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job_id = submit.stdout.strip().split(";")[0]
    submitted = time.time()

    # Watch the job: at the requeue, note the checkpoints the first allocation left, and give
    # the second allocation a longer limit so that one requeue is enough (it is the same job).
    at_requeue: dict | None = None
    extended = False
    state: dict[str, str] = {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        state = _job(cluster, job_id)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        if int(state.get("Restarts", 0)) >= 1 and not extended:
            cluster.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=10")
            extended = True
        # PENDING again: the first allocation's processes are gone, its checkpoints final
        if at_requeue is None and extended and state.get("JobState") == "PENDING":
            newest = newest_checkpoint(run)
            at_requeue = {
                "hpc": [(p.name, p.stat().st_mtime, _ckpt(p)["global_step"])
                        for p in sorted(run.glob("hpc_ckpt_*.ckpt"))],
                "newest": newest,
                "newest_step": _ckpt(newest)["global_step"] if newest else None,
                "newest_fit_s": _timer_s(_ckpt(newest)) if newest else None,
            }  # fmt: skip
        time.sleep(0.5)
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    why = f"job {job_id}: {state}\n--- job output (tail)\n{text[-6000:]}\n{cluster.logs()}"
    assert state.get("JobState") == "COMPLETED", why

    # 1. signalled at the time limit: Lightning's SLURM handler saved hpc_ckpt_1 and requeued
    assert "Handling auto-requeue signal: 10" in text, why  # 10 = SIGUSR1
    assert f"Requeued SLURM job: {job_id}" in text, why
    assert at_requeue and at_requeue["hpc"], f"no hpc_ckpt_*.ckpt at the requeue: {why}"
    hpc_name, hpc_mtime, hpc_step = at_requeue["hpc"][0]
    assert hpc_name == "hpc_ckpt_1.ckpt" and hpc_step > 0, at_requeue

    # 2. requeued: the same script ran again with SLURM_RESTART_COUNT=1, and only once
    starts = [
        (int(m[1]), float(m[2]))
        for m in re.finditer(r"vitft: job \d+ restart (\d+) on \S+ at (\d+)", text)
    ]
    assert [r for r, _ in starts] == [0, 1], why
    assert state.get("Restarts") == "1", why

    # 3. resumed: the second allocation continued from the newest checkpoint the first one left
    #    (hpc_ckpt_1.ckpt, or last.ckpt if an epoch ended before SIGTERM stopped it), at its
    #    global step, with the fit time of the first allocation carried over
    second = text[text.index("restart 1 on") :]
    newest = at_requeue["newest"]
    assert newest is not None and f"resume=auto: continuing from {newest}" in second, why
    assert f"Restored all states from the checkpoint at {newest}" in second, why
    assert at_requeue["newest_step"] >= hpc_step > 0
    last = _ckpt(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] > at_requeue["newest_step"], (last["global_step"], at_requeue)
    # 3 batches an epoch: no steps lost or run twice (max_time may stop inside the last epoch)
    assert 3 * last["epoch"] < last["global_step"] <= 3 * (last["epoch"] + 1)
    assert at_requeue["newest_fit_s"] > 0 and _timer_s(last) >= MAX_TIME_S
    with open(run / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row["step"]]
    assert min(steps) <= hpc_step < last["global_step"] <= max(steps)  # first run's rows kept

    # 4. finished: HF export written, and from the best checkpoint (not the hpc one, which
    #    Lightning's validate/test would load by themselves under SLURM if it were still there)
    for name in ("model/config.json", "model/model.safetensors", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob("hpc_ckpt_*.ckpt")), "spent hpc checkpoints are deleted at fit end"
    exported = load_model(run / "model")[0].state_dict()
    best = _ckpt(run / "checkpoints" / "best.ckpt")["state_dict"]
    assert sorted(f"model.{k}" for k in exported) == sorted(best)
    for key, value in exported.items():
        assert torch.equal(value, best[f"model.{key}"]), key

    limit_s = 2 * 60
    figures = {
        "signal before the limit (s)": round(starts[0][1] + limit_s - hpc_mtime, 1),
        "signal to restart (s)": round(starts[1][1] - hpc_mtime, 1),
        "global step at the signal": hpc_step,
        "global step resumed from": at_requeue["newest_step"],
        "resumed from": Path(newest).name,
        "final global step": last["global_step"],
        "fit time carried over (s)": round(at_requeue["newest_fit_s"], 1),
        "test wall time (s)": round(time.time() - submitted, 1),
    }
    print(f"\nSLURM requeue figures: {figures}")
