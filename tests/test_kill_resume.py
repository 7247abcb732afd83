"""SIGKILL training runs at 20 points, restart each with resume=auto, and compare every step they
train afterwards with a run of the same config never killed (subprocesses, CPU,
trainer.deterministic=true).

The default data config (augmentation on, 2 persistent loader workers) and a model with dropout,
in four configs: MixUp/CutMix; a staged freeze strategy; the feature cache (4 augmented views);
2-process gloo DDP. Kill points cover the first step (nothing saved yet), right after a step
checkpoint, right after an epoch's last.ckpt, between checkpoints (the lost steps are trained
again) and in the middle of validation.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, make_dataset
from tests.ddp_helpers import max_diff, optimizer_tensors

BASE = [
    "model=vit_tiny",
    "model.config.hidden_dropout_prob=0.1",
    "model.config.attention_probs_dropout_prob=0.1",
    "task=folder",
    "task.augment=industrial",  # persistent_workers stays true (the default)
    "data.num_workers=2",  # the default, auto, gives 1 on a 2-CPU machine
    "trainer=cpu",
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "data.batch_size=8",
    "seed=0",
    "resume=auto",
    "test=false",
    "logger=csv",
    "callbacks.step_checkpoint.every_n_train_steps=2",
    "+trainer.num_sanity_val_steps=0",
    "~callbacks.progress_bar",
]
# 24 training images: 3 optimizer steps per epoch, 9 in all (DDP: 2 ranks x batch 4).
CONFIGS = {
    "mixup": ["freeze=none", "loss.mixup_alpha=0.4", "loss.cutmix_alpha=1.0"],
    "staged_freeze": ["freeze=unfreeze_milestones", "freeze.milestones=[1,2]", "freeze.n=1"],
    "feature_cache": ["freeze=backbone", "cache.enabled=true", "cache.views=4"],
    "ddp": [
        "freeze=none",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.batch_size=4",
    ],
}
# Kill points per config, in order: ("step", N) dies before the batch after global step N;
# ("val", E) dies in the middle of epoch E's validation. Step checkpoints at steps 2, 4, 8 (not
# at an epoch's last batch, 6); last.ckpt at steps 3, 6, 9.
KILLS = {
    "mixup": [("step", 1), ("step", 2), ("step", 3), ("step", 5), ("val", 1), ("step", 8)],
    "staged_freeze": [("step", 2), ("step", 3), ("step", 4), ("step", 7), ("step", 8)],
    "feature_cache": [("step", 1), ("step", 3), ("step", 5), ("val", 1), ("step", 7)],
    "ddp": [("step", 2), ("step", 3), ("step", 5), ("step", 8)],
}
STEPS = 9
PER_RUN_TIMEOUT = 600  # one run takes 10 to 40 s on 2 idle cores; the suite runs beside it


def _segments(config: str) -> list[tuple[str, dict]]:
    """(name, extra env) of each process of a config: the reference run, then the chain."""
    segments = [(f"{config}/never_killed", {})]
    for i, (kind, at) in enumerate(KILLS[config]):
        var = "VITFT_KILL_AT_STEP" if kind == "step" else "VITFT_KILL_IN_VAL"
        segments.append((f"{config}/killed/{i}", {var: str(at)}))
    segments.append((f"{config}/killed/{len(KILLS[config])}", {}))
    return segments


def _run_all(data: Path, tmp: Path) -> dict[str, subprocess.CompletedProcess]:
    """Every process of every config; two at a time (2 cores), each config's chain in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    queues = {}
    for config in CONFIGS:
        queues[f"{config}/never_killed"] = _segments(config)[:1]
        queues[f"{config}/killed"] = _segments(config)[1:]
    done: dict[str, subprocess.CompletedProcess] = {}
    running: dict[str, tuple[str, subprocess.Popen, float]] = {}
    deadline = time.monotonic() + 3000
    while (running or any(queues.values())) and time.monotonic() < deadline:
        for chain, (name, proc, started) in list(running.items()):
            hung = proc.poll() is None and time.monotonic() - started > PER_RUN_TIMEOUT
            if hung:  # fail with this run's log at once, not at the end of the whole budget
                os.killpg(proc.pid, 9)
                proc.wait()
            if proc.poll() is not None:
                code = f"no exit in {PER_RUN_TIMEOUT} s" if hung else proc.returncode
                done[name] = subprocess.CompletedProcess(proc.args, code, "")
                done[name].stdout = (tmp / name / "out.log").read_text()
                del running[chain]
        for chain, queue in queues.items():
            if len(running) >= 2:
                break
            if chain in running or not queue:
                continue
            # Two DDP runs at once would race for free ports and oversubscribe the 2 cores.
            if chain.startswith("ddp") and any(c.startswith("ddp") for c in running):
                continue
            name, extra = queue.pop(0)
            config, run_dir = name.split("/")[0], tmp / chain
            cmd = [sys.executable, "tests/killable_train.py", *BASE, *CONFIGS[config]]
            cmd += [f"task.data_dir={data}", f"hydra.run.dir={run_dir}"]
            cmd += [f"cache.dir={tmp / 'feature_cache'}"]
            (tmp / name).mkdir(parents=True, exist_ok=True)
            e = {**env, **extra, "VITFT_SNAPSHOTS": str(tmp / name / "snapshots")}
            with open(tmp / name / "out.log", "w") as out:
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=e, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: a kill takes all of it
                )  # fmt: skip
            running[chain] = (name, proc, time.monotonic())
        time.sleep(0.2)
    for _, proc, _ in running.values():
        os.killpg(proc.pid, 9)
    return done


def _steps(snapshots: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in snapshots.glob("step_*.pt")}


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_auto_is_bitwise_a_run_never_killed(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 8, "val": 3, "test": 2})
    done = _run_all(data, tmp_path)
    assert sum(len(k) for k in KILLS.values()) >= 20
    rows = []
    for config in CONFIGS:
        segments = _segments(config)
        for name, extra in segments:
            assert name in done, f"{name} did not run (time out)"
            proc = done[name]
            # a SIGKILLed run reports -9; the reference and each chain's last run finish cleanly
            assert proc.returncode == (-9 if extra else 0), (name, proc.stdout[-3000:])
        ref_dir = tmp_path / f"{config}/never_killed"
        ref = {
            s: torch.load(p, weights_only=True) for s, p in _steps(ref_dir / "snapshots").items()
        }
        assert sorted(ref) == list(range(1, STEPS + 1)), config
        for i, kill in enumerate(KILLS[config]):
            name = f"{config}/killed/{i + 1}"  # the run that resumed after kill i
            log = done[name].stdout
            assert "resume=auto: continuing from" in log or kill == ("step", 1), (name, log[-2000:])
            steps = _steps(tmp_path / name / "snapshots")
            assert steps, (name, log[-3000:])
            diff = max(max_diff(torch.load(p, weights_only=True), ref[s]) for s, p in steps.items())
            resumed = [line.split("continuing from ")[1] for line in log.splitlines()
                       if "continuing from" in line]  # fmt: skip
            rows.append((config, f"{kill[0]} {kill[1]}", Path(resumed[0]).name if resumed else
                         "(fresh)", f"{min(steps)}-{max(steps)}", diff))  # fmt: skip
        last = torch.load(tmp_path / f"{config}/killed/checkpoints/last.ckpt", weights_only=True)
        want = torch.load(ref_dir.parent / "never_killed/checkpoints/last.ckpt", weights_only=True)
        assert (last["epoch"], last["global_step"]) == (want["epoch"], want["global_step"])
        rows.append((config, "final last.ckpt", "", "weights", max_diff(last["state_dict"],
                     want["state_dict"])))  # fmt: skip
        opt = max_diff(optimizer_tensors(last), optimizer_tensors(want))
        rows.append((config, "final last.ckpt", "", "optimizer state", opt))
    print("\nconfig | kill point | resumed from | steps compared | max |difference|")
    for row in rows:
        print(" | ".join(str(v) for v in row))
    assert [row for row in rows if row[-1] != 0.0] == []
