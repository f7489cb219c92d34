import json

import numpy as np
import pytest

from pseudomask.demo import CLASSES, DemoDataSettings, make_demo_data, run_stage
from pseudomask.images import read_image
from pseudomask.masks import mask_box, rle_decode
from pseudomask.settings import SettingsError


def test_deterministic_per_seed(tmp_path):
    a = make_demo_data(tmp_path / "a", n_images=3, seed=5, n_salient=1)
    b = make_demo_data(tmp_path / "b", n_images=3, seed=5, n_salient=1)
    c = make_demo_data(tmp_path / "c", n_images=3, seed=6, n_salient=1)
    assert a.read_text() == b.read_text() != c.read_text()
    assert np.array_equal(read_image(tmp_path / "a/images/000001.png"), read_image(tmp_path / "b/images/000001.png"))


def test_scenes_have_exact_masks_of_all_sizes(demo):
    data = json.loads((demo / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    areas = []
    occupied = {}
    for a in data["annotations"]:
        m = rle_decode(a["segmentation"])
        assert mask_box(m) == a["bbox"] and m.sum() == a["area"]
        areas.append(a["bbox"][2] * a["bbox"][3])
        prev = occupied.setdefault(a["image_id"], np.zeros_like(m))
        assert not np.any(prev & m), "instance masks of one image must not overlap"
        prev |= m
    assert min(areas) < 32 * 32 and max(areas) > 96 * 96


def test_salient_pairs_match(demo):
    imgs = sorted(p.stem for p in (demo / "salient/images").iterdir())
    masks = sorted(p.stem for p in (demo / "salient/masks").iterdir())
    assert imgs == masks and len(imgs) == 8
    m = read_image(demo / "salient/masks" / f"{imgs[0]}.png")[..., 0]
    assert set(np.unique(m)) == {0, 255} and (m > 0).mean() > 0.05


def test_stage_writes_held_out_scenes_unlike_the_training_ones(tmp_path):
    """demo_data's test/ folder: test_scenes scenes from a seed of their own, none of them a training scene, and no
    salient set; a port pointing elsewhere is refused naming it."""
    s = DemoDataSettings(scenes=3, test_scenes=2, salient_images=1)
    out = run_stage(s, annotations=str(tmp_path / "annotations.json"))
    test = json.loads((tmp_path / "test/annotations.json").read_text())
    assert out["test_scenes"] == len(test["images"]) == 2 and not (tmp_path / "test/salient").exists()
    train = [read_image(p) for p in sorted((tmp_path / "images").iterdir())]
    for p in sorted((tmp_path / "test/images").iterdir()):
        assert not any(np.array_equal(read_image(p), t) for t in train)
    with pytest.raises(SettingsError, match="test_images must be"):
        run_stage(s, annotations=str(tmp_path / "annotations.json"), test_images=str(tmp_path / "elsewhere"))
