"""HDF5 artifact store: one file per stage and shard, written atomically, readable with plain h5py.

Layout (documented for users in docs/hdf5.md):

    /                      attrs: schema, schema_version, stage, method, parameters (JSON),
                           package_version, inputs (JSON {path: sha256}), created
    /categories/{id,name,isthing}
    /images/{id,file_name,width,height,orientation}   orientation: stored | exif (pseudomask.images)
    /tags/{image_id,category_id}              image-level tags (tag-only datasets)
    /instances/{id,image_id,category_id,bbox,status,reason,...}   one row per input instance
    /masks/{data,start,offset,shape}   compact masks (schema version 2), one per instance row, in the
                           instance table's order: row i's mask is its tight crop (values 1 foreground,
                           0 background, 255 ignore; 0 outside the crop)
                           data[start[i]:start[i + 1]].reshape(shape[i]) placed at offset[i] = (y, x)
                           (see `pseudomask.crops`; version 1 stored (K, H, W) frames at /masks/<image_id>)
    /<map>/<image_id>      per-image arrays of a stage (e.g. semantic, instance, proposals/...)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from . import __version__
from .crops import Crops, MaskStack, paste_crops
from .errors import PseudomaskError
from .files import PendingFile

SCHEMA = "pseudomask-artifact"
SCHEMA_VERSION = 2
IMAGE_COLUMNS = ("id", "file_name", "width", "height", "orientation")  # orientation: absent in older files
READABLE_VERSIONS = (1, 2)  # version 1: full-frame masks/<image_id>
MASK_CHUNK = 1 << 16  # bytes per chunk of masks/data (gzip level 6): one instance's read inflates one or two
FLUSH_CHUNKS = 16  # masks/data is written in runs of this many whole chunks (1 MiB)
MAP_GZIP = 4  # gzip level of per-image maps, with byte shuffle: MCG's proposal maps in 108 KiB per image, not 426
STATUSES = ("kept", "invalid", "dropped", "ignored", "failed")
IGNORE = 255
RESERVED = {"categories", "images", "tags", "instances", "masks"}
BASE_COLUMNS = ("id", "image_id", "category_id", "bbox", "status", "reason")

_STR = h5py.string_dtype("utf-8")


class ArtifactError(PseudomaskError, ValueError):
    """An artifact that is missing, of the wrong stage, or of another schema version."""


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of the sorted names and sizes of a directory's files."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p)}:{f.stat().st_size}\n".encode())
        return "dir:" + h.hexdigest()
    with open(p, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _column(values: list, name: str) -> np.ndarray:
    if name == "bbox":
        return np.asarray(values, dtype=np.float64).reshape(-1, 4)
    if name in ("id", "image_id", "category_id"):
        return np.asarray(values, dtype=np.int64)
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, str) or name in ("status", "reason"):
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    bad = next((v for v in values if v is not None and not isinstance(v, (int, float, np.number, bool))), None)
    if bad is not None:
        raise ArtifactError(f"instance column {name!r} holds {type(bad).__name__} values; columns are numbers or strings")
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _write_table(group: h5py.Group, columns: Mapping[str, np.ndarray]) -> None:
    """One dataset per column, gzip-compressed; strings as fixed-length UTF-8 (which compresses, unlike
    variable-length strings), read back with `.asstr()` like any h5py string."""
    for name, col in columns.items():
        if col.dtype == object:
            raw = [str(v).encode("utf-8") for v in col]
            n = max((len(b) for b in raw), default=0) or 1
            data = np.array(raw, dtype=h5py.string_dtype("utf-8", n))
        else:
            data = col
        kw = {"compression": "gzip", "compression_opts": 6, "shuffle": data.dtype.itemsize > 1} if len(data) else {}
        group.create_dataset(name, data=data, **kw)


class ArtifactWriter:
    """Writes one artifact image by image; the file appears at `path` only when closed cleanly.

    Streaming keeps a shard's memory bounded by its largest image rather than its size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        stage: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        inputs: Iterable[str | os.PathLike] | Mapping[str, str] = (),
        categories: Sequence[Mapping[str, Any]] = (),
        attrs: Mapping[str, Any] | None = None,
    ):
        """`inputs`: paths to digest, or a ready {path: digest} mapping (to hash a large input once)."""
        self.path = Path(path)
        self._pending = PendingFile(self.path)
        self._f = h5py.File(self._pending.tmp, "w")
        a = self._f.attrs
        a["schema"] = SCHEMA
        a["schema_version"] = SCHEMA_VERSION
        a["stage"] = stage
        a["method"] = method
        a["parameters"] = json.dumps(dict(params or {}), sort_keys=True, default=str)
        a["package_version"] = __version__
        digests = dict(inputs) if isinstance(inputs, Mapping) else {
            str(p): file_digest(p) for p in inputs if Path(p).exists()}
        a["inputs"] = json.dumps(digests, sort_keys=True)
        a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for k, v in (attrs or {}).items():
            a[k] = v
        cats = list(categories)
        g = self._f.create_group("categories")
        g.create_dataset("id", data=np.array([c["id"] for c in cats], dtype=np.int64))
        g.create_dataset("name", data=np.array([c["name"] for c in cats], dtype=object), dtype=_STR)
        g.create_dataset("isthing", data=np.array([int(c.get("isthing", 1)) for c in cats], dtype=np.int8))
        self._images: list[Mapping[str, Any]] = []
        self._rows: list[Mapping[str, Any]] = []
        self._tags: list[tuple[int, int]] = []
        self._crop_start: list[int] = [0]
        self._crop_offset: list[np.ndarray] = []
        self._crop_shape: list[np.ndarray] = []
        self._crop_data: h5py.Dataset | None = None
        self._crop_buffer: list[np.ndarray] = []  # crop bytes not yet written: less than FLUSH_CHUNKS chunks
        self._has_masks = False
        self._closed = False

    def add_image(
        self,
        image: Mapping[str, Any],
        instances: Sequence[Mapping[str, Any]] = (),
        masks: np.ndarray | Crops | None = None,
        maps: Mapping[str, np.ndarray | Mapping[str, np.ndarray]] | None = None,
        tags: Iterable[int] = (),
    ) -> None:
        """Add an image, its instance rows, its masks aligned with the rows ((K,H,W) uint8, a `MaskStack` or `Crops`),
        and extra maps."""
        image_id = int(image["id"])
        h, w = int(image["height"]), int(image["width"])
        self._images.append({"id": image_id, "file_name": str(image["file_name"]), "width": w, "height": h,
                             "orientation": str(image.get("orientation") or "stored")})
        for r in instances:
            if r.get("status") not in STATUSES:
                raise ArtifactError(f"{self.path}: instance {r.get('id')} has status {r.get('status')!r}; "
                                    f"expected one of {STATUSES}")
            self._rows.append({**r, "image_id": image_id})
        self._tags.extend((image_id, int(t)) for t in tags)
        if isinstance(masks, MaskStack):
            masks = masks.to_crops()
        if masks is not None and not isinstance(masks, Crops):
            masks = np.asarray(masks, dtype=np.uint8)
            if masks.ndim != 3 or masks.shape[0] != len(instances) or masks.shape[1:] != (h, w):
                raise ArtifactError(f"{self.path}: image {image_id}: masks of shape {masks.shape} do not match "
                                    f"{len(instances)} instances of a {h}x{w} image")
            masks = Crops.from_masks(masks)
        if masks is None:
            k = len(instances)
            self._add_crops(Crops(np.zeros(0, np.uint8), np.zeros((k, 2), np.int32), np.zeros((k, 2), np.int32)))
        else:
            if len(masks) != len(instances) or not masks.fits(h, w):
                raise ArtifactError(f"{self.path}: image {image_id}: {len(masks)} mask crops do not fit "
                                    f"{len(instances)} instances of a {h}x{w} image")
            self._add_crops(masks)
            self._has_masks = True
        for name, value in (maps or {}).items():
            if name in RESERVED:
                raise ArtifactError(f"{self.path}: map name {name!r} is reserved")
            if isinstance(value, Mapping):
                for key, arr in value.items():
                    self._dataset(f"{name}/{image_id}/{key}", np.asarray(arr))
            else:
                self._dataset(f"{name}/{image_id}", np.asarray(value))

    def _add_crops(self, crops: Crops) -> None:
        """Append one image's crops (rows in instance order) to masks/data and its index."""
        data, offsets, shapes = crops.data, crops.offsets, crops.shapes
        if len(data):
            self._crop_buffer.append(data)
            if sum(map(len, self._crop_buffer)) >= FLUSH_CHUNKS * MASK_CHUNK:
                self._flush_crops()
        sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1]
        self._crop_start.extend((self._crop_start[-1] + np.cumsum(sizes)).tolist())
        self._crop_offset.append(offsets)
        self._crop_shape.append(shapes)

    def _flush_crops(self, final: bool = False) -> None:
        """Write the buffered crop bytes to masks/data in whole chunks (all of them when `final`), so that
        each chunk is compressed once: a chunk written in parts is inflated and deflated again per part."""
        data = np.concatenate(self._crop_buffer) if self._crop_buffer else np.zeros(0, np.uint8)
        k = len(data) if final else len(data) // MASK_CHUNK * MASK_CHUNK
        self._crop_buffer = [data[k:]] if k < len(data) else []
        if not k:
            return
        if self._crop_data is None:
            self._crop_data = self._f.create_dataset("masks/data", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                                     chunks=(MASK_CHUNK,), compression="gzip", compression_opts=6)
        n = self._crop_data.shape[0]
        self._crop_data.resize((n + k,))
        self._crop_data[n:] = data[:k]

    def _write_crop_index(self) -> None:
        self._flush_crops(final=True)
        g = self._f.require_group("masks")
        if self._crop_data is None:
            g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(MASK_CHUNK,))
        g.create_dataset("start", data=np.asarray(self._crop_start, np.int64), compression="gzip")
        g.create_dataset("offset", data=np.concatenate(self._crop_offset).reshape(-1, 2), compression="gzip")
        g.create_dataset("shape", data=np.concatenate(self._crop_shape).reshape(-1, 2), compression="gzip")

    def _dataset(self, name: str, arr: np.ndarray) -> h5py.Dataset:
        """A per-image map: compressed (gzip MAP_GZIP, byte shuffle), one chunk per 2-D plane, unless tiny."""
        if (arr.ndim >= 2 and arr.size) or arr.size >= 1024:
            chunks = (1,) * (arr.ndim - 2) + arr.shape[-2:] if arr.ndim >= 2 else (min(arr.size, 1 << 16),)
            return self._f.create_dataset(name, data=arr, chunks=chunks, compression="gzip",
                                          compression_opts=MAP_GZIP, shuffle=arr.dtype.itemsize > 1)
        return self._f.create_dataset(name, data=arr)

    def set_attrs(self, **attrs: Any) -> None:
        """Root attributes known only at the end of a stage (e.g. summary statistics)."""
        for k, v in attrs.items():
            self._f.attrs[k] = v

    def close(self) -> Path:
        if self._closed:
            return self.path
        f = self._f
        try:
            cols = {k: _column([im[k] for im in self._images], k) for k in IMAGE_COLUMNS}
            cols["width"] = cols["width"].astype(np.int64)
            cols["height"] = cols["height"].astype(np.int64)
            _write_table(f.create_group("images"), cols)
            keys = list(BASE_COLUMNS) + sorted({k for r in self._rows for k in r} - set(BASE_COLUMNS))
            table = {k: _column([r.get(k) for r in self._rows], k) for k in keys}
            _write_table(f.create_group("instances"), table)
            tags = np.array(self._tags, dtype=np.int64).reshape(-1, 2)
            _write_table(f.create_group("tags"), {"image_id": tags[:, 0], "category_id": tags[:, 1]})
            if self._has_masks:  # none at all: no /masks (e.g. ingest's shard records)
                self._write_crop_index()
            f.close()
            self._pending.commit()
        except BaseException:  # e.g. a column of mixed types: leave no file behind
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._f.close()
            self._pending.discard()
            self._closed = True

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Artifact:
    """Read-only view of an artifact; masks and maps load lazily per image."""

    def __init__(self, path: str | os.PathLike, stage: str | Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: no such artifact")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise ArtifactError(f"{self.path}: not a readable HDF5 file ({e})") from None
        a = self._f.attrs
        if a.get("schema") != SCHEMA:
            self._f.close()
            raise ArtifactError(f"{self.path}: not a pseudomask artifact (schema attribute {a.get('schema')!r})")
        version = int(a["schema_version"])
        if version not in READABLE_VERSIONS:
            self._f.close()
            raise ArtifactError(f"{self.path}: schema version {version}, this pseudomask reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}; rerun the stage that wrote it")
        self.schema_version = version
        self.stage = str(a["stage"])
        wanted = (stage,) if isinstance(stage, str) else tuple(stage or ())
        if wanted and self.stage not in wanted:
            self._f.close()
            raise ArtifactError(f"{self.path}: a {self.stage!r} artifact, expected one of {wanted}")
        self.method = str(a["method"])
        self.params: dict = json.loads(a["parameters"])
        self.inputs: dict = json.loads(a["inputs"])
        self.version = str(a["package_version"])
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
        self.categories = self._read_categories()
        self.images = self._table("images")
        self.instances = self._table("instances")
        tags = self._table("tags")
        self.tags: dict[int, list[int]] = {}
        for i, c in zip(tags.get("image_id", []), tags.get("category_id", [])):
            self.tags.setdefault(int(i), []).append(int(c))
        self._rows_by_image: dict[int, np.ndarray] | None = None
        self._crop_index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _read_categories(self) -> list[dict]:
        g = self._f["categories"]
        names = g["name"].asstr()[:] if len(g["name"]) else []
        return [{"id": int(i), "name": str(n), "isthing": int(t)} for i, n, t in zip(g["id"][:], names, g["isthing"][:])]

    def _table(self, name: str) -> dict[str, np.ndarray]:
        out = {}
        for k, ds in self._f[name].items():
            out[k] = ds.asstr()[:].astype(object) if h5py.check_string_dtype(ds.dtype) else ds[:]
        return out

    @property
    def image_ids(self) -> list[int]:
        return [int(i) for i in self.images["id"]]

    def image(self, image_id: int) -> dict:
        i = int(np.flatnonzero(self.images["id"] == image_id)[0])
        return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in self.images.items()}

    def rows(self, image_id: int) -> np.ndarray:
        """Indices into the instance table of one image's instances, in mask order."""
        if self._rows_by_image is None:
            ids = self.instances.get("image_id", np.zeros(0, np.int64))
            order = np.argsort(ids, kind="stable")
            uniq, starts = np.unique(ids[order], return_index=True)
            bounds = list(starts[1:]) + [len(order)]
            self._rows_by_image = {int(u): order[s:e] for u, s, e in zip(uniq, starts, bounds)}
        return self._rows_by_image.get(int(image_id), np.zeros(0, np.int64))

    def records(self, image_id: int | None = None) -> list[dict]:
        """Instance rows as dicts (all of them, or one image's)."""
        idx = self.rows(image_id) if image_id is not None else range(len(self.instances.get("id", [])))
        out = []
        for i in idx:
            r = {}
            for k, col in self.instances.items():
                v = col[i]
                r[k] = [float(x) for x in v] if k == "bbox" else (v.item() if hasattr(v, "item") else v)
            out.append(r)
        return out

    def _crops(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, offset, shape) of the compact masks (version 2), read once."""
        if self._crop_index is None:
            g = self._f["masks"]
            start, offset, shape = g["start"][:], g["offset"][:], g["shape"][:]
            n = len(self.instances.get("id", []))
            if len(shape) != n or len(start) != n + 1:
                raise ArtifactError(f"{self.path}: masks/ index holds {len(shape)} masks for {n} instance rows")
            self._crop_index = start, offset, shape
        return self._crop_index

    def image_crops(self, image_id: int) -> Crops:
        """One image's masks as `Crops`, aligned with `rows(image_id)` (schema version 2)."""
        rows = self.rows(image_id)
        if "masks" not in self._f or not len(rows):
            k = len(rows)
            return Crops(np.zeros(0, np.uint8), np.zeros((k, 2), np.int32), np.zeros((k, 2), np.int32))
        start, offset, shape = self._crops()
        data = self._f["masks/data"]
        if np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):  # contiguous: one read
            lo, hi = int(start[rows[0]]), int(start[rows[-1] + 1])
            crops = data[lo:hi] if hi > lo else np.zeros(0, np.uint8)
        else:
            crops = np.concatenate([data[int(start[r]):int(start[r + 1])] for r in rows] or [np.zeros(0, np.uint8)])
        return Crops(crops, offset[rows], shape[rows])

    def mask_stack(self, image_id: int) -> MaskStack:
        """One image's masks as a `MaskStack` (crops; memory follows the masks, not K x H x W)."""
        im = self.image(image_id)
        if self.schema_version >= 2:
            return MaskStack.from_crops(self.image_crops(image_id), im["height"], im["width"])
        return MaskStack.from_masks(self.masks(image_id))

    def masks(self, image_id: int) -> np.ndarray:
        """(K,H,W) uint8 masks of one image, aligned with `rows(image_id)`."""
        if self.schema_version >= 2:
            im = self.image(image_id)
            c = self.image_crops(image_id)
            return paste_crops(c.data, c.offsets, c.shapes, im["height"], im["width"])
        key = f"masks/{int(image_id)}"
        if key not in self._f:
            im = self.image(image_id)
            return np.zeros((0, im["height"], im["width"]), np.uint8)
        ds = self._f[key]
        expected = self.instances["id"][self.rows(image_id)]
        if not np.array_equal(ds.attrs["instance_ids"], expected):
            raise ArtifactError(f"{self.path}: masks/{image_id} rows do not match the instance table")
        return ds[:]

    def mask(self, instance_id: int) -> np.ndarray:
        """(H,W) uint8 mask of one instance (by its id)."""
        hit = np.flatnonzero(self.instances.get("id", np.zeros(0, np.int64)) == int(instance_id))
        if not len(hit):
            raise ArtifactError(f"{self.path}: no instance {instance_id}")
        i = int(hit[0])
        image_id = int(self.instances["image_id"][i])
        if self.schema_version < 2:
            return self.masks(image_id)[list(self.rows(image_id)).index(i)]
        im = self.image(image_id)
        if "masks" not in self._f:
            return np.zeros((im["height"], im["width"]), np.uint8)
        start, offset, shape = self._crops()
        return paste_crops(self._f["masks/data"][int(start[i]):int(start[i + 1])], offset[i:i + 1], shape[i:i + 1],
                           im["height"], im["width"])[0]

    def has_masks(self) -> bool:
        return "masks" in self._f

    def map(self, name: str, image_id: int, key: str | None = None) -> np.ndarray | dict[str, np.ndarray] | None:
        """One image's map (a group map as {key: array}; only its array `key` when given), or None."""
        path = f"{name}/{int(image_id)}" + (f"/{key}" if key else "")
        if path not in self._f:
            return None
        node = self._f[path]
        return {k: v[:] for k, v in node.items()} if isinstance(node, h5py.Group) else node[:]

    def map_names(self) -> list[str]:
        return sorted(set(self._f.keys()) - RESERVED)

    def iter_images(self) -> Iterator[tuple[dict, list[dict], np.ndarray]]:
        for image_id in self.image_ids:
            yield self.image(image_id), self.records(image_id), self.masks(image_id)

    def status_counts(self) -> dict[str, int]:
        st = self.instances.get("status", np.zeros(0, object))
        return {s: int(np.sum(st == s)) for s in STATUSES if np.any(st == s)}

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Artifact":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
