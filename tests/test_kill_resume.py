"""SIGKILL a training run at several points, restart it with resume=auto, compare with a run
never killed (subprocesses, seed + trainer.deterministic=true, CPU)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, make_dataset

# chain name -> global steps at which the run SIGKILLs itself (None: runs to the end).
# 3 batches per epoch, step.ckpt every 2 steps: kills at 3 and 6 come right after an epoch's
# last.ckpt; kills at 5 and 11 come one step after a mid-epoch step.ckpt (steps 4 and 10).
CHAINS = {"never_killed": [None], "epoch_end": [3, 6, None], "mid_epoch": [5, 11, None]}


def _cmd(data: Path, run: Path) -> list[str]:
    return [
        sys.executable,
        "tests/killable_train.py",
        "model=vit_tiny",
        "task=folder",
        f"task.data_dir={data}",
        "data.augment=none",
        "freeze=none",
        "trainer=cpu",
        "trainer.deterministic=true",
        "trainer.max_epochs=4",
        "data.num_workers=0",
        "data.batch_size=8",
        "seed=0",
        "resume=auto",
        "test=false",
        "callbacks.step_checkpoint.every_n_train_steps=2",
        "+trainer.num_sanity_val_steps=0",
        "~callbacks.progress_bar",
        f"hydra.run.dir={run}",
    ]


def _run_chains(data: Path, tmp: Path) -> dict[str, list[subprocess.CompletedProcess]]:
    """The three chains side by side (one thread each, so they fit on 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done: dict[str, list] = {name: [] for name in CHAINS}
    running: dict[str, subprocess.Popen] = {}

    def start(name: str) -> None:
        kill = CHAINS[name][len(done[name])]
        e = {**env, "VITFT_KILL_AT_STEP": str(kill)} if kill else env
        running[name] = subprocess.Popen(
            _cmd(data, tmp / name), cwd=ROOT, env=e, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    for name in CHAINS:
        start(name)
    deadline = time.monotonic() + 900
    while running and time.monotonic() < deadline:
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read()
            done[name].append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
            del running[name]
            if len(done[name]) < len(CHAINS[name]):
                start(name)
        time.sleep(0.2)
    for proc in running.values():
        proc.kill()
    return done


@pytest.mark.slow
def test_sigkill_and_resume_auto_matches_a_run_never_killed(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 8, "val": 3, "test": 2})
    done = _run_chains(data, tmp_path)
    for name, procs in done.items():
        assert len(procs) == len(CHAINS[name]), name
        for proc, kill in zip(procs, CHAINS[name], strict=True):
            # a SIGKILLed process reports -9; the last one of each chain must finish cleanly
            assert proc.returncode == (-9 if kill else 0), (name, kill, proc.stdout[-3000:])
    resumed_from = {
        name: [line.split("continuing from ")[1] for p in procs for line in p.stdout.splitlines()
               if "resume=auto: continuing from" in line]
        for name, procs in done.items()
    }  # fmt: skip
    assert [Path(p).name for p in resumed_from["epoch_end"]] == ["last.ckpt", "last.ckpt"]
    assert [Path(p).name for p in resumed_from["mid_epoch"]] == ["step.ckpt", "step.ckpt"]

    ref = torch.load(tmp_path / "never_killed/checkpoints/last.ckpt", weights_only=True)
    figures = {}
    for name in ("epoch_end", "mid_epoch"):
        ckpt = torch.load(tmp_path / name / "checkpoints/last.ckpt", weights_only=True)
        assert (ckpt["epoch"], ckpt["global_step"]) == (ref["epoch"], ref["global_step"]) == (3, 12)
        diffs = [
            (ref["state_dict"][k] - v).abs().max().item() for k, v in ckpt["state_dict"].items()
        ]
        figures[name] = max(diffs)
    print(f"\nkill/resume: max |weight difference| vs never killed: {figures}")
    # Resume is exact at an epoch boundary and mid-epoch (the datamodule's checkpointed position
    # skips the batches already trained on): every tensor of the final checkpoint is identical.
    assert figures == {"epoch_end": 0.0, "mid_epoch": 0.0}
