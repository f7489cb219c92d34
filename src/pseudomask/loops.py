"""The two loops the stages share, each writing one artifact with provenance and progress and carrying every
instance through: `run_mask_stage` reads each image and runs a method on its usable instances;
`run_artifact_stage` turns the masks of input artifacts into new ones, image by image."""

from __future__ import annotations

import collections
import itertools
import os
import sys
from pathlib import Path
from contextlib import ExitStack
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .dataset import Dataset
from .images import ImageError, read_image
from .crops import Crops
from .store import Artifact, ArtifactError, ArtifactWriter

def quality_scorer(model: str | None = None):
    """The scorer whose predicted IoU fills a mask stage's `quality` column: `model` (a JSON model path,
    "default" or "none") when given, else the shipped default (named in each artifact's provenance)."""
    from .quality.scorer import get_scorer

    return get_scorer(model or "default")


def quality_attrs(scorer) -> dict:
    """Provenance of the `quality` column: the predictor's name (or "none")."""
    return {"quality_predictor": scorer.name if scorer is not None else "none"}


def add_quality(scorer, rgb: np.ndarray | None, rows: list[dict], masks: np.ndarray, source: str,
                keep: Sequence[bool] = ()) -> None:
    """Set each row's `quality` (predicted IoU with the true mask; NaN where none is predicted; 1 for a
    true mask), except the rows `keep` marks, whose method predicted its own (BoxCaseg's IoU head)."""
    q = np.full(len(rows), np.nan) if scorer is None else scorer.score_image(rgb, rows, masks, source)
    q[[is_true_mask(r) for r in rows]] = 1.0
    for k, (r, v) in enumerate(zip(rows, q)):
        if not (k < len(keep) and keep[k]):
            r["quality"] = float(v)


GT_REASON = "true mask (dataset.strong)"


def is_true_mask(record: Mapping[str, Any]) -> bool:
    """Whether a row is a strong instance: a true mask of `dataset.strong`, passed through every stage."""
    return record.get("source") == "gt"


def pass_true_masks(rows: list[dict], masks: np.ndarray, records: Sequence[Mapping[str, Any]],
                    true: np.ndarray) -> None:
    """Rows of strong instances (as `records` say) get their true mask back from `true` (K,H,W), status
    kept and quality 1, whatever a stage's per-image function made of them."""
    for k, r in enumerate(records):
        if is_true_mask(r):
            masks[k] = true[k]
            rows[k].update(source="gt", status="kept", reason=r.get("reason") or GT_REASON, quality=1.0)
            if "mask_ignore" in rows[k]:
                rows[k]["mask_ignore"] = 0


def read_artifact_image(artifact: Artifact | str | None, image: dict) -> np.ndarray | None:
    """The RGB image of an artifact's image record from its image_root (or from the image_root given),
    or None when it cannot be read."""
    root = artifact.attrs.get("image_root") if isinstance(artifact, Artifact) else artifact
    if not root:
        return None
    try:
        return read_image(Path(root) / image["file_name"])
    except (ImageError, OSError):
        return None

# predict(image RGB (H,W,3), usable instance records) -> one result per record:
#   {"mask": (H,W) uint8, "status": str, "reason": str, **numeric extras}
# optionally with a second return value: per-image maps for the artifact.
# With run_mask_stage(every_image=True) it is called as predict(rgb, records, image) for every readable
# image, records possibly empty, so that a method can store maps of images without usable instances.
Predict = Callable[..., Any]

# per_image(image, records per source, (K,H,W) masks per source) -> (rows, masks, maps or None): one image of
# an artifact-to-artifact stage; rows hold every instance of the image, in the sources' order.
PerImage = Callable[[dict, list[list[dict]], list[np.ndarray]], tuple[Sequence[Mapping[str, Any]], Any, Any]]

PASS_THROUGH = ("failed", "ignored")


def usable(record: dict) -> bool:
    """Whether a method runs on this instance: everything but what an earlier stage failed or ignored."""
    return record["status"] not in PASS_THROUGH


def progress(items: Iterable, desc: str, total: int | None = None, unit: str = "img") -> Iterable:
    """tqdm to stderr (a rule's log), with sparse updates when stderr is not a terminal."""
    tty = sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=0.5 if tty else 10.0,
                disable=os.environ.get("PSEUDOMASK_NO_PROGRESS") == "1")


def mask_image(predict: Predict, image: dict, path: str, records: list[dict],
               strong: Mapping[int, dict] | None = None, *, usable: Callable[[dict], bool] = usable,
               every_image: bool = False, quality: str | None = None, stage: str, out: str,
               image_rgb: np.ndarray | None = None) -> tuple[list[dict], Crops, Any, list[str]]:
    """One image of `run_mask_stage` (in this process or in a worker): (rows, their masks as `Crops`, maps, log
    lines); crops, so that a worker sends the writer a few KiB rather than K full frames.

    Reads the image at `path` (unless `image_rgb` is the image, read ahead), runs `predict` on the usable
    records and fills every row's `quality`; a
    result that brings its own `quality` keeps it. Strong instances (source gt) take their true mask from
    `strong` (instance id -> COCO RLE) and are not predicted."""
    from .masks import rle_decode

    h, w = image["height"], image["width"]
    masks = np.zeros((len(records), h, w), np.uint8)
    rows = [dict(r) for r in records]
    own_quality = [False] * len(records)
    for i, r in enumerate(records):
        if is_true_mask(r):
            if not strong or int(r["id"]) not in strong:
                raise ArtifactError(f"{out}: image {image['id']}: instance {r['id']} is a true mask (source gt) "
                                    "but the shard holds no mask for it")
            masks[i] = rle_decode(strong[int(r["id"])])
            rows[i].update(status="kept", reason=r.get("reason") or GT_REASON)
    todo = [i for i, r in enumerate(records) if usable(r) and not is_true_mask(r)]
    maps, notes, rgb = None, [], None
    if todo or every_image:
        try:
            rgb = read_image(path) if image_rgb is None else image_rgb
        except ImageError as e:
            for i in todo:
                rows[i].update(status="failed", reason=str(e))
            if not todo:
                notes.append(f"{stage}: image {image['id']} skipped: {e}")
            todo = []
        else:
            args = (rgb, [records[i] for i in todo]) + ((image,) if every_image else ())
            result = predict(*args)
            if isinstance(result, tuple):
                result, maps, *note = result
                notes.extend(f"{stage}: image {image['id']}: {n}" for n in note if n)
            result = list(result)
            if len(result) != len(todo):
                raise ArtifactError(f"{out}: image {image['id']}: {stage} gave {len(result)} results for "
                                    f"{len(todo)} instances {[records[i]['id'] for i in todo]}; one per "
                                    "instance, in order")
            for i, res in zip(todo, result):
                res = dict(res)
                masks[i] = res.pop("mask")
                own_quality[i] = "quality" in res
                rows[i].update(res)
    add_quality(quality_scorer(quality), rgb, rows, masks, stage, keep=own_quality)
    return rows, Crops.from_masks(masks), maps, notes


def run_mask_stage(
    ds: Dataset,
    out: str | os.PathLike,
    predict: Predict,
    *,
    stage: str,
    method: str,
    params: Mapping[str, Any],
    inputs: Sequence[str | os.PathLike] = (),
    usable: Callable[[dict], bool] = usable,
    every_image: bool = False,
    quality: str | None = None,
    workers: int = 1,
) -> Path:
    """Run `predict` on each image's usable instances and write every instance to one artifact.

    `every_image` also runs it on images without usable instances (their maps, e.g. proposals of tag-only
    images) and passes the image record as a third argument; `predict` may return a third value, a line for
    the log. Every row gets `quality`, the predicted IoU of its mask by the scorer `quality` names (see
    `quality_scorer`).

    `workers` > 1 spreads the images over that many processes, this one and `workers` - 1 spawned ones
    (`pseudomask.workers.ordered_map`): `predict` and `usable` must then be picklable (module-level
    functions or partials of them). Results are written in image order as they complete, a bounded number
    in flight, and do not depend on the number of workers as long as `predict` is deterministic per image."""
    from .workers import ordered_map, worker_count

    by_image = ds.by_image()
    kw = {"stage": stage, "out": str(out), "usable": usable, "every_image": every_image, "quality": quality}
    busy = [im for im in ds.images if every_image or any(usable(r) for r in by_image.get(im["id"], []))]
    n = worker_count(workers, len(busy))
    fn = partial(mask_image, predict, **kw)
    jobs = ((im, str(ds.image_path(im)), recs, strong_masks(ds, recs))
            for im in ds.images for recs in [by_image.get(im["id"], [])])
    results = ordered_map(fn, jobs, n)
    try:
        write_mask_images(ds, out, zip(ds.images, results), stage=stage, method=method, params=params,
                          inputs=inputs, quality=quality)
    finally:
        results.close()
    return Path(out)


def strong_masks(ds: Dataset, records: Sequence[Mapping[str, Any]]) -> dict[int, dict]:
    """The true masks (COCO RLE by instance id) of an image's strong instances, for `mask_image`."""
    return {r["id"]: ds.strong[r["id"]] for r in records if r["id"] in ds.strong}


def write_mask_images(ds: Dataset, out: str | os.PathLike, images: Iterable[tuple[dict, tuple]], *, stage: str,
                      method: str, params: Mapping[str, Any], inputs: Sequence[str | os.PathLike] = (),
                      quality: str | None = None, attrs: Mapping[str, Any] | None = None) -> None:
    """Write the artifact of the image loops: every (image, `mask_image` result) in order, with progress,
    log lines to stderr and the provenance of the `quality` column; `attrs` add to the root attributes."""
    attrs = {"image_root": str(Path(ds.image_root).resolve()), "quality_source": stage,
             **quality_attrs(quality_scorer(quality)), **(attrs or {})}
    with ArtifactWriter(out, stage=stage, method=method, params=params, inputs=inputs,
                        categories=ds.categories, attrs=attrs) as w:
        for im, (rows, masks, maps, notes) in progress(images, desc=f"{stage}:{method}", total=len(ds.images)):
            for line in notes:
                print(line, file=sys.stderr)
            w.add_image(im, rows, masks, maps=maps, tags=im.get("tags", []))


# predict_batch([(rgb, usable records), ...]) -> one `Predict` result per image, in order: the usable instances
# of several images in one call, so that a network takes their crops (or the images) in one forward pass.
PredictBatch = Callable[[list[tuple[np.ndarray, list[dict]]]], Sequence[Any]]


def read_ahead(fn: Callable[[Any], Any], items: Iterable, workers: int = 0, ahead: int = 2) -> Iterator[Any]:
    """`fn(item)` for each item, in order: computed by `workers` threads up to `ahead` items ahead of the
    consumer (image decoding releases the GIL), or here, one at a time, when `workers` is 0."""
    if workers <= 0:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    with ThreadPoolExecutor(workers) as ex:
        pending = collections.deque(ex.submit(fn, x) for x in itertools.islice(it, max(ahead, 1)))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(ex.submit(fn, x) for x in itertools.islice(it, 1))
                yield result
        finally:
            for f in pending:
                f.cancel()


def run_batched_mask_stage(
    ds: Dataset,
    out: str | os.PathLike,
    predict_batch: PredictBatch,
    *,
    stage: str,
    method: str,
    params: Mapping[str, Any],
    batch_size: int,
    weight: Callable[[list[dict]], int] | None = None,
    loader_workers: int = 0,
    inputs: Sequence[str | os.PathLike] = (),
    usable: Callable[[dict], bool] = usable,
    quality: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """`run_mask_stage` for a network that batches across images: consecutive images are grouped until their
    `weight` (of the usable records; default 1 per image, e.g. the number of crops) reaches `batch_size`, and
    each group goes to one `predict_batch` call. `loader_workers` threads read the images ahead (0: here).

    The rows, masks and quality are `mask_image`'s for each image (strong instances included), so the
    artifact equals run_mask_stage's with `predict(rgb, recs) = predict_batch([(rgb, recs)])[0]` whenever the
    method's results do not depend on which images share a batch. `attrs` add to (or replace) the root
    attributes, e.g. `quality_predictor` when the method predicts its own quality."""
    by_image = ds.by_image()
    kw = {"stage": stage, "out": str(out), "usable": usable, "quality": quality}
    cost = weight or (lambda recs: 1)

    def one(rgb: np.ndarray, recs: list[dict]) -> Any:
        return predict_batch([(rgb, recs)])[0]

    def load(im: dict) -> tuple[dict, list[dict], list[dict], np.ndarray | None]:
        recs = by_image.get(im["id"], [])
        todo = [r for r in recs if usable(r) and not is_true_mask(r)]
        rgb = None
        if todo:
            try:
                rgb = read_image(ds.image_path(im))
            except ImageError:
                pass  # mask_image reads it again and fails its instances with the reason
        return im, recs, todo, rgb

    def groups() -> Iterator[list[tuple[dict, list[dict], list[dict], np.ndarray | None]]]:
        group, size = [], 0
        for item in read_ahead(load, ds.images, loader_workers, ahead=max(2 * batch_size, 2 * loader_workers)):
            group.append(item)
            size += cost(item[2]) if item[3] is not None else 0
            if size >= batch_size:
                yield group
                group, size = [], 0
        if group:
            yield group

    def images() -> Iterator[tuple[dict, tuple[list[dict], np.ndarray, Any, list[str]]]]:
        for group in groups():
            jobs = [(rgb, todo) for _, _, todo, rgb in group if rgb is not None]
            results = list(predict_batch(jobs)) if jobs else []
            if len(results) != len(jobs):
                raise ArtifactError(f"{out}: {stage} gave {len(results)} results for a batch of {len(jobs)} "
                                    "images; one per image, in order")
            it = iter(results)
            for im, recs, _, rgb in group:
                predict = (lambda r: lambda *_: r)(next(it)) if rgb is not None else one
                yield im, mask_image(predict, im, str(ds.image_path(im)), recs, strong_masks(ds, recs),
                                     image_rgb=rgb, **kw)

    write_mask_images(ds, out, images(), stage=stage, method=method, params=params, inputs=inputs,
                      quality=quality, attrs=attrs)
    return Path(out)


def same_instances(sources: Sequence[Artifact]) -> None:
    """Raise ArtifactError unless the artifacts hold the same images and instance ids in the same order."""
    first = sources[0]
    ids = first.instances.get("id", np.zeros(0, np.int64))
    for other in sources[1:]:
        if other.image_ids != first.image_ids or not np.array_equal(other.instances.get("id", ids[:0]), ids):
            raise ArtifactError(f"{first.path} and {other.path} do not hold the same images and instances; "
                                "were they made from the same shard?")


def check_rows(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]], out: str | os.PathLike,
               source: str | os.PathLike, image_id: int) -> None:
    """Raise ArtifactError unless `rows` are the instances of `records`: same ids, same order, none lost."""
    got, want = [r.get("id") for r in rows], [r["id"] for r in records]
    if got == want:
        return
    problems = [f"{what} instances {ids}" for what, ids in (
        ("lose", [i for i in want if i not in got]), ("add", [i for i in got if i not in want]),
        ("repeat", sorted({i for i in got if got.count(i) > 1}))) if ids]
    what = "; ".join(problems) or f"reorder instances {want} as {got}"
    raise ArtifactError(f"{out}: image {image_id}: the rows written {what} of {source}; "
                        "every input instance must appear once, in the input's order")


_OPEN_INPUTS: dict[str, Artifact] = {}  # input artifacts this process opened for `artifact_image`


def worker_artifact(path: str) -> Artifact:
    """An input artifact opened once per process that computes images of `run_artifact_stage` and reads its
    own images' masks (the stage holds its inputs unchanged until it ends); `close_worker_artifacts` closes
    them when the stage ends (a spawned worker's close with the pool)."""
    a = _OPEN_INPUTS.get(path)
    if a is None:
        a = _OPEN_INPUTS[path] = Artifact(path)
    return a


def close_worker_artifacts() -> None:
    while _OPEN_INPUTS:
        _OPEN_INPUTS.popitem()[1].close()


def artifact_image(per_image: PerImage, image: dict, records: list[list[dict]], masks: list[np.ndarray] | None,
                   *, out: str, source: str, rescore: bool, quality: str | None, quality_source: str,
                   image_root: str, sources: Sequence[str] = ()) -> tuple[dict, list[dict], Crops, Any]:
    """One image of `run_artifact_stage` (in this process or in a worker): (image, rows, masks as `Crops`,
    maps). `masks` None: read here from the artifacts at `sources` (a worker's own reads)."""
    if masks is None:
        masks = [worker_artifact(p).masks(image["id"]) for p in sources]
    rows, out_masks, maps = per_image(image, records, masks)
    check_rows(rows, records[0], out, source, image["id"])
    rows = [dict(r) for r in rows]
    out_masks = np.asarray(out_masks, np.uint8).reshape(len(rows), image["height"], image["width"])
    if any(is_true_mask(r) for r in records[0]):
        out_masks = out_masks.copy()  # per_image may hand back its input's array
        pass_true_masks(rows, out_masks, records[0], masks[0])
    if rescore:
        scorer = quality_scorer(quality)
        feats = [{**a, **r} for a, r in zip(records[0], rows)]
        rgb = read_artifact_image(image_root, image) if scorer is not None and rows else None
        add_quality(scorer, rgb, feats, out_masks, quality_source)
        for r, f in zip(rows, feats):
            r["quality"] = f["quality"]
    return image, rows, Crops.from_masks(out_masks), maps


def run_artifact_stage(
    sources: Sequence[str | os.PathLike | Artifact],
    out: str | os.PathLike,
    per_image: PerImage,
    *,
    stage: str,
    method: str,
    params: Mapping[str, Any],
    expect_stages: Sequence[str | Sequence[str] | None] = (),
    check_same_instances: bool = True,
    attrs: Mapping[str, Any] | None = None,
    final_attrs: Callable[[], Mapping[str, Any]] | None = None,
    quality: str | None = None,
    quality_source: str | None = None,
    rescore: bool = True,
    workers: int = 1,
) -> Path:
    """Write artifact `out` from input artifacts, one `per_image` call per image of the first source.

    `sources` are paths (opened here, checked against `expect_stages`, one entry per source; none: any stage)
    or open Artifacts (for a stage whose parameters name the source's stage). The output takes the first
    source's images, tags, categories and image_root; its rows must be that source's instances (same ids,
    same order), else ArtifactError. `check_same_instances` first requires every source to hold the same
    images and instances. `final_attrs()` gives root attributes known only after the last image.
    Every row gets `quality` (see `run_mask_stage`), its features computed on the image read from the
    first source's image_root and on the input rows' columns under the output's; `quality_source` names
    the source whose masks the stage writes (default: this stage when it makes masks of its own, else the
    first source's). `rescore=False`: the rows bring their own `quality` (select's, with cross-source
    features). `workers` > 1 runs `per_image` (which must then be picklable), the reading of the input masks
    and the scoring in that many processes (this one and `workers` - 1 spawned ones), the results written
    here in image order (see `run_mask_stage`)."""
    from .workers import ordered_map, worker_count

    with ExitStack() as stack:
        arts = []
        for i, src in enumerate(sources):
            if isinstance(src, Artifact):
                arts.append(src)
            else:
                want = expect_stages[i] if i < len(expect_stages) else None
                arts.append(stack.enter_context(Artifact(src, stage=want)))
        if check_same_instances:
            same_instances(arts)
        first = arts[0]
        from .quality.features import SOURCES

        scorer = quality_scorer(quality)
        src = quality_source or (stage if stage in SOURCES else str(first.attrs.get("quality_source", first.stage)))
        extra = {"image_root": first.attrs.get("image_root", ""), "quality_source": src, **quality_attrs(scorer),
                 **(attrs or {})}
        with ArtifactWriter(out, stage=stage, method=method, params=params, inputs=[a.path for a in arts],
                            categories=first.categories, attrs=extra) as w:
            n = worker_count(workers, len(first.image_ids))
            fn = partial(artifact_image, per_image, out=str(out), source=str(first.path), rescore=rescore,
                         quality=quality, quality_source=src, image_root=extra["image_root"],
                         sources=[str(a.path) for a in arts])
            jobs = ((first.image(i), [a.records(i) for a in arts], None if n > 1 else [a.masks(i) for a in arts])
                    for i in first.image_ids)
            results = ordered_map(fn, jobs, n)
            try:
                for image_id, (image, rows, masks, maps) in progress(zip(first.image_ids, results), desc=stage,
                                                                     total=len(first.image_ids)):
                    w.add_image(image, rows, masks, maps=maps, tags=first.tags.get(image_id, []))
            finally:
                results.close()
                close_worker_artifacts()
            if final_attrs is not None:
                w.set_attrs(**final_attrs())
    return Path(out)
