"""A throwaway one-node SLURM cluster on localhost: munged, slurmctld and slurmd, run as root.

For trying ``scripts/slurm/train.sbatch`` without a cluster, and for ``tests/test_slurm.py``.
Everything lives in one folder (slurm.conf, munge key and socket, state, spool, logs); only
Debian's ``slurm-wlm`` and ``munge`` packages are needed (``install()`` apt-gets them).

    python scripts/slurm/local_cluster.py start /tmp/slurm   # prints: export SLURM_CONF=...
    SLURM_CONF=/tmp/slurm/slurm.conf sbatch scripts/slurm/train.sbatch task=defect
    python scripts/slurm/local_cluster.py stop /tmp/slurm     # cancels jobs, stops its daemons

From Python: ``with LocalCluster(folder) as cluster: cluster.run("sbatch", ...)``.

Not for production: one node, root, no accounting (sacct has nothing; use ``scontrol show job``
while the job record lives: ``MinJobAge``), no cgroups. ``cred_expire`` is also how long a
requeued job waits before it may start again (Slurm's default 120 s; ``requeue_delay_s``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


class Unavailable(RuntimeError):
    """SLURM is not installed and can't be installed here (not root, or no apt-get)."""


def install(log=print) -> float | None:
    """apt-get the packages unless slurmctld is already there. Returns the seconds it took."""
    if all(shutil.which(d) or os.path.exists(f"/usr/sbin/{d}") for d in DAEMONS):
        return None
    if os.geteuid() != 0:
        raise Unavailable("SLURM is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Unavailable("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    start = time.monotonic()
    log(f"installing {' '.join(PACKAGES)}: {' '.join(cmd)}")
    if subprocess.run(cmd, env=env, capture_output=True, text=True).returncode != 0:
        # The package lists may be missing or stale (a mirror no longer serves that version).
        log("apt-get install failed; apt-get update and retry")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.monotonic() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.path.exists(path):
        raise Unavailable(f"{name} not found (apt-get install {' '.join(PACKAGES)})")
    return path


class LocalCluster:
    """Start with ``start()`` (or ``with``), stop with ``stop()``: only the daemons it started.

    ``requeue_delay_s``: ``AuthInfo=cred_expire``, how long a requeued job waits before it may
    start again (Slurm's default is 120 s; its minimum is 5 s).
    ``kill_wait_s``: ``KillWait``, SIGTERM to SIGKILL when a job ends (Slurm's default 30 s).
    """

    def __init__(
        self, folder: str | Path, cpus: int = 2, requeue_delay_s: int = 120, kill_wait_s: int = 30
    ):
        self.dir = Path(folder).resolve()
        self.cpus = cpus
        self.requeue_delay_s = requeue_delay_s
        self.kill_wait_s = kill_wait_s
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment for sbatch, squeue, scontrol... to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        out = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "munge", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o755)  # munged refuses a key or socket under a group/world-writable dir
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.socket = d / "munge" / "munge.socket"
        self.conf.write_text(
            "\n".join(
                [
                    "# Written by scripts/slurm/local_cluster.py: one node on localhost, as root.",
                    "ClusterName=vitft-local",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.socket},cred_expire={self.requeue_delay_s}",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/backfill",
                    # Look at pending jobs every 2 s (default 60 s / 30 s): a requeued job whose
                    # begin time has passed starts at once, not at the next minute's pass.
                    "SchedulerParameters=sched_interval=2,bf_interval=2",
                    "MpiDefault=none",
                    "JobRequeue=1",
                    "ReturnToService=2",
                    f"KillWait={self.kill_wait_s}",
                    "MinJobAge=600",  # keep finished jobs in `scontrol show job` for 10 minutes
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
                    f"PartitionName=local Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # slurmd reads cgroup.conf only for cgroup plugins; an empty one silences a warning.
        (d / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")

    def _spawn(self, name: str, cmd: list[str], detach: bool) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )  # fmt: skip
        log.close()
        (self.dir / f"{name}.daemon.pid").write_text(str(self.procs[name].pid))

    def start(self, timeout: float = 60, detach: bool = False) -> LocalCluster:
        """Start the three daemons in the foreground (-F/-D, our children) and wait for the node."""
        install()
        self.write_config()
        d = self.dir
        self._spawn(
            "munged",
            [_which("munged"), "--foreground", "--force", f"--socket={self.socket}",
             f"--key-file={d / 'munge' / 'munge.key'}", f"--pid-file={d / 'munge' / 'munged.pid'}",
             f"--log-file={d / 'log' / 'munged.log'}", f"--seed-file={d / 'munge' / 'seed'}"],
            detach,
        )  # fmt: skip
        self._wait(lambda: self.socket.exists(), 20, "munged socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], detach)
        self._spawn(
            "slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)], detach
        )
        self._wait(self._node_idle, timeout, f"node {self.node} idle in sinfo")
        return self

    def _node_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}): {self.logs(name)}")
        try:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return out.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}: {self.logs()}")
            time.sleep(0.5)

    def logs(self, *names: str, tail: int = 3000) -> str:
        text = []
        for path in sorted((self.dir / "log").glob("*")):
            if not names or any(path.name.startswith(n) for n in names):
                text.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(text)

    def stop(self, timeout: float = 90) -> None:
        """Cancel this cluster's jobs, wait for them to end, then stop the daemons we started."""
        try:
            if self.conf.exists() and (self.procs or self._pids()):
                self.run("scancel", "--full", "--user=root", check=False, timeout=20)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    out = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                    if not out.strip():
                        break
                    time.sleep(1)
        except (subprocess.TimeoutExpired, OSError):
            pass
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            pid = proc.pid if proc else self._pids().get(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            if proc:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                for _ in range(30):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.5)
                else:
                    os.kill(pid, signal.SIGKILL)
            (self.dir / f"{name}.daemon.pid").unlink(missing_ok=True)

    def _pids(self) -> dict[str, int]:
        """Daemons a detached ``start`` (the command line) left, by the pids it wrote."""
        found = {}
        for name in DAEMONS:
            f = self.dir / f"{name}.daemon.pid"
            if f.exists():
                found[name] = int(f.read_text())
        return found

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("folder", help="everything of the cluster lives here (created)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--requeue-delay", type=int, default=120, help="AuthInfo cred_expire (s)")
    p.add_argument("--kill-wait", type=int, default=30, help="KillWait (s)")
    args = p.parse_args()
    cluster = LocalCluster(args.folder, args.cpus, args.requeue_delay, args.kill_wait)
    if args.action == "start":
        took = install()
        if took is not None:
            print(f"installed {' '.join(PACKAGES)} in {took:.0f}s", file=sys.stderr)
        cluster.start(detach=True)
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()


if __name__ == "__main__":
    main()
