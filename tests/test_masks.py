import numpy as np

from pseudomask.masks import (box_agreement, box_areas, box_iou, box_ious, box_mask, ellipse_mask, is_small, mask_box,
                              mask_iou, mask_polygons, rle_decode, rle_encode, segmentation_mask)


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


def test_box_iou_matrix_in_either_format_is_the_pairwise_iou():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 50, (7, 4)), rng.uniform(0, 50, (5, 4))
    a[0, 2] = 0.0  # an empty box
    m = box_ious(a, b)
    assert m.shape == (7, 5) and box_ious(np.zeros((0, 4)), b).shape == (0, 5)
    assert all(m[i, j] == box_iou(list(a[i]), list(b[j])) for i in range(7) for j in range(5))
    assert m[0].tolist() == [0.0] * 5
    xyxy = lambda x: np.c_[x[:, :2], x[:, :2] + x[:, 2:]]  # noqa: E731
    assert np.allclose(box_ious(xyxy(a), xyxy(b), "xyxy"), m)


def test_is_small_by_box_area_in_either_format():
    assert is_small([0, 0, 63, 64]) is True and is_small((5, 5, 64, 64)) is False
    assert is_small([0, 0, 100, 10], size=32) is True
    boxes = np.array([[0, 0, 64, 64], [10, 10, 20, 20], [0, 0, 8, 600]], float)
    assert is_small(boxes).tolist() == [False, True, False]
    assert is_small(np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], fmt="xyxy").tolist() == [False, True, False]
    assert box_areas([[5, 5, 2, 1]], "xyxy").tolist() == [0.0]  # xyxy sides clip at 0


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
