"""Mixed supervision: true masks of some images (`dataset.strong`) enter at ingest as source `gt` and pass
through every stage unchanged (status kept, quality 1), win every merge, and are never scored as predictions."""

import json

import numpy as np
import pytest

from pseudomask.dataset import DatasetError, read_shard
from pseudomask.ingest import ingest
from pseudomask.masks import segmentation_mask
from pseudomask.registry import STAGES
from pseudomask.store import Artifact


def strong_file(demo, tmp_path, n_images=2, edit=None):
    """A COCO JSON with the true masks of the first `n_images` demo images; `edit(data)` may change it."""
    data = json.loads((demo / "annotations.json").read_text())
    keep = {im["id"] for im in data["images"][:n_images]}
    data = {"images": [im for im in data["images"] if im["id"] in keep], "categories": data["categories"],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    if edit:
        edit(data)
    path = tmp_path / "strong.json"
    path.write_text(json.dumps(data))
    return path, data


def true_masks(data):
    ims = {im["id"]: im for im in data["images"]}
    return {a["id"]: segmentation_mask(a["segmentation"], ims[a["image_id"]]["height"], ims[a["image_id"]]["width"])
            for a in data["annotations"]}


def test_ingest_carries_true_masks_as_source_gt(demo, tmp_path):
    path, data = strong_file(demo, tmp_path)
    m = ingest(demo / "annotations.json", demo / "images", tmp_path / "shards", shard_size=100, strong=path)
    assert m["strong_images"] == 2 and m["strong_instances"] == len(data["annotations"])
    ds = read_shard(tmp_path / "shards" / "s00000.h5")
    gt = [r for r in ds.instances if r["source"] == "gt"]
    assert {r["id"] for r in gt} == set(ds.strong) == {a["id"] for a in data["annotations"]}
    assert all(r["status"] == "kept" for r in gt)
    assert sum(r["source"] == "" for r in ds.instances) == len(ds.instances) - len(gt) > 0
    truth = true_masks(data)
    from pseudomask.masks import rle_decode

    for i, rle in ds.strong.items():
        assert np.array_equal(rle_decode(rle), truth[i])


def test_a_list_of_image_ids_takes_the_dataset_masks(demo, tmp_path):
    images = json.loads((demo / "annotations.json").read_text())["images"]
    ids = tmp_path / "strong.txt"
    ids.write_text(f"# strong images\n{images[3]['id']}\n")
    ingest(demo / "annotations.json", demo / "images", tmp_path / "shards", shard_size=100, strong=ids)
    ds = read_shard(tmp_path / "shards" / "s00000.h5")
    assert {r["image_id"] for r in ds.instances if r["source"] == "gt"} == {images[3]["id"]}


def test_added_and_corrected_instances(demo, tmp_path):
    def edit(d):
        first = d["annotations"][0]
        d["annotations"].append({**first, "id": 10 ** 6, "bbox": [0, 0, 10, 10],
                                 "segmentation": [[0, 0, 9, 0, 9, 9, 0, 9]]})
        d["annotations"] = d["annotations"][1:]  # the first box: "deleted" by the annotator, stays a box

    path, data = strong_file(demo, tmp_path, edit=edit)
    before = json.loads((demo / "annotations.json").read_text())["annotations"]
    ingest(demo / "annotations.json", demo / "images", tmp_path / "shards", shard_size=100, strong=path)
    ds = read_shard(tmp_path / "shards" / "s00000.h5")
    rows = {r["id"]: r for r in ds.instances}
    assert len(rows) == len(before) + 1
    assert rows[10 ** 6]["source"] == "gt" and rows[10 ** 6]["reason"] == "added by dataset.strong"
    assert rows[before[0]["id"]]["source"] == ""
    # the added instance sits with its image's instances, after them
    order = [r["image_id"] for r in ds.instances]
    assert order == sorted(order, key=[im["id"] for im in ds.images].index)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"].append({**d["images"][0], "id": 999}), "image 999 is not an image of the dataset"),
    (lambda d: d["annotations"][0].pop("segmentation"), "lacks 'id', 'image_id' or 'segmentation'"),
    (lambda d: d["annotations"][0].update(category_id=77), "unknown category 77"),
    (lambda d: d["annotations"][0].update(segmentation=[]), "has an empty mask"),
])
def test_bad_strong_files_name_the_file_and_record(demo, tmp_path, edit, message):
    path, _ = strong_file(demo, tmp_path, edit=edit)
    with pytest.raises(DatasetError, match=message) as e:
        ingest(demo / "annotations.json", demo / "images", tmp_path / "shards", shard_size=100, strong=path)
    assert str(path) in str(e.value)


def test_true_masks_pass_through_every_stage(demo, tmp_path):
    path, data = strong_file(demo, tmp_path)
    truth = true_masks(data)
    shard = tmp_path / "shards" / "s00000.h5"
    ingest(demo / "annotations.json", demo / "images", shard.parent, shard_size=100, strong=path)
    out = {}

    def run(name, **ports):
        st = STAGES[name]
        out[name] = tmp_path / f"{name}.h5"
        st(st.resolve(), out=str(out[name]), **ports)

    run("grabcut", shard=str(shard))
    run("mcg", shard=str(shard))
    run("agree", grabcut=str(out["grabcut"]), mcg=str(out["mcg"]))
    run("validity", masks=str(out["agree"]))
    run("select", masks=[str(out[s]) for s in ("grabcut", "mcg", "agree")])
    run("merge_drop", masks=str(out["select"]))
    for name, p in out.items():
        with Artifact(p) as a:
            seen = 0
            for image, rows, masks in a.iter_images():
                for r, m in zip(rows, masks):
                    if r["id"] in truth:
                        seen += 1
                        assert r["source"] == "gt" and r["status"] == "kept", (name, r)
                        assert r["quality"] == 1.0, (name, r)
                        assert np.array_equal(m, truth[r["id"]]), name
                    else:
                        assert r.get("source") != "gt"
            assert seen == len(truth), name
    # the export keeps them, and the evaluation of pseudo masks does not count them as predictions
    coco = tmp_path / "pseudo.json"
    STAGES["export"](STAGES["export"].resolve(), artifacts=[str(out["merge_drop"])], out=str(coco))
    anns = json.loads(coco.read_text())["annotations"]
    assert sum(a["source"] == "gt" for a in anns) == len(truth)
    metrics = tmp_path / "metrics.json"
    STAGES["evaluate_masks"](STAGES["evaluate_masks"].resolve(), pseudo=str(coco),
                             ground_truth=str(demo / "annotations.json"), out=str(metrics))
    m = json.loads(metrics.read_text())
    n_all = len(json.loads((demo / "annotations.json").read_text())["annotations"])
    assert m["instances"] == n_all - len(truth)
    assert m["true_masks"] == len(truth)


def test_scorer_train_fits_on_strong_instances_and_select_uses_it(demo, tmp_path):
    path, data = strong_file(demo, tmp_path, n_images=4)
    shard = tmp_path / "shards" / "s00000.h5"
    ingest(demo / "annotations.json", demo / "images", shard.parent, shard_size=100, strong=path)
    st = STAGES["scorer_train"]
    model = tmp_path / "quality" / "scorer.json"
    with pytest.raises(Exception, match="fewer than scorer_train.min_instances = 1000"):
        st(st.resolve({"min_instances": 1000}), shards=[str(shard)], model=str(model))
    summary = st(st.resolve({"min_instances": 5, "folds": 2}), shards=[str(shard)], model=str(model))
    assert summary["instances"] == len(data["annotations"]) and summary["images"] == 4
    assert model.exists() and model.with_suffix(".md").exists()
    assert not list(model.parent.glob(".scorer_train-*"))  # its scratch artifacts are gone
    from pseudomask.quality.scorer import Scorer

    scorer = Scorer.load(model)
    assert scorer.meta["trained_on"] == "strong instances of 1 shard(s)"
    out = {}
    for name in ("grabcut", "mcg"):
        out[name] = tmp_path / f"{name}.h5"
        STAGES[name](STAGES[name].resolve(), shard=str(shard), out=str(out[name]))
    sel = tmp_path / "select.h5"
    STAGES["select"](STAGES["select"].resolve(), masks=[str(out["grabcut"]), str(out["mcg"])], out=str(sel),
                     scorer=str(model))
    with Artifact(sel) as a:
        assert a.attrs["quality_predictor"].startswith("scorer.json@")
        rows = a.records()
    pred = [r for r in rows if r["source"] != "gt" and r["status"] == "kept"]
    assert pred and all(0.0 <= r["quality"] <= 1.0 for r in pred)


@pytest.mark.slow
def test_workflow_trains_the_scorer_when_the_dataset_has_strong_images(tmp_path):
    from workflow_run import snakemake, write_config

    wd = tmp_path / "wd"
    write_config(wd, {"dataset": {"strong": "strong.txt"}, "scorer_train": {"min_instances": 3, "folds": 2}},
                 images=4, shard_size=2)
    (wd / "strong.txt").write_text("1\n3\n")
    snakemake(wd, "--cores", "2")
    assert (wd / "results/quality/scorer.json").exists()
    for shard in ("s00000", "s00001"):
        with Artifact(wd / f"results/merge_drop/{shard}.h5") as a:
            assert a.attrs["quality_predictor"].startswith("scorer.json@")
            gt = [r for r in a.records() if r["source"] == "gt"]
            assert gt and all(r["status"] == "kept" and r["mask_ignore"] == 0 for r in gt)
            assert {r["image_id"] for r in gt} <= {1, 3}


def test_boxcaseg_trains_on_strong_instances_like_salient_images(demo, tmp_path):
    """A strong instance is a salient-kind item: the crop around its box, with its true mask cut the same way."""
    import cv2

    from pseudomask.boxcaseg.data import SALIENT, JointDataset, SalientFolder, box_items, strong_items

    path, data = strong_file(demo, tmp_path, n_images=1)
    ingest(demo / "annotations.json", demo / "images", tmp_path / "shards", shard_size=100, strong=path)
    ds = read_shard(tmp_path / "shards" / "s00000.h5")
    strong = strong_items([ds])
    assert [it.instance_id for it in strong] == [a["id"] for a in data["annotations"]]
    folder = SalientFolder(demo / "salient")
    jd = JointDataset(box_items([ds]), folder, crop_size=64, salient_resize=64, shift=0.0, scale=(1.0, 1.0),
                      strong=strong)
    assert len(jd) == len(box_items([ds])) + len(folder) + len(strong)
    truth = true_masks(data)
    for k, item in enumerate(strong):
        got = jd[(SALIENT, len(folder) + k, 0)]
        assert got["salient"] and got["box"].sum() > 0
        x, y, w, h = item.bbox
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
        want = cv2.resize(truth[item.instance_id][y0:y1, x0:x1], (64, 64), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(got["mask"][0].numpy().astype(np.uint8), want)
