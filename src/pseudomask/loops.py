"""The two loops the stages share, each writing one artifact with provenance and progress and carrying every
instance through: `run_mask_stage` reads each image and runs a method on its usable instances (image by image
in worker processes, or batched across images for a network); `run_artifact_stage` turns the masks of input
artifacts into new ones, image by image. `Provenance` is what both record of the stage; a method of
`run_mask_stage` returns an `ImageResult` per image."""

from __future__ import annotations

import collections
import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from .crops import Crops, MaskStack
from .dataset import Dataset
from .images import ImageError, read_annotated_image
from .masks import rle_decode
from .quality import features
from .quality.scorer import get_scorer
from .store import Artifact, ArtifactError, ArtifactWriter
from .workers import ordered_map, worker_count


@dataclass(frozen=True)
class Provenance:
    """What a loop records of the stage in the artifact it writes: stage, method, parameters and inputs (for
    `run_artifact_stage`, after its sources), the scorer of the `quality` column (`quality`, see
    `quality_scorer`) and root attributes added to (or replacing) the loop's own, e.g. `quality_predictor`
    when the method predicts its own quality."""

    stage: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Sequence[str | os.PathLike] = ()
    quality: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageResult:
    """What the method of `run_mask_stage` computes for one image: one result per usable record, in order
    ({"mask": (H,W) uint8 or its `Crop`, "status": str, "reason": str, **numeric extras}; a "quality" of its own
    is kept), the image's maps for the artifact (or None) and a line for the log ("": none)."""

    results: Sequence[Mapping[str, Any]]
    maps: Mapping[str, Any] | None = None
    note: str = ""


class ImageRows(NamedTuple):
    """One image as a loop writes it: every instance's row, their masks as `Crops` (so that a worker sends the
    writer a few KiB rather than K full frames), the image's maps and lines for the log."""

    rows: list[dict]
    masks: Crops
    maps: Any = None
    notes: Sequence[str] = ()


# predict(image RGB (H,W,3), usable instance records) -> ImageResult. With run_mask_stage(every_image=True) it
# is called as predict(rgb, records, image) for every readable image, records possibly empty, so that a method
# can store maps of images without usable instances.
Predict = Callable[..., ImageResult]

# predict_batch([(rgb, usable records), ...]) -> one ImageResult per image, in order: the usable instances of
# several images in one call, so that a network takes their crops (or the images) in one forward pass.
PredictBatch = Callable[[list[tuple[np.ndarray, list[dict]]]], Sequence[ImageResult]]

# per_image(image, records per source, masks per source as `MaskStack`s) -> (rows, masks, maps or None): one image of
# an artifact-to-artifact stage; rows hold every instance of the image, in the sources' order.
PerImage = Callable[[dict, list[list[dict]], list[MaskStack]], tuple[Sequence[Mapping[str, Any]], Any, Any]]

PASS_THROUGH = ("failed", "ignored")
GT_REASON = "true mask (dataset.strong)"


def quality_scorer(model: str | None = None):
    """The scorer whose predicted IoU fills a mask stage's `quality` column: `model` (a JSON model path,
    "default" or "none") when given, else the shipped default (named in each artifact's provenance)."""
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
        return read_annotated_image(Path(root) / image["file_name"], image)
    except (ImageError, OSError):
        return None


def usable(record: dict) -> bool:
    """Whether a method runs on this instance: everything but what an earlier stage failed or ignored."""
    return record["status"] not in PASS_THROUGH


def progress(items: Iterable, desc: str, total: int | None = None, unit: str = "img") -> Iterable:
    """tqdm to stderr (a rule's log), with sparse updates when stderr is not a terminal."""
    tty = sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=0.5 if tty else 10.0,
                disable=os.environ.get("PSEUDOMASK_NO_PROGRESS") == "1")


def read_ahead(fn: Callable[[Any], Any], items: Iterable, workers: int = 0, ahead: int = 2) -> Iterator[Any]:
    """`fn(item)` for each item, in order: computed by `workers` threads up to `ahead` items ahead of the
    consumer (image decoding releases the GIL), or here, one at a time, when `workers` is 0."""
    if workers <= 0:
        yield from map(fn, items)
        return
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


def write_images(out: str | os.PathLike, provenance: Provenance, categories: list[dict],
                 images: Iterable[tuple[dict, Sequence[int], ImageRows]], *, inputs: Sequence[str | os.PathLike],
                 image_root: str, quality_source: str, desc: str, total: int,
                 final_attrs: Callable[[], Mapping[str, Any]] | None = None) -> None:
    """Write the artifact of a loop: every (image, tags, rows) in order, with progress, log lines to stderr and
    the provenance of the `quality` column; `final_attrs()` gives root attributes known only at the end."""
    attrs = {"image_root": image_root, "quality_source": quality_source,
             **quality_attrs(quality_scorer(provenance.quality)), **provenance.attrs}
    with ArtifactWriter(out, stage=provenance.stage, method=provenance.method, params=provenance.params,
                        inputs=inputs, categories=categories, attrs=attrs) as w:
        for im, tags, r in progress(images, desc=desc, total=total):
            for line in r.notes:
                print(line, file=sys.stderr)
            w.add_image(im, r.rows, r.masks, maps=r.maps, tags=tags)
        if final_attrs is not None:
            w.set_attrs(**final_attrs())


def strong_masks(ds: Dataset, records: Sequence[Mapping[str, Any]]) -> dict[int, dict]:
    """The true masks (COCO RLE by instance id) of an image's strong instances, for `mask_image`."""
    return {r["id"]: ds.strong[r["id"]] for r in records if r["id"] in ds.strong}


def _true_masks(image: dict, records: list[dict], strong: Mapping[int, dict] | None, out: str
                ) -> tuple[list[dict], np.ndarray]:
    """The rows of an image's records and their masks (a `MaskStack`): the true ones of strong instances (status
    kept), empty elsewhere."""
    masks = MaskStack.zeros(len(records), image["height"], image["width"])
    rows = [dict(r) for r in records]
    for i, r in enumerate(records):
        if is_true_mask(r):
            if not strong or int(r["id"]) not in strong:
                raise ArtifactError(f"{out}: image {image['id']}: instance {r['id']} is a true mask (source gt) "
                                    "but the shard holds no mask for it")
            masks[i] = rle_decode(strong[int(r["id"])])
            rows[i].update(status="kept", reason=r.get("reason") or GT_REASON)
    return rows, masks


def _take_results(result: ImageResult, todo: list[int], records: list[dict], rows: list[dict], masks: MaskStack,
                  image: dict, stage: str, out: str) -> list[bool]:
    """Put a method's results for the records `todo` into `rows` and `masks`; which rows brought their own
    quality."""
    if not isinstance(result, ImageResult):
        raise TypeError(f"{out}: image {image['id']}: {stage} returned a {type(result).__name__}, not an "
                        "ImageResult")
    results = list(result.results)
    if len(results) != len(todo):
        raise ArtifactError(f"{out}: image {image['id']}: {stage} gave {len(results)} results for "
                            f"{len(todo)} instances {[records[i]['id'] for i in todo]}; one per "
                            "instance, in order")
    own_quality = [False] * len(records)
    for i, res in zip(todo, results):
        res = dict(res)
        masks[i] = res.pop("mask")
        own_quality[i] = "quality" in res
        rows[i].update(res)
    return own_quality


def mask_image(predict: Predict | ImageResult, image: dict, path: str, records: list[dict],
               strong: Mapping[int, dict] | None = None, *, usable: Callable[[dict], bool] = usable,
               every_image: bool = False, quality: str | None = None, stage: str, out: str,
               image_rgb: np.ndarray | None = None) -> ImageRows:
    """One image of `run_mask_stage` (in this process or in a worker).

    Reads the image at `path` (unless `image_rgb` is the image, read ahead), runs `predict` on the usable
    records (or takes `predict` as their result, computed with other images') and fills every row's
    `quality`; a result that brings its own `quality` keeps it. Strong instances (source gt) take their true
    mask from `strong` (instance id -> COCO RLE) and are not predicted."""
    rows, masks = _true_masks(image, records, strong, out)
    todo = [i for i, r in enumerate(records) if usable(r) and not is_true_mask(r)]
    own_quality, maps, notes, rgb = [], None, [], None
    if todo or every_image:
        try:
            rgb = read_annotated_image(path, image) if image_rgb is None else image_rgb
        except ImageError as e:
            for i in todo:
                rows[i].update(status="failed", reason=str(e))
            if not todo:
                notes.append(f"{stage}: image {image['id']} skipped: {e}")
        else:
            args = (rgb, [records[i] for i in todo]) + ((image,) if every_image else ())
            result = predict if isinstance(predict, ImageResult) else predict(*args)
            own_quality = _take_results(result, todo, records, rows, masks, image, stage, out)
            maps = result.maps
            if result.note:
                notes.append(f"{stage}: image {image['id']}: {result.note}")
    add_quality(quality_scorer(quality), rgb, rows, masks, stage, keep=own_quality)
    return ImageRows(rows, masks.to_crops(), maps, notes)


def run_mask_stage(
    ds: Dataset,
    out: str | os.PathLike,
    provenance: Provenance,
    predict: Predict | None = None,
    *,
    predict_batch: PredictBatch | None = None,
    batch_size: int = 1,
    weight: Callable[[list[dict]], int] | None = None,
    loader_workers: int = 0,
    usable: Callable[[dict], bool] = usable,
    every_image: bool = False,
    workers: int = 1,
) -> Path:
    """Run a method on each image's usable instances and write every instance to one artifact.

    `predict` runs image by image: `every_image` also runs it on images without usable instances (their maps,
    e.g. proposals of tag-only images) and passes the image record as a third argument; `workers` > 1 spreads
    the images over that many processes, this one and `workers` - 1 spawned ones
    (`pseudomask.workers.ordered_map`), so that `predict` and `usable` must be picklable (module-level
    functions or partials of them). Results are written in image order as they complete, a bounded number in
    flight, and do not depend on the number of workers as long as `predict` is deterministic per image.

    `predict_batch` instead (for a network, in this process) takes consecutive images, grouped until their
    `weight` (of the usable records; default 1 per image, e.g. the number of crops) reaches `batch_size`;
    `loader_workers` threads read the images ahead (0: here). The artifact equals that of
    `predict(rgb, recs) = predict_batch([(rgb, recs)])[0]` whenever the method's results do not depend on which
    images share a batch.

    Every row gets `quality`, the predicted IoU of its mask by the scorer `provenance.quality` names (see
    `quality_scorer`); strong instances keep their true masks."""
    if (predict is None) == (predict_batch is None):
        raise TypeError("run_mask_stage: give either predict or predict_batch")
    if predict_batch is not None and (every_image or workers > 1):
        raise TypeError("run_mask_stage: predict_batch runs in this process on the images with usable instances "
                        "(no every_image, no workers)")
    one = partial(mask_image, usable=usable, every_image=every_image, quality=provenance.quality,
                  stage=provenance.stage, out=str(out))
    if predict is not None:
        images = _images_each(ds, partial(one, predict), usable, every_image, workers)
    else:
        images = _images_batched(ds, one, predict_batch, batch_size, weight or _one_per_image, loader_workers,
                                 usable, f"{out}: {provenance.stage}")
    with closing(images):
        write_images(out, provenance, ds.categories, images, inputs=provenance.inputs,
                     image_root=str(Path(ds.image_root).resolve()), quality_source=provenance.stage,
                     desc=f"{provenance.stage}:{provenance.method}", total=len(ds.images))
    return Path(out)


def _one_per_image(records: list[dict]) -> int:
    return 1


def _images_each(ds: Dataset, fn: Callable[..., ImageRows], usable: Callable[[dict], bool], every_image: bool,
                 workers: int) -> Iterator[tuple[dict, list[int], ImageRows]]:
    """(image, tags, rows) of `run_mask_stage` with `predict`: `fn(image, path, records, strong masks)` per
    image, in `workers` processes."""
    by_image = ds.by_image()
    busy = [im for im in ds.images if every_image or any(usable(r) for r in by_image.get(im["id"], []))]
    jobs = ((im, str(ds.image_path(im)), recs, strong_masks(ds, recs))
            for im in ds.images for recs in [by_image.get(im["id"], [])])
    results = ordered_map(fn, jobs, worker_count(workers, len(busy)))
    try:
        for im, rows in zip(ds.images, results):
            yield im, im.get("tags", []), rows
    finally:
        results.close()


def _images_batched(ds: Dataset, one: Callable[..., ImageRows], predict_batch: PredictBatch, batch_size: int,
                    weight: Callable[[list[dict]], int], loader_workers: int, usable: Callable[[dict], bool],
                    who: str) -> Iterator[tuple[dict, list[int], ImageRows]]:
    """(image, tags, rows) of `run_mask_stage` with `predict_batch`: one call per group of images (`who`: the
    output and stage, for an error)."""
    by_image = ds.by_image()

    def single(rgb: np.ndarray, recs: list[dict]) -> ImageResult:
        return predict_batch([(rgb, recs)])[0]

    def load(im: dict) -> tuple[dict, list[dict], list[dict], np.ndarray | None]:
        recs = by_image.get(im["id"], [])
        todo = [r for r in recs if usable(r) and not is_true_mask(r)]
        rgb = None
        if todo:
            try:
                rgb = read_annotated_image(ds.image_path(im), im)
            except ImageError:
                pass  # mask_image reads it again and fails its instances with the reason
        return im, recs, todo, rgb

    loaded = read_ahead(load, ds.images, loader_workers, ahead=max(2 * batch_size, 2 * loader_workers))
    for group in _groups(loaded, batch_size, weight):
        jobs = [(rgb, todo) for _, _, todo, rgb in group if rgb is not None]
        results = list(predict_batch(jobs)) if jobs else []
        if len(results) != len(jobs):
            raise ArtifactError(f"{who} gave {len(results)} results for a batch of {len(jobs)} images; one per "
                                "image, in order")
        it = iter(results)
        for im, recs, _, rgb in group:
            rows = one(next(it) if rgb is not None else single, im, str(ds.image_path(im)), recs,
                       strong_masks(ds, recs), image_rgb=rgb)
            yield im, im.get("tags", []), rows


def _groups(loaded: Iterable[tuple[dict, list[dict], list[dict], np.ndarray | None]], batch_size: int,
            weight: Callable[[list[dict]], int]) -> Iterator[list[tuple[dict, list[dict], list[dict], Any]]]:
    """Consecutive loaded images, grouped until the weight of the read ones' usable records reaches
    `batch_size`."""
    group, size = [], 0
    for item in loaded:
        group.append(item)
        size += weight(item[2]) if item[3] is not None else 0
        if size >= batch_size:
            yield group
            group, size = [], 0
    if group:
        yield group


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


class InputMasks:
    """The masks of a stage's input artifacts, image by image, from files opened when first read and closed at
    the end of the `with`: one per process that computes images of `run_artifact_stage` (the `context` of
    `ordered_map`), the stage holding its inputs unchanged until it ends."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self._open: list[Artifact] = []

    def __enter__(self) -> InputMasks:
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._open:
            self._open.pop().close()

    def masks(self, image_id: int) -> list[MaskStack]:
        """The masks of one image in each input, as crops."""
        for p in self.paths[len(self._open):]:
            self._open.append(Artifact(p))
        return [a.mask_stack(image_id) for a in self._open]


def artifact_image(per_image: PerImage, inputs: InputMasks, image: dict, records: list[list[dict]], *, out: str,
                   source: str, rescore: bool, quality: str | None, quality_source: str, image_root: str
                   ) -> ImageRows:
    """One image of `run_artifact_stage` (in this process or in a worker), its input masks read from
    `inputs`."""
    masks = inputs.masks(image["id"])
    rows, out_masks, maps = per_image(image, records, masks)
    check_rows(rows, records[0], out, source, image["id"])
    rows = [dict(r) for r in rows]
    out_masks = MaskStack.from_masks(out_masks)  # a copy: per_image may hand back its input's masks
    if len(out_masks) != len(rows) or out_masks.shape[1:] != (image["height"], image["width"]):
        raise ArtifactError(f"{out}: image {image['id']}: masks of shape {out_masks.shape} for {len(rows)} rows "
                            f"of a {image['height']}x{image['width']} image")
    if any(is_true_mask(r) for r in records[0]):
        pass_true_masks(rows, out_masks, records[0], masks[0])
    if rescore:
        scorer = quality_scorer(quality)
        feats = [{**a, **r} for a, r in zip(records[0], rows)]
        rgb = read_artifact_image(image_root, image) if scorer is not None and rows else None
        add_quality(scorer, rgb, feats, out_masks, quality_source)
        for r, f in zip(rows, feats):
            r["quality"] = f["quality"]
    return ImageRows(rows, out_masks.to_crops(), maps)


def run_artifact_stage(
    sources: Sequence[str | os.PathLike | Artifact],
    out: str | os.PathLike,
    provenance: Provenance,
    per_image: PerImage,
    *,
    expect_stages: Sequence[str | Sequence[str] | None] = (),
    check_same_instances: bool = True,
    final_attrs: Callable[[], Mapping[str, Any]] | None = None,
    quality_source: str | None = None,
    rescore: bool = True,
    workers: int = 1,
) -> Path:
    """Write artifact `out` from input artifacts, one `per_image` call per image of the first source (with
    each source's masks of the image as a `MaskStack`: crops, `np.asarray` gives the (K, H, W) frames).

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
    stage = provenance.stage
    with ExitStack() as stack:
        arts = [src if isinstance(src, Artifact) else stack.enter_context(
                    Artifact(src, stage=expect_stages[i] if i < len(expect_stages) else None))
                for i, src in enumerate(sources)]
        if check_same_instances:
            same_instances(arts)
        first = arts[0]
        src = quality_source or (stage if stage in features.SOURCES
                                 else str(first.attrs.get("quality_source", first.stage)))
        image_root = first.attrs.get("image_root", "")
        fn = partial(artifact_image, per_image, out=str(out), source=str(first.path), rescore=rescore,
                     quality=provenance.quality, quality_source=src, image_root=image_root)
        jobs = ((first.image(i), [a.records(i) for a in arts]) for i in first.image_ids)
        results = ordered_map(fn, jobs, worker_count(workers, len(first.image_ids)),
                              context=partial(InputMasks, [str(a.path) for a in arts]))
        images = ((first.image(i), first.tags.get(i, []), rows) for i, rows in zip(first.image_ids, results))
        with closing(results):
            write_images(out, provenance, first.categories, images, inputs=[*(a.path for a in arts),
                         *provenance.inputs], image_root=image_root, quality_source=src, desc=stage,
                         total=len(first.image_ids), final_attrs=final_attrs)
    return Path(out)
