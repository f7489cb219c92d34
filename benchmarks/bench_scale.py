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

    .venv/bin/python benchmarks/bench_scale.py [--images 100000 --instances 800000 --shard-size 1000 100]
"""

from __future__ import annotations

import argparse
import json
import re
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

from pseudomask.ingest import ingest

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--instances", type=int, default=800_000)
    ap.add_argument("--shard-size", type=int, nargs="+", default=[1000, 100],
                    help="images per shard (ingest.shard_size); one ingest and dry run per value")
    ap.add_argument("--repeat", type=int, default=2, help="dry runs to time")
    ap.add_argument("--workdir", type=Path, help="keep the work folder here (default: a temporary one)")
    ap.add_argument("--skip-dag", action="store_true")
    ap.add_argument("--skip-grabcut", action="store_true")
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
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
