"""Image scores and the choice of images to annotate: beta-closest with ties, lowest, random, a budget, and
strong images never chosen."""

from __future__ import annotations

import json
import math

import pytest

from annotation_data import pseudo_artifact
from pseudomask.annotation.choose import ChooseError, image_scores, select_for_annotation
from pseudomask.settings import SettingsError
from pseudomask.registry import STAGES


def _e(image_id: int, score: float, instances: int = 1, strong: bool = False) -> dict:
    return {"image_id": image_id, "file_name": f"{image_id}.png", "score": score, "instances": instances,
            "strong": strong}


ENTRIES = [_e(5, 0.5), _e(2, 0.3), _e(3, 0.9), _e(4, 0.41), _e(1, 0.1), _e(6, 0.39)]


def _ids(res: dict) -> list[int]:
    return [c["image_id"] for c in res["chosen"]]


def test_beta_takes_the_closest_scores_and_breaks_ties_by_image_id():
    assert _ids(select_for_annotation(ENTRIES, count=4, beta=0.4)) == [4, 6, 2, 5]  # 0.01, 0.01, 0.1, 0.1
    assert _ids(select_for_annotation(ENTRIES, count=2, beta=1.0)) == [3, 5]
    res = select_for_annotation(ENTRIES, count=3, beta=0.4)
    assert [c["rank"] for c in res["chosen"]] == [1, 2, 3] and res["candidates"] == 6


def test_lowest_and_random():
    assert _ids(select_for_annotation(ENTRIES, count=3, strategy="lowest")) == [1, 2, 6]
    a = _ids(select_for_annotation(ENTRIES, count=6, strategy="random", seed=1))
    assert sorted(a) == [1, 2, 3, 4, 5, 6]
    assert a == _ids(select_for_annotation(list(reversed(ENTRIES)), count=6, strategy="random", seed=1))
    others = {tuple(_ids(select_for_annotation(ENTRIES, count=6, strategy="random", seed=s))) for s in range(5)}
    assert len(others) > 1


def test_a_budget_buys_what_fits_at_79_s_per_instance():
    entries = [_e(1, 0.40, instances=3), _e(2, 0.42, instances=1), _e(3, 0.45, instances=2), _e(4, 0.9, 1)]
    res = select_for_annotation(entries, budget_s=4 * 79.0, beta=0.4)
    assert _ids(res) == [1, 2]  # 3 + 1 instances; image 3 (2 more) does not fit, image 4 neither
    assert res["spent_s"] == pytest.approx(4 * 79.0)
    assert {s["image_id"] for s in res["skipped"]} == {3, 4}
    res = select_for_annotation(entries, budget_s=3 * 79.0, beta=0.4)
    assert _ids(res) == [1]
    res = select_for_annotation(entries, budget_s=2 * 79.0, beta=0.4)
    assert _ids(res) == [2, 4]  # image 1 is over budget, the next ones still fit
    res = select_for_annotation(entries, budget_s=10 * 79.0, count=1, beta=0.4)
    assert _ids(res) == [1]
    assert [c["cost_s"] for c in select_for_annotation(entries, count=2, mask_s=10.0, beta=0.4)["chosen"]] == [30.0, 10.0]


def test_strong_images_and_images_without_instances_are_never_chosen():
    entries = ENTRIES + [_e(7, 0.4, strong=True), _e(8, 0.4, instances=0)]
    for strategy in ("beta", "lowest", "random"):
        res = select_for_annotation(entries, count=20, strategy=strategy, beta=0.4, exclude=[4])
        assert sorted(_ids(res)) == [1, 2, 3, 5, 6]
        reasons = {s["image_id"]: s["reason"] for s in res["skipped"]}
        assert "strong" in reasons[7] and "strong" in reasons[4] and "no instance" in reasons[8]


def test_nothing_to_limit_the_choice_is_an_error():
    with pytest.raises(ChooseError):
        select_for_annotation(ENTRIES)
    with pytest.raises(SettingsError, match="choose_images: count and budget_s are both 0"):
        STAGES["choose_images"].resolve({"count": 0})


@pytest.fixture(scope="module")
def scored(demo, tmp_path_factory):
    """The demo's true masks, quality = id / 100; instance 1 failed, 2 a crowd region, image 2's rows gt."""
    data = json.loads((demo / "annotations.json").read_text())
    image2 = [a["id"] for a in data["annotations"] if a["image_id"] == 2]
    out = tmp_path_factory.mktemp("choose") / "md.h5"
    return pseudo_artifact(demo, out, quality=lambda a: a["id"] / 100, status={1: "failed", 2: "ignored"},
                           source={i: "gt" for i in image2}), data


def test_image_score_is_the_mean_quality_of_its_instances(scored):
    path, data = scored
    entries = {e["image_id"]: e for e in image_scores([path])}
    assert entries[2]["strong"] and not entries[1]["strong"]
    for im in data["images"]:
        ids = [a["id"] for a in data["annotations"] if a["image_id"] == im["id"]]
        if im["id"] == 1:
            q = [0.0 if i == 1 else i / 100 for i in ids if i != 2]  # failed counts 0, crowd not at all
            assert entries[1]["instances"] == len(ids) - 1
        elif im["id"] == 2:
            assert math.isnan(entries[2]["score"])  # only true masks
            continue
        else:
            q = [i / 100 for i in ids]
        assert entries[im["id"]]["score"] == pytest.approx(sum(q) / len(q))


def test_an_artifact_without_quality_is_refused(demo_shard):
    with pytest.raises(ChooseError, match="no predicted quality"):
        image_scores([demo_shard])


def test_the_stage_prices_images_by_the_cost_json(scored, tmp_path):
    path, data = scored
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps({"model": {"mask_s": 10.0}}))
    stage = STAGES["choose_images"]
    out = tmp_path / "choice.json"
    summary = stage(stage.resolve({}, {"count": 3, "strategy": "lowest"}), masks=[str(path)], cost=str(cost),
                    out=str(out))
    res = json.loads(out.read_text())
    assert summary["chosen_images"] == 3 == len(res["chosen"]) and res["mask_s"] == 10.0
    assert 2 not in [c["image_id"] for c in res["chosen"]]
    assert res["spent_s"] == pytest.approx(10.0 * sum(c["instances"] for c in res["chosen"]))
    scores = [c["score"] for c in res["chosen"]]
    assert scores == sorted(scores)
    assert all(c["score"] >= scores[-1] for c in image_scores([path]) if c["image_id"] not in
               [x["image_id"] for x in res["chosen"]] and not c["strong"])
