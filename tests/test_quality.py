"""Mask quality: deterministic features, a scorer that ranks, its safe JSON form, the `quality` column of the
stage loops, the `select` stage and merge-drop by quality."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from pseudomask.dataset import read_shard
from pseudomask.images import read_image
from pseudomask.merge_drop import MergeDropSettings, merge_drop, merge_drop_image
from pseudomask.quality.ranking import spearman
from pseudomask.quality.features import FEATURES, SOURCES, feature_vector, instance_features, named_features
from pseudomask.quality.scorer import Scorer, ScorerError, Tree, fit, get_scorer
from pseudomask.quality.select import SelectSettings, choose, run_select
from pseudomask.settings import SettingsError
from pseudomask.loops import ImageResult, Provenance, run_mask_stage
from pseudomask.store import Artifact, ArtifactWriter

from test_merge_drop import perturbed_gt_source

FILL = FEATURES.index("fill")


def test_spearman_equals_scipys_with_ties_and_is_none_where_undefined():
    rng = np.random.default_rng(3)
    for n in (3, 7, 50, 400):
        x = rng.integers(0, 6, n).astype(float)  # many ties
        y = x + rng.normal(0, 2, n)
        if np.ptp(x) > 0:
            assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, np.nan], [1, 2, 3]) is None
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def stump_scorer(path, feature="fill", split=0.5, low=0.2, high=0.9):
    """A one-split model: quality `low` when `feature` <= split, else `high`."""
    s = Scorer(FEATURES, 0.0, 1.0, (Tree(np.array([1, -1, -1]), np.array([2, -1, -1]),
                                         np.array([FEATURES.index(feature), 0, 0]), np.array([split, 0.0, 0.0]),
                                         np.array([0.0, low, high])),), "stump")
    return str(s.save(path))


def test_features_are_deterministic_and_follow_the_mask(demo):
    rgb = read_image(sorted((demo / "images").iterdir())[0])
    h, w = rgb.shape[:2]
    box = [w * 0.2, h * 0.2, w * 0.4, h * 0.3]
    m = np.zeros((h, w), np.uint8)
    m[int(h * 0.25):int(h * 0.45), int(w * 0.25):int(w * 0.55)] = 1
    a = instance_features(rgb, box, m, {"retried": 1.0}, "grabcut", [m])
    b = instance_features(rgb.copy(), list(box), m.copy(), {"retried": 1.0}, "grabcut", [m.copy()])
    assert a.shape == (len(FEATURES),) and np.array_equal(a, b)
    f = dict(zip(FEATURES, a))
    assert f["fill"] == pytest.approx(0.2 * 0.3 / (0.4 * 0.3), abs=0.05)
    assert f["cross_mean_iou"] == 1.0 and f["row_retried"] == 1.0 and f["row_proposal_iou"] == -1.0
    assert f["source_grabcut"] == 1.0 and f["source_mcg"] == 0.0
    full = instance_features(rgb, box, (np.ones_like(m) * 0), {}, "mcg")
    assert dict(zip(FEATURES, full))["fill"] == 0.0


def test_features_are_named_once_and_the_source_one_hot_keeps_the_scorers_order(demo):
    # the shipped scorer's columns depend on this order: the registry's mask stages with masks of their own,
    # select's own candidates, other
    assert SOURCES == ("grabcut", "mcg", "agree", "boxcaseg", "cam", "union", "ellipse", "box", "other")
    assert tuple(get_scorer("default").features) == FEATURES
    rgb = read_image(sorted((demo / "images").iterdir())[0])
    h, w = rgb.shape[:2]
    m = np.zeros((h, w), np.uint8)
    m[10:30, 20:50] = 1
    named = named_features(rgb, [18, 8, 34, 24], m, {"merge_lost_px": 5}, "agree", [m])
    assert sorted(named) == sorted(FEATURES)
    assert np.array_equal(feature_vector(named), instance_features(rgb, [18, 8, 34, 24], m, {"merge_lost_px": 5},
                                                                   "agree", [m]))


def test_a_scorer_trained_on_constructed_data_ranks_held_out_masks_and_survives_json(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (600, len(FEATURES)))
    y = np.clip(0.8 * x[:, FILL] + 0.2 * x[:, FEATURES.index("box_agreement")] + rng.normal(0, 0.03, 600), 0, 1)
    s = fit(x[:400], y[:400], n_estimators=80)
    pred = s.predict(x[400:])
    assert spearmanr(pred, y[400:]).statistic > 0.9
    loaded = Scorer.load(s.save(tmp_path / "m.json"))
    assert np.allclose(loaded.predict(x[400:]), pred, atol=1e-6)
    assert loaded.name.startswith("m.json@")


def test_model_files_are_checked_and_the_default_loads(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ScorerError, match="not a"):
        Scorer.load(bad)
    d = json.loads(Scorer.load(stump_scorer(tmp_path / "s.json")).save(tmp_path / "t.json").read_text())
    d["features"] = d["features"][::-1]
    (tmp_path / "u.json").write_text(json.dumps(d))
    with pytest.raises(ScorerError, match="retrain"):
        Scorer.load(tmp_path / "u.json")
    default = get_scorer("default")
    assert default.name.startswith("default:") and len(default.trees) > 10
    q = default.predict(np.zeros((3, len(FEATURES))))
    assert np.all((q >= 0) & (q <= 1))
    assert get_scorer("none") is None


def test_the_trees_walked_together_give_the_sum_of_each_tree_bit_for_bit(tmp_path):
    """`Scorer.raw` walks all trees at once (`Forest`); the answer is each `Tree.predict` added in order,
    also for trees of different depths (padded) and for the default model's choice ensemble."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (300, len(FEATURES)))
    y = np.clip(0.5 + 0.3 * np.tanh(x[:, FILL]) + 0.1 * x[:, 2] * (x[:, 3] > 0), 0, 1)
    deep = fit(x[:200], y[:200], n_estimators=30, max_depth=4)
    stump = Scorer.load(stump_scorer(tmp_path / "s.json"))
    mixed = Scorer(FEATURES, 0.1, 0.5, stump.trees + deep.trees[:5] + stump.trees, "mixed")
    default = get_scorer("default")
    for s, feats in ((deep, x), (mixed, x), (default, x), (default.choice, np.hstack([x, x[::-1]]))):
        for rows in (feats[:1], feats[:7], feats):
            want = np.full(len(rows), s.init)
            for t in s.trees:
                want += s.learning_rate * t.predict(rows)
            assert np.array_equal(s.raw(rows), want)
    assert len({len(t.left) for t in mixed.trees}) > 1
    assert deep.raw(x[:0]).shape == (0,)


def test_the_stage_loop_writes_quality_that_ranks_spoiled_masks_below_true_ones(demo, demo_shard, tmp_path):
    out = perturbed_gt_source(demo, demo_shard, tmp_path / "gc.h5")
    with Artifact(out) as a:
        inst = a.instances
        assert a.attrs["quality_predictor"].startswith("default:")
        q, kind = inst["quality"], inst["id"] % 4
        usable = np.isin(inst["status"], ("kept", "invalid"))
        assert np.isfinite(q[usable]).all() and ((q[usable] >= 0) & (q[usable] <= 1)).all()
        assert np.isnan(q[~usable]).all()
        # exact and dilated true masks against the filled box and a mask shifted by half its box
        assert q[usable & (kind <= 1)].mean() > q[usable & (kind == 3)].mean() + 0.05


def test_quality_is_nan_when_no_model(demo_shard, tmp_path):
    ds = read_shard(demo_shard)

    def predict(rgb, recs):
        return ImageResult([{"mask": np.zeros(rgb.shape[:2], np.uint8), "status": "kept", "reason": ""} for _ in recs])

    out = run_mask_stage(ds, tmp_path / "x.h5", Provenance("grabcut", "zeros", quality="none"), predict)
    with Artifact(out) as a:
        assert a.attrs["quality_predictor"] == "none" and np.isnan(a.instances["quality"]).all()


def _two_sources(tmp_path, image_file, h, w):
    """grabcut and mcg artifacts of one image with two boxes: grabcut fills 20 % of box 1, mcg 80 %; box 2
    is ignored in both."""
    im = {"id": 1, "file_name": image_file.name, "height": h, "width": w}
    box1, box2 = [10.0, 10.0, 40.0, 20.0], [5.0, 5.0, 10.0, 10.0]
    small, big = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    small[10:14, 10:50] = 1
    big[10:26, 10:50] = 1
    paths = []
    for stage, m in (("grabcut", small), ("mcg", big)):
        rows = [{"id": 1, "category_id": 1, "bbox": box1, "status": "kept", "reason": ""},
                {"id": 2, "category_id": 1, "bbox": box2, "status": "ignored", "reason": "crowd"}]
        p = tmp_path / f"{stage}.h5"
        with ArtifactWriter(p, stage=stage, method="hand", categories=[{"id": 1, "name": "a"}],
                            attrs={"image_root": str(image_file.parent)}) as wr:
            wr.add_image(im, rows, np.stack([m, np.zeros_like(m)]))
        paths.append(p)
    return paths, small, big


def test_select_keeps_the_candidate_with_the_highest_predicted_quality_and_says_why(demo, tmp_path):
    image = sorted((demo / "images").iterdir())[0]
    h, w = read_image(image).shape[:2]
    model = stump_scorer(tmp_path / "stump.json")
    paths, small, big = _two_sources(tmp_path, image, h, w)
    summary = run_select(paths, tmp_path / "sel.h5", extras=(), model=model)
    assert summary["selected"] == {"mcg": 1}
    with Artifact(tmp_path / "sel.h5", stage="select") as a:
        rows, masks = a.records(1), a.masks(1)
        assert rows[0]["selected"] == "mcg" and rows[0]["quality"] == pytest.approx(0.9)
        assert "highest predicted quality 0.900 of 2 candidates (next: grabcut 0.200)" in rows[0]["reason"]
        assert np.array_equal(masks[0], big)
        assert rows[1]["status"] == "ignored" and rows[1]["selected"] == "" and np.isnan(rows[1]["quality"])
        assert a.attrs["quality_predictor"].startswith("stump.json@")
    # the other way round: low fill wins under a model that prefers it
    inverse = stump_scorer(tmp_path / "inv.json", low=0.9, high=0.2)
    run_select(paths, tmp_path / "sel2.h5", extras=("ellipse",), model=inverse)
    with Artifact(tmp_path / "sel2.h5") as a:
        assert a.records(1)[0]["selected"] == "grabcut" and a.records(1)[0]["candidates"] == 3


def test_choose_breaks_ties_by_order_and_settings_are_checked():
    assert choose(["a", "b"], np.array([0.5, 0.5]))[0] == 0
    with pytest.raises(SettingsError, match="extras"):
        SelectSettings(extras=("lasso",))


def test_merge_drop_by_quality_drops_low_quality_masks_and_by_proxy_as_before(demo, tmp_path):
    image = sorted((demo / "images").iterdir())[0]
    h, w = read_image(image).shape[:2]
    paths, small, big = _two_sources(tmp_path, image, h, w)
    stump = stump_scorer(tmp_path / "stump.json")
    s = merge_drop(paths[0], tmp_path / "q.h5", MergeDropSettings(threshold=0.0, criterion="quality",
                                                              quality_threshold=0.5, model=stump))
    assert s["criterion"] == "quality"
    with Artifact(tmp_path / "q.h5") as a:
        r = a.records(1)[0]
        assert r["status"] == "dropped" and r["quality"] == pytest.approx(0.2) and r["mask_ignore"] == 1
        assert "predicted quality 0.200 < 0.5" in r["reason"] and a.method.endswith("quality-drop")
    merge_drop(paths[1], tmp_path / "q2.h5", MergeDropSettings(threshold=0.0, criterion="quality", quality_threshold=0.5,
                                                               model=stump))
    with Artifact(tmp_path / "q2.h5") as a:
        assert a.records(1)[0]["status"] == "kept"
    # proxy criterion: the thin grabcut mask (box IoU 0.2) drops by proxy, whatever its quality
    merge_drop(paths[0], tmp_path / "p.h5", MergeDropSettings(threshold=0.5, criterion="proxy_box_iou"))
    merge_drop(paths[1], tmp_path / "b.h5", MergeDropSettings(threshold=0.75, criterion="both", quality_threshold=0.5,
                                                             model=stump))
    merge_drop(paths[1], tmp_path / "c.h5", MergeDropSettings(threshold=0.75, criterion="both", quality_threshold=0.95,
                                                             model=stump))
    with Artifact(tmp_path / "p.h5") as a, Artifact(tmp_path / "b.h5") as b:
        assert a.records(1)[0]["status"] == "dropped" and "proxy box IoU" in a.records(1)[0]["reason"]
        assert b.records(1)[0]["status"] == "kept"  # proxy 0.8 >= 0.75 and quality 0.9 >= 0.5
    with Artifact(tmp_path / "c.h5") as c:
        assert c.records(1)[0]["status"] == "dropped" and "predicted quality 0.900 < 0.95" in c.records(1)[0]["reason"]


def test_merge_drop_image_rejects_nothing_without_a_quality_function():
    m = np.zeros((1, 20, 20), np.uint8)
    m[0, 5:15, 5:15] = 1
    _, rows = merge_drop_image(m, [{"id": 1, "bbox": [5, 5, 10, 10], "status": "kept", "reason": ""}],
                               MergeDropSettings(threshold=0.9, criterion="quality"))
    assert rows[0]["status"] == "dropped" and "no predicted quality" in rows[0]["reason"]


def test_the_choice_model_ranks_within_a_box_and_survives_json(tmp_path):
    from pseudomask.quality.scorer import CHOICE_FEATURES, choice_features
    from pseudomask.quality.training import box_relative, train

    rng = np.random.default_rng(0)
    n_box, per = 60, 4
    x = rng.uniform(0, 1, (n_box * per, len(FEATURES)))
    # the true IoU follows `fill` plus a per-box offset that no feature sees: only the ranking within a box
    # is learnable, so the choice model's targets (IoU minus the box mean) are what it must fit
    offset = np.repeat(rng.uniform(-0.3, 0.3, n_box), per)
    y = np.clip(0.4 + 0.4 * x[:, FILL] + offset, 0, 1)
    data = {"x_single": x, "x_cross": x, "y": y, "instance": np.repeat(np.arange(n_box), per),
            "image": np.repeat(np.arange(n_box), per), "name": np.array(["grabcut"] * len(y)),
            "proxy": y}
    xr, yr = box_relative(data, np.ones(len(y), bool))
    assert xr.shape == (len(y), len(CHOICE_FEATURES))
    assert np.allclose(yr.reshape(n_box, per).mean(1), 0)
    s = train(data)
    assert s.choice is not None and s.choice.features == CHOICE_FEATURES
    box = rng.uniform(0, 1, (per, len(FEATURES)))
    box[:, FILL] = [0.1, 0.9, 0.5, 0.3]
    assert int(np.argmax(s.rank(box))) == 1
    assert np.allclose(choice_features(box)[:, len(FEATURES):].mean(0), 0)
    back = Scorer.load(s.save(tmp_path / "m.json"))
    assert np.allclose(back.rank(box), s.rank(box)) and np.allclose(back.predict(box), s.predict(box))
    best, why = choose(["a", "b", "c", "d"], s.predict(box), s.rank(box))
    assert best == 1 and why.startswith("first by the choice model")
