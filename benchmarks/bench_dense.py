"""Memory and time of the mask stages on a dense scene and a huge image, a base revision and this checkout side by
side.

Two generated scenes (textured background, filled ellipses and rectangles, their boxes in a COCO JSON):
`dense`, 1280x960 with 600 boxes (a shelf), and `large`, 6000x4000 with 20 boxes (an aerial image). Each goes
through ingest, grabcut, mcg, agree, validity, crf, select, merge-drop, export, evaluate-masks and BoxCaseg's
inference (a random-weight checkpoint of the small backbone, the same file for both trees) by the CLI
(`python -m pseudomask STAGE`, its defaults, `--threads 1`), every stage in a fresh child process whose peak RSS is
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` read by a wrapper process of its own. The base revision runs from a
temporary `git worktree` with its `src` on PYTHONPATH. Prints wall seconds and peak RSS per stage, base and this
tree side by side, against the targets: peak RSS <= 1 GB per stage on `dense`, <= 1.5 GB on `large`, agree <= 10 s
on `dense`; and whether the two trees' artifacts hold the same masks and records.

    .venv/bin/python benchmarks/bench_dense.py [--base a9319fe] [--scenes dense large] [--stages ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO

import cv2
import numpy as np

SCENES = {"dense": (1280, 960, 600), "large": (6000, 4000, 20)}
TARGET_GB = {"dense": 1.0, "large": 1.5}
AGREE_TARGET_S = 10.0
STAGES = ("ingest", "grabcut", "mcg", "agree", "validity", "crf", "select", "merge_drop", "export",
          "evaluate_masks", "boxcaseg")


def make_scene(out: Path, width: int, height: int, boxes: int, seed: int = 0) -> Path:
    """A textured image with `boxes` filled ellipses and rectangles, and a COCO JSON of their boxes and masks
    (RLE, for evaluate-masks). Objects are placed on a jittered grid so that neighbours overlap a little."""
    from pseudomask.masks import mask_box, rle_encode

    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (max(height // 32, 2), max(width // 32, 2), 3)).astype(np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    cols = int(np.ceil(np.sqrt(boxes * width / height)))
    rows = int(np.ceil(boxes / cols))
    cw, ch = width / cols, height / rows
    anns = []
    for k in range(boxes):
        cx = (k % cols + 0.5 + rng.uniform(-0.2, 0.2)) * cw
        cy = (k // cols + 0.5 + rng.uniform(-0.2, 0.2)) * ch
        ax, ay = cw * rng.uniform(0.3, 0.6), ch * rng.uniform(0.3, 0.6)
        mask = np.zeros((height, width), np.uint8)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if k % 2:
            cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(mask, (int(cx - ax), int(cy - ay)), (int(cx + ax), int(cy + ay)), 1, -1)
        img[mask == 1] = colour
        x, y, w, h = mask_box(mask)
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1 + k % 3, "bbox": [x, y, w, h],
                     "area": float(mask.sum()), "iscrowd": 0, "segmentation": rle_encode(mask)})
    (out / "images").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "images" / "scene.png"), img)
    coco = {"images": [{"id": 1, "file_name": "scene.png", "width": width, "height": height}],
            "annotations": anns, "categories": [{"id": i, "name": f"class{i}"} for i in (1, 2, 3)]}
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def stage_ports(work: Path, scene: Path) -> dict[str, dict]:
    """The CLI ports of each stage, chained: ingest's shard feeds the mask stages; merge-drop takes validity's."""
    shard = work / "shards" / "s00000.h5"
    a = {s: work / f"{s}.h5" for s in STAGES}
    return {"ingest": {"annotations": scene / "annotations.json", "images": scene / "images",
                       "manifest": work / "manifest.json", "shards": work / "shards"},
            "grabcut": {"shard": shard, "out": a["grabcut"]}, "mcg": {"shard": shard, "out": a["mcg"]},
            "agree": {"grabcut": a["grabcut"], "mcg": a["mcg"], "out": a["agree"]},
            "validity": {"masks": a["grabcut"], "out": a["validity"]},
            "crf": {"masks": a["agree"], "out": a["crf"]},
            "select": {"masks": [a["grabcut"], a["mcg"], a["agree"]], "out": a["select"]},
            "merge_drop": {"masks": a["validity"], "out": a["merge_drop"]},
            "export": {"artifacts": [a["merge_drop"]], "out": work / "export.json"},
            "evaluate_masks": {"pseudo": work / "export.json", "ground_truth": scene / "annotations.json",
                               "out": work / "metrics.json"},
            "boxcaseg": {"shard": shard, "model": scene / "boxcaseg.pth", "out": a["boxcaseg"]}}


def random_boxcaseg(path: Path) -> Path:
    """A BoxCaseg checkpoint of random weights (the small ResNet-18 backbone): inference costs what a trained
    one costs, and both trees read it."""
    import torch

    from pseudomask.boxcaseg.model import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(path, build_model("resnet18_w16"))


def measured(cmd: list[str], env: dict) -> None:
    """Child of `run_stage`: run `cmd`, print its wall seconds and peak RSS (bytes) as JSON."""
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"rc": p.returncode, "wall": wall, "rss": rss, "err": p.stderr[-2000:]}))


def run_stage(tree: Path, stage: str, ports: dict, work: Path) -> dict:
    """One stage by the CLI of `tree`, in a fresh wrapper process that reports its child's peak RSS."""
    cmd = [sys.executable, "-m", "pseudomask", stage.replace("_", "-")]
    if stage not in ("ingest", "export", "evaluate_masks"):
        cmd += ["--threads", "1"]
    for k, v in ports.items():
        cmd += ["--" + k.replace("_", "-"), *map(str, v if isinstance(v, list) else [v])]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PSEUDOMASK_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(cmd)], env=env, cwd=work,
                         capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["rc"]:
        raise SystemExit(f"{stage} in {tree} failed:\n{r['err']}")
    return r


def same_artifacts(a: Path, b: Path) -> bool:
    """Whether two artifacts hold the same records (every column) and masks, image by image."""
    from pseudomask.store import Artifact

    with Artifact(a) as x, Artifact(b) as y:
        if x.image_ids != y.image_ids:
            return False
        for i in x.image_ids:
            rx, ry = x.records(i), y.records(i)
            if json.dumps(rx, sort_keys=True, default=str) != json.dumps(ry, sort_keys=True, default=str):
                return False
            for kx, ky in zip(x.rows(i), y.rows(i)):
                if not np.array_equal(x.mask(int(x.instances["id"][kx])), y.mask(int(y.instances["id"][ky]))):
                    return False
    return True


def same_outputs(before: Path, after: Path, stage: str) -> bool:
    """Whether a stage wrote the same in both trees: artifacts by `same_artifacts`, JSON but for its `info`
    (date, paths)."""
    name = {"export": "export.json", "evaluate_masks": "metrics.json"}.get(stage)
    if name is None:
        h5 = "shards/s00000.h5" if stage == "ingest" else f"{stage}.h5"
        return same_artifacts(before / h5, after / h5)
    a, b = (json.loads((d / name).read_text()) for d in (before, after))
    for x in (a, b):
        if isinstance(x, dict):
            x.pop("info", None)
    return a == b


def bench_scene(name: str, trees: dict[str, Path], stages: list[str], work: Path) -> list[str]:
    """Every stage of one scene in both trees: the table's lines."""
    w, h, k = SCENES[name]
    scene = make_scene(work / name / "scene", w, h, k)
    if "boxcaseg" in stages:
        random_boxcaseg(scene.parent / "boxcaseg.pth")
    runs: dict[str, dict[str, dict]] = {}
    for label, tree in trees.items():
        d = work / name / label
        d.mkdir(parents=True, exist_ok=True)
        ports = stage_ports(d, scene.parent)
        runs[label] = {s: run_stage(tree, s, ports[s], d) for s in ("ingest", *[s for s in stages if s != "ingest"])}
    gb, lines = TARGET_GB[name], []
    for s in runs["after"]:
        b, a = runs["before"][s], runs["after"][s]
        same = same_outputs(work / name / "before", work / name / "after", s)
        ok = a["rss"] <= gb * 1e9 and not (name == "dense" and s == "agree" and a["wall"] > AGREE_TARGET_S)
        lines.append(f"{name:<6} {s:<15} {b['wall']:>8.1f} {a['wall']:>8.1f} {b['rss'] / 1e9:>9.2f} "
                     f"{a['rss'] / 1e9:>9.2f} {gb:>6.1f} {'yes' if same else 'NO':>5} {'met' if ok else 'MISSED':>7}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="a9319fe", help="git revision to compare with (default: a9319fe)")
    ap.add_argument("--scenes", nargs="+", choices=list(SCENES), default=list(SCENES))
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--workdir", type=Path, help="keep the work folder here (default: a temporary one)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        measured(json.loads(a.measure), dict(os.environ))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        old = Path(tmp) / "base-tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), a.base], check=True)
        try:
            lines = []
            for name in a.scenes:
                lines += bench_scene(name, {"before": old, "after": REPO}, a.stages, work)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    print(f"{'scene':<6} {'stage':<15} {'wall s':>8} {'wall s':>8} {'RSS GB':>9} {'RSS GB':>9} {'target':>6} "
          f"{'same':>5} {'':>7}")
    print(f"{'':<6} {'':<15} {'base':>8} {'this':>8} {'base':>9} {'this':>9} {'GB':>6} {'':>5} {'':>7}")
    for line in lines:
        print(line)
    print(f"targets: peak RSS <= {TARGET_GB['dense']} GB per stage on dense ({'x'.join(map(str, SCENES['dense'][:2]))}, "
          f"{SCENES['dense'][2]} boxes), <= {TARGET_GB['large']} GB on large "
          f"({'x'.join(map(str, SCENES['large'][:2]))}, {SCENES['large'][2]} boxes); agree <= {AGREE_TARGET_S} s on dense; "
          f"'same': this tree's artifact equals the base's (records and masks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
