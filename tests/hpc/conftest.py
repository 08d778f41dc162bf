"""A real single-node Slurm cluster for the tests of the HPC examples (``slurm`` fixture).

The fixture installs Debian's ``slurm-wlm`` and ``munge`` when they are missing (as root, with apt-get), writes a
``slurm.conf`` of its own in a temporary folder (free ports, no cgroups, no accounting, ``batch_sched_delay=0``),
starts ``munged`` (unless one already answers), ``slurmctld`` and ``slurmd``, and waits until the node is idle.
Where any of that is impossible (not root, no apt-get, no network, a daemon that will not start) the tests are
skipped with the reason. Tear-down stops only the daemons it started, by PID. Facts behind the settings:
``../shared/notes/slurm-single-node.md``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_PACKAGES = ("slurm-wlm", "munge")
_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "munged", "munge", "unmunge")
_SLOTS = 4  # CPUs the node advertises (config_overrides): a 4-task array runs at once on 2 cores


@dataclass
class SlurmCluster:
    """A running single-node cluster: its folder, the environment its client commands need, the daemons' PIDs."""

    root: Path
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)  # the daemons started here, reaped at the end

    def run(self, *args: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """A Slurm client command (``timeout``: they hang retrying while slurmctld is down)."""
        return subprocess.run(["timeout", str(int(timeout)), *args], capture_output=True, text=True,
                              env={**self.env, **kwargs.pop("env", {})}, **kwargs)

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        proc = self.run("sbatch", "--parsable", *args, cwd=cwd, env=env or {})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def wait(self, job: str, limit: float = 600) -> str:
        """Wait (bounded) until ``job`` and all its array tasks have left the queue; return ``scontrol``'s record."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            queued = self.run("squeue", "-h", "-j", job, "-o", "%i %T %r")
            if queued.returncode == 0 and not queued.stdout.strip():
                return self.run("scontrol", "show", "job", job).stdout
            if "DependencyNeverSatisfied" in queued.stdout:
                self.run("scancel", job)
                raise AssertionError(f"job {job} can never start: {queued.stdout}")
            time.sleep(0.5)
        self.run("scancel", job)
        raise AssertionError(f"job {job} still queued after {limit} s: {self.run('squeue').stdout}")


def _skip(reason: str) -> None:
    pytest.skip(f"no Slurm cluster: {reason}")


def _install() -> None:
    """Install slurm-wlm and munge with apt-get when a binary is missing; skip when that cannot be done."""
    if all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in _BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _skip(f"{', '.join(_PACKAGES)} are not installed and this user cannot install them (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *_PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:  # a stale package index: update it once
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=300)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        _skip(f"'apt-get install {' '.join(_PACKAGES)}' failed (no network or package index?): "
              f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [
        "ClusterName=rockseg-test", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
        "CryptoType=crypto/munge", "MpiDefault=none", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill", "SchedulerParameters=batch_sched_delay=0", "SlurmdParameters=config_overrides",
        "ReturnToService=2", "MailProg=/bin/true", f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd.log",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={_SLOTS} RealMemory={memory} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _munge_answers() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge(cluster: SlurmCluster) -> None:
    """Start munged as the munge user unless one already answers (then it is not ours to stop)."""
    if _munge_answers():
        return
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], capture_output=True, timeout=30)
    subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"], check=False)
    started = subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], capture_output=True, text=True,
                             timeout=30)
    pidfile = Path("/run/munge/munged.pid")
    if started.returncode != 0 or not pidfile.exists():
        _skip(f"munged did not start: {started.stderr.strip()}")
    cluster.pids["munged"] = int(pidfile.read_text().split()[0])
    for _ in range(50):
        if _munge_answers():
            return
        time.sleep(0.1)
    _skip("munged started but does not answer")


def _start_slurm(cluster: SlurmCluster, conf: Path) -> None:
    logs = cluster.root / "log"
    for name, args in (("slurmctld", ["-D", "-c", "-f", str(conf)]), ("slurmd", ["-D", "-f", str(conf)])):
        binary = shutil.which(name) or f"/usr/sbin/{name}"
        with open(logs / f"{name}.out", "w") as out:
            proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT, env=cluster.env,
                                    start_new_session=True)
        cluster.pids[name] = proc.pid
        cluster.processes.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-o", "%T", timeout=5).stdout.strip()
        if state == "idle":
            return
        for name in ("slurmctld", "slurmd"):
            if not _alive(cluster.pids[name], cluster.processes):
                _skip(f"{name} exited at start: {(logs / f'{name}.out').read_text()[-500:]}")
        time.sleep(0.3)
    _skip(f"the node did not become idle in 60 s (sinfo says {state!r})")


def _alive(pid: int, processes: list[subprocess.Popen] = ()) -> bool:
    for proc in processes:
        if proc.pid == pid:
            return proc.poll() is None
    try:  # not our child (munged daemonises): ask the kernel
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(cluster: SlurmCluster) -> None:
    """Stop the daemons this fixture started, by PID: scontrol shutdown first, then SIGTERM, then SIGKILL."""
    if "slurmctld" in cluster.pids and _alive(cluster.pids["slurmctld"], cluster.processes):
        cluster.run("scontrol", "shutdown", timeout=10)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = cluster.pids.get(name)
        if pid is None:
            continue
        deadline = time.monotonic() + 5
        while _alive(pid, cluster.processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _alive(pid, cluster.processes):
                break
            os.kill(pid, sig)
            time.sleep(1)
    for proc in cluster.processes:
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node Slurm cluster (:class:`SlurmCluster`); skips with the reason where there can be none."""
    if not Path("/proc").exists() or os.name != "posix":
        _skip("needs Linux")
    _install()
    root = tmp_path_factory.mktemp("slurm")
    conf = _config(root)
    cluster = SlurmCluster(root, {**os.environ, "SLURM_CONF": str(conf)})
    try:
        _start_munge(cluster)
        _start_slurm(cluster, conf)
        yield cluster
    finally:
        _stop(cluster)
