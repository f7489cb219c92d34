"""CAM stage end to end on the demo scenes: a short CPU training on their tags (tiny backbone, random init),
then peak extraction into a "cam" artifact with proposals built from the scenes' own masks."""

import json

import numpy as np
import pytest
import torch

from pseudomask.cam.extract import ID_STRIDE, CamSettings, extract_peaks
from pseudomask.cam.model import CamError, load_classifier, read_checkpoint
from pseudomask.cam.train import CamTrainSettings, train_classifier
from pseudomask.checkpoints import resume_path
from pseudomask.cli import main
from pseudomask.dataset import load_dataset
from pseudomask.masks import box_mask, mask_box, segmentation_mask
from pseudomask.proposals import Proposals, read_proposals
from pseudomask.store import Artifact, ArtifactWriter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # all train a classifier

FAST = dict(backbone="tiny", batch_size=8, input_size=96, optimizer="adam", lr=3e-3, levels=[-2, -1])


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cam") / "model.pt"
    result = train_classifier(demo_dataset, out, CamTrainSettings(iters=30, save_every=1000, **FAST))
    return out, result


@pytest.fixture(scope="module")
def proposals_file(demo, demo_dataset, tmp_path_factory):
    """Proposals of each demo image: its true masks, their boxes, and the whole image, with random objectness."""
    gt = json.loads((demo / "annotations.json").read_text())
    rng = np.random.default_rng(1)
    out = tmp_path_factory.mktemp("props") / "mcg.h5"
    with ArtifactWriter(out, stage="mcg", method="test", categories=demo_dataset.categories) as w:
        for im in demo_dataset.images:
            h, wd = im["height"], im["width"]
            anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
            masks = [segmentation_mask(a["segmentation"], h, wd) for a in anns]
            masks += [box_mask(a["bbox"], h, wd) for a in anns] + [np.ones((h, wd), np.uint8)]
            props = Proposals.from_masks(np.stack(masks), rng.uniform(0.1, 1.0, len(masks)))
            w.add_image(im, maps={"proposals": props.to_map()})
    return out


def test_training_lowers_the_loss_and_writes_a_checkpoint(trained, demo_dataset):
    path, result = trained
    h = np.array(result["history"])
    assert len(h) == 30 and np.isfinite(h).all()
    assert h[-5:].mean() < 0.7 * h[:5].mean(), h
    model, config = load_classifier(path)
    assert config["class_ids"] == [c["id"] for c in demo_dataset.categories]
    assert read_checkpoint(resume_path(path))["iteration"] == 30  # the resume state stays beside it
    x = torch.rand(1, 3, 96, 96) * 255
    with torch.no_grad():
        out = model(x)
    assert out["cams"].shape == (1, 6, 96 // 16, 96 // 16) and out["scores"].shape == (1, 6)


def test_training_resumes_from_its_snapshot(demo_dataset, tmp_path):
    s = CamTrainSettings(iters=6, save_every=2, **{**FAST, "input_size": 64})
    full = train_classifier(demo_dataset, tmp_path / "full.pt", s)
    out = tmp_path / "resumed.pt"
    part = train_classifier(demo_dataset, out, s, stop_at=3)
    assert not out.exists() and part["checkpoint"] == str(resume_path(out))
    assert read_checkpoint(resume_path(out))["iteration"] == 3 and len(part["history"]) == 3
    resumed = train_classifier(demo_dataset, out, s)
    assert out.exists() and read_checkpoint(resume_path(out))["iteration"] == 6
    np.testing.assert_allclose(resumed["history"], full["history"], rtol=1e-4)
    a, b = read_checkpoint(tmp_path / "full.pt")["state"], read_checkpoint(out)["state"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    other = train_classifier(demo_dataset, out, s.replace(seed=5), stop_at=2)  # other settings: not resumed
    assert len(other["history"]) == 2


def test_mixed_precision_leaves_the_cpu_path_unchanged(demo, demo_dataset, tmp_path):
    """`amp` is for CUDA: on the CPU training (losses, weights) and the extraction's features are bit-identical
    with it on or off."""
    from pseudomask.cam.extract import image_features
    from pseudomask.images import read_image

    s = CamTrainSettings(iters=2, save_every=100, **{**FAST, "input_size": 64})
    runs = [train_classifier(demo_dataset, tmp_path / f"{amp}.pt", s.replace(amp=amp)) for amp in (True, False)]
    assert runs[0]["history"] == runs[1]["history"]
    a, b = (read_checkpoint(tmp_path / f"{amp}.pt")["state"] for amp in (True, False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, config = load_classifier(tmp_path / "True.pt")
    rgbs = [read_image(demo / "images" / im["file_name"]) for im in demo_dataset.images[:2]]
    on, off = (image_features(model, rgbs, 64, torch.device("cpu"), amp=amp) for amp in (True, False))
    assert on.dtype == torch.float32 and torch.equal(on, off)


def test_extraction_end_to_end(trained, demo_dataset, proposals_file, tmp_path):
    ckpt, _ = trained
    out = extract_peaks(demo_dataset, ckpt, tmp_path / "cam.h5", proposals_file, CamSettings(seed=3))
    a, p = Artifact(out, stage="cam"), Artifact(proposals_file)
    assert a.image_ids == [im["id"] for im in demo_dataset.images]
    # the quality column is there, NaN, and says no predictor made it
    assert np.isnan(a.instances["quality"]).all() and a.attrs["quality_predictor"] == "none"
    ids = a.instances["id"]
    assert len(ids) == len(set(ids.tolist())) >= sum(len(im["tags"]) for im in demo_dataset.images)
    for im in demo_dataset.images:
        rows, masks = a.records(im["id"]), a.masks(im["id"])
        assert {r["category_id"] for r in rows} == set(im["tags"])  # every tag accounted for
        assert sorted(a.tags[im["id"]]) == sorted(im["tags"])
        assert set(a.map("cam", im["id"])) == {str(t) for t in im["tags"]}
        props = read_proposals(p, im["id"])
        for k, (r, m) in enumerate(zip(rows, masks)):
            assert r["id"] == im["id"] * ID_STRIDE + k
            assert r["status"] in ("kept", "ignored"), r
            pid = int(r["proposal_id"])
            assert np.array_equal(m, props.mask(pid))
            assert r["bbox"] == mask_box(m)
            assert m[int(r["peak_y"]), int(r["peak_x"])] == 1  # the proposal contains its peak
            assert r["objectness"] == pytest.approx(float(props.scores[pid]))
            assert np.isfinite(r["cam_score"]) and 0 <= r["class_score"] <= 1 and r["stuff"] == 0
        kept = [(r["category_id"], r["proposal_id"]) for r in rows if r["status"] == "kept"]
        assert len(kept) == len(set(kept))  # duplicates of a class's proposal are ignored, not kept twice
    again = extract_peaks(demo_dataset, ckpt, tmp_path / "again.h5", proposals_file, CamSettings(seed=3))
    assert np.array_equal(Artifact(again).instances["proposal_id"], a.instances["proposal_id"])
    best = Artifact(extract_peaks(demo_dataset, ckpt, tmp_path / "best.h5", proposals_file,
                                  CamSettings(select="best")))
    for im in demo_dataset.images:
        props = read_proposals(p, im["id"])
        member = props.membership()
        for r in best.records(im["id"]):
            cands = np.flatnonzero(member[:, props.superpixels[int(r["peak_y"]), int(r["peak_x"])]])
            assert int(r["proposal_id"]) == cands[np.argmax(props.scores[cands])]


def test_stuff_classes_get_one_grad_cam_region_each(trained, demo_dataset, proposals_file, tmp_path):
    ckpt, _ = trained
    stuff = {"square": 2, "star": 4}
    a = Artifact(extract_peaks(demo_dataset, ckpt, tmp_path / "stuff.h5", proposals_file,
                               CamSettings(stuff_classes=list(stuff))))
    seen = 0
    for im in demo_dataset.images:
        rows, masks = a.records(im["id"]), a.masks(im["id"])
        for cat in set(stuff.values()) & set(im["tags"]):
            mine = [(r, m) for r, m in zip(rows, masks) if r["category_id"] == cat]
            assert len(mine) == 1
            r, m = mine[0]
            assert r["stuff"] == 1 and r["proposal_id"] == -1
            if r["status"] == "kept":
                seen += 1
                assert m.sum() > 0 and r["bbox"] == mask_box(m)
        stuff_masks = [m for r, m in zip(rows, masks) if r["stuff"] == 1]
        if len(stuff_masks) > 1:
            assert np.stack(stuff_masks).sum(0).max() <= 1  # stuff regions do not overlap
        assert all(r["stuff"] == 0 for r in rows if r["category_id"] not in stuff.values())
    assert seen > 0
    with pytest.raises(CamError, match="sky"):
        extract_peaks(demo_dataset, ckpt, tmp_path / "x.h5", proposals_file, CamSettings(stuff_classes=["sky"]))


def test_unreadable_image_and_missing_proposals_become_failed_rows(trained, demo, tmp_path, proposals_file):
    ckpt, _ = trained
    ds = load_dataset(demo / "annotations.json", demo / "images")
    ds.images = ds.images[:4]
    ds.images[0] = {**ds.images[0], "file_name": "missing.png"}
    ds.images[1] = {**ds.images[1], "id": 999}  # no proposals stored for this id
    a = Artifact(extract_peaks(ds, ckpt, tmp_path / "bad.h5", proposals_file))
    r0 = a.records(ds.images[0]["id"])
    assert len(r0) == len(ds.images[0]["tags"]) and all(r["status"] == "failed" for r in r0)
    assert "missing.png" in r0[0]["reason"]
    r1 = a.records(999)
    assert r1 and all(r["status"] == "failed" and "no proposals for image 999" in r["reason"] for r in r1)
    assert all(r["status"] != "failed" for i in a.image_ids[2:] for r in a.records(i))


def test_cli_on_a_tags_csv(demo, trained, proposals_file, tmp_path, capsys):
    gt = json.loads((demo / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    pairs = sorted({(files[a["image_id"]], names[a["category_id"]])
                    for a in gt["annotations"] if a["image_id"] <= 3})
    csv = tmp_path / "tags.csv"
    csv.write_text("image,tag\n" + "".join(f"{f},{t}\n" for f, t in pairs))
    ck = tmp_path / "m.pt"
    assert main(["cam-train", "--shards", str(csv), "--images", str(demo / "images"), "--model", str(ck), "--backbone",
                 "tiny", "--iters", "2", "--batch-size", "2", "--input-size", "64", "--optimizer", "adam"]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 2
    out = tmp_path / "cam.h5"  # no --proposals: MCG-style proposals are computed on the fly
    assert main(["cam", "--shard", str(csv), "--images", str(demo / "images"), "--model", str(ck),
                 "--out", str(out), "--select", "best"]) == 0
    a = Artifact(out, stage="cam")
    assert len(a.image_ids) == 3 and a.status_counts().get("kept", 0) > 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["cam", "--shard", str(csv), "--images", str(demo / "images"), "--model", str(bad),
                 "--out", str(tmp_path / "x.h5"), "--proposals", str(proposals_file)]) == 2
    assert "bad.pt: not a CAM checkpoint" in capsys.readouterr().err


@pytest.mark.mmdet
def test_mmdet_backbone_trains(demo_dataset, tmp_path):
    pytest.importorskip("mmdet")
    r = train_classifier(demo_dataset, tmp_path / "r.pt", CamTrainSettings(
        iters=2, save_every=100, **{**FAST, "backbone": "resnet18_w16", "input_size": 64}))
    assert len(r["history"]) == 2 and r["config"]["backbone"] == "resnet18_w16"
    model, _ = load_classifier(tmp_path / "r.pt")
    assert model(torch.rand(1, 3, 64, 64) * 255)["cams"].shape == (1, 6, 4, 4)
