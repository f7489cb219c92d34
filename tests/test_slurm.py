"""`snakemake --profile slurm` on a real one-node Slurm cluster started for the test (tests/slurm_cluster.py).

Skipped, with the reason, only where the cluster cannot start: not root, or Slurm/munge not installed
(`.ci/system-packages.sh` installs them as root).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import yte
from slurm_cluster import SlurmCluster, unavailable_reason
from workflow_run import (CHAINS, REPO, SNAKEMAKE, cheapest_chain, digests, reference_run, rule_declarations, snakemake,
                          write_config)

from pseudomask.config import complete_config, rule_resources

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Only what a one-node test cluster needs on top of the profile: it has no accounting database (job states
# from squeue, finished jobs kept by MinJobAge=600) and jobs last seconds, not hours (poll from 1 s on).
TEST_CLUSTER_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                     "--seconds-between-status-checks", "1"]


def _profile(env: dict[str, str]) -> dict:
    """slurm/config.yaml as Snakemake reads it with `--profile slurm` from the repository root under `env`."""
    old, cwd = os.environ.copy(), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)  # the profile reads the GPU rules from rules/*.smk of the current folder
    try:
        with open(REPO / "slurm" / "config.yaml") as fh:
            return yte.process_yaml(fh, require_use_yte=True)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(old)


def test_profile_takes_site_settings_from_the_environment():
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PSEUDOMASK_SLURM", "SBATCH_"))}
    plain = _profile(base)
    assert plain["executor"] == "slurm" and plain["jobs"] == 100 and plain["retries"] >= 1
    assert "slurm_partition" not in plain["default-resources"] and "slurm_account" not in plain["default-resources"]
    assert "set-resources" not in plain  # the GPU rules' gpu=1 is their own; no model or partition to add
    site = _profile({**base, "PSEUDOMASK_SLURM_ACCOUNT": "lab1", "SBATCH_PARTITION": "cpu",
                     "PSEUDOMASK_SLURM_GPU_PARTITION": "gpu", "PSEUDOMASK_SLURM_JOBS": "7",
                     "PSEUDOMASK_SLURM_GPU_MODEL": "a100"})
    assert site["jobs"] == 7
    assert site["default-resources"]["slurm_account"] == "lab1"
    assert site["default-resources"]["slurm_partition"] == "cpu"
    assert site["set-resources"]
    for rule, res in site["set-resources"].items():
        assert res == {"gpu_model": "a100", "slurm_partition": "gpu"}, rule
    # a GPU partition without GPUs: the GPU rules ask for none (CPUs only), whatever the model says
    cpu_only = _profile({**base, "PSEUDOMASK_SLURM_NO_GPUS": "1", "PSEUDOMASK_SLURM_GPU_MODEL": "a100"})
    assert set(cpu_only["set-resources"]) == set(site["set-resources"])
    assert all(res == {"gpu": 0} for res in cpu_only["set-resources"].values()), cpu_only["set-resources"]


def test_profile_sends_every_rule_that_asks_for_a_gpu_to_the_gpu_partition():
    """Every rule whose resources ask for a GPU (as Snakemake loads the workflow: gpu=1 from the registry, the
    later rounds' `use rule` copies included) gets the profile's GPU model and partition, and no other rule."""
    gpu = {n for n, r in rule_declarations().items() if r["resources"].get("gpu")}
    assert {"retrain", "round_retrain"} <= gpu
    site = _profile({**os.environ, "PSEUDOMASK_SLURM_GPU_MODEL": "a100"})
    assert set(site["set-resources"]) == gpu, f"GPU rules of slurm/config.yaml: {sorted(site['set-resources'])}"


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    c = SlurmCluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _cancel_first_running(cluster: SlurmCluster, rule: str, proc: subprocess.Popen, timeout: float = 150) -> str:
    """Wait for a running Slurm job of `rule` and scancel it (as a preemption or node failure would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i|%k").splitlines():
            jobid, comment = line.split("|", 1)
            if comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards"):
                cluster.run("scancel", jobid, check=False)  # it may have finished in between: then try again
                state = "RUNNING"
                settle = time.monotonic() + 20
                while state in ("RUNNING", "COMPLETING", "PENDING", "") and time.monotonic() < settle:
                    time.sleep(0.3)  # wait for the job's final state before looking at another job
                    state = cluster.run("squeue", "--noheader", "--states=all", "-j", jobid, "--format=%T").strip()
                if state == "CANCELLED":
                    return jobid
        time.sleep(0.2)
    raise AssertionError(f"no running Slurm job of rule {rule} seen (workflow rc {proc.poll()})")


def test_workflow_runs_through_the_slurm_profile(cluster, tmp_path):
    """The chain runs job by job through sbatch; a job cancelled mid-run is retried by the profile; the
    outputs equal a local run's."""
    chain = cheapest_chain()
    wd = tmp_path / "wf"
    cfg = write_config(wd, chain.overrides)
    log = tmp_path / "snakemake.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(SNAKEMAKE + ["-d", str(wd), "--profile", "slurm", *TEST_CLUSTER_ARGS, chain.target],
                                cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env={**cluster.env, "PSEUDOMASK_NO_PROGRESS": "0"})
    try:
        cancelled = _cancel_first_running(cluster, chain.stage, proc)
        rc = proc.wait(timeout=240)
    except BaseException:
        proc.kill()
        print(log.read_text()[-5000:], cluster.logs(), sep="\n", file=sys.stderr)
        raise
    text = log.read_text()
    assert rc == 0, text[-5000:] + cluster.logs()
    assert "has been submitted with SLURM jobid" in text

    # Every job of the chain went through sbatch and completed; the cancelled one was retried.
    by_rule: dict[str, list[str]] = {}
    for line in cluster.run("squeue", "--states=all", "--noheader", "--format=%i|%k|%T").splitlines():
        jobid, comment, state = line.split("|")
        by_rule.setdefault(comment.split("_wildcards")[0].removeprefix("rule_"), []).append(state)
        if jobid == cancelled:
            assert state == "CANCELLED", line
    manifest = json.loads((wd / "results/ingest/manifest.json").read_text())
    n_shards = math.ceil(cfg["demo_data"]["scenes"] / cfg["ingest"]["shard_size"])
    assert len(manifest["shards"]) == n_shards
    for rule in chain.needs:
        states = by_rule.get(rule, [])
        want = n_shards if rule in chain.per_shard else 1
        assert states.count("COMPLETED") == want, (rule, by_rule)
        assert set(states) <= ({"COMPLETED", "CANCELLED"} if rule == chain.stage else {"COMPLETED"}), by_rule
    assert by_rule[chain.stage].count("CANCELLED") == 1, by_rule

    # The outputs are those of a local run of the same chain, and every job wrote its log.
    assert digests(wd) == digests(reference_run(chain))
    logs = {str(p.relative_to(wd)) for p in (wd / cfg["logs"]).rglob("*.log")}
    for rule in chain.needs:
        want = {f"logs/{rule}/{s}.log" for s in manifest["shards"]} if rule in chain.per_shard else {f"logs/{rule}.log"}
        assert want <= logs, (rule, sorted(logs))
    assert cluster.run("squeue", "--noheader", "--states=PENDING,RUNNING").strip() == ""


def _jobs_of(cluster: SlurmCluster, rule: str) -> list[tuple[str, str]]:
    """(job id, state) of every Slurm job the controller knows for `rule`."""
    lines = cluster.run("squeue", "--states=all", "--noheader", "--format=%i|%k|%T").splitlines()
    return [(i, state) for i, comment, state in (line.split("|") for line in lines) if comment == f"rule_{rule}"]


def test_retrain_on_two_processes_through_the_slurm_profile(cluster, tmp_path):
    """retrain with gpus: 2 on a partition without GPUs (PSEUDOMASK_SLURM_NO_GPUS: CPUs stand in, the stage runs
    on the CPU): one Slurm job, whose two processes formed one process group (the stage's summary in its log:
    2 processes, equal weights on both ranks), wrote the weights, and asked Slurm for the rule's resources.
    The data stages before it run locally."""
    chain = next(c for c in CHAINS if c.name == "grabcut-export")
    wd = tmp_path / "wf"
    cfg = write_config(wd, {**chain.overrides, "retrain": {
        "cpu": {"max_iters": 2, "scale": 128, "warmup_iters": 1},
        "resources": {"gpus": 2, "threads": 1, "mem_mb": 1500, "runtime": 15}}})
    snakemake(wd, "--cores", "2", "results/export/pseudo.json")
    env = {**cluster.env, "PSEUDOMASK_SLURM_GPU_PARTITION": cluster.partition, "PSEUDOMASK_SLURM_NO_GPUS": "1"}
    out = snakemake(wd, "--profile", "slurm", *TEST_CLUSTER_ARGS, "--verbose", "results/retrain/latest.pth",
                    env=env, timeout=600)
    text = out.stdout + out.stderr

    (jobid, state), = _jobs_of(cluster, "retrain")  # one job: no retry, no job per GPU
    assert state == "COMPLETED", cluster.run("scontrol", "show", "job", jobid)
    log = (wd / "logs/retrain.log").read_text()
    assert "retrain: 2 processes (2 per node on 1 node(s)), 1 thread(s) each" in log, log[:3000]
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["iters"] == 2 and summary["device"] == "cpu", summary
    assert len(summary["replica_digests"]) == 2 and len(set(summary["replica_digests"])) == 1, summary
    assert (wd / "results/retrain/latest.pth").is_file() and (wd / "results/retrain/mask_rcnn.py").is_file()

    # what the job asked for: the rule's resources (threads and memory of both processes), and no GPU
    res = rule_resources(complete_config(cfg), "retrain")
    assert (res["threads"], res["mem_mb"], res["nproc_per_node"]) == (2, 3000, 2)
    sbatch, = [line.split("sbatch call: ", 1)[1].split(" --wrap=")[0] for line in text.splitlines()
               if "sbatch call: " in line and "rule_retrain" in line]
    for flag in ("--ntasks=1", f"--cpus-per-task={res['threads']}", f"--nodes={res['nodes']}",
                 f"--mem {res['mem_mb']}", f"-t {res['runtime']}", f"-p {cluster.partition}"):
        assert f" {flag} " in f" {sbatch} ", (flag, sbatch)
    assert "--gpus" not in sbatch and "--gres" not in sbatch, sbatch
    # and what Slurm gave it
    job = dict(kv.split("=", 1) for kv in cluster.run("scontrol", "-o", "show", "job", jobid).split() if "=" in kv)
    assert (job["NumTasks"], job["CPUs/Task"], job["MinMemoryNode"], job["TimeLimit"]) == \
        ("1", str(res["threads"]), f"{res['mem_mb']}M", f"00:{res['runtime']:02d}:00"), job
    assert "gpu" not in job["TRES"], job
