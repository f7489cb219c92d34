"""COCO-scale workflow planning and bounded per-shard memory.

1. DAG at scale: a synthetic COCO file of 100k images / 800k boxes (the size of COCO train2017) goes
   through the real `ingest` checkpoint (Snakemake, one core); then `snakemake -n` plans the whole default
   workflow over its shards. Prints the wall time of the dry run against the 30 s target and the job count,
   for the recommended shard size (1,000 images) and for ten times as many shards.
   The synthetic images do not exist on disk, so ingest marks every instance `failed` (missing file); the
   DAG is the same as with real images.
2. Memory of one shard: peak RSS (whole process tree) of the GrabCut stage (`pseudomask grabcut`, one thread)
   on shards of 250 and 1,000 instances made from ../shared/data/coco-dev (images repeated under new ids), so
   the ratio shows whether memory grows with the shard (it should not: artifacts are written image by image).
3. Cost model: every box-prior stage (grabcut, mcg, agree, validity, merge-drop) run by its CLI on one shard of
   the 64 coco-dev images, threads 1 (then grabcut and merge-drop with --rehearsal 0 side by side at threads 1
   and 2, run as 1, 2, 2, 1; mcg so on a default shard, --mcg-images 500, coco-dev's repeated): wall
   and CPU seconds of the process tree, ms per instance, s per image, bytes per instance, peak RSS; projected
   to COCO train2017 (118,287 images, 860,001 instances) and 10x: core-hours and disk per stage, jobs. Then the
   targets as
   ratios: artifact bytes per instance against the same masks as COCO compressed RLE in JSON, read times,
   threads 2 / threads 1, GrabCut CPU per instance and mIoU (also side by side with the GrabCut defaults of
   when the target was set, a ratio that does not depend on the machine's speed), box-prior core-hours. Planning time
   (`snakemake -n`) is section 1: shard_size 1000 gives COCO's job count, shard_size 100 that of 10x COCO.
4. Rehearsal: the box-prior chain, then select, export and evaluate-masks (the pseudo labels' mIoU against
   coco-dev's masks), each by its CLI at the rule's threads, on one shard of --rehearsal real images (coco-dev
   repeated; default 1,000; a smaller one is extrapolated to 1,000): wall, CPU, disk and peak RSS per stage;
   then grabcut and merge-drop at threads 1 and 2 side by side on that shard (threads 1, 2, 2, 1), the
   ratios the targets report (the 64-image shard is too small for merge-drop: its work is about the cost of
   spawning the workers). 25 to 60 minutes on this 2-core machine with everything, by how fast it runs that day.

    .venv/bin/python benchmarks/bench_scale.py [--images 118287 --instances 860001 --shard-size 1000 100]
        [--skip-dag] [--skip-grabcut] [--skip-costs] [--rehearsal 1000] [--grabcut-only]
        [--threads-only [--threads-stages grabcut mcg merge_drop]] [--mcg-images 500]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, coco_dev

import numpy as np
import psutil
import yaml

from pseudomask.ingest import IngestSettings, ingest
from pseudomask.settings import option

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def synthetic_coco(path: Path, n_images: int, n_instances: int, seed: int = 0) -> None:
    """COCO boxes (no masks) of COCO's shape: 640x480 images, 80 categories, instances spread unevenly."""
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    image_of = np.sort(rng.integers(1, n_images + 1, n_instances))
    bw = np.clip(rng.lognormal(4.0, 0.9, n_instances), 4, w - 1)
    bh = np.clip(rng.lognormal(4.0, 0.9, n_instances), 4, h - 1)
    x = rng.uniform(0, w - bw)
    y = rng.uniform(0, h - bh)
    cat = rng.integers(1, 81, n_instances)
    with open(path, "w") as fh:
        fh.write('{"categories": ')
        json.dump([{"id": i, "name": f"class{i}"} for i in range(1, 81)], fh)
        fh.write(', "images": ')
        json.dump([{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}
                   for i in range(1, n_images + 1)], fh)
        fh.write(', "annotations": [')
        for k in range(n_instances):
            fh.write(("," if k else "") + f'{{"id":{k + 1},"image_id":{image_of[k]},"category_id":{cat[k]},'
                     f'"bbox":[{x[k]:.1f},{y[k]:.1f},{bw[k]:.1f},{bh[k]:.1f}],"iscrowd":0}}')
        fh.write("]}")


def write_config(workdir: Path, shard_size: int, **dataset) -> None:
    """config.yaml of the run: the defaults (every key the workflow leaves out) but for the dataset and the
    shard size."""
    cfg = {"dataset": dataset, "ingest": {"shard_size": shard_size}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants (what a Slurm memory limit counts)."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def run(cmd: list[str], cwd: Path, log: Path) -> tuple[float, int, str]:
    """Run a command; return (wall seconds, peak tree RSS in bytes, output). Raises on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        mon = PeakRSS(p.pid)
        rc = p.wait()
        peak = mon.stop()
    dt = time.perf_counter() - t0
    out = log.read_text()
    if rc:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{out[-3000:]}")
    return dt, peak, out


def job_stats(out: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run as {rule: count} (with 'total')."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\n", out, re.S)
    if not m:
        raise SystemExit("no job stats in the dry run's output:\n" + out[-2000:])
    return {name: int(n) for name, n in (line.split() for line in m.group(1).splitlines())}


def bench_dag(args, work: Path, shard_size: int) -> dict:
    """Ingest the synthetic COCO file with `shard_size` through the checkpoint, then time dry runs."""
    ann = work / "synthetic.json"
    images = work / "images"
    images.mkdir(exist_ok=True)
    if not ann.exists():
        t0 = time.perf_counter()
        synthetic_coco(ann, args.images, args.instances)
        print(f"synthetic COCO: {args.images:,} images, {args.instances:,} boxes, "
              f"{ann.stat().st_size / 2**20:.0f} MiB JSON, written in {time.perf_counter() - t0:.1f} s", flush=True)
    # the synthetic file doubles as ground truth (COCO has masks): the plan then includes the evaluations
    write_config(work, shard_size, annotations=str(ann), images=str(images), ground_truth=str(ann))
    t_ingest, rss_ingest, _ = run(SNAKEMAKE + ["--cores", "1", "results/ingest/manifest.json"], work,
                                  work / f"ingest-{shard_size}.log")
    manifest = json.loads((work / "results/ingest/manifest.json").read_text())
    n_shards = len(manifest["shards"])
    print(f"ingest checkpoint (Snakemake, 1 core), shard_size {shard_size}: {t_ingest:.1f} s, "
          f"peak RSS {rss_ingest / 2**30:.2f} GiB, {n_shards} shards", flush=True)
    times, stats, rss = [], {}, 0
    for i in range(args.repeat):
        t, rss, out = run(SNAKEMAKE + ["-n", "--quiet", "rules"], work, work / f"dryrun-{shard_size}-{i}.log")
        times.append(t)
        stats = job_stats(out)
    return {"shard_size": shard_size, "t_ingest": t_ingest, "rss_ingest": rss_ingest, "shards": n_shards,
            "times": times, "stats": stats, "rss_dry": rss}


def coco_dev_shard(out: Path, n_instances: int) -> Path:
    """COCO JSON of about n_instances real boxes: coco-dev's images repeated under new ids."""
    src = json.loads((coco_dev() / "annotations.json").read_text())
    images, anns = [], []
    rep = 0
    while len(anns) < n_instances:
        for im in src["images"]:
            new_id = rep * 1_000_000 + im["id"]
            mine = [a for a in src["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd")]
            if not mine:
                continue
            images.append({**im, "id": new_id})
            for a in mine:
                anns.append({k: a[k] for k in ("category_id", "bbox", "area")}
                            | {"id": len(anns) + 1, "image_id": new_id, "iscrowd": 0})
            if len(anns) >= n_instances:
                break
        rep += 1
    path = out / f"coco-dev-{n_instances}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": src["categories"]}))
    return path


def bench_grabcut_rss(work: Path, sizes=(250, 1000), threads: int = 1) -> list[tuple[int, int, float, int]] | str:
    """Peak RSS of the GrabCut stage on one ingested shard per size, run by its CLI (the code its rule runs)."""
    dev = coco_dev()
    if not (dev / "annotations.json").exists():
        return f"{dev} not found: GrabCut shard memory not measured"
    rows = []
    for n in sizes:
        ann = coco_dev_shard(work, n)
        manifest = ingest(ann, dev / "images", work / f"shard-{n}", shard_size=10**9)
        shard = work / f"shard-{n}" / f"{manifest['shards'][0]}.h5"
        cmd = [sys.executable, "-m", "pseudomask", "grabcut", "--shard", str(shard), "--images", str(dev / "images"),
               "--out", str(work / f"grabcut-{n}.h5"), "--threads", str(threads)]
        t, rss, _ = run(cmd, work, work / f"grabcut-{n}.log")
        rows.append((manifest["instances"], manifest["images"], t, rss))
    return rows


# ---- cost model: measured per-unit costs of the box-prior stages on real images, projected to COCO ----

COCO_TRAIN = {"images": 118_287, "instances": 860_001}
BOX_PRIORS = ("grabcut", "mcg", "agree", "validity", "merge_drop")
PER_IMAGE = {"mcg"}  # stages whose cost follows images (proposals of every image); the rest follow instances


def run_stage_cli(stage: str, ports: dict[str, Path], threads: int, work: Path, options: tuple[str, ...] = ()
                  ) -> dict:
    """One stage by its CLI (the code its rule runs), with settings `options`: wall s, CPU s of the whole
    process tree, peak tree RSS."""
    cmd = [sys.executable, "-m", "pseudomask", stage.replace("_", "-"), "--threads", str(threads), *options]
    for k, v in ports.items():
        cmd += [option(k), *(map(str, v) if isinstance(v, (list, tuple)) else [str(v)])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss, _ = run(cmd, work, work / f"{stage}-{threads}.log")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss": rss}


def job_start_cpu(stage: str, work: Path) -> float:
    """CPU seconds of starting a stage's job (interpreter, imports, CLI), measured as `--help`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run([sys.executable, "-m", "pseudomask", stage.replace("_", "-"), "--help"], work, work / f"{stage}-help.log")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def rle_json_bytes(artifact: Path) -> tuple[int, int]:
    """(bytes of the artifact's masks as COCO compressed RLE in JSON, instances)."""
    from pseudomask.masks import rle_encode
    from pseudomask.store import Artifact

    total, n = 0, 0
    with Artifact(artifact) as a:
        for i in a.image_ids:
            for m in a.masks(i):
                total += len(json.dumps({"segmentation": rle_encode(m)}))
                n += 1
    return total, n


def read_times(artifact: Path) -> dict:
    """Median ms to read one image's masks and one instance's mask, by the library and by plain h5py."""
    import h5py

    from pseudomask.store import Artifact

    out = {}
    with Artifact(artifact) as a:
        a.masks(a.image_ids[0])  # the index, read once per file
        t = []
        for i in a.image_ids:
            t0 = time.perf_counter()
            a.masks(i)
            t.append(time.perf_counter() - t0)
        out["image"] = 1e3 * float(np.median(t))
        t = []
        for k in a.instances["id"][:: max(len(a.instances["id"]) // 100, 1)]:
            t0 = time.perf_counter()
            a.mask(int(k))
            t.append(time.perf_counter() - t0)
        out["instance"] = 1e3 * float(np.median(t))
    with h5py.File(artifact, "r") as f:
        m = f["masks"]
        t = []
        for i in range(0, len(m["shape"]), max(len(m["shape"]) // 100, 1)):
            t0 = time.perf_counter()
            m["data"][m["start"][i]:m["start"][i + 1]].reshape(m["shape"][i])
            t.append(time.perf_counter() - t0)
        out["h5py_instance"] = 1e3 * float(np.median(t))
    return out


def copies(artifact: Path, out: Path, k: int) -> int:
    """Size in bytes of the artifact rewritten with its images (rows, masks, maps) k times under new ids."""
    from pseudomask.store import Artifact, ArtifactWriter

    with Artifact(artifact) as a, ArtifactWriter(out, stage=a.stage, method=a.method, params=a.params,
                                                 inputs=a.inputs, categories=a.categories) as w:
        for rep in range(k):
            for i in a.image_ids:
                im = dict(a.image(i), id=rep * 10**9 + i)
                rows = [dict(r, id=rep * 10**9 + r["id"]) for r in a.records(i)]
                for r in rows:
                    r.pop("image_id")
                maps = {n: m for n in a.map_names() if (m := a.map(n, i)) is not None}
                w.add_image(im, rows, a.masks(i), maps=maps, tags=a.tags.get(i, []))
    size = out.stat().st_size
    out.unlink()
    return size


def marginal_bytes(artifact: Path, work: Path) -> tuple[float, float]:
    """(bytes one more copy of the artifact's images adds, fixed bytes of a file): the per-unit cost of a large
    shard without the fixed metadata of a small one."""
    one, two = copies(artifact, work / "copy1.h5", 1), copies(artifact, work / "copy2.h5", 2)
    return two - one, 2 * one - two


def masks_storage(artifact: Path) -> int:
    """Bytes the masks themselves take in the file (masks/ datasets' storage)."""
    import h5py

    with h5py.File(artifact, "r") as f:
        return sum(d.id.get_storage_size() for d in f["masks"].values()) if "masks" in f else 0


def grabcut_miou(artifact: Path, gt: Path | None = None) -> float | None:
    """mIoU of an artifact's masks against `gt` (default: coco-dev's annotations)."""
    from pseudomask.mask_metrics import evaluate_pseudo

    return evaluate_pseudo(str(artifact), gt or coco_dev() / "annotations.json", panoptic=False).get("miou")


def coco_dev_present() -> bool:
    """Whether coco-dev is there; said when it is not."""
    if not (coco_dev() / "annotations.json").exists():
        print(f"{coco_dev()} not found: not measured")
        return False
    return True


def dev_shard(work: Path) -> tuple[Path, dict] | None:
    """coco-dev ingested as one shard under `work`: (shard, manifest); None (said) when coco-dev is absent."""
    dev = coco_dev()
    if not coco_dev_present():
        return None
    manifest = ingest(dev / "annotations.json", dev / "images", work / "dev-shard", shard_size=10**9)
    return work / "dev-shard" / f"{manifest['shards'][0]}.h5", manifest


# GrabCut's defaults when the scale targets were set (46 ms per instance then, on that machine)
FILED_GRABCUT = ("--iterations", "5", "--retry-iterations", "2", "--min-side", "80")
FILED_GRABCUT_MS = 46.0


def grabcut_against_filed(work: Path, shard: Path, n_inst: int) -> list[str]:
    """GrabCut's CPU per instance at the defaults and at the defaults of when the target was set, side by side
    (filed, now, filed, now; one thread, job start subtracted), and both mIoUs: the ratio does not depend on
    the machine's speed, the milliseconds do."""
    start = job_start_cpu("grabcut", work)
    ms: dict[str, list[float]] = {"filed": [], "now": []}
    for i, which in enumerate(("filed", "now", "filed", "now")):
        out = work / f"grabcut-{which}-{i}.h5"
        r = run_stage_cli("grabcut", {"shard": shard, "out": out}, 1, work,
                          FILED_GRABCUT if which == "filed" else ())
        ms[which].append(1e3 * max(r["cpu"] - start, 0.0) / n_inst)
    f, n = np.mean(ms["filed"]), np.mean(ms["now"])
    miou = {w: grabcut_miou(work / f"grabcut-{w}-{i}.h5") for w, i in (("filed", 0), ("now", 1))}
    ratio = n / f
    return [f"grabcut CPU per instance, side by side on {n_inst} instances (filed, now, filed, now): defaults "
            f"{n:.1f} ms ({', '.join(f'{x:.1f}' for x in ms['now'])}) vs the defaults when the target was set "
            f"({' '.join(FILED_GRABCUT)}) {f:.1f} ms ({', '.join(f'{x:.1f}' for x in ms['filed'])}): ratio "
            f"{ratio:.2f}, i.e. {FILED_GRABCUT_MS * ratio:.1f} ms on the machine that measured "
            f"{FILED_GRABCUT_MS:.0f} ms (target <= 25: ratio {FILED_GRABCUT_MS * ratio / 25:.2f}); mIoU on coco-dev "
            f"{miou['now']:.4f} vs {miou['filed']:.4f}"]


def bench_costs(work: Path, scale: tuple[int, ...] = (1, 10), shard_size: int = 1000, rehearsal: int = 0,
                mcg_images: int = IngestSettings().shard_size) -> None:
    """Measure the box-prior stages on coco-dev (one shard, threads 1 and 2) and print the cost table; mcg's
    threads ratio on a shard of `mcg_images` (`mcg_side_by_side`); with `rehearsal` images, then the rehearsal
    (`bench_rehearsal`) and its side-by-side threads ratios."""
    found = dev_shard(work)
    if found is None:
        return
    shard, manifest = found
    n_img, n_inst = manifest["images"], manifest["instances"]
    out = {s: work / f"{s}.h5" for s in BOX_PRIORS}
    ports = {"grabcut": {"shard": shard, "out": out["grabcut"]}, "mcg": {"shard": shard, "out": out["mcg"]},
             "agree": {"grabcut": out["grabcut"], "mcg": out["mcg"], "out": out["agree"]},
             "validity": {"masks": out["grabcut"], "out": out["validity"]},
             "merge_drop": {"masks": out["validity"], "out": out["merge_drop"]}}
    m1 = {s: run_stage_cli(s, ports[s], 1, work) for s in BOX_PRIORS}
    sizes, fixed = {}, {}
    for s in BOX_PRIORS:
        sizes[s], fixed[s] = marginal_bytes(out[s], work)
    mask_bytes = {s: masks_storage(out[s]) for s in BOX_PRIORS}
    start = {s: job_start_cpu(s, work) for s in BOX_PRIORS}
    filed = grabcut_against_filed(work, shard, n_inst)
    # grabcut and merge-drop on the rehearsal shard, else here (the threads-1 run above the first of 1, 2, 2, 1);
    # mcg on a shard of its own (at threads 1 on the 1,000-image rehearsal shard: 4-15 minutes a run)
    ratios = [] if rehearsal else side_by_side(work, ports, n_img, ("grabcut", "merge_drop"),
                                               first={s: m1[s] for s in BOX_PRIORS})
    ratios += mcg_side_by_side(work, mcg_images) if mcg_images else []
    rle, n_rle = rle_json_bytes(out["grabcut"])
    reads = read_times(out["grabcut"])
    miou = grabcut_miou(out["grabcut"])
    ratios += bench_rehearsal(work, rehearsal) if rehearsal else []

    print(f"\n== measured on coco-dev: one shard of {n_img} real COCO images, {n_inst} instances; each stage by its "
          "CLI, threads 1 (CPU = whole process tree)")
    print("(B/inst, B/image: what the shard's images add to a file, without its fixed metadata, given as "
          "fixed KiB)")
    print(f"{'stage':<11} {'wall s':>7} {'CPU s':>7} {'ms/inst':>8} {'s/image':>8} {'job start s':>11} "
          f"{'B/inst':>7} {'mask B/inst':>11} {'B/image':>8} {'fixed KiB':>9} {'peak RSS MiB':>12}")
    for s in BOX_PRIORS:
        r = m1[s]
        work_cpu = max(r["cpu"] - start[s], 0.0)
        print(f"{s:<11} {r['wall']:>7.1f} {r['cpu']:>7.1f} {1e3 * work_cpu / n_inst:>8.1f} {work_cpu / n_img:>8.3f} "
              f"{start[s]:>11.2f} {sizes[s] / n_inst:>7.0f} {mask_bytes[s] / n_inst:>11.0f} {sizes[s] / n_img:>8.0f} "
              f"{fixed[s] / 1024:>9.0f} {r['rss'] / 2**20:>12.0f}")

    print(f"\n== projected: COCO train2017 ({COCO_TRAIN['images']:,} images, {COCO_TRAIN['instances']:,} instances) "
          f"and 10x, shards of {shard_size} images; per-unit CPU (per instance, mcg per image) x units + job start "
          "x jobs")
    print(f"{'dataset':<9} {'stage':<11} {'unit':<9} {'units':>10} {'jobs':>6} {'core-h':>8} {'disk GiB':>9} "
          f"{'peak RSS MiB/job':>16}")
    totals = {}
    for k in scale:
        images, instances = COCO_TRAIN["images"] * k, COCO_TRAIN["instances"] * k
        jobs = -(-images // shard_size)
        name = "COCO" if k == 1 else f"{k}x COCO"
        tot_h = tot_d = 0.0
        for s in BOX_PRIORS:
            per_image = s in PER_IMAGE
            units = images if per_image else instances
            work_cpu = max(m1[s]["cpu"] - start[s], 0.0)
            unit_cpu = work_cpu / (n_img if per_image else n_inst)
            unit_disk = sizes[s] / (n_img if per_image else n_inst)
            core_h = (unit_cpu * units + start[s] * jobs) / 3600
            disk = (unit_disk * units + fixed[s] * jobs) / 2**30
            tot_h, tot_d = tot_h + core_h, tot_d + disk
            # a shard's memory: measured on a 64-image shard; bounded by the largest image (bench below)
            print(f"{name:<9} {s:<11} {'image' if per_image else 'instance':<9} {units:>10,} {jobs:>6} "
                  f"{core_h:>8.1f} {disk:>9.2f} {m1[s]['rss'] / 2**20:>16.0f}")
        totals[k] = (tot_h, tot_d, jobs)
        print(f"{name:<9} {'box priors':<11} {'':<9} {'':>10} {jobs * len(BOX_PRIORS):>6} {tot_h:>8.1f} "
              f"{tot_d:>9.2f}")
    for k, (h, d, jobs) in totals.items():
        print(f"{'COCO' if k == 1 else f'{k}x COCO'}: {h:.1f} core-hours = {h / 2:.1f} h on this 2-core machine, "
              f"{h / 64:.2f} h on 64 cores; {d:.1f} GiB of box-prior artifacts")

    ratio_b = (sizes["grabcut"] / n_inst) / (rle / n_rle)
    gc_ms = 1e3 * max(m1["grabcut"]["cpu"] - start["grabcut"], 0.0) / n_inst
    print("\n== targets (ratios measured in this run)")
    print(f"grabcut artifact bytes/instance {sizes['grabcut'] / n_inst:.0f} vs COCO compressed RLE in JSON "
          f"{rle / n_rle:.0f}: ratio {ratio_b:.2f} (target <= 1.5; with the instance table); masks alone {mask_bytes['grabcut'] / n_inst:.0f} "
          f"B/instance, ratio {(mask_bytes['grabcut'] / n_inst) / (rle / n_rle):.2f}")
    print(f"one image's masks read (library, median over {n_img} images): {reads['image']:.2f} ms (target < 10): "
          f"ratio {reads['image'] / 10:.2f}")
    print(f"one instance's mask read (median): library {reads['instance']:.2f} ms, plain h5py crop "
          f"{reads['h5py_instance']:.2f} ms (target < 2): ratio {max(reads['instance'], reads['h5py_instance']) / 2:.2f}")
    for line in ratios:
        print(line)
    for line in filed:
        print(line)
    print(f"grabcut CPU per instance {gc_ms:.1f} ms (target <= 25): ratio {gc_ms / 25:.2f}; mIoU on coco-dev "
          f"{miou if miou is None else round(miou, 3)} (0.661 before)")
    print(f"box priors for COCO train {totals[scale[0]][0]:.1f} core-hours (target < 40): ratio "
          f"{totals[scale[0]][0] / 40:.2f}")
    print(f"load average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores "
          "(other work shares the machine: wall-time ratios are upper bounds)")


def coco_dev_images(out: Path, n_images: int) -> Path:
    """COCO JSON of n_images real images: coco-dev's images with boxes, repeated under new ids."""
    src = json.loads((coco_dev() / "annotations.json").read_text())
    used = [im for im in src["images"] if any(a["image_id"] == im["id"] for a in src["annotations"])]
    images, anns = [], []
    for k in range(n_images):
        im = used[k % len(used)]
        new_id = (k // len(used)) * 1_000_000 + im["id"]
        images.append({**im, "id": new_id})
        for a in src["annotations"]:
            if a["image_id"] == im["id"]:
                anns.append({**a, "id": len(anns) + 1, "image_id": new_id})
    path = out / f"coco-dev-{n_images}-images.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": src["categories"]}))
    return path


def repeated_shard(work: Path, n_images: int, name: str) -> tuple[Path, dict, Path]:
    """One shard (folder `work`/`name`) of `n_images` real images, coco-dev's repeated: (shard, manifest, COCO
    JSON)."""
    ann = coco_dev_images(work, n_images)
    manifest = ingest(ann, coco_dev() / "images", work / name, shard_size=10**9)
    return work / name / f"{manifest['shards'][0]}.h5", manifest, ann


def mcg_side_by_side(work: Path, n_images: int) -> list[str]:
    """mcg at threads 1 and 2 side by side (`side_by_side`) on one shard of `n_images` images (coco-dev
    repeated). The fixed costs of a job (its start, the shard's last images) are about a sixth of a 64-image
    shard's time at threads 2, a thirtieth of a default shard's (500 images)."""
    shard, manifest, _ = repeated_shard(work, n_images, f"mcg-{n_images}")
    return side_by_side(work, {"mcg": {"shard": shard}}, manifest["images"], ("mcg",))  # side_by_side names the outs


def disk_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


REHEARSAL = BOX_PRIORS + ("select", "export", "evaluate_masks")


def bench_rehearsal(work: Path, n_images: int, full: int = 1000, chain: bool = True,
                    stages: tuple[str, ...] = ("grabcut", "merge_drop")) -> list[str]:
    """The box-prior chain, select, export and evaluate-masks by their CLIs, each at its rule's threads, on one
    shard of `n_images` real images (coco-dev repeated): wall, CPU, disk and peak RSS per stage, extrapolated
    linearly to `full` images when smaller. Then `stages` (grabcut and merge-drop) at threads 1 and 2 side by
    side (`side_by_side`); returns those ratio lines for the targets. Without `chain` only grabcut and validity
    run first (merge-drop's input), unreported."""
    from pseudomask.registry import STAGES

    shard, manifest, ann = repeated_shard(work, n_images, "rehearsal")
    n_img, n_inst = manifest["images"], manifest["instances"]
    out = {s: work / f"rehearsal-{s}.h5" for s in REHEARSAL}
    out["export"], out["evaluate_masks"] = work / "rehearsal-export.json", work / "rehearsal-metrics.json"
    ports = {"grabcut": {"shard": shard, "out": out["grabcut"]}, "mcg": {"shard": shard, "out": out["mcg"]},
             "agree": {"grabcut": out["grabcut"], "mcg": out["mcg"], "out": out["agree"]},
             "validity": {"masks": out["grabcut"], "out": out["validity"]},
             "merge_drop": {"masks": out["validity"], "out": out["merge_drop"]},
             "select": {"masks": [out["grabcut"], out["mcg"], out["agree"]], "out": out["select"]},
             "export": {"artifacts": out["merge_drop"], "out": out["export"]},
             "evaluate_masks": {"pseudo": out["export"], "ground_truth": ann, "out": out["evaluate_masks"]}}
    threads = {s: int(STAGES[s].resources.get("threads", 1)) for s in REHEARSAL}
    if not chain:
        for s in ("grabcut", "validity"):
            run_stage_cli(s, ports[s], 2, work)
        return side_by_side(work, ports, n_img, stages)
    t0 = time.perf_counter()
    runs = {s: run_stage_cli(s, ports[s], threads[s], work) for s in REHEARSAL}
    total_wall = time.perf_counter() - t0
    k = full / n_img
    print(f"\n== rehearsal: the box-prior chain, select, export and evaluate-masks by their CLIs at the rules' threads "
          f"({', '.join(f'{s} {t}' for s, t in threads.items())}) on one shard of {n_img} real images "
          f"(coco-dev repeated), {n_inst} instances" + (f"; x{k:.3g} = extrapolated to {full} images" if k != 1 else ""))
    print(f"{'stage':<14} {'wall s':>7} {'CPU s':>7} {'disk MiB':>9} {'peak RSS MiB':>12}"
          + (f" {'wall s x' + format(k, '.3g'):>10} {'CPU s x' + format(k, '.3g'):>10} {'disk MiB x' + format(k, '.3g'):>12}"
             if k != 1 else ""))
    tot = {"wall": 0.0, "cpu": 0.0, "disk": 0}

    def total(name: str) -> None:
        print(f"{name:<14} {tot['wall']:>7.1f} {tot['cpu']:>7.1f} {tot['disk'] / 2**20:>9.1f} {'':>12}"
              + (f" {tot['wall'] * k:>10.0f} {tot['cpu'] * k:>10.0f} {tot['disk'] * k / 2**20:>12.1f}" if k != 1
                 else ""))

    for s in REHEARSAL:
        r, d = runs[s], disk_bytes(out[s])
        tot["wall"] += r["wall"]
        tot["cpu"] += r["cpu"]
        tot["disk"] += d
        print(f"{s:<14} {r['wall']:>7.1f} {r['cpu']:>7.1f} {d / 2**20:>9.1f} {r['rss'] / 2**20:>12.0f}"
              + (f" {r['wall'] * k:>10.0f} {r['cpu'] * k:>10.0f} {d * k / 2**20:>12.1f}" if k != 1 else ""))
        if s == BOX_PRIORS[-1]:
            total("box priors")
    total("chain")
    print(f"elapsed {total_wall:.0f} s; CPU per image {tot['cpu'] / n_img:.2f} s, of which mcg "
          f"{runs['mcg']['cpu'] / n_img:.2f} s")
    miou = grabcut_miou(out["grabcut"], ann)
    metrics = json.loads(out["evaluate_masks"].read_text()) if out["evaluate_masks"].exists() else {}
    print(f"mIoU on the rehearsal shard: grabcut {miou if miou is None else round(miou, 3)}, the exported pseudo "
          f"labels (merge-drop of validity) {metrics.get('miou', float('nan')):.3f}")
    return side_by_side(work, ports, n_img)


def side_by_side(work: Path, ports: dict, n_img: int, stages: tuple[str, ...] = ("grabcut", "merge_drop"),
                 first: dict[str, dict] | None = None) -> list[str]:
    """`stages` at threads 1 and 2, run as 1, 2, 2, 1 (so that a load that drifts during the run hits both
    alike; `first` holds runs at threads 1 already made, the first of the four): the targets' ratio lines."""
    lines = []
    for s in stages:
        walls: dict[int, list[float]] = {1: [], 2: []}
        cpus: dict[int, list[float]] = {1: [], 2: []}
        for i, t in enumerate((1, 2, 2, 1)):
            if i == 0 and first and s in first:
                r = first[s]
            else:
                r = run_stage_cli(s, dict(ports[s], out=work / f"side-{s}-{i}-t{t}.h5"), t, work)
            walls[t].append(r["wall"])
            cpus[t].append(r["cpu"])
        w1, w2 = np.mean(walls[1]), np.mean(walls[2])
        lines.append(f"{s}: threads 2 {w2:.1f} s wall vs threads 1 {w1:.1f} s, side by side on {n_img} images (run "
                     f"as 1, 2, 2, 1; walls threads 1 {walls[1][0]:.1f}, {walls[1][1]:.1f}, threads 2 {walls[2][0]:.1f}, "
                     f"{walls[2][1]:.1f}): ratio {w2 / w1:.2f} (target <= 0.6); CPU {np.mean(cpus[2]):.1f} s vs "
                     f"{np.mean(cpus[1]):.1f} s: ratio {np.mean(cpus[2]) / np.mean(cpus[1]):.2f}, so with two free "
                     f"cores at best {np.mean(cpus[2]) / np.mean(cpus[1]) / 2:.2f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=118_287)
    ap.add_argument("--instances", type=int, default=860_001)
    ap.add_argument("--shard-size", type=int, nargs="+", default=[1000, 100],
                    help="images per shard (ingest.shard_size); one ingest and dry run per value")
    ap.add_argument("--repeat", type=int, default=2, help="dry runs to time")
    ap.add_argument("--workdir", type=Path, help="keep the work folder here (default: a temporary one)")
    ap.add_argument("--skip-dag", action="store_true")
    ap.add_argument("--skip-grabcut", action="store_true")
    ap.add_argument("--skip-costs", action="store_true", help="skip the cost model (box-prior stages on coco-dev)")
    ap.add_argument("--grabcut-only", action="store_true",
                    help="after the dry run and the RSS part (unless skipped), only GrabCut's CPU per instance "
                         "against its defaults of when the target was set, side by side on coco-dev")
    ap.add_argument("--threads-only", action="store_true",
                    help="after the dry run and the RSS part (unless skipped), only the side-by-side threads "
                         "ratios of --threads-stages, no cost model")
    ap.add_argument("--threads-stages", nargs="+", default=["grabcut", "merge_drop"],
                    choices=["grabcut", "mcg", "merge_drop"],
                    help="the stages --threads-only compares (mcg on the --mcg-images shard, the others on the "
                         "rehearsal shard)")
    ap.add_argument("--mcg-images", type=int, default=IngestSettings().shard_size, metavar="IMAGES",
                    help="images of the shard (coco-dev repeated) on which mcg runs at threads 1 and 2 side by "
                         "side (default: a default shard, ingest.shard_size; 0 = not)")
    ap.add_argument("--rehearsal", type=int, default=1000, metavar="IMAGES",
                    help="images of the rehearsal shard (coco-dev repeated; 1000 for the full one; 0 = none)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_dag:
            results = [bench_dag(args, work, size) for size in args.shard_size]
            print("\n== snakemake -n over the whole default workflow (every stage on), after the ingest checkpoint")
            print(f"{'images':>9} {'instances':>10} {'shard_size':>10} {'shards':>7} {'jobs':>6} {'dry run s':>10} "
                  f"{'target s':>9} {'ratio':>6} {'RSS MiB':>8} {'ingest s':>9} {'ingest GiB':>11}")
            for r in results:
                best = min(r["times"])
                print(f"{args.images:>9,} {args.instances:>10,} {r['shard_size']:>10} {r['shards']:>7} "
                      f"{r['stats']['total']:>6} {best:>10.1f} {30:>9} {best / 30:>6.2f} {r['rss_dry'] / 2**20:>8.0f} "
                      f"{r['t_ingest']:>9.1f} {r['rss_ingest'] / 2**30:>11.2f}")
            for r in results:
                print(f"shard_size {r['shard_size']}: dry runs " + ", ".join(f"{t:.1f} s" for t in r["times"])
                      + "; jobs by rule: " + ", ".join(f"{k} {v}" for k, v in r["stats"].items() if k != "total"))
        if not args.skip_grabcut:
            rows = bench_grabcut_rss(work)
            print("\n== peak RSS of one GrabCut shard (process tree, coco-dev images repeated, 1 thread)")
            if isinstance(rows, str):
                print(rows)
            else:
                print(f"{'instances':>9} {'images':>7} {'time s':>7} {'peak RSS MiB':>13}")
                for n, n_img, t, rss in rows:
                    print(f"{n:>9} {n_img:>7} {t:>7.1f} {rss / 2**20:>13.0f}")
                (n0, _, _, r0), (n1, _, _, r1) = rows[0], rows[-1]
                print(f"RSS ratio {n1} / {n0} instances: {r1 / r0:.2f} (shard {n1 / n0:.0f}x larger)")
        if args.grabcut_only:
            found = dev_shard(work)
            for line in grabcut_against_filed(work, found[0], found[1]["instances"]) if found else []:
                print(line)
        elif args.threads_only:
            print(f"load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
            on_rehearsal = tuple(s for s in args.threads_stages if s != "mcg")
            if "mcg" in args.threads_stages and args.mcg_images and coco_dev_present():  # a shard of its own
                for line in mcg_side_by_side(work, args.mcg_images):
                    print(line)
            if on_rehearsal:
                for line in bench_rehearsal(work, args.rehearsal or 1000, chain=False, stages=on_rehearsal):
                    print(line)
            print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        elif not args.skip_costs:
            bench_costs(work, rehearsal=args.rehearsal, mcg_images=args.mcg_images)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
