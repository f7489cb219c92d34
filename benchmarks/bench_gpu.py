"""GPU check: every learned stage at the papers' settings for a short time, through the project's own stage code.

Each section times its steps after a few warm-up steps (torch.cuda.synchronize before every timestamp; a
timestamp after each optimiser step or forward pass of the stage's own loop) and reports s/iteration,
images/s and the peak GPU memory allocated since the section began:
  - Mask R-CNN R50-FPN at 1333x800 (`retrain.train.train`, random init): batch 2 and 8, AMP on and off; and,
    beside the AMP runs, the same config (`retrain.mmdet_config.build_config`) written to a file and trained
    for the same iterations by MMEngine's `Runner.from_cfg(cfg).train()` directly: the ratio pipeline / Runner
    of the s/iteration shows what the pipeline adds;
  - Mask R-CNN prediction (`retrain.predict.predict`, the predict stage's batch size and reader threads);
  - BoxCaseg HRNetV2-W48 (`boxcaseg.train.train`: 288 px crops, salient images at 320, batch 16, the paper's;
    `boxcaseg.infer.infer`: 320 px crops, batch 16, the stage's defaults); an image is a box crop here;
  - CAM ResNet-50 (`cam.train.train_classifier` at 448 px, batch 8; the classifier pass of `cam.extract`:
    `image_features` and `image_maps` on batches of 8; the MCG proposals the stage also needs run on the CPU
    and are not part of it).
The data are demo scenes rendered here at 1333x800 (`demo.make_demo_data`) and its salient images. Every
section has a time budget (a signal stops it there; the steps it finished still count) and catches its own
errors, so one failure never stops the others; the whole run is bounded by `--budget`.

    .venv/bin/python benchmarks/bench_gpu.py --out gpu.json               # on a CUDA machine
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --smoke --out /tmp/gpu_smoke.json

Without CUDA and without --device, it runs the CPU smoke check (tiny sizes, 2 steps each).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from unittest import mock

from common import work_folder  # first: it turns the progress bars off

import mmcv
import mmdet
import mmengine
import torch
from mmcv.ops import get_compiling_cuda_version
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from mmdet.utils import register_all_modules

from pseudomask.boxcaseg.infer import infer as boxcaseg_infer
from pseudomask.boxcaseg.model import build_model as build_boxcaseg, save_checkpoint as save_boxcaseg
from pseudomask.boxcaseg.settings import BoxcasegSettings, BoxcasegTrainSettings
from pseudomask.cam.extract import image_features, image_maps
from pseudomask.cam.model import build_classifier, load_classifier
from pseudomask.cam.settings import CamSettings, CamTrainSettings
from pseudomask.dataset import load_dataset
from pseudomask.demo import make_demo_data
from pseudomask.images import read_annotated_image
from pseudomask.optim import optimizer_step
from pseudomask.retrain.mmdet_config import RetrainSettings, build_config, write_config
from pseudomask.retrain.predict import PredictSettings, load_model as load_detector, predict
from pseudomask.retrain.train import train as retrain

BOXCASEG_TRAIN = importlib.import_module("pseudomask.boxcaseg.train")  # modules whose steps get a clock
BOXCASEG_INFER = importlib.import_module("pseudomask.boxcaseg.infer")
CAM_TRAIN = importlib.import_module("pseudomask.cam.train")
RETRAIN_PREDICT = importlib.import_module("pseudomask.retrain.predict")
NEVER = 10 ** 9  # checkpoint / log intervals: none inside the timed steps
GIB = 2 ** 30


@dataclass(frozen=True)
class Plan:
    """Sizes and step counts of a run (the GPU run's, or the smoke test's)."""

    scene: tuple[int, int] = (1333, 800)  # demo scenes (width, height) = Mask R-CNN's scale
    scenes: int = 16
    salient: int = 64
    repeat: int = 4  # the inference sets list every scene this many times (more batches to time)
    detector_batches: tuple[int, ...] = (2, 8)
    detector_steps: dict = field(default_factory=lambda: {2: (5, 30), 8: (3, 12)})  # batch: (warm-up, timed)
    predict_warmup: int = 2
    boxcaseg_crop: int = 288
    boxcaseg_salient: int = 320
    boxcaseg_size: int = 320
    boxcaseg_batch: int = 16
    boxcaseg_steps: tuple[int, int] = (5, 25)
    cam_size: int = 448
    cam_batch: int = 8
    cam_steps: tuple[int, int] = (5, 40)
    infer_warmup: int = 2
    workers: int = 4  # data-loading processes of the training sections
    budgets: dict = field(default_factory=lambda: {  # seconds per section (a cap; the estimate is about half)
        "train": {2: 45, 8: 75}, "predict": 45, "boxcaseg_train": 75, "boxcaseg_infer": 45, "cam_train": 45,
        "cam_infer": 30})


SMOKE = Plan(scene=(320, 240), scenes=4, salient=8, repeat=2, detector_batches=(2, 4),
             detector_steps={2: (1, 1), 4: (1, 1)}, predict_warmup=1, boxcaseg_crop=64, boxcaseg_salient=72,
             boxcaseg_size=64, boxcaseg_batch=4, boxcaseg_steps=(1, 1), cam_size=64, cam_batch=2, cam_steps=(1, 1),
             infer_warmup=1, workers=0,
             budgets={"train": {2: 300, 4: 300}, "predict": 300, "boxcaseg_train": 300, "boxcaseg_infer": 300,
                      "cam_train": 300, "cam_infer": 300})


class SectionTimeout(BaseException):
    """A section ran past its budget (a BaseException: no `except Exception` of the stage code swallows it)."""


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Timestamps after each step of a loop, the GPU synchronised first, and the images each step handled."""

    def __init__(self, device: str):
        self.device, self.marks = device, []

    def tick(self, images: int = 1) -> None:
        sync(self.device)
        self.marks.append((time.perf_counter(), int(images)))

    def wrap(self, fn: Callable, images: Callable[..., int]) -> Callable:
        """fn, with a tick after each call counting images(*args) images."""
        def clocked(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.tick(images(*args, **kwargs))
            return out
        return clocked

    def figures(self, warmup: int) -> dict[str, Any]:
        """s/iteration and images/s over the steps after the first `warmup` (at least one)."""
        warmup = max(1, warmup)
        timed = self.marks[warmup:]
        out: dict[str, Any] = {"steps": len(self.marks), "timed_steps": len(timed)}
        if timed:
            dt = timed[-1][0] - self.marks[warmup - 1][0]
            out.update(s_per_iter=dt / len(timed), images_per_s=sum(n for _, n in timed) / dt)
        return out


ACTIVE: list[Clock] = []  # the clock the MMEngine hook ticks (a config file cannot hold the object)


@HOOKS.register_module(force=True)
class BenchClockHook(Hook):
    """Ticks the active clock after every training iteration (before the checkpoint hook)."""

    priority = "NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if ACTIVE:
            ACTIVE[-1].tick(len(data_batch["inputs"]) if data_batch else 1)


@contextlib.contextmanager
def active(clock: Clock):
    ACTIVE.append(clock)
    try:
        yield clock
    finally:
        ACTIVE.remove(clock)


def with_clock_hook(cfg: dict) -> dict:
    """A config with the clock hook added (the same for the pipeline's run and the Runner's)."""
    return {**cfg, "custom_hooks": [*cfg.get("custom_hooks", []), dict(type="BenchClockHook")]}


def clocked_builder(*args, **kwargs) -> dict:
    """`build_config` plus the clock hook: the `builder` the pipeline's train() is given."""
    return with_clock_hook(build_config(*args, **kwargs))


@contextlib.contextmanager
def quietly(log: Path):
    """MMEngine's and the stages' console output appended to `log`."""
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield


@dataclass
class Bench:
    """What the sections share: the plan, the device, the data and the checkpoints made so far."""

    plan: Plan
    device: str
    work: Path
    log: Path
    deadline: float
    data: dict = field(default_factory=dict)
    checkpoints: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)


def make_data(b: Bench) -> None:
    """Demo scenes at the plan's size with salient images, and an inference list repeating the scenes."""
    p = b.plan
    root = b.work / "scenes"
    ann = make_demo_data(root, n_images=p.scenes, seed=0, size=p.scene, n_salient=p.salient)
    coco = json.loads(ann.read_text())
    n = len(coco["images"])
    images, anns = [], []
    for r in range(p.repeat):  # the same files under new ids: more images to time at no rendering cost
        images += [{**im, "id": im["id"] + r * n} for im in coco["images"]]
        anns += [{**a, "id": a["id"] + r * len(coco["annotations"]), "image_id": a["image_id"] + r * n}
                 for a in coco["annotations"]]
    infer_json = root / "infer.json"
    infer_json.write_text(json.dumps({**coco, "images": images, "annotations": anns}))
    b.data.update(ann=ann, images=root / "images", salient=root / "salient", infer=infer_json,
                  instances=len(coco["annotations"]))


def detector_settings(p: Plan, batch: int, amp: bool) -> RetrainSettings:
    """The retrain defaults (CUDA's: 1333x800, SGD 0.02 at 16 scaled to the batch, AMP) for a short run."""
    warm, timed = p.detector_steps[batch]
    return RetrainSettings(schedule="iters", max_iters=warm + timed, batch_size=batch, amp=amp, scale=list(p.scene),
                           workers=p.workers, log_interval=warm + timed)


def detector_train(b: Bench, clock: Clock, batch: int, amp: bool, direct: bool) -> dict:
    """Mask R-CNN steps through the pipeline's train(), or the same config through MMEngine's Runner."""
    s = detector_settings(b.plan, batch, amp)
    work = b.work / f"maskrcnn_b{batch}_{'amp' if amp else 'fp32'}_{'runner' if direct else 'pipeline'}"
    t0 = time.perf_counter()
    with active(clock), quietly(b.log):
        if direct:
            cfg = with_clock_hook(build_config(b.data["ann"], b.data["images"], work, s))
            path = write_config(cfg, work / "runner_config.py")
            runner = Runner.from_cfg(Config.fromfile(str(path)))  # as MMDetection's tools/train.py
            runner.train()
            out = {"optim_wrapper": type(runner.optim_wrapper).__name__}
        else:
            summary = retrain(b.data["ann"], b.data["images"], work, s, builder=clocked_builder)
            b.checkpoints.setdefault("maskrcnn", summary["checkpoint"])
            out = {"last_loss": summary.get("last_loss")}
    sync(b.device)
    return {**out, "call_seconds": time.perf_counter() - t0}


def detector_predict(b: Bench, clock: Clock) -> dict:
    """The predict stage on the repeated scenes with the first trained checkpoint (a tick per forward pass)."""
    ckpt = b.checkpoints.get("maskrcnn")
    if not ckpt:
        raise RuntimeError("no Mask R-CNN checkpoint: every pipeline training section failed")

    def clocked_load(*args, **kwargs):
        model, cfg, ids = load_detector(*args, **kwargs)
        model.test_step = clock.wrap(model.test_step, lambda data: len(data["inputs"]))
        return model, cfg, ids

    s = PredictSettings()
    with mock.patch.object(RETRAIN_PREDICT, "load_model", clocked_load), quietly(b.log):
        results, summary = predict(ckpt, b.data["images"], coco=b.data["infer"], device=b.device,
                                   batch_size=s.batch_size, score_thr=s.score_thr, loader_workers=s.loader_workers)
    return {"batch": s.batch_size, "images": summary["images"], "detections": len(results)}


def boxcaseg_train(b: Bench, clock: Clock) -> dict:
    """BoxCaseg HRNetV2-W48 training steps (a tick per optimiser step)."""
    p = b.plan
    s = BoxcasegTrainSettings(backbone="hrnetv2_w48", iters=sum(p.boxcaseg_steps), batch_size=p.boxcaseg_batch,
                              crop_size=p.boxcaseg_crop, salient_resize=p.boxcaseg_salient, workers=p.workers,
                              checkpoint_every=NEVER, log_every=NEVER, device=b.device)
    out = b.work / "boxcaseg.pt"
    step = clock.wrap(optimizer_step, lambda *a, **k: p.boxcaseg_batch)
    with mock.patch.object(BOXCASEG_TRAIN, "optimizer_step", step), quietly(b.log):
        summary = BOXCASEG_TRAIN.train([load_dataset(b.data["ann"], b.data["images"])], b.data["salient"], out, s,
                                       resume=False)
    b.checkpoints["boxcaseg"] = out
    return {"batch": p.boxcaseg_batch, "crop": p.boxcaseg_crop, "loss_last10": summary["loss_last10"]}


def boxcaseg_checkpoint(b: Bench) -> Path:
    """The trained BoxCaseg checkpoint, else a random-init HRNetV2-W48 one (the speed does not depend on it)."""
    if "boxcaseg" in b.checkpoints and Path(b.checkpoints["boxcaseg"]).is_file():
        return Path(b.checkpoints["boxcaseg"])
    path = b.work / "boxcaseg_random.pt"
    save_boxcaseg(path, build_boxcaseg("hrnetv2_w48"), {"crop_size": b.plan.boxcaseg_crop})
    return path


def boxcaseg_inference(b: Bench, clock: Clock) -> dict:
    """The boxcaseg stage over the repeated scenes' boxes (a tick per group of crops through the network)."""
    s = BoxcasegSettings()
    ckpt = boxcaseg_checkpoint(b)
    fn = clock.wrap(BOXCASEG_INFER.predict_images_quality,
                    lambda model, items, *a, **k: sum(len(boxes) for _, boxes in items))
    with mock.patch.object(BOXCASEG_INFER, "predict_images_quality", fn), quietly(b.log):
        boxcaseg_infer(load_dataset(b.data["infer"], b.data["images"]), ckpt, b.work / "boxcaseg.h5",
                       size=b.plan.boxcaseg_size, batch_size=s.batch_size, threshold=s.threshold, device=b.device,
                       head=s.head, loader_workers=s.loader_workers, amp=s.amp)
    return {"batch": s.batch_size, "size": b.plan.boxcaseg_size, "trained": "boxcaseg" in b.checkpoints}


def cam_train(b: Bench, clock: Clock) -> dict:
    """CAM ResNet-50 classifier training steps on the scenes' tags (a tick per optimiser step)."""
    p = b.plan
    s = CamTrainSettings(backbone="resnet50", iters=sum(p.cam_steps), batch_size=p.cam_batch, input_size=p.cam_size,
                         save_every=NEVER, device=b.device)
    out = b.work / "cam.pt"
    step = clock.wrap(optimizer_step, lambda *a, **k: p.cam_batch)
    with mock.patch.object(CAM_TRAIN, "optimizer_step", step), quietly(b.log):
        r = CAM_TRAIN.train_classifier(load_dataset(b.data["ann"], b.data["images"]), out, s, resume=False)
    b.checkpoints["cam"] = out
    return {"batch": p.cam_batch, "size": p.cam_size, "loss_last": r["history"][-1] if r["history"] else None}


def cam_inference(b: Bench, clock: Clock) -> dict:
    """The classifier pass of the cam stage: backbone features of batches, then each image's class maps and
    peak stimulation (as extract_peaks); the images are decoded once beforehand."""
    s = CamSettings()
    batch = b.plan.cam_batch  # the stage's default (8) in the GPU run
    ds = load_dataset(b.data["infer"], b.data["images"])
    if "cam" in b.checkpoints:
        model, config = load_classifier(b.checkpoints["cam"], b.device)
    else:  # the training section failed: a random-init classifier (the speed does not depend on it)
        config = {"backbone": "resnet50", "class_ids": [int(c["id"]) for c in ds.categories], "window": 3,
                  "levels": [-1], "input_size": b.plan.cam_size}
        model = build_classifier(config).to(b.device).eval()
    rgbs = {}
    for im in ds.images:
        rgbs.setdefault(im["file_name"], read_annotated_image(ds.image_path(im), im))
    order = [rgbs[im["file_name"]] for im in ds.images]
    device = torch.device(b.device)
    for k in range(0, len(order), batch):
        group = order[k:k + batch]
        feats = image_features(model, group, config["input_size"], device, s.amp)
        for n, rgb in enumerate(group):
            _, cams, scores = image_maps(model, rgb, config["input_size"], device, config["window"], feats[n:n + 1])
            cams.detach().cpu(), scores.detach().cpu()
        clock.tick(len(group))
    return {"batch": batch, "size": config["input_size"], "images": len(order), "trained": "cam" in b.checkpoints}


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Bench, Clock], dict]
    warmup: int
    budget: float


def sections(p: Plan) -> list[Section]:
    """The run's sections in the order they run: one of each stage first (the run budget may end it early),
    then the larger batch and full precision. The pipeline runs before the Runner at the small batch and after
    it at the large one, so that an order effect shows as opposite ratios."""
    b_small, b_large = p.detector_batches

    def train(batch: int, amp: bool, direct: bool = False) -> Section:
        name = f"Mask R-CNN train b{batch} {'AMP' if amp else 'fp32'} ({'Runner direct' if direct else 'pipeline'})"
        return Section(name, lambda b, c: detector_train(b, c, batch, amp, direct), p.detector_steps[batch][0],
                       p.budgets["train"][batch])

    return [train(b_small, True), train(b_small, True, direct=True),
            Section("Mask R-CNN predict", detector_predict, p.predict_warmup, p.budgets["predict"]),
            Section("BoxCaseg HRNetV2-W48 train", boxcaseg_train, p.boxcaseg_steps[0], p.budgets["boxcaseg_train"]),
            Section("BoxCaseg HRNetV2-W48 infer", boxcaseg_inference, p.infer_warmup, p.budgets["boxcaseg_infer"]),
            Section("CAM ResNet-50 train", cam_train, p.cam_steps[0], p.budgets["cam_train"]),
            Section("CAM ResNet-50 classifier pass", cam_inference, p.infer_warmup, p.budgets["cam_infer"]),
            train(b_large, True, direct=True), train(b_large, True), train(b_small, False), train(b_large, False)]


def _timeout(signum, frame):
    raise SectionTimeout()


def run_section(b: Bench, sec: Section) -> dict:
    """One section within its budget (and the run's); its figures, status and elapsed time. Never raises."""
    limit = min(sec.budget, b.deadline - time.perf_counter())
    row: dict[str, Any] = {"section": sec.name, "budget_s": round(limit, 1)}
    if limit < 5:
        print(f"-- {sec.name}: skipped, the run's budget is spent")
        return {**row, "status": "skipped (run budget spent)"}
    clock = Clock(b.device)
    if b.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        row["start_gib"] = torch.cuda.memory_allocated() / GIB
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        row.update(sec.run(b, clock))
        row["status"] = "ok"
    except SectionTimeout:
        row["status"] = f"stopped at its budget ({limit:.0f} s)"
    except Exception as e:  # noqa: BLE001  a failed section is reported; the others go on
        traceback.print_exc()
        row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    row.update(clock.figures(sec.warmup), seconds=round(time.perf_counter() - t0, 2))
    gc.collect()
    if b.device == "cuda":
        try:  # after a CUDA error these may fail too
            row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            row["status"] += f"; memory statistics unavailable ({type(e).__name__})"
    fig = f"{row['s_per_iter']:.4f} s/it, {row['images_per_s']:.2f} img/s" if "s_per_iter" in row else "no timing"
    print(f"-- {sec.name}: {row['status']}; {fig}; {row['seconds']:.1f} s (budget {limit:.0f} s)", flush=True)
    return row


def ratios(rows: list[dict]) -> list[dict]:
    """Pipeline / Runner-direct s/iteration (and whole-call time) for each batch that has both."""
    out = []
    by_name = {r["section"]: r for r in rows}
    for r in rows:
        if not r["section"].endswith("(Runner direct)"):
            continue
        mine = by_name.get(r["section"].replace("(Runner direct)", "(pipeline)"), {})
        if mine.get("s_per_iter") and r.get("s_per_iter"):
            out.append({"config": r["section"].replace(" (Runner direct)", ""),
                        "pipeline_s_per_iter": mine["s_per_iter"], "runner_s_per_iter": r["s_per_iter"],
                        "ratio": mine["s_per_iter"] / r["s_per_iter"],
                        "call_ratio": mine["call_seconds"] / r["call_seconds"]
                        if mine.get("call_seconds") and r.get("call_seconds") else None})
    return out


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "–"


def table(rows: list[dict], pairs: list[dict]) -> str:
    """The figures as a markdown table, then the pipeline / Runner ratios."""
    lines = ["| section | s/it | img/s | peak GiB | timed steps | section s | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['section']} | {_num(r.get('s_per_iter'), '.4f')} | {_num(r.get('images_per_s'), '.2f')} | "
                     f"{_num(r.get('peak_gib'), '.2f')} | {r.get('timed_steps', 0)} of {r.get('steps', 0)} | "
                     f"{_num(r.get('seconds'), '.1f')} | {r['status']} |")
    lines.append("")
    for q in pairs:
        call = f"; whole call {q['call_ratio']:.3f}" if q.get("call_ratio") else ""
        lines.append(f"- {q['config']}: pipeline {q['pipeline_s_per_iter']:.4f} s/it, Runner direct "
                     f"{q['runner_s_per_iter']:.4f} s/it, ratio **{q['ratio']:.3f}**{call}")
    if not pairs:
        lines.append("- pipeline / Runner ratio: not available (a run of the pair failed)")
    return "\n".join(lines)


def warm_up_cuda() -> None:
    """The CUDA context, cuBLAS and cuDNN started outside every section (fp32 and float16 autocast)."""
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    for amp in (False, True):
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            y = conv(torch.randn(2, 3, 32, 32, device="cuda"))
            z = y.flatten(1) @ torch.randn(y[0].numel(), 4, device="cuda")
        z.float().sum().backward()
    torch.cuda.synchronize()


def environment(device: str) -> dict[str, Any]:
    """Versions and the GPU; MMDetection's modules imported and CUDA started here, so that the first section
    does not pay for them."""
    register_all_modules(init_default_scope=False)
    importlib.import_module("pseudomask.retrain.modules")  # the configs' custom_imports
    env = {"device": device, "torch": torch.__version__, "mmcv": mmcv.__version__, "mmdet": mmdet.__version__,
           "mmengine": mmengine.__version__, "mmcv_ops_cuda": get_compiling_cuda_version(),
           "python": platform.python_version(), "cpus": os.cpu_count()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / GIB, 1))
        warm_up_cuda()
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available, else the CPU smoke test")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps each (checks that everything runs)")
    ap.add_argument("--budget", type=float, default=390.0, help="seconds for all sections after the data (default "
                                                                   "390: with start-up and data under 8 minutes)")
    ap.add_argument("--workers", type=int, help="data-loading processes of the training sections (default 4; "
                                                "smoke 0)")
    ap.add_argument("--out", help="write the figures as JSON here (the MMEngine logs go beside it, .log)")
    ap.add_argument("--keep", help="keep the work folder (scenes, checkpoints) here")
    ap.add_argument("--only", help="comma-separated words: run the sections whose name holds one (e.g. "
                                   "\"BoxCaseg,CAM\"; predict and the CAM pass need their training section)")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu" and not args.smoke:
            print("no CUDA device: running the CPU smoke test (--device cpu --smoke)")
            args.smoke = True
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.device == "cpu" and torch.cuda.is_available():
        ap.error("--device cpu with a CUDA device visible: MMEngine's Runner would train on it; hide it "
                 "(CUDA_VISIBLE_DEVICES=)")
    return args


def run(args: argparse.Namespace, work: Path, plan: Plan | None = None) -> dict[str, Any]:
    """Data, then every section (of `plan`, default the one args ask for); the whole result."""
    plan = plan or (SMOKE if args.smoke else Plan())
    if args.workers is not None:
        plan = replace(plan, workers=args.workers)
    log = Path(args.out).with_suffix(".log") if args.out else work / "bench_gpu.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = environment(args.device)
    print(f"bench_gpu: {'smoke test' if args.smoke else 'full run'} on {env.get('gpu', 'the CPU')}; torch "
          f"{env['torch']} (CUDA {env.get('cuda', '-')}), mmcv {env['mmcv']} (ops CUDA {env['mmcv_ops_cuda']}), "
          f"mmdet {env['mmdet']}, mmengine {env['mmengine']}; stage logs in {log}", flush=True)
    b = Bench(plan, args.device, work, log, deadline=float("inf"))
    t0 = time.perf_counter()
    make_data(b)
    data_s = time.perf_counter() - t0
    print(f"-- data: {plan.scenes} demo scenes at {plan.scene[0]}x{plan.scene[1]} ({b.data['instances']} "
          f"instances), {plan.salient} salient images: {data_s:.1f} s", flush=True)
    b.deadline = time.perf_counter() + args.budget
    words = [w.strip().lower() for w in (args.only or "").split(",") if w.strip()]
    no_ops = args.device == "cuda" and env["mmcv_ops_cuda"] == "not available"
    for sec in sections(plan):
        if words and not any(w in sec.name.lower() for w in words):
            continue
        if no_ops and sec.name.startswith("Mask R-CNN"):  # RoIAlign and NMS would fail on the first step
            print(f"-- {sec.name}: skipped, mmcv's compiled ops have no CUDA (rebuild mmcv against a CUDA torch)")
            b.rows.append({"section": sec.name, "status": "skipped (mmcv ops without CUDA)"})
            continue
        b.rows.append(run_section(b, sec))
    pairs = ratios(b.rows)
    total = time.perf_counter() - start
    return {"environment": env, "smoke": args.smoke, "plan": {k: str(v) for k, v in vars(plan).items()},
            "data_seconds": round(data_s, 2), "sections": b.rows, "pipeline_vs_runner": pairs,
            "total_seconds": round(total, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with work_folder(args.keep, "bench_gpu_") as work:
        result = run(args, work)
    print()
    print(table(result["sections"], result["pipeline_vs_runner"]))
    print(f"\ntotal {result['total_seconds']:.1f} s (data {result['data_seconds']:.1f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
        print(f"figures: {args.out}")
    ok = all(r["status"] == "ok" for r in result["sections"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
