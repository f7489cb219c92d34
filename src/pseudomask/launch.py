"""Starting a training stage as several processes (data parallelism), and where each of them stands.

One node (`gpus` N > 1, `nodes` 1): the stage's process starts N workers, each `python -m pseudomask.launch
SPEC`, with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). As torchrun's standalone rendezvous does, the starting process hosts the rendezvous store on a
port the system picks, so two jobs on one node never collide, and the workers join it as clients
(TORCHELASTIC_USE_AGENT_STORE). The workers stay in the starting process's process group, so a signal to the
group (a kill of the job, Slurm's at its time limit) reaches them all, and they die with it
(PR_SET_PDEATHSIG). When one fails, the others are stopped and the stage fails naming it.

Several nodes: the job runs once, on its first node, and starts one task per GPU with `srun` in its own
allocation (SLURM_JOB_ID). Each task takes its place from Slurm's environment: SLURM_PROCID (rank),
SLURM_NTASKS (world size), SLURM_LOCALID (local rank), SLURM_NTASKS_PER_NODE, the first host of
SLURM_STEP_NODELIST (else SLURM_NODELIST) as the master address, and a port derived from SLURM_JOB_ID;
MASTER_ADDR and MASTER_PORT in the environment win.

The stage's call (settings, threads, ports) travels in a JSON spec written beside its first output (shared by
the nodes, as the outputs are); rank 0 writes the stage's summary beside it, and the starting process returns
that summary. In every worker the process group is up before the stage's function runs (pseudomask.distributed).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .devices import pick_device
from .errors import PseudomaskError
from .files import write_text_atomic
from .workers import thread_limit

PORT_BASE, PORT_SPAN = 15000, 20000  # a multi-node job's port: PORT_BASE + job id % PORT_SPAN


class LaunchError(PseudomaskError, RuntimeError):
    """A worker process of a distributed stage failed, or its environment does not say where it stands."""


@dataclass(frozen=True)
class Place:
    """Where a worker stands: its rank among `world` processes, its rank among the `local_world` processes
    of its node, and the rendezvous address."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    master_addr: str
    master_port: int

    def environment(self) -> dict[str, str]:
        """torchrun's variables for this place (what env:// rendezvous and MMEngine read)."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world), "LOCAL_RANK": str(self.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "gpu[07-09,12],cpu1" -> "gpu07", "a,b" -> "a"."""
    m = re.match(r"([^,\[]*)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise LaunchError(f"cannot read the node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    rest = nodelist.strip()[m.end():]
    suffix = first_host(rest) if rest and not rest.startswith(",") else ""
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def slurm_port(job_id: str | int) -> int:
    """The rendezvous port of a Slurm job: the same on every node of the job, different for its neighbours."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def place(env: Mapping[str, str] = os.environ) -> Place:
    """This worker's place: torchrun's variables when set, else a Slurm task's."""
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return Place(int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])),
                     int(env.get("LOCAL_WORLD_SIZE", world)), env.get("MASTER_ADDR", "127.0.0.1"),
                     int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST")
        if not (nodelist or env.get("MASTER_ADDR")) or not (env.get("SLURM_JOB_ID") or env.get("MASTER_PORT")):
            raise LaunchError("a Slurm task needs SLURM_NODELIST and SLURM_JOB_ID (or MASTER_ADDR and MASTER_PORT)")
        per_node = re.match(r"\d+", env.get("SLURM_NTASKS_PER_NODE", "") or env.get("SLURM_TASKS_PER_NODE", ""))
        world = int(env["SLURM_NTASKS"])
        return Place(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)),
                     int(per_node.group()) if per_node else world,
                     env.get("MASTER_ADDR") or first_host(nodelist),
                     int(env.get("MASTER_PORT") or slurm_port(env["SLURM_JOB_ID"])))
    raise LaunchError("a worker needs torchrun's RANK and WORLD_SIZE or Slurm's SLURM_PROCID and SLURM_NTASKS")


def launch(stage: str, settings: Any, *, threads: int, ports: Mapping[str, Any], gpus: int, nodes: int,
           where: str | os.PathLike) -> dict:
    """Run `stage` as `gpus` processes on each of `nodes` nodes (`threads` each) and return rank 0's summary;
    the spec and the summary are kept in a temporary folder under `where` while it runs."""
    with tempfile.TemporaryDirectory(dir=where, prefix=".launch-") as d:
        spec, summary = Path(d) / "spec.json", Path(d) / "summary.json"
        spec.write_text(json.dumps({"stage": stage, "settings": settings.to_dict(), "threads": int(threads),
                                    "ports": dict(ports), "summary": str(summary)}))
        print(f"{stage}: {gpus * nodes} processes ({gpus} per node on {nodes} node(s)), {threads} thread(s) each",
              file=sys.stderr)
        if nodes > 1:
            _srun(spec, gpus, nodes, threads)
        else:
            _local(spec, gpus)
        if not summary.is_file():
            raise LaunchError(f"{stage}: the processes ended without rank 0's summary ({summary})")
        return json.loads(summary.read_text())


def _die_with_parent() -> None:
    """In a worker before it runs: SIGKILL when the starting process dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stream(f: Any) -> Any:
    """A file object's descriptor for a child's output (the stage's log), or None to inherit ours."""
    try:
        f.flush()
        return f.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _local(spec: Path, n: int) -> None:
    from torch.distributed import TCPStore  # lazy: the CLI imports this module and must start without torch

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    base = {**os.environ, "TORCHELASTIC_USE_AGENT_STORE": "True"}
    procs = []
    try:
        for rank in range(n):
            env = {**base, **Place(rank, n, rank, n, "127.0.0.1", store.port).environment()}
            procs.append(subprocess.Popen([sys.executable, "-m", "pseudomask.launch", str(spec)], env=env,
                                          stdout=_stream(sys.stdout), stderr=_stream(sys.stderr),
                                          preexec_fn=_die_with_parent))
        _wait(procs, "rank")
    finally:
        _stop(procs)
        del store


def _srun(spec: Path, gpus: int, nodes: int, threads: int) -> None:
    cmd = ["srun", f"--ntasks={gpus * nodes}", f"--nodes={nodes}", f"--ntasks-per-node={gpus}",
           f"--cpus-per-task={threads}", "--kill-on-bad-exit=1", sys.executable, "-m", "pseudomask.launch", str(spec)]
    print(" ".join(cmd), file=sys.stderr)
    try:
        proc = subprocess.Popen(cmd, stdout=_stream(sys.stdout), stderr=_stream(sys.stderr))
    except FileNotFoundError:
        raise LaunchError("nodes > 1 starts its tasks with srun: run it in a Slurm job (srun not found)") from None
    try:
        _wait([proc], "srun")
    finally:
        _stop([proc])


def _wait(procs: list[subprocess.Popen], what: str) -> None:
    """Until every process ended well; the first failure stops the others and raises naming it."""
    while True:
        codes = [p.poll() for p in procs]
        bad = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
        if bad:
            _stop(procs)
            name = f"{what} {bad[0]}" if len(procs) > 1 else what
            raise LaunchError(f"{name} of {len(procs)} exited with {bad[1]}; the others were stopped (see the log "
                              "above for its error)")
        if all(c == 0 for c in codes):
            return
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    """A worker: join the process group, run the stage of the spec, rank 0 writes its summary; a stage's error
    is one line naming the rank."""
    from . import distributed  # lazy: torch, needed in the workers only
    from .registry import get  # lazy: the registry imports this module

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    stage = get(spec["stage"])
    settings = stage.settings_class().from_mapping(spec["settings"])
    where = place()
    if where.rank > 0:
        os.environ["PSEUDOMASK_NO_PROGRESS"] = "1"  # one progress bar per run, rank 0's
    try:
        with distributed.process_group(where, pick_device(getattr(settings, "device", "auto"))):
            with thread_limit(spec["threads"]):
                summary = stage.function()(settings, threads=spec["threads"], **spec["ports"])
    except PseudomaskError as e:  # a message, as the CLI prints it, not a traceback per rank
        print(f"pseudomask {stage.command} (rank {where.rank}): error: {e}", file=sys.stderr)
        return 1
    if where.rank == 0:
        write_text_atomic(json.dumps(summary, default=str), spec["summary"])
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a worker's files are written and closed; skip the C++ teardown of torch's threads at exit
