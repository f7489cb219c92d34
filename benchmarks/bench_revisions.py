"""Unit costs of this checkout against another git revision, side by side in one run.

`mcg` and `write` need ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV) and are skipped, said, without it. The
revision is checked out in a temporary `git worktree`, and each measurement runs in a child process pinned to one
core, with `<tree>/src` on PYTHONPATH, in the order before, after, after, before, so that a drift of the
machine's speed during the run shows as a spread rather than as a ratio:

- `mcg`: CPU seconds per image of `proposal_pool` on the first N coco-dev images (one untimed image first, so
  compiled kernels load from their cache), and a sha256 of every pool's superpixels, bits and scores, which
  must be the same for both trees when a change keeps the proposals;
- `write`: CPU seconds of `ArtifactWriter` writing the crops of coco-dev's ground-truth masks, the set repeated
  to the given number of images, and the stored size of `masks/data`;
- `schedule`: wall seconds of `workers.ordered_map` at two workers over 64 items that each sleep 0.3 s (no
  CPU, so the machine's speed does not enter: what is measured is how the items are shared out, 9.6 s at
  best), and how many of them the spawned worker computed. Not pinned: the two processes need two cores.

    .venv/bin/python benchmarks/bench_revisions.py [--against REV] [--images N] [--write-images N]
        [--measure mcg write schedule]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, coco_dev, pin_one_core

ORDER = ("before", "after", "after", "before")


def measure_mcg(images: int) -> dict:
    """CPU per image of `proposal_pool` on the first `images` coco-dev images, and the pools' sha256."""
    import hashlib
    import time

    import numpy as np

    from pseudomask.images import read_image
    from pseudomask.mcg.proposals import proposal_pool

    files = sorted((coco_dev() / "images").glob("*.jpg"))[:images]
    proposal_pool(read_image(files[0]))  # untimed: loads (or compiles) the kernels
    digest, t = hashlib.sha256(), time.process_time()
    for f in files:
        pool = proposal_pool(read_image(f))
        for a in (pool.superpixels, pool.packed, pool.scores):
            digest.update(np.ascontiguousarray(a).tobytes())
    return {"s_per_image": (time.process_time() - t) / len(files), "sha256": digest.hexdigest()[:16],
            "images": len(files)}


def measure_write(images: int) -> dict:
    """CPU seconds of writing the crops of coco-dev's GT masks, repeated to `images` images, with ArtifactWriter."""
    import time

    import h5py
    import numpy as np

    from pseudomask.crops import Crops
    from pseudomask.masks import segmentation_mask
    from pseudomask.store import ArtifactWriter

    coco = json.loads((coco_dev() / "annotations.json").read_text())
    anns: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    per_image = []
    for im in coco["images"]:
        if anns.get(im["id"]):
            masks = np.stack([segmentation_mask(a["segmentation"], im["height"], im["width"]) for a in anns[im["id"]]])
            per_image.append((im, anns[im["id"]], Crops.from_masks(masks)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "write.h5"
        t = time.process_time()
        with ArtifactWriter(path, stage="merge_drop", method="bench", categories=coco["categories"]) as w:
            for n in range(images):
                im, rows, crops = per_image[n % len(per_image)]
                w.add_image({**im, "id": n}, [{"id": n * 1000 + j, "category_id": r["category_id"], "bbox": r["bbox"],
                                               "status": "kept", "reason": ""} for j, r in enumerate(rows)], crops)
        seconds = time.process_time() - t
        with h5py.File(path) as f:
            data = f["masks/data"]
            return {"s": seconds, "crop_mb": data.size / 1e6, "stored_bytes": int(data.id.get_storage_size()),
                    "images": images}


def _nap(x: int) -> int:
    import time

    time.sleep(0.3)
    return os.getpid()


def measure_schedule(items: int) -> dict:
    """Wall seconds of `ordered_map` at two workers over `items` items of 0.3 s of sleep each."""
    import time

    from pseudomask.workers import ordered_map

    t = time.monotonic()
    pids = list(ordered_map(_nap, [(i,) for i in range(items)], workers=2))
    return {"s": time.monotonic() - t, "in_the_worker": sum(p != os.getpid() for p in pids), "items": items}


def child(kind: str, n: int) -> None:
    if kind != "schedule":
        pin_one_core()
    print(json.dumps({"mcg": measure_mcg, "write": measure_write, "schedule": measure_schedule}[kind](n)))


def run_child(tree: Path, kind: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PSEUDOMASK_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{kind} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default="HEAD",
                    help="the git revision to compare this checkout's working tree with (the 'before'; default: "
                         "HEAD, i.e. what the uncommitted changes do)")
    ap.add_argument("--images", type=int, default=24, help="coco-dev images for the MCG measurement")
    ap.add_argument("--write-images", type=int, default=1000, help="images the write measurement writes")
    ap.add_argument("--measure", nargs="+", choices=["mcg", "write", "schedule"],
                    default=["mcg", "write", "schedule"], help="what to measure (default: all three)")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], int(a.child[1]))
    measure = list(a.measure)
    if not (coco_dev() / "annotations.json").exists() and {"mcg", "write"} & set(measure):
        print(f"coco-dev not found at {coco_dev()}: mcg and write not measured")
        measure = [m for m in measure if m == "schedule"]
    if not measure:
        return
    try:
        subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "-q", f"{a.against}^{{commit}}"],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"{REPO}: {a.against!r} is not a git revision of this checkout")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), a.against],
                       check=True)
        try:
            trees = {"before": old, "after": REPO}
            for kind, n, key, unit in (("mcg", a.images, "s_per_image", "s CPU per image"),
                                       ("write", a.write_images, "s", "s CPU"),
                                       ("schedule", 64, "s", "s wall")):
                if kind not in measure:
                    continue
                results = [(name, run_child(trees[name], kind, n)) for name in ORDER]
                for name, r in results:
                    extra = {k: v for k, v in r.items() if k != key}
                    print(f"{kind:8s} {name:6s} {r[key]:.3f} {unit}  {extra}")
                mean = {name: sum(r[key] for m, r in results if m == name) / 2 for name in trees}
                print(f"{kind:8s} ratio after/before {mean['after'] / mean['before']:.2f}")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
