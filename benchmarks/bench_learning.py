"""The headline figure: mask AP of a detector trained on pseudo masks as a fraction of the same detector trained on
the true masks (same scenes, same schedule), on held-out demo scenes.

Renders demo training scenes and held-out scenes (the demo_data stage), runs the workflow on the training scenes
(Snakemake, boxes only, no retraining), then trains the retrain stage's CPU profile once per mask source:
  (a) the true masks                       (b) the workflow's export with its default settings
  (c) single sources: filled box, GrabCut, select (every mask kept)
  (d) the export with other merge-drop settings (`EXPORTS`): without the drop (threshold 0), BoxCaseg's (smaller
      box wins, drop below proxy box IoU 0.95), and drop by predicted quality below 0.7
and evaluates each on the held-out scenes against their true masks (predict, evaluate_model): segm AP, AP50, AP^r50.
(a), (b) and (d) train with several seeds (the weights' and the data order's); the others with the first. Prints the
masks' mIoU against the truth on the training scenes, the detector's figures, and weak / full ratios.

    .venv/bin/python benchmarks/bench_learning.py [--scenes 96] [--test-scenes 32] [--seeds 3] [--jobs 2] [--keep DIR]
    .venv/bin/python benchmarks/bench_learning.py --quick      # 8 scenes, 20 iterations: the code runs
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall shared CPUs

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from pathlib import Path  # noqa: E402

from common import REPO, quietly, work_folder  # noqa: E402  (before pseudomask: it turns the progress bars off)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pseudomask.config import deep_update, default_config  # noqa: E402
from pseudomask.demo import DemoDataSettings  # noqa: E402
from pseudomask.masks import rle_encode  # noqa: E402
from pseudomask.registry import STAGES  # noqa: E402

# exports of the workflow's masks (validity) with merge_drop settings other than the defaults: name -> settings
EXPORTS = {"export without drop": {"threshold": 0.0, "criterion": "proxy_box_iou"},
           "BoxCaseg's merge-drop": {"rule": "smaller_box", "criterion": "proxy_box_iou", "threshold": 0.95},
           "drop by quality": {"criterion": "quality", "quality_threshold": 0.7}}
SOURCES = ("true masks", "export (default)", "filled box", "grabcut", "select", *EXPORTS)
SEEDED = ("true masks", "export (default)", *EXPORTS)  # trained with every seed: the exports differ by little


def stage(name: str, log: Path, given: dict | None = None, threads: int = 1, **ports) -> dict:
    """Run a stage through its door (the registry) with its defaults on the CPU, `given` over them."""
    st = STAGES[name]
    ports = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in ports.items()}
    return quietly(st, st.resolve(given=given, device="cpu"), threads=threads, log=log, **ports)


def render(work: Path, scenes: int, test_scenes: int) -> Path:
    """The demo_data stage's scenes: training scenes under work/demo, held-out ones under work/demo/test."""
    s = DemoDataSettings(scenes=scenes, test_scenes=test_scenes, salient_images=1)
    STAGES["demo_data"](s, annotations=str(work / "demo" / "annotations.json"))
    return work / "demo"


def run_workflow(work: Path, demo: Path, cores: int) -> Path:
    """The workflow on the training scenes with its defaults (boxes only, no BoxCaseg, no retraining): its results
    folder."""
    cfg = deep_update(default_config(), {
        "dataset": {"annotations": str(demo / "annotations.json"), "images": str(demo / "images"),
                    "ground_truth": str(demo / "annotations.json"), "salient": ""},
        "workflow": {"retrain": False, "boxcaseg": False, "test_annotations": "", "test_images": ""}})
    wf = work / "workflow"
    wf.mkdir(parents=True, exist_ok=True)
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wf), "--cores", str(cores)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if p.returncode:
        raise SystemExit(f"the workflow failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return wf / "results"


def filled_boxes(gt: dict) -> dict:
    """The true boxes as masks: every instance its filled box."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    anns = []
    for a in gt["annotations"]:
        m = np.zeros(sizes[a["image_id"]], np.uint8)
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        m[y:y + max(h, 1), x:x + max(w, 1)] = 1
        anns.append({**a, "segmentation": rle_encode(m), "area": float(m.sum())})
    return {**gt, "annotations": anns}


def training_sets(work: Path, demo: Path, results: Path) -> dict[str, Path]:
    """The COCO JSON each source trains on."""
    log, out = work / "stages.log", work / "train_sets"
    out.mkdir(exist_ok=True)
    gt = json.loads((demo / "annotations.json").read_text())
    (out / "filled_box.json").write_text(json.dumps(filled_boxes(gt)))
    sets = {"true masks": demo / "annotations.json", "export (default)": results / "export" / "pseudo.json",
            "filled box": out / "filled_box.json"}
    for name in ("grabcut", "select"):
        shards = sorted((results / name).glob("*.h5"))
        stage("export", log, artifacts=shards, out=out / f"{name}.json")
        sets[name] = out / f"{name}.json"
    for name, given in EXPORTS.items():
        folder = out / name.replace(" ", "_").replace("'", "")
        shards = [folder / shard.name for shard in sorted((results / "validity").glob("*.h5"))]
        for shard in shards:
            stage("merge_drop", log, given=given, masks=results / "validity" / shard.name, out=shard)
        stage("export", log, artifacts=shards, out=folder.with_suffix(".json"))
        sets[name] = folder.with_suffix(".json")
    return sets


def mask_miou(train_json: Path, demo: Path, work: Path) -> float | None:
    """mIoU of a training set's masks against the true masks (evaluate_masks)."""
    out = work / "mask_eval" / f"{train_json.stem}.json"
    m = stage("evaluate_masks", work / "stages.log", pseudo=train_json, ground_truth=demo / "annotations.json",
              out=out)
    return m.get("miou")


def train_and_score(name: str, ann: Path, demo: Path, work: Path, seed: int, given: dict, threads: int) -> dict:
    """Train the retrain stage's CPU profile on `ann`, predict the held-out scenes, score them."""
    run = work / "runs" / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_seed{seed}"
    log = run / "log.txt"
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    t = stage("retrain", log, given={**given, "seed": seed}, threads=threads, annotations=ann,
              images=demo / "images", checkpoint=run / "latest.pth", mmdet_config=run / "mask_rcnn.py")
    stage("predict", log, threads=threads, checkpoint=run / "latest.pth", mmdet_config=run / "mask_rcnn.py",
          images=demo / "test" / "images", coco=demo / "test" / "annotations.json", out=run / "predictions.json")
    m = stage("evaluate_model", log, predictions=run / "predictions.json",
              ground_truth=demo / "test" / "annotations.json", out=run / "model.json")
    return {"seconds": time.perf_counter() - t0, "iters": t["iters"], **{k: m.get(k) for k in
                                                                       ("segm_AP", "segm_AP50", "bbox_AP", "apr_50")}}


def spread(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None], float)
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else (f"{v[0]:.3f}" if len(v) else "n/a")


def report(rows: dict[str, list[dict]], miou: dict[str, float | None]) -> None:
    full = {k: np.mean([r[k] for r in rows["true masks"]]) for k in ("segm_AP", "segm_AP50", "apr_50")}
    print(f"\n   {'source':22s} {'mask mIoU':>9s}  {'segm AP':>15s}  {'segm AP50':>15s}  {'AP^r .5':>15s}  "
          f"{'AP ratio':>8s}  {'AP50 ratio':>10s}")
    for name, rs in rows.items():
        mean = {k: np.mean([r[k] for r in rs]) for k in full}
        ratio = {k: mean[k] / full[k] if full[k] else float("nan") for k in full}
        mi = f"{miou[name]:.3f}" if miou.get(name) is not None else "n/a"
        print(f"   {name:22s} {mi:>9s}  {spread([r['segm_AP'] for r in rs]):>15s}  "
              f"{spread([r['segm_AP50'] for r in rs]):>15s}  {spread([r['apr_50'] for r in rs]):>15s}  "
              f"{ratio['segm_AP']:8.2f}  {ratio['segm_AP50']:10.2f}")
    weak = {n: np.mean([r["segm_AP"] for r in rs]) for n, rs in rows.items() if n != "true masks"}
    best = max(weak, key=weak.get)
    share = f"{weak[best] / full['segm_AP']:.2f}" if full["segm_AP"] else "n/a"
    print(f"\n   the best detector from weak labels: {best} (segm AP {weak[best]:.3f}, {share} of the true masks' "
          f"{full['segm_AP']:.3f})")
    for name in EXPORTS:
        d = weak["export (default)"] - weak[name]
        print(f"   the default export against {name}: segm AP {weak['export (default)']:.3f} against "
              f"{weak[name]:.3f} ({d:+.3f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=DemoDataSettings().scenes, help="training scenes")
    p.add_argument("--test-scenes", type=int, default=32, help="held-out scenes")
    p.add_argument("--seeds", type=int, default=3, help="seeds of (a), (b) and (d)")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (and the workflow's cores x jobs)")
    p.add_argument("--quick", action="store_true", help="8 scenes, 4 held out, 20 iterations, one seed")
    p.add_argument("--keep", help="keep the work folder here")
    args = p.parse_args()
    given = {}
    if args.quick:
        args.scenes, args.test_scenes, args.seeds, given = 8, 4, 1, {"max_iters": 20, "warmup_iters": 5}
    profile = STAGES["retrain"].resolve(given=given, device="cpu")
    print(f"== the retrain stage's CPU profile ({profile.arch}, width {profile.width}, {profile.channels} channels, "
          f"{profile.optimizer} lr {profile.lr}, {profile.max_iters} iterations of batch {profile.batch_size} at "
          f"{profile.scale} px) on {args.scenes} demo scenes; evaluated on {args.test_scenes} held-out scenes")
    with work_folder(args.keep, "bench_learning_") as work:
        t0 = time.perf_counter()
        demo = render(work, args.scenes, args.test_scenes)
        results = run_workflow(work, demo, args.threads * args.jobs)
        sets = training_sets(work, demo, results)
        print(f"   scenes and the workflow's masks: {time.perf_counter() - t0:.0f} s")
        miou = {n: mask_miou(path, demo, work) for n, path in sets.items() if n != "true masks"}
        runs = [(name, seed) for name in SOURCES for seed in range(args.seeds if name in SEEDED else 1)]
        rows: dict[str, list[dict]] = {}
        # the runs side by side, `threads` each (2 one-thread runs train more per second than one of 2 threads)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_and_score, name, sets[name], demo, work, seed, given, args.threads):
                       (name, seed) for name, seed in runs}
            for future in as_completed(futures):
                (name, seed), r = futures[future], future.result()
                rows.setdefault(name, []).append(r)
                print(f"   {name:22s} seed {seed}: segm AP {r['segm_AP']:.3f}, AP50 {r['segm_AP50']:.3f} "
                      f"({r['iters']} iterations, {r['seconds']:.0f} s)", flush=True)
        report({name: rows[name] for name in SOURCES}, {"true masks": 1.0, **miou})
    return 0


if __name__ == "__main__":
    sys.exit(main())
