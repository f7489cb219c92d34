"""Training on several processes: the resources a rule asks for, where a worker stands (torchrun's or Slurm's
environment), and real 2-process runs of the training stages on the CPU (gloo): equal weights on every rank,
one checkpoint, a loss curve close to one process's at the same total batch, and a run killed mid-way that
resumes."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pseudomask.cli import build_parser
from pseudomask.config import complete_config, rule_resources
from pseudomask.launch import Place, first_host, place, slurm_port
from pseudomask.registry import STAGES, get
from pseudomask.settings import SettingsError

TRAINING = {"boxcaseg_train", "cam_train", "retrain", "retrain_hybrid"}


def test_first_host_of_a_slurm_node_list():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("a,b") == "a" and first_host("node3") == "node3"
    assert first_host("n-[3,1]") == "n-3" and first_host("r[2-4]n[10-11]") == "r2n10"
    assert slurm_port("123456") == slurm_port(123456) != slurm_port(123457)
    assert 1024 < slurm_port(10 ** 9 + 7) < 65536


def test_a_worker_takes_its_place_from_slurm_or_torchrun():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
             "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}
    assert place(slurm) == Place(5, 8, 1, 4, "gpu07", slurm_port(4242))
    assert place({**slurm, "SLURM_STEP_NODELIST": "gpu08", "MASTER_PORT": "29400"}).master_addr == "gpu08"
    assert place({**slurm, "MASTER_PORT": "29400"}).master_port == 29400
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "555"}
    assert place({**slurm, **torchrun}) == Place(1, 2, 1, 2, "127.0.0.1", 555)  # torchrun's variables win
    assert place(torchrun).environment()["LOCAL_RANK"] == "1"
    with pytest.raises(Exception, match="SLURM_PROCID"):
        place({"SLURM_JOB_ID": "1"})


def test_gpus_and_nodes_reach_the_rule_resources_of_the_training_stages():
    assert {n for n, s in STAGES.items() if s.distributed} == TRAINING
    cfg = complete_config({"retrain": {"resources": {"gpus": 4, "threads": 3, "mem_mb": 1000}},
                           "cam_train": {"resources": {"gpus": 2, "nodes": 3}}})
    assert rule_resources(cfg, "retrain") == {
        "threads": 12, "mem_mb": 4000, "runtime": 60, "gpu": 4, "tasks_per_gpu": 0, "cpus_per_gpu": 3,
        "nproc_per_node": 4, "nodes": 1}
    multi = rule_resources(cfg, "cam_train")
    assert {k: multi[k] for k in ("gpu", "nodes", "tasks", "mpi", "tasks_per_gpu", "cpus_per_gpu")} == \
        {"gpu": 6, "nodes": 3, "tasks": 6, "mpi": "srun", "tasks_per_gpu": 0, "cpus_per_gpu": 2}
    assert multi["slurm_extra"] == "--ntasks-per-node=2"
    # the defaults (1 and 1) leave a training rule as it was: one GPU, no task geometry
    assert rule_resources(cfg, "boxcaseg_train") == {"threads": 2, "mem_mb": 8000, "runtime": 1440, "gpu": 1}
    with pytest.raises(SettingsError, match="grabcut.resources: unknown key 'gpus'"):
        complete_config({"grabcut": {"resources": {"gpus": 2}}})
    with pytest.raises(SettingsError, match="nodes"):
        complete_config({"retrain": {"resources": {"nodes": 0}}})
    for name in TRAINING:
        assert {"gpus": 1, "nodes": 1}.items() <= complete_config({})[name]["resources"].items()
    args = build_parser("cam-train").parse_args(["cam-train", "--shards", "a.h5", "--model", "m.pt", "--gpus", "2",
                                                  "--nodes", "3"])
    assert (args.gpus, args.nodes) == (2, 3)
    with pytest.raises(SystemExit):
        build_parser("grabcut").parse_args(["grabcut", "--shard", "a.h5", "--out", "b.h5", "--gpus", "2"])
    with pytest.raises(SettingsError, match="runs as one process"):
        get("grabcut")(None, gpus=2, shard="a.h5", images=None, out="b.h5")


def _planned(stdout: str) -> dict[str, dict[str, str]]:
    """{rule: its resources} of the jobs a dry run prints."""
    jobs = {}
    for block in re.split(r"\n(?=\[.*\d{4}\]\n)", stdout):
        rule = re.search(r"^(?:rule|checkpoint) (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res:
            assert rule.group(1) not in jobs, f"rule {rule.group(1)} planned twice"
            jobs[rule.group(1)] = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
    return jobs


def test_dry_run_plans_one_job_per_training_rule_with_its_gpus_and_nodes(tmp_path):
    from workflow_run import snakemake, write_config

    write_config(tmp_path, {"workflow": {"retrain": True, "boxcaseg": True},
                            "retrain": {"resources": {"gpus": 4}}, "boxcaseg_train": {"resources": {"nodes": 2}}})
    out = snakemake(tmp_path, "-n", "--cores", "16", "results/retrain/latest.pth", "results/boxcaseg/model.pt").stdout
    jobs = _planned(out)
    retrain, boxcaseg = jobs["retrain"], jobs["boxcaseg_train"]
    assert {k: retrain.get(k) for k in ("gpu", "tasks_per_gpu", "cpus_per_gpu", "nproc_per_node", "nodes")} == \
        {"gpu": "4", "tasks_per_gpu": "0", "cpus_per_gpu": "2", "nproc_per_node": "4", "nodes": "1"}
    assert "mpi" not in retrain and "tasks" not in retrain
    assert {k: boxcaseg.get(k) for k in ("gpu", "nodes", "tasks", "mpi", "nproc_per_node")} == \
        {"gpu": "2", "nodes": "2", "tasks": "2", "mpi": "srun", "nproc_per_node": "1"}
    assert re.search(r"rule retrain:(?:\n    .*)*\n    threads: 8\n", out), out[-3000:]


# ------------------------------------------------------------------------------------------ real processes

def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PSEUDOMASK_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pseudomask", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _run(*args) -> tuple[dict, str]:
    """The summary a stage's command prints last, and all it wrote (MMEngine logs to stdout, we to stderr)."""
    p = _cli(*args)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:] + err[-5000:]
    return json.loads(out.strip().splitlines()[-1]), out + err


def _losses(path: Path) -> np.ndarray:
    with open(path) as fh:
        return np.array([float(r["loss"]) for r in csv.DictReader(fh)])


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc; zombies count as gone)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_a_failing_worker_fails_the_stage_naming_it(tmp_path):
    """Both workers of a 2-process cam-train fail on a missing shard: the stage stops with a message naming the
    rank, and leaves no launch folder behind."""
    p = _cli("cam-train", "--shards", tmp_path / "missing.h5", "--model", tmp_path / "m/model.pt", "--device", "cpu",
             "--gpus", 2)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0 and re.search(r"rank [01] of 2 exited with 1; the others were stopped", err), err[-3000:]
    assert re.search(r"cam-train \(rank [01]\): error: .*missing.h5: no such artifact", err) and "Traceback" not in err
    assert list((tmp_path / "m").iterdir()) == []


BOX = ("--backbone", "resnet18_w16", "--batch-size", 8, "--crop-size", 64, "--salient-resize", 72, "--optimizer",
       "adam", "--lr", 0.003, "--log-every", 1000, "--workers", 0, "--device", "cpu", "--threads", 1)


@pytest.mark.slow
@pytest.mark.mmdet
def test_training_stages_on_two_cpu_processes(demo, tmp_path):
    """Each training stage on 2 processes (gloo): equal weights on both ranks (digests of every parameter, after
    the last step; retrain_hybrid: of both branches), one checkpoint written by rank 0, no launch files left. BoxCaseg's loss curve against one
    process at the same total batch (8): both draw the same items with the same augmentation, so the two ranks'
    halves make up one process's batch; what differs is BatchNorm, which normalises each half by its own
    statistics (SyncBN needs CUDA). The first loss (equal weights) agrees within 2 %, the mean of the first 20
    within 10 % (measured: 0.7 % and 1.4 %). CAM's first loss within 10 % (measured 4 %: BatchNorm over 4
    images of 64 px instead of 8). Mask R-CNN's first loss, 2 x 2 images against 1 x 4, within 10 % (measured
    4.3 %): BatchNorm, and each rank draws its own flips and RPN / RoI samples. Then a 2-process run killed
    mid-way (SIGKILL to its process group) leaves no process behind and resumes from its last resume state
    (BoxCaseg's, which CAM shares; retrain's MMEngine checkpoint)."""
    box = ("boxcaseg-train", "--shards", demo / "annotations.json", "--images", demo / "images",
           "--salient", demo / "salient", *BOX)
    one, _ = _run(*box, "--model", tmp_path / "b1/model.pt", "--losses", tmp_path / "b1/losses.csv", "--iters", 20)
    two, _ = _run(*box, "--model", tmp_path / "b2/model.pt", "--losses", tmp_path / "b2/losses.csv", "--iters", 20,
                  "--gpus", 2)
    assert two["processes"] == 2 and len(set(two["replica_digests"])) == 1 and "replica_digests" not in one
    assert sorted(p.name for p in (tmp_path / "b2").iterdir()) == ["losses.csv", "model.pt", "model.pt.resume.pt"]
    a, b = _losses(tmp_path / "b1/losses.csv"), _losses(tmp_path / "b2/losses.csv")
    assert len(a) == len(b) == 20
    assert abs(b[0] - a[0]) < 0.02 * a[0] and abs(b.mean() - a.mean()) < 0.1 * a.mean(), (a, b)

    cam = ("cam-train", "--shards", demo / "annotations.json", "--images", demo / "images", "--iters", 4,
           "--backbone", "tiny", "--input-size", 64, "--batch-size", 8, "--device", "cpu")
    cam1, _ = _run(*cam, "--model", tmp_path / "cam1/model.pt")
    cam2, _ = _run(*cam, "--model", tmp_path / "cam/model.pt", "--gpus", 2)
    assert cam2["processes"] == 2 and len(set(cam2["replica_digests"])) == 1 and cam2["iterations"] == 4
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == ["model.pt", "model.pt.resume.pt"]
    assert abs(cam2["loss_first"] - cam1["loss_first"]) < 0.1 * cam1["loss_first"], (cam1, cam2)

    rt = ("retrain", "--annotations", demo / "annotations.json", "--images", demo / "images", "--schedule", "iters",
          "--max-iters", 2, "--scale", 128, "--threads", 1)
    rt1, _ = _run(*rt, "--checkpoint", tmp_path / "rt1/latest.pth", "--mmdet-config", tmp_path / "rt1/mask_rcnn.py",
                  "--batch-size", 4)
    rt2, err = _run(*rt, "--checkpoint", tmp_path / "rt/latest.pth", "--mmdet-config", tmp_path / "rt/mask_rcnn.py",
                    "--batch-size", 2, "--gpus", 2)
    assert rt2["processes"] == 2 and len(set(rt2["replica_digests"])) == 1 and rt2["iters"] == 2
    assert abs(rt2["first_loss"] - rt1["first_loss"]) < 0.1 * rt1["first_loss"], (rt1, rt2)
    assert err.count("Saving checkpoint at 2 iterations") == 1 and "Distributed launcher: pytorch" in err
    assert sorted(p.name for p in (tmp_path / "rt/work").glob("*.pth")) == ["iter_2.pth"]
    assert (tmp_path / "rt/latest.pth").is_file() and (tmp_path / "rt/mask_rcnn.py").is_file()
    # the hybrid recipe: both branches in one process group, one after the other (all boxes train both here)
    hy, _ = _run("retrain-hybrid", "--large", demo / "annotations.json", "--small", demo / "annotations.json",
                 "--images", demo / "images", "--large-checkpoint", tmp_path / "hy/large/latest.pth",
                 "--large-config", tmp_path / "hy/large/mask_rcnn.py", "--small-checkpoint",
                 tmp_path / "hy/small/latest.pth", "--small-config", tmp_path / "hy/small/faster_rcnn.py",
                 "--schedule", "iters", "--max-iters", 2, "--scale", 128, "--threads", 1, "--gpus", 2)
    for branch in ("large", "small"):
        assert hy[branch]["processes"] == 2 and len(set(hy[branch]["replica_digests"])) == 1, branch
        assert [p.name for p in (tmp_path / "hy" / branch / "work").glob("*.pth")] == ["iter_2.pth"]
        assert (tmp_path / "hy" / branch / "latest.pth").is_file()

    # killed mid-run, then run again: it resumes from the last resume state and finishes
    args = (*box, "--model", tmp_path / "k/model.pt", "--losses", tmp_path / "k/losses.csv", "--iters", 200,
            "--checkpoint-every", 5, "--gpus", 2)
    _kill_once_written(args, tmp_path / "k/model.pt.resume.pt")
    assert not (tmp_path / "k/model.pt").exists()
    resumed, err = _run(*args)
    assert 0 < resumed["resumed_from"] < 200 and resumed["resumed_from"] % 5 == 0, resumed
    assert err.count("resuming from") == 2  # both ranks load rank 0's resume state
    assert len(set(resumed["replica_digests"])) == 1
    assert len(_losses(tmp_path / "k/losses.csv")) == 200 and (tmp_path / "k/model.pt").is_file()
    # retrain resumes from MMEngine's checkpoints in its work folder (not a declared output)
    args = (*rt, "--checkpoint", tmp_path / "rk/latest.pth", "--mmdet-config", tmp_path / "rk/mask_rcnn.py",
            "--max-iters", 6, "--checkpoint-interval", 2, "--batch-size", 2, "--gpus", 2)
    _kill_once_written(args, tmp_path / "rk/work/last_checkpoint")
    assert not (tmp_path / "rk/latest.pth").exists()
    resumed, log = _run(*args)
    assert resumed["resumed"] and resumed["iters"] == 6 and len(set(resumed["replica_digests"])) == 1, resumed
    assert re.search(r"resumed epoch: 0, iter: [24]", log), log[-3000:]
    assert (tmp_path / "rk/latest.pth").is_file()


def _kill_once_written(args: tuple, path: Path) -> None:
    """Start a 2-process stage, SIGKILL its process group once `path` exists, and check no process is left."""
    p = _cli(*args, start_new_session=True)
    deadline = time.monotonic() + 180
    while not path.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists() and p.poll() is None, p.communicate()[1][-3000:]
    assert len(_group(p.pid)) == 3  # the stage's process and its two workers
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    time.sleep(0.5)
    assert _group(p.pid) == []
