"""The merge rules on hand-made overlaps with known answers (pseudomask.merge)."""

import numpy as np
import pytest

from pseudomask.crops import MaskStack
from pseudomask.merge import box_score, colour_score, first_wins, merge, value_score
from pseudomask.merge_drop import MergeDropSettings, merge_drop_image


def two_squares():
    """A big square (rows/cols 0-29) and a small one (20-39) claiming the 10x10 block 20-29 together."""
    big, small = np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8)
    big[:30, :30], small[20:, 20:] = 1, 1
    boxes = np.array([[0, 0, 30, 30], [20, 20, 20, 20]], float)
    return MaskStack.from_masks(np.stack([big, small])), boxes


def test_smaller_box_takes_the_contested_pixels():
    masks, boxes = two_squares()
    merged, lost, _, _ = merge(masks, box_score(boxes))
    m = np.asarray(merged)
    assert m[0, 25, 25] == 0 and m[1, 25, 25] == 1 and lost.tolist() == [100, 0]


def test_quality_rule_gives_the_pixels_to_the_better_mask():
    masks, boxes = two_squares()
    m, lost, _, _ = merge(masks, value_score([0.9, 0.4]))
    assert np.asarray(m)[0, 25, 25] == 1 and np.asarray(m)[1, 25, 25] == 0 and lost.tolist() == [0, 100]
    m, lost, _, _ = merge(masks, value_score([np.nan, 0.4]))  # no quality: lowest
    assert np.asarray(m)[1, 25, 25] == 1 and lost.tolist() == [100, 0]


def test_ignore_rule_makes_contested_pixels_255_for_both():
    masks, boxes = two_squares()
    m, lost, span, has = merge(masks, box_score(boxes), ignore=True)
    m = np.asarray(m)
    assert (m[:, 20:30, 20:30] == 255).all() and lost.tolist() == [100, 100]
    assert (m[0, :20, :20] == 1).all() and (m[1, 30:, 30:] == 1).all() and has.all()
    assert (np.sum(m == 1, axis=0) <= 1).all()


def test_colour_rule_decides_pixel_by_pixel():
    """The contested block is half red (the big mask's colour) and half blue (the small one's): each mask keeps
    the half of its own colour, whatever the box sizes."""
    masks, boxes = two_squares()
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:30, :30] = (200, 30, 30)
    rgb[20:, 20:] = (30, 30, 200)
    rgb[20:30, 20:25] = (200, 30, 30)  # the left half of the contested block is red
    rgb[30:, :] = rgb[:, 30:] = (30, 30, 200)
    rgb[:20, 30:] = rgb[30:, :20] = (128, 128, 128)  # outside both masks, inside neither colour
    m, lost, _, _ = merge(masks, colour_score(rgb, masks, boxes))
    m = np.asarray(m)
    assert (m[0, 20:30, 20:25] == 1).all() and (m[1, 20:30, 20:25] == 0).all()
    assert (m[1, 20:30, 25:30] == 1).all() and (m[0, 20:30, 25:30] == 0).all()
    assert lost.tolist() == [50, 50]


def test_first_wins_over_every_rule_and_three_claimants():
    masks, boxes = two_squares()
    third = np.zeros((40, 40), np.uint8)
    third[15:35, 15:35] = 1
    stack = MaskStack.from_masks(np.concatenate([np.asarray(masks), third[None]]))
    b3 = np.concatenate([boxes, [[15, 15, 20, 20]]])
    m, _, _, _ = merge(stack, first_wins(value_score([0.9, 0.8, 0.1]), [False, False, True]))
    m = np.asarray(m)
    assert (m[2, 15:35, 15:35] == 1).all() and (m[:2, 15:35, 15:35] == 0).all()
    assert m[0, 10, 25] == 1 and m[1, 36, 36] == 1
    m, _, _, _ = merge(stack, box_score(b3))  # equal boxes 1 and 2: the earlier (1) wins; 0 loses to both
    m = np.asarray(m)
    assert (np.sum(m == 1, axis=0) <= 1).all() and m[1, 25, 25] == 1 and m[0, 17, 17] == 0 and m[2, 17, 17] == 1


@pytest.mark.parametrize("rule, owner", [("smaller_box", 1), ("quality", 0), ("ignore", None)])
def test_merge_drop_image_applies_the_rule(rule, owner):
    masks, boxes = two_squares()
    rows = [{"id": i, "bbox": b.tolist(), "status": "kept", "reason": "", "category_id": 1}
            for i, b in enumerate(boxes)]
    seen = []

    def quality(rs, stack):
        seen.append(np.asarray(stack)[:, 25, 25].tolist())
        return np.array([0.9, 0.4])

    merged, out = merge_drop_image(masks, rows, MergeDropSettings(threshold=0.0, rule=rule), quality=quality)
    assert len(seen) == (2 if rule == "quality" else 1)  # the merged masks are scored; the quality rule scores
    assert rule != "quality" or seen[0] == [1, 1]        # the masks as given first
    m = np.asarray(merged)
    if owner is None:
        assert (m[:, 25, 25] == 255).all() and [r["merge_lost_px"] for r in out] == [100, 100]
    else:
        assert m[owner, 25, 25] == 1 and m[1 - owner, 25, 25] == 0
        assert out[1 - owner]["merge_lost_px"] == 100 and out[owner]["merge_lost_px"] == 0


def test_rules_that_need_evidence_say_so():
    masks, boxes = two_squares()
    rows = [{"id": i, "bbox": b.tolist(), "status": "kept", "reason": ""} for i, b in enumerate(boxes)]
    with pytest.raises(Exception, match="quality model"):
        merge_drop_image(masks, rows, MergeDropSettings(rule="quality", criterion="proxy_box_iou"))
    with pytest.raises(Exception, match="needs the image"):
        merge_drop_image(masks, rows, MergeDropSettings(rule="colour", criterion="proxy_box_iou"))
