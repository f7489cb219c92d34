"""Running the real workflow from tests: a private work folder with a tiny config, Snakemake as a subprocess,
the cheapest chain of stages that exists today, and content digests of the outputs.

Each test gets its own working directory (`snakemake -s REPO/Snakefile -d WORKDIR`), so it neither locks
nor touches the checkout's results/ and .snakemake/.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from pseudomask.config import deep_update

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# attributes that legitimately differ between two runs of the same stage on the same input: the creation
# time, and the input files' sha256 (upstream artifacts carry their own creation time; their paths still count)
VOLATILE_ATTRS = {"created"}
VOLATILE_JSON_KEYS = {"created", "date_created"}  # e.g. COCO's info.date_created


def write_config(workdir: Path, overrides: dict | None = None, images: int = 4, shard_size: int = 2) -> dict:
    """The repository's config.yaml with a tiny demo dataset and the GPU-sized stages switched off."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = deep_update(cfg, {"demo_data": {"scenes": images, "test_scenes": 2}, "ingest": {"shard_size": shard_size},
                            "workflow": {"retrain": False, "boxcaseg": False}})
    cfg = deep_update(cfg, overrides or {})
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: float = 300,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake from the repository root (so `--profile slurm` resolves) on the work folder."""
    env = {**(env or os.environ), "PSEUDOMASK_NO_PROGRESS": "0"}  # progress bars go to the rule logs
    p = subprocess.run(SNAKEMAKE + ["-d", str(workdir), *args], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=REPO)
    if check and p.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n"
                             f"{p.stderr[-6000:]}")
    return p


@functools.lru_cache(maxsize=1)
def workflow_rules() -> frozenset[str]:
    """Names of the rules the workflow defines today (others' rules land over time)."""
    with tempfile.TemporaryDirectory() as d:
        write_config(Path(d))
        out = snakemake(Path(d), "--list-rules").stdout
    return frozenset(line.strip() for line in out.splitlines() if re.fullmatch(r"[A-Za-z_]\w*", line.strip()))


# Prints {rule: its stage, threads, resources, conda env, script, log} as Snakemake itself loads the workflow
# (`use rule` inheritance included); in a subprocess, since loading a workflow changes the process's folder.
# Snakemake has no public listing of rules' params and resources: this reads its Workflow object.
_RULES_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ResourceSettings

value = lambda v: getattr(v, "value", v)  # a Resource (Snakemake 9) or a plain number
with SnakemakeApi() as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path(sys.argv[1]),
                      workdir=Path(sys.argv[2]))._workflow
    print(json.dumps({r.name: {"stage": dict(r.params.items()).get("stage"), "threads": value(r.resources["_cores"]),
                               "resources": {k: value(v) for k, v in r.resources.items()
                                             if not k.startswith("_") and k != "tmpdir"},
                               "conda": r.conda_env and str(r.conda_env), "script": r.script, "log": list(r.log)}
                      for r in wf.rules}))
"""


@functools.lru_cache(maxsize=1)
def rule_declarations() -> dict[str, dict]:
    """{rule: {stage, threads, resources, conda, script, log}} of the workflow on the repository's config."""
    with tempfile.TemporaryDirectory() as d:
        write_config(Path(d))
        p = subprocess.run([sys.executable, "-c", _RULES_SCRIPT, str(REPO / "Snakefile"), d], capture_output=True,
                           text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Chain:
    """A cheap path through the workflow: a target, the config it needs, and one stage inside it to poke.

    `stage` is a per-shard rule whose artifacts appear in results/<stage_dir>/; `param` is a config key
    of that stage that its rule passes as a parameter, with a new value; `downstream` the rules that
    must rerun when it changes (besides the stage itself), `upstream` those that must not.
    """

    name: str
    target: str
    needs: frozenset[str]
    overrides: dict = field(default_factory=dict)
    stage: str = "ingest"
    stage_dir: str = "ingest/shards"
    param: tuple[str, ...] = ("ingest", "shard_size")
    new_value: object = 1
    downstream: frozenset[str] = frozenset()
    upstream: frozenset[str] = frozenset({"demo_data"})
    per_shard: frozenset[str] = frozenset()  # rules with one job per shard


CHAINS = [
    # demo_data -> ingest -> grabcut (per shard) -> merge_drop (per shard) -> export
    Chain("grabcut-export", "export", frozenset({"demo_data", "ingest", "grabcut", "merge_drop", "export"}),
          overrides={"workflow": {"merge_drop_source": "grabcut"}}, stage="grabcut", stage_dir="grabcut",
          param=("grabcut", "iterations"), new_value=3, downstream=frozenset({"merge_drop", "export"}),
          upstream=frozenset({"demo_data", "ingest"}), per_shard=frozenset({"grabcut", "merge_drop"})),
    # demo_data -> ingest -> mcg (per shard) -> merge_drop (per shard) -> export
    Chain("mcg-export", "export", frozenset({"demo_data", "ingest", "mcg", "merge_drop", "export"}),
          overrides={"workflow": {"merge_drop_source": "mcg"}}, stage="mcg", stage_dir="mcg",
          param=("mcg", "max_proposals"), new_value=500, downstream=frozenset({"merge_drop", "export"}),
          upstream=frozenset({"demo_data", "ingest"}), per_shard=frozenset({"mcg", "merge_drop"})),
    # what exists on day one: demo_data -> ingest (checkpoint)
    Chain("ingest", "results/ingest/manifest.json", frozenset({"demo_data", "ingest"})),
]


def cheapest_chain() -> Chain:
    rules = workflow_rules()
    return next(c for c in CHAINS if c.needs <= rules)


def outputs(workdir: Path) -> dict[str, Path]:
    """Every artifact and JSON under results/, by path relative to the work folder."""
    res = workdir / "results"
    return {str(p.relative_to(workdir)): p for p in sorted(res.rglob("*"))
            if p.is_file() and p.suffix in (".h5", ".json") and not p.name.startswith(".")}


def artifact_digest(path: Path, root: Path | None = None) -> str:
    """sha256 over an HDF5 file's content (names, attributes, dtypes, shapes, data), not its byte layout.

    Two runs of a stage write the same content but not the same bytes: the creation time is an attribute,
    and so are the sha256 of the input files (of which only the paths are digested here). Occurrences of
    `root` (a work folder) in string attributes are neutralised so that two work folders compare equal.
    """
    h = hashlib.sha256()
    root_s = str(Path(root).resolve()) if root else None

    def attrs(obj) -> None:
        for k in sorted(obj.attrs):
            if k in VOLATILE_ATTRS:
                continue
            v = obj.attrs[k]
            if isinstance(v, str):
                if k == "inputs":
                    v = json.dumps(sorted(json.loads(v)))
                if root_s:
                    v = v.replace(root_s, "<workdir>")
                h.update(f"@{k}={v!r}".encode())
            else:
                h.update(f"@{k}=".encode() + np.asarray(v).tobytes())

    def visit(name, obj) -> None:
        h.update(name.encode())
        attrs(obj)
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            h.update(f"{obj.dtype}{obj.shape}".encode())
            h.update(repr(data.tolist()).encode() if data.dtype.kind == "O" else np.ascontiguousarray(data).tobytes())

    with h5py.File(path, "r") as f:
        attrs(f)
        f.visititems(visit)
    return h.hexdigest()


def digest(path: Path, root: Path | None = None) -> str:
    """Content digest of an artifact (.h5) or a JSON output, independent of creation time and work folder."""
    if path.suffix == ".h5":
        return artifact_digest(path, root)
    text = path.read_text() if path.suffix == ".json" else path.read_bytes().decode("latin-1")
    if root:
        text = text.replace(str(Path(root).resolve()), "<workdir>")
    if path.suffix == ".json":
        def strip(x):
            if isinstance(x, dict):
                return {k: strip(v) for k, v in x.items() if k not in VOLATILE_JSON_KEYS}
            return [strip(v) for v in x] if isinstance(x, list) else x

        return hashlib.sha256(json.dumps(strip(json.loads(text)), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(text.encode("latin-1")).hexdigest()


def digests(workdir: Path) -> dict[str, str]:
    """{relative path: content digest} of every output under the work folder's results/."""
    return {k: digest(p, workdir) for k, p in outputs(workdir).items()}


def job_stats(out: str) -> dict[str, int]:
    """{rule: jobs} from the 'Job stats' table Snakemake prints (empty when nothing is to be done)."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\n", out, re.S)
    if not m:
        return {}
    return {name: int(n) for name, n in (line.split() for line in m.group(1).splitlines()) if name != "total"}


_REFERENCE: dict[str, Path] = {}


def reference_run(chain: Chain) -> Path:
    """A finished, uninterrupted local run of `chain` (made once per test session, shared by test modules)."""
    if chain.name not in _REFERENCE:
        wd = Path(tempfile.mkdtemp(prefix="pm-reference-"))
        atexit.register(shutil.rmtree, wd, True)
        write_config(wd, chain.overrides)
        snakemake(wd, "--cores", "2", chain.target)
        _REFERENCE[chain.name] = wd
    return _REFERENCE[chain.name]
