import numpy as np

from pseudomask.masks import (box_agreement, box_iou, box_mask, ellipse_mask, mask_box, mask_iou, mask_polygons,
                              rle_decode, rle_encode, segmentation_mask)


def test_box_fill_and_tight_box_round_trip():
    m = box_mask([3, 2, 5, 4], 10, 12)
    assert m.sum() == 20
    assert mask_box(m) == [3.0, 2.0, 5.0, 4.0]
    assert mask_box(np.zeros((4, 4), np.uint8)) is None
    assert box_agreement(m, [3, 2, 5, 4]) == 1.0


def test_box_iou_known_values():
    assert box_iou([0, 0, 2, 2], [1, 1, 2, 2]) == 1 / 7
    assert box_iou([0, 0, 2, 2], [5, 5, 1, 1]) == 0.0
    assert box_iou(None, [0, 0, 1, 1]) == 0.0


def test_ellipse_inside_box_and_near_pi_over_four():
    e = ellipse_mask([10, 10, 40, 20], 60, 80)
    assert mask_box(e) == [10.0, 10.0, 40.0, 20.0]
    assert abs(e.sum() / 800 - np.pi / 4) < 0.03


def test_mask_iou_ignores_255():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    a[:2] = 1
    b[:1] = 1
    b[1] = 255
    assert mask_iou(a, b) == 0.5


def test_rle_and_polygon_round_trip():
    m = ellipse_mask([5, 5, 80, 60], 80, 100)
    assert np.array_equal(rle_decode(rle_encode(m)), m)
    assert np.array_equal(segmentation_mask(rle_encode(m), 80, 100), m)
    poly = segmentation_mask(mask_polygons(m), 80, 100)  # contours run through pixel centres
    assert mask_iou(poly, m) > 0.95
