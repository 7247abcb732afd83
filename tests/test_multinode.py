"""Two nodes on one machine: ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank N`` twice on
localhost (gloo, CPU), as a cluster launches vitft (docs/clusters.md). A staged-unfreeze run is
SIGKILLed after the unfreeze epoch on both nodes at once, restarted with resume=auto, and must end
bitwise equal to a run never killed: weights, optimizer state, epoch and step."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, make_dataset
from tests.ddp_helpers import max_diff, optimizer_tensors

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# 12 training images, 2 nodes x batch 2: 3 optimizer steps per epoch, 6 in all. The backbone
# unfreezes at epoch 1 (step 3); step checkpoints at steps 2 and 4; the kill comes before step 6,
# so the resumed run trains step 5 again from step 4's checkpoint, after the unfreeze.
ARGS = [
    "model=vit_tiny",
    "task=folder",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "+trainer.num_nodes=2",
    "trainer.precision=32-true",
    "trainer.deterministic=true",
    "trainer.max_epochs=2",
    "+trainer.num_sanity_val_steps=0",
    "+trainer.enable_progress_bar=false",
    "freeze=freeze_unfreeze",
    "freeze.unfreeze_epoch=1",
    "data.batch_size=2",
    "data.num_workers=0",
    "seed=0",
    "resume=auto",
    "test=false",
    "logger=none",
    "ood.method=null",
    "callbacks.step_checkpoint.every_n_train_steps=2",
    "~callbacks.progress_bar",
]
KILL_AT_STEP = 5
TIMEOUT = 900  # one run takes 1-5 minutes on 2 shared cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run_dir: Path, data: Path, name: str, env: dict) -> list[subprocess.Popen]:
    """The two nodes of one run: one torchrun each, both pointing at the rank-0 node. Rank 0
    saves the weights after every step to ``<name>/snapshots`` (``tests/killable_train.py``)."""
    env = {**env, "VITFT_SNAPSHOTS": str(run_dir.parent / name / "snapshots")}
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--master-addr", "127.0.0.1", "--master-port", port, "tests/killable_train.py",
               *ARGS, f"task.data_dir={data}", f"hydra.run.dir={run_dir}"]  # fmt: skip
        with open(run_dir.parent / f"{name}_node{node}.log", "w") as out:
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[int | str]:
    deadline = time.monotonic() + TIMEOUT
    codes: list[int | str] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun passes it on to its worker
            proc.wait()
            codes.append(f"no exit in {TIMEOUT} s")
    return codes


def _log(tmp: Path, name: str, node: int) -> str:
    return (tmp / f"{name}_node{node}.log").read_text()


def _snapshots(folder: Path) -> dict[int, dict]:
    files = (folder / "snapshots").glob("step_*.pt")
    return {int(p.stem.split("_")[1]): torch.load(p, weights_only=True) for p in files}


@pytest.mark.slow
def test_two_nodes_killed_after_the_unfreeze_resume_bitwise(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 1, "test": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("VITFT_KILL_AT_STEP", None)
    ref_dir, run_dir = tmp_path / "never_killed", tmp_path / "killed"
    ref_dir.mkdir()
    run_dir.mkdir()
    # the reference and the run to kill side by side (their own ports)
    ref = _start(ref_dir, data, "never_killed", env)
    killed = _start(run_dir, data, "killed", {**env, "VITFT_KILL_AT_STEP": str(KILL_AT_STEP)})
    ref_codes, killed_codes = _wait(ref), _wait(killed)
    assert ref_codes == [0, 0], _log(tmp_path, "never_killed", 0)[-3000:]
    for node in (0, 1):  # each node's worker died by SIGKILL, as on a node loss
        log = _log(tmp_path, "killed", node)
        assert killed_codes[node] not in (0, f"no exit in {TIMEOUT} s"), log[-3000:]
        assert "Signal 9 (SIGKILL)" in log, log[-3000:]
    assert "rank 1 of 2" in _log(tmp_path, "never_killed", 1)  # two nodes, one world

    resumed = _wait(_start(run_dir, data, "resumed", env))
    log = _log(tmp_path, "resumed", 0)
    assert resumed == [0, 0], log[-3000:]
    assert "resume=auto: continuing from" in log, log[-3000:]

    ref_steps = _snapshots(tmp_path / "never_killed")
    assert sorted(ref_steps) == list(range(1, 7))
    for name in ("killed", "resumed"):  # each step either stretch trained, against the reference
        for step, state in _snapshots(tmp_path / name).items():
            assert max_diff(state, ref_steps[step]) == 0.0, f"{name} run, step {step}"
    want = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (want["epoch"], want["global_step"])
    assert want["global_step"] == 6
    assert max_diff(last["state_dict"], want["state_dict"]) == 0.0
    assert max_diff(optimizer_tensors(last), optimizer_tensors(want)) == 0.0
    # the backbone was unfrozen: the optimizer has its parameters (a second param group)
    assert len(want["optimizer_states"][0]["param_groups"]) > 1
