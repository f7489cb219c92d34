"""A real one-node Slurm cluster (munged, slurmctld, slurmd from Debian's packages) in a temporary folder.

Used by tests/test_slurm.py; also runnable by hand to try the profile:

    python tests/slurm_cluster.py      # starts a cluster, prints how to use it, stops it on Ctrl-C

Needs root (slurmd launches jobs as their owner) and the packages munge, slurmctld, slurmd
(`.ci/system-packages.sh` installs them). No accounting database: job states come from `squeue`
(`--slurm-status-command squeue`, the plugin's documented mode for clusters without slurmdbd), with a
MinJobAge long enough for finished jobs to stay visible.

Slurm client commands find the cluster through SLURM_CONF, but the executor's job step strips every
SLURM_* variable before it calls `srun` inside a job, so `srun` falls back to the compiled-in
/etc/slurm/slurm.conf, as on a real cluster. The cluster therefore links /etc/slurm/slurm.conf to its own
file while it runs, but only when no site configuration is there, and holds a lock so that two test runs
on one machine take turns.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "srun")
SITE_CONF = Path("/etc/slurm/slurm.conf")
LOCK = Path(tempfile.gettempdir()) / "pseudomask-slurm-test.lock"
PREFIX = "pm-slurm-"


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


def unavailable_reason() -> str | None:
    """Why a cluster cannot start here (None when it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a one-node Slurm cluster needs root (slurmd runs jobs as their owner)"
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        return f"Slurm/munge not installed (missing {', '.join(missing)}); run .ci/system-packages.sh as root"
    if SITE_CONF.exists() and not SITE_CONF.is_symlink():
        return f"{SITE_CONF} belongs to a real Slurm installation; not starting a test cluster beside it"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        total_kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.8)


class SlurmCluster:
    """Start with `with SlurmCluster() as c:`; `c.env` is the environment for Slurm clients and Snakemake."""

    def __init__(self, root: str | os.PathLike | None = None, cpus: int | None = None, mem_mb: int | None = None,
                 partition: str = "debug", lock_timeout: float = 300.0):
        # Not under pytest's tmp_path: munged wants every folder above its socket searchable by all.
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix=PREFIX))
        self.cpus = cpus or os.cpu_count() or 1
        self.mem_mb = mem_mb or _mem_mb()
        self.partition = partition
        self.lock_timeout = lock_timeout
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock_fh = None
        self._linked = False

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- set-up -------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        r = self.root
        for d in ("run", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # munged insists: key readable by its owner only; socket folder (and its parents) searchable by all.
        os.chmod(r, 0o755)
        os.chmod(r / "run", 0o755)
        (r / "munge").mkdir(mode=0o700, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, d_port = _free_ports(2)
        self.conf.write_text(f"""\
# one-node test cluster written by tests/slurm_cluster.py
ClusterName=pmtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/run/munge.sock
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# no accounting database: finished jobs stay visible to squeue for 10 minutes
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def _acquire(self) -> None:
        self._lock_fh = open(LOCK, "a+")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test cluster held {LOCK} for {self.lock_timeout:.0f} s")
                time.sleep(1.0)
        # With the lock held, a symlink left at SITE_CONF is a crashed run's: replace it.
        if SITE_CONF.is_symlink():
            SITE_CONF.unlink()
        if SITE_CONF.exists():
            raise RuntimeError(f"{SITE_CONF} belongs to a real Slurm installation")
        SITE_CONF.parent.mkdir(parents=True, exist_ok=True)
        SITE_CONF.symlink_to(self.conf)
        self._linked = True

    def _spawn(self, name: str, *args: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen([_which(name), *args], stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        out.close()

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}; "
                                       f"see {self.root / 'log'}:\n{self.logs()}")
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self._write_files()
        self._acquire()
        try:
            r = self.root
            self._spawn("munged", "--foreground", f"--socket={r}/run/munge.sock",
                        f"--key-file={r}/munge/munge.key", f"--pid-file={r}/run/munged.pid",
                        f"--log-file={r}/log/munged.log", f"--seed-file={r}/munge/munged.seed")
            self._wait("munged", lambda: (r / "run" / "munge.sock").exists(), timeout)
            self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
            self._spawn("slurmd", "-D", "-N", self.host, "-f", str(self.conf))
            self._wait("an idle node", lambda: self.run("sinfo", "-h", "-o", "%T", check=False).strip() == "idle",
                       timeout)
        except BaseException:
            self.stop()
            raise
        return self

    # -- use ----------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> str:
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if check and p.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
        return p.stdout

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of every job the controller still knows, finished ones included."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T")
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def logs(self, tail: int = 30) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- tear-down ----------------------------------------------------------------------------------
    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--partition", self.partition, check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs.clear()
        if self._linked and SITE_CONF.is_symlink() and Path(os.readlink(SITE_CONF)) == self.conf:
            SITE_CONF.unlink()
        self._linked = False
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with SlurmCluster() as c:
        print(f"cluster up: export SLURM_CONF={c.conf}\n"
              "then e.g. snakemake --profile slurm --slurm-status-command squeue "
              "--slurm-init-seconds-before-status-checks 5\nCtrl-C stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
