"""MCG-style proposals and the `mcg` stage, on images made here and on the project's demo data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from pseudomask.settings import SettingsError

from pseudomask.images import write_image
from pseudomask.masks import box_mask, mask_iou, segmentation_mask
from pseudomask.mcg import (MatFileError, ProposalPool, image_result, proposal_params,
                            proposals_for_image, read_mcg_mat, run_mcg, select_for_boxes, write_mcg_mat)
from pseudomask.mcg.grouping import (grouped_candidates, leaf_totals, nested_duplicates, suppress_near_duplicates,
                                     tree_candidates)
from pseudomask.mcg.hierarchy import adjacency, base_superpixels, boundary_strength, merge_tree, region_features
from pseudomask.proposals import Proposals, read_proposals
from pseudomask.store import Artifact

SMALL = {"max_proposals": 300}  # keeps the stage tests quick; the algorithm is the default one


def scene(seed: int = 0, h: int = 96, w: int = 128) -> tuple[np.ndarray, list[np.ndarray]]:
    """A noisy textured background with a bright disc and a dark rectangle (their exact masks)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (90, 120, 90), np.float32) + rng.normal(0, 8, (h, w, 3))
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (40, 40), 22, 1, -1)
    rect = np.zeros((h, w), np.uint8)
    rect[56:, 80:] = 1  # touches the bottom and right borders
    img[disc == 1] = (230, 60, 50)
    img[rect == 1] = (30, 30, 160)
    img += rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), [disc, rect]


def best_iou(props: Proposals, gt: np.ndarray) -> float:
    return max(mask_iou(props.mask(i), gt) for i in range(len(props)))


# ---- hierarchy and grouping ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree_parts():
    rgb, _ = scene()
    sp = base_superpixels(rgb)
    n = int(sp.max()) + 1
    maps = [boundary_strength(rgb, 1.0), boundary_strength(rgb, 0.5)]
    adj = adjacency(sp, maps, n)
    feats = region_features(rgb, sp, n)
    tree = merge_tree(adj, feats, map_index=1, measure_index=0)
    return rgb, sp, n, maps, adj, feats, tree


def test_merge_tree_is_a_full_binary_hierarchy(tree_parts):
    _, sp, n, _, _, feats, tree = tree_parts
    assert n > 20
    assert len(tree.children) == n - 1  # a connected image merges into one root
    assert np.all(np.diff(tree.heights) >= 0)  # ultrametric: merge heights never decrease
    assert sorted(tree.children.ravel().tolist()) == list(range(2 * n - 2))  # every node but the root merged once
    assert tree.area[-1] == sp.size
    bits = np.unpackbits(tree.membership(), axis=1, count=n).astype(bool)
    assert np.allclose(bits @ feats.area, tree.area)
    for k in (1, 5, 17):
        assert len(np.unique(tree.partition(k))) == k


def test_candidate_boundary_statistics_match_the_pixels(tree_parts):
    """Contour length and strength derived from the tree equal those counted on the pixel grid."""
    _, sp, n, maps, adj, _, tree = tree_parts
    tl, ts = leaf_totals(adj, n)
    nodes = tree_candidates(tree, tl, ts)
    pairs = grouped_candidates(nodes, tree, adj, 8, triplets=True)
    assert len(pairs) > 8
    rng = np.random.default_rng(1)
    for cand in (nodes, pairs):
        for i in rng.choice(len(cand), 6, replace=False):
            region = np.unpackbits(cand.packed[i], count=n).astype(bool)[sp]
            s = maps[0]
            length, strength = 0.0, 0.0
            for a, b, sa, sb in ((region[:, :-1], region[:, 1:], s[:, :-1], s[:, 1:]),
                                 (region[:-1], region[1:], s[:-1], s[1:])):
                cut = a != b
                length += cut.sum()
                strength += ((sa + sb) / 2)[cut].sum()
            assert cand.area[i] == region.sum()
            assert cand.contour_len[i] == pytest.approx(length)
            assert cand.contour_sum[i] == pytest.approx(strength, rel=1e-6, abs=1e-6)


def test_near_duplicate_suppression_uses_pixel_iou():
    n = 16
    area = np.ones(n)
    area[0] = 100.0  # superpixel 0 dominates: sets differing elsewhere are near-duplicates
    rows = np.zeros((4, n), bool)
    rows[0, [0, 1]] = True
    rows[1, [0, 2]] = True  # IoU with row 0: 100 / 102
    rows[2, [3, 4, 5]] = True
    rows[3, [0, 1, 2, 3]] = True  # IoU with row 0: 101 / 103
    packed = np.packbits(rows, axis=1)
    assert suppress_near_duplicates(packed, n, area, np.arange(4), 0.95, keep=10, block=2).tolist() == [0, 2]
    assert suppress_near_duplicates(packed, n, area, np.arange(4), 0.999, keep=10).tolist() == [0, 1, 2, 3]
    assert suppress_near_duplicates(packed, n, area, np.array([2, 1, 0, 3]), 0.95, keep=1).tolist() == [2]


def test_nested_near_duplicates_are_measured_against_the_kept_ancestor():
    from pseudomask.mcg.hierarchy import Hierarchy

    # leaves 0..3 with areas 90, 5, 4, 1; node 4 = 0+1 (95), node 5 = 4+2 (99), node 6 = 5+3 (100)
    area = np.array([90, 5, 4, 1, 95, 99, 100], float)
    h = Hierarchy(4, np.array([[0, 1], [4, 2], [5, 3]]), np.zeros(3), area, np.zeros(7), np.zeros(7))
    keep = nested_duplicates(h, 0.94)
    # 99 and 95 are >= 0.94 of the root's 100 and go; 90 is compared with the root too (not with its
    # dropped parent, of which it is 0.947) and stays, as do the small leaves
    assert keep.tolist() == [True, True, True, True, False, False, True]
    assert nested_duplicates(h, 1.0).all()


def test_compiled_superpixels_equal_skimage_label_for_label(demo):
    """The compiled Felzenszwalb-Huttenlocher segmentation is skimage's, on real renders and odd shapes."""
    from skimage.segmentation import felzenszwalb as reference

    from pseudomask.images import read_image
    from pseudomask.mcg.felzenszwalb import felzenszwalb

    rng = np.random.default_rng(3)
    images = [read_image(p) for p in sorted((demo / "images").iterdir())[:3]]
    images += [scene(1)[0], rng.integers(0, 256, (1, 17, 3), dtype=np.uint8),
               rng.integers(0, 256, (13, 1, 3), dtype=np.uint8), rng.integers(0, 256, (23, 31), dtype=np.uint8)]
    for img in images:
        for scale, sigma, min_size in ((50.0, 0.8, 10), (200.0, 1.5, 50), (1.0, 0.0, 1)):
            want = reference(img, scale=scale, sigma=sigma, min_size=min_size)
            got = felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size)
            assert got.dtype == np.int32 and got.shape == img.shape[:2]
            assert np.array_equal(got, want), (img.shape, scale, sigma, min_size)
    assert len(np.unique(base_superpixels(images[0]))) > 20


def test_near_duplicate_suppression_equals_greedy_pairwise_nms():
    """The binned, blocked suppression keeps exactly what one-by-one greedy NMS on mask IoU keeps."""
    rng = np.random.default_rng(5)
    n = 60
    area = rng.integers(1, 40, n).astype(float)
    base = rng.random((400, n)) < rng.random((400, 1))  # sets of every density
    rows = np.concatenate([base, base ^ (rng.random((400, n)) < 0.03)])  # and near copies of them
    packed = np.packbits(rows, axis=1)
    for threshold, keep, block in ((0.9, 1000, 256), (0.7, 50, 7), (0.95, 1000, 1), (0.5, 1000, 64)):
        order = rng.permutation(len(rows))
        kept: list[int] = []
        for i in order:
            if len(kept) == keep:
                break
            inter = (rows[kept] & rows[i]) @ area
            union = (rows[kept] | rows[i]) @ area
            if not (inter / np.maximum(union, 1e-9) > threshold).any():
                kept.append(int(i))
        got = suppress_near_duplicates(packed, n, area, order, threshold, keep=keep, block=block)
        assert got.tolist() == kept, (threshold, keep, block)


# ---- proposals ---------------------------------------------------------------------------------------------------

def test_proposals_find_high_contrast_objects_and_are_deterministic():
    rgb, gts = scene()
    props = proposals_for_image(rgb)
    assert props.superpixels.shape == rgb.shape[:2]
    assert 0 < len(props) <= proposal_params()["max_proposals"]
    assert np.all(np.diff(props.scores) <= 0) and props.scores.min() > 0 and props.scores.max() <= 1
    assert props.region_ptr[-1] == len(props.region_idx)
    assert props.region_idx.max() <= props.superpixels.max()
    for gt in gts:
        assert best_iou(props, gt) > 0.9
    again = proposals_for_image(rgb)
    for k, v in props.to_map().items():
        assert np.array_equal(v, again.to_map()[k]), k


def test_proposals_of_a_downscaled_image_cover_the_full_resolution():
    rgb, gts = scene(h=96, w=128)
    big = cv2.resize(rgb, (256, 192), interpolation=cv2.INTER_NEAREST)
    props = proposals_for_image(big, max_side=128)
    assert props.superpixels.shape == (192, 256)
    assert np.array_equal(np.unique(props.superpixels), np.arange(props.superpixels.max() + 1))
    gt = cv2.resize(gts[0], (256, 192), interpolation=cv2.INTER_NEAREST)
    assert best_iou(props, gt) > 0.85


def test_unknown_parameter_is_an_error():
    with pytest.raises(SettingsError, match=r"mcg: unknown key 'superpixel_scal' \(did you mean 'superpixel_scale'\?\)"):
        proposal_params(superpixel_scal=10)
    with pytest.raises(SettingsError, match=r"mcg.nms: must be <= 1"):
        proposal_params(nms=2.0)


def test_select_for_boxes_picks_the_highest_box_iou():
    h, w = 40, 50
    masks = np.zeros((3, h, w), bool)
    masks[0, 10:30, 10:30] = True  # exactly the box
    masks[1, 5:35, 5:35] = True  # covers the box and more
    masks[2, 12:20, 12:20] = True  # inside, small
    pool = ProposalPool.from_proposals(Proposals.from_masks(masks, np.array([0.2, 0.9, 0.5])))
    box = [10, 10, 20, 20]
    (best,), (iou,) = select_for_boxes(pool, [box])
    chosen = np.unpackbits(pool.packed[best], count=pool.n).astype(bool)[pool.superpixels]
    assert np.array_equal(chosen, masks[0])
    assert iou == pytest.approx(1.0)
    # another box: best is the big square (IoU 400/900 vs 64/400 for the small one vs 400/... )
    box2 = [5, 5, 30, 30]
    (best2,), (iou2,) = select_for_boxes(pool, [box2])
    chosen2 = np.unpackbits(pool.packed[best2], count=pool.n).astype(bool)[pool.superpixels]
    assert np.array_equal(chosen2, masks[1])
    assert iou2 == pytest.approx(mask_iou(chosen2.astype(np.uint8), box_mask(box2, h, w)))
    (none,), (zero,) = select_for_boxes(pool, [[40, 0, 8, 4]])
    assert none == -1 and zero == 0


def test_image_result_statuses_for_tiny_and_border_boxes():
    rgb, gts = scene()
    image = {"id": 1, "file_name": "x.png", "height": rgb.shape[0], "width": rgb.shape[1]}
    recs = [{"id": 1, "image_id": 1, "bbox": [18, 18, 45, 45], "status": "kept", "reason": ""},
            {"id": 2, "image_id": 1, "bbox": [10, 10, 1.5, 30], "status": "kept", "reason": ""},
            {"id": 3, "image_id": 1, "bbox": [80, 56, 48, 40], "status": "kept", "reason": "clipped"}]
    results, maps = image_result(rgb, image, recs, proposal_params(**SMALL))
    props = Proposals.from_map(maps["proposals"])
    assert results[1]["status"] == "failed" and "smaller than 2 px" in results[1]["reason"]
    assert not results[1]["mask"].any()
    for r, gt, rec in ((results[0], gts[0], recs[0]), (results[2], gts[1], recs[2])):
        assert r["status"] == "kept" and r["reason"] == rec["reason"]
        assert mask_iou(r["mask"], gt) > 0.85
        assert not (r["mask"] & (1 - box_mask(rec["bbox"], *rgb.shape[:2]))).any()  # clipped to its box
        assert np.array_equal(r["mask"], props.mask(r["proposal_id"]) & box_mask(rec["bbox"], *rgb.shape[:2]))


# ---- MCG .mat files ------------------------------------------------------------------------------------------------

def test_mat_file_round_trip_and_struct_layout(tmp_path):
    from scipy.io import savemat

    sp = np.array([[1, 1, 2], [3, 3, 2]], np.uint32)
    cells = np.empty((2, 1), dtype=object)
    cells[0, 0] = np.array([[1], [2]], np.float64)
    cells[1, 0] = np.array([[3]], np.float64)
    savemat(tmp_path / "a.mat", {"superpixels": sp, "labels": cells, "scores": np.array([[0.7], [0.4]])})
    props = read_mcg_mat(tmp_path / "a.mat")
    assert props.superpixels.tolist() == [[0, 0, 1], [2, 2, 1]]
    assert props.mask(0).tolist() == [[1, 1, 1], [0, 0, 1]]
    assert props.mask(1).tolist() == [[0, 0, 0], [1, 1, 0]]
    assert props.scores.tolist() == pytest.approx([0.7, 0.4])
    savemat(tmp_path / "b.mat", {"candidates": {"superpixels": sp, "labels": cells, "scores": np.array([[0.7], [0.4]])}})
    assert read_mcg_mat(tmp_path / "b.mat").mask(0).tolist() == props.mask(0).tolist()
    masks = np.stack([props.mask(0), props.mask(1)], -1).astype(bool)
    savemat(tmp_path / "c.mat", {"superpixels": sp, "masks": masks, "scores": np.array([0.7, 0.4])})
    assert read_mcg_mat(tmp_path / "c.mat").mask(1).tolist() == props.mask(1).tolist()
    write_mcg_mat(tmp_path / "d.mat", props)
    back = read_mcg_mat(tmp_path / "d.mat")
    assert back.superpixels.tolist() == props.superpixels.tolist() and back.mask(0).tolist() == props.mask(0).tolist()


def test_bad_mat_files_name_the_file(tmp_path):
    from scipy.io import savemat

    with pytest.raises(MatFileError, match="missing.mat.*not found"):
        read_mcg_mat(tmp_path / "missing.mat")
    savemat(tmp_path / "x.mat", {"boxes": np.zeros((2, 4))})
    with pytest.raises(MatFileError, match=r"x\.mat: expected MCG fields.*boxes"):
        read_mcg_mat(tmp_path / "x.mat")
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = np.array([[5]], np.float64)
    savemat(tmp_path / "y.mat", {"superpixels": np.ones((2, 2), np.uint32), "labels": cells, "scores": [[1.0]]})
    with pytest.raises(MatFileError, match=r"y\.mat: candidate 1 refers to superpixel 5"):
        read_mcg_mat(tmp_path / "y.mat")
    (tmp_path / "z.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(MatFileError, match=r"z\.mat"):
        read_mcg_mat(tmp_path / "z.mat")


# ---- the stage -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mcg_artifact(demo_shard, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcg") / "mcg.h5"
    from pseudomask.dataset import load_dataset

    return run_mcg(load_dataset(demo_shard), out, inputs=[demo_shard], **SMALL)


def test_stage_artifact_accounts_for_every_instance(mcg_artifact, demo, demo_dataset):
    gt = {a["id"]: a for a in json.loads((demo / "annotations.json").read_text())["annotations"]}
    with Artifact(mcg_artifact, stage="mcg") as a:
        assert a.method == "mcg-style" and a.params["max_proposals"] == SMALL["max_proposals"]
        assert sorted(a.instances["id"].tolist()) == sorted(r["id"] for r in demo_dataset.instances)
        ious, fills = [], []
        for image_id in a.image_ids:
            im = a.image(image_id)
            props = read_proposals(a, image_id)
            assert props is not None and props.superpixels.shape == (im["height"], im["width"])
            for rec, m in zip(a.records(image_id), a.masks(image_id)):
                if rec["status"] != "kept":
                    continue
                pid = int(rec["proposal_id"])
                box = box_mask(rec["bbox"], im["height"], im["width"])
                assert np.array_equal(m, props.mask(pid) & box)
                assert rec["proposal_iou"] == pytest.approx(mask_iou(props.mask(pid), box))
                g = segmentation_mask(gt[rec["id"]]["segmentation"], im["height"], im["width"])
                ious.append(mask_iou(m, g))
                fills.append(mask_iou(box, g))
    assert len(ious) >= 30
    assert np.mean(ious) > np.mean(fills) + 0.05  # proposals beat the filled box on the demo scenes


def test_images_without_boxes_get_proposals(demo_dataset, tmp_path):
    ds = replace(demo_dataset, images=demo_dataset.images[:2], instances=[])  # tag-only, as CAM sees it
    out = run_mcg(ds, tmp_path / "tags.h5", **SMALL)
    with Artifact(out, stage="mcg") as a:
        assert len(a.instances.get("id", [])) == 0
        for image_id in a.image_ids:
            props = read_proposals(a, image_id)
            assert props is not None and len(props) > 10
            ref = proposals_for_image(__import__("pseudomask.images", fromlist=["read_image"]).read_image(
                demo_dataset.image_path(a.image(image_id))), **SMALL)
            assert np.array_equal(props.region_idx, ref.region_idx)


def make_bad_dataset(root: Path):
    """Grayscale, RGBA and corrupt images, tiny and border-touching boxes, as COCO JSON."""
    rgb, _ = scene(3)
    (root / "images").mkdir(parents=True)
    write_image(root / "images" / "gray.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(root / "images" / "rgba.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    (root / "images" / "broken.png").write_bytes(b"\x89PNG garbage")
    h, w = rgb.shape[:2]
    images = [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, f in enumerate(["gray.png", "rgba.png"])]
    images.append({"id": 3, "file_name": "broken.png", "width": w, "height": h})
    images.append({"id": 4, "file_name": "rgba.png", "width": w, "height": h})  # no boxes
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [18, 18, 45, 45]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [80, 56, 48, 40]},  # touches the border
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [18, 18, 45, 45]},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 1.2, 1.0]},  # tiny
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [5, 5, 20, 20]}]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "thing"}]}))


def test_bad_input_gets_a_status_and_the_stage_goes_on(tmp_path):
    from pseudomask.dataset import load_coco

    make_bad_dataset(tmp_path)
    ds = load_coco(tmp_path / "ann.json", tmp_path / "images", check_files=False)
    out = run_mcg(ds, tmp_path / "bad.h5", **SMALL)
    with Artifact(out, stage="mcg") as a:
        rows = {r["id"]: r for r in a.records()}
        assert [rows[i]["status"] for i in (1, 2, 3)] == ["kept"] * 3
        assert rows[4]["status"] == "failed" and "smaller than 2 px" in rows[4]["reason"]
        assert rows[5]["status"] == "failed" and "broken.png" in rows[5]["reason"]
        assert read_proposals(a, 4) is not None  # no boxes, proposals all the same
        assert read_proposals(a, 3) is None
        m = a.masks(1)[list(a.instances["id"][a.rows(1)]).index(2)]
        assert m[:, -1].any() and m[-1].any()  # a box on the border keeps its border pixels


def test_parallel_workers_and_cli_match_the_library(tmp_path):
    from pseudomask.cli import main
    from pseudomask.dataset import load_coco

    make_bad_dataset(tmp_path)
    ds = load_coco(tmp_path / "ann.json", tmp_path / "images", check_files=False)
    one = run_mcg(ds, tmp_path / "one.h5", **SMALL)
    assert main(["mcg", "--shard", str(tmp_path / "ann.json"), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "two.h5"), "--threads", "2", "--max-proposals", "300"]) == 0
    with Artifact(one) as a, Artifact(tmp_path / "two.h5") as b:
        assert a.status_counts() == b.status_counts()
        for i in a.image_ids:
            assert np.array_equal(a.masks(i), b.masks(i))
            pa, pb = read_proposals(a, i), read_proposals(b, i)
            assert (pa is None) == (pb is None)
            if pa is not None:
                assert np.array_equal(pa.region_idx, pb.region_idx) and np.array_equal(pa.scores, pb.scores)


def test_precomputed_mat_files_drive_the_stage(tmp_path):
    from pseudomask.dataset import load_coco

    make_bad_dataset(tmp_path)
    rgb, gts = scene(3)
    (tmp_path / "mat").mkdir()
    masks = np.stack([gts[0], gts[1], np.ones_like(gts[0])]).astype(bool)
    write_mcg_mat(tmp_path / "mat" / "gray.mat", Proposals.from_masks(masks, np.array([0.3, 0.2, 0.1])))
    ds = load_coco(tmp_path / "ann.json", tmp_path / "images", check_files=False)
    out = run_mcg(ds, tmp_path / "mat.h5", mat_dir=tmp_path / "mat")
    with Artifact(out, stage="mcg") as a:
        assert a.method == "mcg-mat"
        rows = {r["id"]: r for r in a.records()}
        m = dict(zip(a.instances["id"][a.rows(1)].tolist(), a.masks(1)))
        assert mask_iou(m[1], gts[0]) == pytest.approx(1.0)  # the disc proposal, exactly
        assert mask_iou(m[2], gts[1]) == pytest.approx(1.0)
        assert rows[3]["status"] == "failed" and "rgba.mat" in rows[3]["reason"]  # no .mat for that image


# ---- merge tree helpers ------------------------------------------------------------------------------------------

def test_mutual_cheapest_ranks_like_a_stable_sort():
    """Ties in cost go to the lower edge index, at both ends of an edge."""
    from pseudomask.mcg.hierarchy import mutual_cheapest

    rng = np.random.default_rng(3)
    for _ in range(200):
        m = int(rng.integers(2, 12))
        pa = rng.integers(0, m - 1, 30)
        pb = np.minimum(pa + rng.integers(1, m, 30), m - 1)
        cost = rng.integers(0, 4, 30) / 4.0  # many ties
        order = np.lexsort((np.arange(len(cost)), cost))
        rank = np.empty(len(cost), np.int64)
        rank[order] = np.arange(len(cost))
        best = np.full(m, len(cost))
        np.minimum.at(best, pa, rank)
        np.minimum.at(best, pb, rank)
        expected = order[((best[pa] == rank) & (best[pb] == rank))[order]]
        assert mutual_cheapest(pa, pb, cost, m).tolist() == expected.tolist()


def test_unique_inverse_matches_numpy():
    from pseudomask.mcg.hierarchy import unique_inverse

    rng = np.random.default_rng(4)
    for size in (0, 1, 7, 500):
        x = rng.integers(0, 20, size)
        keys, inv = unique_inverse(x)
        ref_keys, ref_inv = np.unique(x, return_inverse=True)
        assert np.array_equal(keys, ref_keys) and np.array_equal(inv, ref_inv)


def _node_rows(rng, size: int, bins: int) -> np.ndarray:
    """A node table of random regions: area, box, inner sums and an L1-normalised histogram."""
    from pseudomask.mcg.hierarchy import HIST

    t = np.zeros((size, HIST + bins))
    t[:, 0] = rng.integers(1, 500, size)
    t[:, 1:3] = rng.integers(0, 50, (size, 2))
    t[:, 3:5] = t[:, 1:3] + rng.integers(1, 50, (size, 2))
    t[:, 5:7] = rng.random((size, 2)) * 10
    hist = rng.random((size, bins)) * (rng.random((size, bins)) < 0.4)
    t[:, HIST:] = hist / np.maximum(hist.sum(1, keepdims=True), 1e-9)
    return t


@pytest.mark.parametrize("bins", [3, 8, 13, 48, 128])
def test_merge_costs_equal_the_row_formula_bit_for_bit(bins):
    """The compiled cost is numpy's expression of the same row, to the last bit (tree order rests on it),
    with no colour term where its weight is 0."""
    from pseudomask.mcg.hierarchy import HIST, merge_costs

    rng = np.random.default_rng(bins)
    nodes = _node_rows(rng, 60, bins)
    pa, pb = rng.integers(0, 60, 400), rng.integers(0, 60, 400)
    sl, ss = rng.integers(1, 40, 400).astype(float), rng.random(400) * 30
    weights = rng.random((400, 4)) * (rng.random((400, 4)) < 0.8)
    fa, fb = nodes[pa], nodes[pb]
    na, nb = fa[:, 0], fb[:, 0]
    bw = np.maximum(fa[:, 3], fb[:, 3]) - np.minimum(fa[:, 1], fb[:, 1])
    bh = np.maximum(fa[:, 4], fb[:, 4]) - np.minimum(fa[:, 2], fb[:, 2])
    wb, wc, ws, wf = weights.T
    expected = wb * ss / sl + ws * (na + nb) / 900.0 + wf * (bw * bh - na - nb) / 900.0
    colour = wc != 0
    expected[colour] += wc[colour] * (1.0 - np.minimum(fa[colour, HIST:], fb[colour, HIST:]).sum(1))
    assert merge_costs(pa, pb, sl, ss, nodes, 900.0, weights).tolist() == expected.tolist()


def test_merge_nodes_sum_areas_and_boundaries_and_weigh_histograms():
    from pseudomask.mcg.hierarchy import HIST, merge_nodes

    rng = np.random.default_rng(5)
    nodes = _node_rows(rng, 30, 48)
    a, b, new = np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)
    sl, sm = rng.random(10) * 9, rng.random(10) * 4
    fa, fb = nodes[a].copy(), nodes[b].copy()
    merge_nodes(nodes, new, a, b, sl, sm)
    out = nodes[new]
    assert out[:, 0].tolist() == (fa[:, 0] + fb[:, 0]).tolist()
    assert np.array_equal(out[:, 1:3], np.minimum(fa[:, 1:3], fb[:, 1:3]))
    assert np.array_equal(out[:, 3:5], np.maximum(fa[:, 3:5], fb[:, 3:5]))
    assert out[:, 5].tolist() == (fa[:, 5] + fb[:, 5] + sl).tolist()
    assert out[:, 6].tolist() == (fa[:, 6] + fb[:, 6] + sm).tolist()
    weighted = (fa[:, HIST:] * fa[:, :1] + fb[:, HIST:] * fb[:, :1]) / out[:, :1]
    assert np.array_equal(out[:, HIST:], weighted)
    assert np.allclose(out[:, HIST:].sum(1), 1.0)


def test_merge_sorted_equals_a_sort_of_the_kept_and_the_new_rows():
    from pseudomask.mcg.hierarchy import merge_sorted

    rng = np.random.default_rng(6)
    for n, m in ((0, 0), (0, 5), (7, 0), (200, 40), (40, 200)):
        keys = rng.choice(10_000, n + m, replace=False)
        key, new_key = np.sort(keys[:n]), np.sort(keys[n:])
        val, new_val = rng.random((n, 4)), rng.random((m, 4))
        keep = rng.random(n) < 0.7
        all_key = np.concatenate([key[keep], new_key])
        order = all_key.argsort()
        got_key, got_val = merge_sorted(key, val, keep, new_key, new_val)
        assert got_key.tolist() == all_key[order].tolist()
        assert np.array_equal(got_val, np.concatenate([val[keep], new_val])[order])


def test_trees_grown_together_equal_trees_grown_alone(tree_parts):
    from pseudomask.mcg.hierarchy import merge_trees

    _, _, _, _, adj, feats, _ = tree_parts
    specs = [(1, (1.0, 1.0, 1.0, 1.0)), (0, (1.0, 0.0, 1.0, 1.0)), (1, (0.5, 2.0, 0.0, 0.0))]
    for together, (map_index, weights) in zip(merge_trees(adj, feats, specs, measure_index=0), specs):
        alone = merge_tree(adj, feats, map_index=map_index, measure_index=0, weights=weights)
        for k in ("children", "heights", "area", "inner_len", "inner_sum"):
            assert np.array_equal(getattr(together, k), getattr(alone, k)), k


def test_tree_levels_come_after_their_children(tree_parts):
    *_, tree = tree_parts
    n = tree.n_leaves
    done = np.zeros(tree.n_nodes, bool)
    done[:n] = True
    for ks in tree.levels:
        assert done[tree.children[ks]].all()
        done[n + ks] = True
    assert done.all() and sum(len(ks) for ks in tree.levels) == len(tree.children)


def test_region_boxes_match_the_pixels(tree_parts):
    rgb, sp, n, _, _, feats, _ = tree_parts
    for label in (0, n // 2, n - 1):
        ys, xs = np.nonzero(sp == label)
        assert feats.box[label].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
