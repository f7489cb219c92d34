"""The workflow as a whole: every rule logs, a SIGKILL mid-stage leaves no partial artifact and a rerun
reproduces an uninterrupted run, and a changed parameter reruns its stage and what depends on it only.

They run the cheapest chain of stages that exists (tests/workflow_run.py) on 4 demo images in 2 shards,
each in its own work folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pseudomask.store import Artifact
from pseudomask.config import deep_update
from workflow_run import (REPO, SNAKEMAKE, cheapest_chain, digests, job_stats, outputs, reference_run,
                          snakemake, write_config)

pytestmark = pytest.mark.slow


def test_every_rule_has_a_log_directive(tmp_path):
    """Snakemake's own linter, over the whole workflow (all optional stages on), finds no rule without a log."""
    write_config(tmp_path, {"workflow": {"retrain": True, "boxcaseg": True}})
    p = snakemake(tmp_path, "--lint", check=False)
    text = p.stdout + p.stderr
    assert "Lints for rule" in text or "Congratulations" in text, text[-3000:]
    no_log, rule = [], None
    for line in text.splitlines():
        if m := re.match(r"Lints for rule (\w+)", line):
            rule = m.group(1)
        elif rule and "No log directive defined" in line:
            no_log.append(rule)
    assert no_log == [], f"rules without a log: {no_log}"


def test_every_job_writes_its_log_with_progress():
    chain = cheapest_chain()
    wd = reference_run(chain)
    logs = sorted((wd / "logs").rglob("*.log"))
    rel = {str(p.relative_to(wd)) for p in logs}
    # one log per rule, and one per shard for per-shard rules
    shards = json.loads((wd / "results/ingest/manifest.json").read_text())["shards"]
    for rule in chain.needs:
        want = {f"logs/{rule}/{s}.log" for s in shards} if rule in chain.per_shard else {f"logs/{rule}.log"}
        assert want <= rel, (rule, sorted(rel))
    # the per-instance stage reports progress (tqdm's final line) into its own log
    if chain.stage != "ingest":
        for s in shards:
            text = (wd / f"logs/{chain.stage}/{s}.log").read_text()
            assert re.search(r"100%\|", text), text[-2000:]


def _wait_for_partial_artifact(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> Path:
    """Poll until a stage has an artifact open for writing (its hidden temp file); return that file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and ".tmp-" in entry.name:
                    return Path(entry.path)
        if proc.poll() is not None:
            raise AssertionError(f"the workflow finished (rc {proc.returncode}) before {folder} was being written")
        time.sleep(0.002)
    raise AssertionError(f"no artifact was written in {folder} within {timeout} s")


def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(tmp_path):
    chain = cheapest_chain()
    reference = digests(reference_run(chain))
    wd = tmp_path / "wf"
    write_config(wd, chain.overrides)
    stage_dir = wd / "results" / chain.stage_dir
    log = tmp_path / "killed-run.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(SNAKEMAKE + ["-d", str(wd), "--cores", "1", chain.target], cwd=REPO, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PSEUDOMASK_NO_PROGRESS": "0"})
    try:
        partial = _wait_for_partial_artifact(proc, stage_dir)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the job it runs, as a node failure would
        proc.wait()
    target = stage_dir / partial.name[1:].split(".tmp-")[0]

    # No partial artifact at an output path: the one being written is absent, the others are complete.
    assert not target.exists(), f"{target} exists after its job was killed mid-write"
    for f in stage_dir.glob("*.h5"):
        with Artifact(f) as a:
            assert sum(a.status_counts().values()) == len(a.instances["id"]) > 0, f

    # The documented recovery: release the killed run's lock, then the same command with --rerun-incomplete
    # (the Slurm profile sets it; Snakemake marked the killed job's outputs incomplete) finishes the run,
    # and its outputs equal the uninterrupted run's.
    snakemake(wd, "--unlock")
    snakemake(wd, "--cores", "2", "--rerun-incomplete", chain.target)
    assert digests(wd) == reference


def test_changed_parameter_reruns_its_stage_and_downstream_only(tmp_path):
    chain = cheapest_chain()
    wd = tmp_path / "wf"
    shutil.copytree(reference_run(chain), wd, symlinks=True)  # copy2 keeps mtimes: the copy is up to date
    before = {k: p.stat().st_mtime_ns for k, p in outputs(wd).items()}
    assert job_stats(snakemake(wd, "-n", "--cores", "2", chain.target).stdout) == {}
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    change: dict = chain.new_value
    for key in reversed(chain.param):
        change = {key: change}
    (wd / "config.yaml").write_text(yaml.safe_dump(deep_update(cfg, change), sort_keys=False))

    planned = job_stats(snakemake(wd, "-n", "--cores", "2", chain.target).stdout)
    assert chain.stage in planned, planned
    assert set(planned) - {"all"} <= {chain.stage, *chain.downstream}, planned
    assert not set(planned) & chain.upstream, planned

    snakemake(wd, "--cores", "2", chain.target)
    after = {k: p.stat().st_mtime_ns for k, p in outputs(wd).items()}
    stage_prefix = f"results/{chain.stage_dir}/"
    rewritten = {k for k in before if k in after and after[k] != before[k]}
    assert any(k.startswith(stage_prefix) for k in rewritten), rewritten
    # upstream artifacts are untouched
    for k in before:
        if any(k.startswith(f"results/{u}/") for u in chain.upstream):
            assert after.get(k) == before[k], k
