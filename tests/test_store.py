import h5py
import numpy as np
import pytest

from pseudomask.store import Artifact, ArtifactError, ArtifactWriter, SCHEMA_VERSION

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _write(path, stage="grabcut", fail=False):
    with ArtifactWriter(path, stage=stage, method="m", params={"k": 3}, categories=CATS) as w:
        masks = np.zeros((2, 6, 8), np.uint8)
        masks[0, 1:3, 1:4] = 1
        masks[1, 2:5, 2:6] = 255
        w.add_image({"id": 7, "file_name": "x.png", "width": 8, "height": 6},
                    [{"id": 11, "category_id": 1, "bbox": [1, 1, 3, 2], "status": "kept", "reason": "", "iou": 0.5},
                     {"id": 12, "category_id": 2, "bbox": [2, 2, 4, 3], "status": "failed", "reason": "why"}],
                    masks, maps={"semantic": np.full((6, 8), 3, np.uint8)})
        w.add_image({"id": 8, "file_name": "y.png", "width": 4, "height": 4}, [], np.zeros((0, 4, 4), np.uint8),
                    tags=[2])
        if fail:
            raise RuntimeError("boom")
    return path


def test_round_trip(tmp_path):
    a = Artifact(_write(tmp_path / "a.h5"), stage="grabcut")
    assert a.stage == "grabcut" and a.method == "m" and a.params == {"k": 3}
    assert a.image_ids == [7, 8]
    recs = a.records(7)
    assert [r["id"] for r in recs] == [11, 12]
    assert recs[0]["iou"] == 0.5 and np.isnan(recs[1]["iou"])
    assert recs[1]["status"] == "failed" and recs[1]["reason"] == "why"
    m = a.masks(7)
    assert m.shape == (2, 6, 8) and m[0].sum() == 6 and (m[1] == 255).sum() == 12
    assert a.masks(8).shape == (0, 4, 4)
    assert a.map("semantic", 7).max() == 3
    assert a.tags == {8: [2]}
    assert a.status_counts() == {"kept": 1, "failed": 1}


def test_plain_h5py_reaches_one_instance_and_one_image_in_one_line(tmp_path):
    path = _write(tmp_path / "a.h5")
    f = h5py.File(path)
    m = f["masks"]
    i = 1  # row of the instance table
    crop = m["data"][m["start"][i]:m["start"][i + 1]].reshape(m["shape"][i])
    assert crop.shape == (3, 4) and (crop == 255).all() and list(m["offset"][i]) == [2, 2]
    rows = np.flatnonzero(f["instances/image_id"][:] == 7)
    crops = [m["data"][m["start"][i]:m["start"][i + 1]].reshape(m["shape"][i]) for i in rows]
    assert [c.shape for c in crops] == [(2, 3), (3, 4)] and list(f["instances/id"][:][rows]) == [11, 12]
    f.close()


def test_masks_are_tight_crops_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    big = np.zeros((3, 900, 1200), np.uint8)
    big[0, 100:140, 200:260] = rng.integers(0, 2, (40, 60))
    big[0, 120, 210] = 255
    big[2, 899, 0] = 1  # a corner pixel; mask 1 is empty
    rows = [{"id": k + 1, "category_id": 1, "bbox": [0, 0, 1, 1], "status": "kept", "reason": ""} for k in range(3)]
    with ArtifactWriter(tmp_path / "c.h5", stage="grabcut", method="m", categories=CATS) as w:
        w.add_image({"id": 1, "file_name": "a.png", "width": 1200, "height": 900}, rows, big)
        w.add_image({"id": 2, "file_name": "b.png", "width": 5, "height": 4},
                    [{**rows[0], "id": 9}])  # no masks given: an empty mask
    with Artifact(tmp_path / "c.h5") as a:
        assert np.array_equal(a.masks(1), big) and not a.masks(2).any() and a.masks(2).shape == (1, 4, 5)
        assert np.array_equal(a.mask(3), big[2]) and np.array_equal(a.mask(1), big[0])
        with pytest.raises(ArtifactError, match="no instance 77"):
            a.mask(77)
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["masks/shape"][:].tolist() == [[40, 60], [0, 0], [1, 1], [0, 0]]
        assert f["masks/data"].shape == (40 * 60 + 1,)
    assert (tmp_path / "c.h5").stat().st_size < 100_000  # the frames alone would be 3.2 MB


def _as_version_1(path):
    """Rewrite an artifact's masks in the version-1 layout: (K, H, W) frames at masks/<image_id>."""
    with Artifact(path) as a:
        frames = {i: (a.masks(i), a.instances["id"][a.rows(i)]) for i in a.image_ids}
    with h5py.File(path, "a") as f:
        del f["masks"]
        for i, (m, ids) in frames.items():
            f.create_dataset(f"masks/{i}", data=m).attrs["instance_ids"] = ids
        f.attrs["schema_version"] = 1


def test_version_1_artifacts_still_read(tmp_path):
    path = _write(tmp_path / "a.h5")
    with Artifact(path) as a:
        want = a.masks(7)
    _as_version_1(path)
    with Artifact(path) as a:
        assert a.schema_version == 1
        assert np.array_equal(a.masks(7), want) and (a.masks(7)[1] == 255).sum() == 12
        assert np.array_equal(a.mask(12), want[1]) and a.masks(8).shape == (0, 4, 4)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _write(tmp_path / "a.h5", fail=True)
    assert list(tmp_path.iterdir()) == []


def test_wrong_stage_and_version_are_clear_errors(tmp_path):
    path = _write(tmp_path / "a.h5")
    with pytest.raises(ArtifactError, match="a 'grabcut' artifact, expected"):
        Artifact(path, stage="mcg")
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ArtifactError, match=f"schema version {SCHEMA_VERSION + 1}, this pseudomask reads versions 1, 2"):
        Artifact(path)
    other = tmp_path / "other.h5"
    h5py.File(other, "w").close()
    with pytest.raises(ArtifactError, match="not a pseudomask artifact"):
        Artifact(other)
    with pytest.raises(ArtifactError, match="no such artifact"):
        Artifact(tmp_path / "missing.h5")


def test_bad_status_and_mask_shape_rejected(tmp_path):
    with pytest.raises(ArtifactError, match="status"):
        with ArtifactWriter(tmp_path / "b.h5", stage="s", method="m", categories=CATS) as w:
            w.add_image({"id": 1, "file_name": "f", "width": 2, "height": 2},
                        [{"id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "status": "lost", "reason": ""}])
    with pytest.raises(ArtifactError, match="do not match"):
        with ArtifactWriter(tmp_path / "c.h5", stage="s", method="m", categories=CATS) as w:
            w.add_image({"id": 1, "file_name": "f", "width": 2, "height": 2},
                        [{"id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "status": "kept", "reason": ""}],
                        np.zeros((1, 3, 3), np.uint8))
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "c.h5").exists()


def test_masks_given_as_crops_equal_masks_given_as_frames(tmp_path):
    """A worker hands the writer its image's masks as Crops; the file is the same as from (K,H,W) frames,
    and crops that do not fit the image are refused."""
    from pseudomask.crops import Crops

    masks = np.zeros((3, 6, 8), np.uint8)
    masks[0, 1:3, 1:4] = 1
    masks[1, 2:5, 2:6] = 255
    masks[1, 3, 3] = 1
    rows = [{"id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "status": "kept", "reason": ""} for i in (1, 2, 3)]
    im = {"id": 1, "file_name": "f", "width": 8, "height": 6}
    for name, given in (("frames.h5", masks), ("crops.h5", Crops.from_masks(masks))):
        with ArtifactWriter(tmp_path / name, stage="s", method="m", categories=CATS) as w:
            w.add_image(im, rows, given)
    with Artifact(tmp_path / "frames.h5") as a, Artifact(tmp_path / "crops.h5") as b:
        assert np.array_equal(a.masks(1), masks) and np.array_equal(b.masks(1), masks)
        assert np.array_equal(a._f["masks/data"][:], b._f["masks/data"][:])
    small = Crops.from_masks(masks[:, :5, :5])
    with pytest.raises(ArtifactError, match="do not fit"):
        with ArtifactWriter(tmp_path / "bad.h5", stage="s", method="m", categories=CATS) as w:
            w.add_image({**im, "width": 4, "height": 4}, rows, small)
    with pytest.raises(ArtifactError, match="do not fit"):
        with ArtifactWriter(tmp_path / "bad.h5", stage="s", method="m", categories=CATS) as w:
            w.add_image(im, rows[:2], small)
    assert not (tmp_path / "bad.h5").exists()


def test_crops_pickle_as_bits_and_come_back_equal():
    """Crops travel from a worker to the writer pickled: binary ones as bits (an eighth of the bytes), ones
    with ignore pixels as they are; both unpickle to the same arrays."""
    import pickle

    from pseudomask.crops import Crops, paste_crops

    rng = np.random.default_rng(0)
    binary = (rng.uniform(size=(3, 40, 50)) < 0.4).astype(np.uint8)
    binary[1] = 0  # an empty mask: a (0, 0) crop
    ignore = binary.copy()
    ignore[0, 5:9, 5:9] = 255
    for masks in (binary, ignore, binary[:0]):
        crops = Crops.from_masks(masks)
        back = pickle.loads(pickle.dumps(crops))
        assert back.data.dtype == np.uint8 and np.array_equal(back.data, crops.data)
        assert np.array_equal(back.offsets, crops.offsets) and np.array_equal(back.shapes, crops.shapes)
        assert np.array_equal(paste_crops(back.data, back.offsets, back.shapes, 40, 50), masks)
    big = Crops.from_masks(binary)
    assert len(pickle.dumps(big)) < len(big.data) / 4
    assert len(pickle.dumps(Crops.from_masks(ignore))) > len(big.data)


def test_provenance_records_input_digests(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("{}")
    with ArtifactWriter(tmp_path / "p.h5", stage="s", method="m", inputs=[src], categories=CATS):
        pass
    a = Artifact(tmp_path / "p.h5")
    assert a.inputs[str(src)] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert a.version and a.attrs["created"]


def test_stale_temp_file_of_a_killed_writer_is_removed(tmp_path):
    stale = tmp_path / ".a.h5.tmp-99999"
    stale.write_bytes(b"partial")
    _write(tmp_path / "a.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_one_array_of_a_group_map(tmp_path):
    """`Artifact.map(name, image, key)` reads one array of a group map (e.g. a proposal list's scores)
    without the rest; a missing map or key is None."""
    with ArtifactWriter(tmp_path / "g.h5", stage="mcg", method="m", categories=CATS) as w:
        w.add_image({"id": 1, "file_name": "f", "width": 4, "height": 3}, [],
                    maps={"proposals": {"superpixels": np.arange(12, dtype=np.int32).reshape(3, 4),
                                        "scores": np.array([0.5, 0.25], np.float32)}})
    with Artifact(tmp_path / "g.h5") as a:
        assert set(a.map("proposals", 1)) == {"superpixels", "scores"}
        assert np.array_equal(a.map("proposals", 1, "scores"), [0.5, 0.25])
        assert a.map("proposals", 1, "missing") is None and a.map("proposals", 2, "scores") is None


def test_masks_written_in_whole_chunks_read_back_across_the_runs(tmp_path):
    """masks/data is written in runs of whole chunks; crops that straddle a run's end, and the last
    partial chunk, read back exactly, and the stored bytes are the crops in instance order."""
    from pseudomask.store import FLUSH_CHUNKS, MASK_CHUNK

    rng = np.random.default_rng(0)
    side = int(np.sqrt(FLUSH_CHUNKS * MASK_CHUNK / 3)) + 7  # three images per run, ends not chunk-aligned
    frames = []
    with ArtifactWriter(tmp_path / "big.h5", stage="grabcut", method="m", params={}, categories=CATS) as w:
        for i in range(8):
            m = (rng.random((2, side, side)) < 0.5).astype(np.uint8)
            frames.append(m)
            w.add_image({"id": i, "file_name": f"{i}.png", "width": side, "height": side},
                        [{"id": 10 * i + k, "category_id": 1, "bbox": [0, 0, side, side], "status": "kept",
                          "reason": ""} for k in range(2)], m)
    a = Artifact(tmp_path / "big.h5", stage="grabcut")
    for i, m in enumerate(frames):
        assert np.array_equal(a.masks(i), m)
    with h5py.File(tmp_path / "big.h5") as f:
        assert f["masks/data"].shape == (16 * side * side,)
        assert np.array_equal(f["masks/data"][:], np.concatenate([m.ravel() for m in frames]))
