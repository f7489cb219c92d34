"""BoxCaseg units: MIL bags, smoothness, pixel loss, weight-transfer detachment, data, sampler, checkpoints."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from pseudomask.boxcaseg.data import (BOX, SALIENT, BoxCasegDataError, RatioBatchSampler, SalientFolder, box_crop,
                                      jitter_box, mask_box_label, salient_crop, split_batch)
from pseudomask.boxcaseg.losses import (bag_labels, fused_probability, mil_bag_losses, mil_loss, pixel_loss,
                                        smoothness, weak_loss)
from pseudomask.boxcaseg.salient_set import crop_window, write_object_crops
from pseudomask.images import read_image, write_image
from pseudomask.masks import segmentation_mask

BIG = 30.0  # logit of a confident pixel: BCE of exp(-30) ~ 1e-13


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(mask > 0, BIG, -BIG).astype(np.float32))[None, None]


def _box(h, w, y0, y1, x0, x1) -> torch.Tensor:
    b = torch.zeros(1, 1, h, w)
    b[..., y0:y1, x0:x1] = 1
    return b


# ---- MIL bags -------------------------------------------------------------------------------------------


def test_bag_labels_are_rows_and_columns_crossing_the_box():
    rows, cols = bag_labels(_box(10, 12, 2, 7, 3, 11))
    assert rows.shape == (1, 10) and cols.shape == (1, 12)
    assert rows[0].tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    assert int(cols.sum()) == 8 and cols[0, 3:11].all()


def test_mask_touching_every_row_and_column_of_the_box_has_zero_positive_bag_loss():
    h, w = 20, 24
    box = _box(h, w, 4, 16, 6, 18)  # 12 x 12 box
    diag = np.zeros((h, w), np.uint8)
    for k in range(12):  # a one-pixel diagonal: thin, yet it touches every row and column of the box
        diag[4 + k, 6 + k] = 1
    pos, neg = mil_bag_losses(_logits(diag), box)
    assert float(pos) < 1e-9 and float(neg) < 1e-9

    gap = diag.copy()
    gap[10, 12] = 0  # one row and one column of the box now hold no object pixel
    pos_gap, _ = mil_bag_losses(_logits(gap), box)
    assert float(pos_gap) > 1.0  # two of 24 positive bags at BCE ~30

    spill = diag.copy()
    spill[0, 0] = 1  # a pixel outside the box turns one negative row and one negative column on
    pos_s, neg_s = mil_bag_losses(_logits(spill), box)
    assert float(pos_s) < 1e-9 and float(neg_s) > 1.0


def test_mil_loss_is_the_mean_over_all_bags():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 9, 7)
    box = _box(9, 7, 2, 6, 1, 5).repeat(3, 1, 1, 1)
    s = torch.sigmoid(logits)[:, 0]
    bags = torch.cat([s.amax(2), s.amax(1)], 1)  # row maxima (N,9) and column maxima (N,7)
    y = torch.cat([box[:, 0].amax(2), box[:, 0].amax(1)], 1)
    manual = -(y * bags.log() + (1 - y) * (1 - bags).log()).mean()
    assert torch.allclose(mil_loss(logits, box), manual, atol=1e-5)


# ---- smoothness -----------------------------------------------------------------------------------------


def _smooth_brute(p: np.ndarray) -> float:
    """Eq. 2 by explicit loops: for each of the 8 neighbour offsets, the mean squared difference over all
    pixels whose neighbour lies inside the map; then the mean over the 8 offsets."""
    h, w = p.shape
    per_offset = []
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        if (dy, dx) == (0, 0):
            continue
        d = [(p[y, x] - p[y + dy, x + dx]) ** 2 for y in range(h) for x in range(w)
             if 0 <= y + dy < h and 0 <= x + dx < w]
        per_offset.append(np.mean(d))
    return float(np.mean(per_offset))


def test_smoothness_is_the_eight_neighbour_squared_difference():
    assert float(smoothness(torch.full((2, 1, 6, 7), 0.3))) == 0.0
    board = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)
    # horizontal and vertical neighbours always differ by 1, diagonal ones never: mean over offsets 1/2
    assert float(smoothness(torch.from_numpy(board)[None, None])) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    p = rng.random((5, 6)).astype(np.float32)
    assert float(smoothness(torch.from_numpy(p)[None, None])) == pytest.approx(_smooth_brute(p), rel=1e-5)
    step = np.zeros((6, 6), np.float32)
    step[:, 3:] = 1  # one vertical edge: only offsets with dx != 0 that cross it contribute
    assert float(smoothness(torch.from_numpy(step)[None, None])) == pytest.approx(_smooth_brute(step), rel=1e-5)


def test_weak_loss_adds_005_times_smoothness():
    torch.manual_seed(1)
    logits, box = torch.randn(2, 1, 12, 12), _box(12, 12, 3, 9, 2, 10).repeat(2, 1, 1, 1)
    expected = mil_loss(logits, box) + 0.05 * smoothness(torch.sigmoid(logits))
    assert torch.allclose(weak_loss(logits, box), expected)


# ---- pixel loss -----------------------------------------------------------------------------------------


def test_pixel_loss_is_bce_of_the_alpha_fused_map():
    torch.manual_seed(2)
    a, t = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5)
    m = (torch.rand(2, 1, 5, 5) > 0.5).float()
    p = torch.sigmoid(0.7 * a + 0.3 * t)  # the heads' scores are fused, then the sigmoid (the authors' code)
    assert torch.allclose(fused_probability(a, t, 0.7), p)
    # a transferred head at S_t = 0 (probability 0.5) does not cap the fused probability
    assert float(fused_probability(torch.full((1,), 20.0), torch.zeros(1), 0.7)) > 0.99
    manual = -(m * p.log() + (1 - m) * (1 - p).log()).mean()
    assert torch.allclose(pixel_loss(a, t, m, 0.7), manual, atol=1e-6)
    t.requires_grad_(True)
    pixel_loss(a, t, m, 1.0).backward()  # alpha = 1: the transferred head plays no part
    assert float(t.grad.abs().max()) == 0.0


# ---- model: heads and weight transfer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    pytest.importorskip("mmdet.models")
    from pseudomask.boxcaseg.model import build_model

    torch.manual_seed(0)
    return build_model("resnet18_w16")


def test_heads_share_one_architecture_and_outputs_match_input(tiny_model):
    from pseudomask.boxcaseg.model import SegHead

    m = tiny_model
    assert isinstance(m.weak_head, SegHead) and isinstance(m.salient_head, SegHead)
    t = m.transferred_head
    assert t.transfer1.shape == tuple(m.weak_head.conv1.weight.shape)
    assert t.transfer2.shape == tuple(m.weak_head.conv2.weight.shape)
    assert not any(isinstance(x, torch.nn.Conv2d) for x in t.modules())  # its conv weights are generated
    assert isinstance(t.transfer1.fc1, torch.nn.Linear) and isinstance(t.transfer1.fc2, torch.nn.Linear)
    m.train()
    out = m(torch.rand(3, 3, 64, 48), salient=torch.tensor([False, True, True]))
    assert out["weak"].shape == (3, 1, 64, 48)
    assert out["salient"].shape == out["transferred"].shape == (2, 1, 64, 48)


def test_no_gradient_reaches_the_weak_head_through_the_transferred_head(tiny_model):
    m = tiny_model
    m.train()
    m.zero_grad(set_to_none=True)
    out = m(torch.rand(2, 3, 64, 64), heads=("transferred",))
    out["transferred"].sigmoid().mean().backward()
    weak = [p.grad for p in m.weak_head.parameters()]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in weak)
    mlp = [p.grad for p in m.transferred_head.transfer1.parameters()]
    assert any(g is not None and float(g.abs().max()) > 0 for g in mlp)  # the transfer MLP learns
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in m.backbone.parameters())
    # the weak head's own output does train it
    m.zero_grad(set_to_none=True)
    m(torch.rand(2, 3, 64, 64), heads=("weak",))["weak"].sigmoid().mean().backward()
    assert float(m.weak_head.conv2.weight.grad.abs().max()) > 0


def test_transferred_head_follows_the_weak_head_weights(tiny_model):
    m = tiny_model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = m(x, heads=("transferred",))["transferred"].clone()
        m.weak_head.conv2.weight.mul_(-3.0)
        after = m(x, heads=("transferred",))["transferred"]
        m.weak_head.conv2.weight.div_(-3.0)
    assert not torch.allclose(before, after)


def test_checkpoint_round_trip_and_architecture_errors(tiny_model, tmp_path):
    from pseudomask.boxcaseg.model import BoxCasegError, load_model, save_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", tiny_model.eval())
    back = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(back.predict(x), tiny_model.predict(x))

    ck = torch.load(path, weights_only=True)  # plain types and tensors only
    assert ck["format"] == "pseudomask-checkpoint" and ck["stage"] == "boxcaseg_train"
    ck["arch"]["backbone"] = "hrnetv2_w18_small"  # weights of one architecture described as another
    torch.save(ck, tmp_path / "other.pt")
    with pytest.raises(BoxCasegError, match=r"other\.pt.*does not fit.*hrnetv2_w18_small"):
        load_model(tmp_path / "other.pt")
    torch.save(tiny_model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(BoxCasegError, match=r"plain\.pt: not a BoxCaseg checkpoint"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(BoxCasegError, match="not found"):
        load_model(tmp_path / "missing.pt")


# ---- data -----------------------------------------------------------------------------------------------


def test_jitter_box_follows_the_paper_ranges():
    rng = np.random.default_rng(0)
    box = (100.0, 50.0, 140.0, 130.0)  # w 40, h 80
    j = np.array([jitter_box(box, rng) for _ in range(4000)])
    cx, cy = (j[:, 0] + j[:, 2]) / 2 - 120, (j[:, 1] + j[:, 3]) / 2 - 90
    sw, sh = (j[:, 2] - j[:, 0]) / 40, (j[:, 3] - j[:, 1]) / 80
    assert np.abs(cx).max() <= 0.25 * 40 and np.abs(cx).max() > 0.24 * 40
    assert np.abs(cy).max() <= 0.25 * 80 and np.abs(cy).max() > 0.24 * 80
    assert sw.min() >= 0.5 and sw.max() <= 1.5 and sw.min() < 0.52 and sw.max() > 1.48
    assert sh.min() >= 0.5 and sh.max() <= 1.5


def test_box_crop_label_is_the_gt_box_in_the_crop():
    rgb = np.zeros((100, 120, 3), np.uint8)
    crop, label = box_crop(rgb, [20, 30, 40, 20], 64)  # no jitter: the crop is the box
    assert crop.shape == (64, 64, 3) and label.all()
    rng = np.random.default_rng(3)
    for _ in range(20):
        crop, label = box_crop(rgb, [20, 30, 40, 20], 64, rng)
        assert crop.shape == (64, 64, 3) and label.shape == (64, 64)
        assert label.any()  # the jittered crop always overlaps its box (centre shift <= w/4)
    with pytest.raises(BoxCasegDataError, match="zero size"):
        box_crop(rgb, [5, 5, 0, 10], 64)


def test_salient_crop_and_mask_box_label():
    rng = np.random.default_rng(0)
    rgb = np.zeros((200, 150, 3), np.uint8)
    mask = np.zeros((200, 150), np.uint8)
    mask[50:120, 40:90] = 1
    img, m = salient_crop(rgb, mask, 80, 72, rng)
    assert img.shape == (72, 72, 3) and m.shape == (72, 72) and set(np.unique(m)) <= {0, 1}
    ring = np.zeros((10, 10), np.uint8)
    ring[2:8, 3:9] = 1
    ring[4:6, 5:7] = 0
    lab = mask_box_label(ring)
    assert lab[2:8, 3:9].all() and lab.sum() == 36


def _write_pair(root, stem, img=True, mask=True):
    if img:
        write_image(root / "images" / f"{stem}.png", np.full((8, 8, 3), 128, np.uint8))
    if mask:
        write_image(root / "masks" / f"{stem}.png", np.pad(np.full((4, 4), 255, np.uint8), 2))


def test_salient_folder_errors(tmp_path):
    with pytest.raises(BoxCasegDataError, match="images/ and masks/"):
        SalientFolder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(BoxCasegDataError, match="no salient images"):
        SalientFolder(tmp_path)
    _write_pair(tmp_path, "a")
    _write_pair(tmp_path, "b", mask=False)
    _write_pair(tmp_path, "c", img=False)
    with pytest.raises(BoxCasegDataError, match=r"do not match: 1 image\(s\) without a mask .*b.*1 mask\(s\) without"):
        SalientFolder(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "masks" / "c.png").unlink()
    folder = SalientFolder(tmp_path)
    rgb, m = folder.load(0)
    assert len(folder) == 1 and rgb.shape == (8, 8, 3) and m.sum() == 16


# ---- ratio sampler --------------------------------------------------------------------------------------


def test_split_batch():
    assert split_batch(16, (9, 7)) == (9, 7)
    assert split_batch(8, (9, 7)) == (4, 4) or split_batch(8, (9, 7)) == (5, 3)
    assert split_batch(2, (14, 2)) == (1, 1)
    with pytest.raises(BoxCasegDataError):
        split_batch(1, (9, 7))


def test_ratio_sampler_fixed_ratio_all_salient_each_epoch_and_box_cycle():
    n_box, n_sal = 50, 20
    s = RatioBatchSampler(n_box, n_sal, batch_size=16, ratio=(9, 7), seed=0)
    assert (s.box_per_batch, s.salient_per_batch) == (9, 7)
    batches = list(itertools.islice(iter(s), 12))
    for b in batches:
        kinds = [k for k, _, _ in b]
        assert kinds.count(BOX) == 9 and kinds.count(SALIENT) == 7
    epoch = s.batches_per_epoch  # ceil(20 / 7) = 3 batches per epoch
    assert epoch == 3
    sal = [i for b in batches[:epoch] for k, i, _ in b if k == SALIENT]
    assert set(sal) == set(range(n_sal))  # every salient image in every epoch
    boxes = [i for b in batches for k, i, _ in b if k == BOX]
    assert sorted(boxes[:n_box]) == list(range(n_box))  # all box items seen before any repeats
    assert all(0 <= i < n_box for i in boxes)
    seeds = [sd for b in batches for _, _, sd in b]
    assert len(set(seeds)) > len(seeds) * 0.9  # per-item augmentation seeds
    again = list(itertools.islice(iter(RatioBatchSampler(n_box, n_sal, 16, (9, 7), seed=0)), 12))
    assert again == batches  # reproducible from the seed
    with pytest.raises(BoxCasegDataError, match="no salient"):
        RatioBatchSampler(5, 0)
    with pytest.raises(BoxCasegDataError, match="no usable box"):
        RatioBatchSampler(0, 5)


def test_object_crops_make_a_salient_folder_of_true_masks(demo, tmp_path):
    """write_object_crops: one pair per instance of the chosen images with a box of at least min_side, each mask
    the true mask inside the widened box; SalientFolder reads the result."""
    coco = json.loads((demo / "annotations.json").read_text())
    chosen = {1, 2, 3}
    n = write_object_crops(coco, demo / "images", tmp_path / "sal", image_ids=chosen, margin=0.1, min_side=24)
    wanted = [a for a in coco["annotations"] if a["image_id"] in chosen and min(a["bbox"][2:]) >= 24]
    assert n == len(wanted) == len(SalientFolder(tmp_path / "sal")) > 0
    first = wanted[0]
    im = next(i for i in coco["images"] if i["id"] == first["image_id"])
    x0, y0, x1, y1 = crop_window(first["bbox"], 0.1, im["height"], im["width"])
    truth = segmentation_mask(first["segmentation"], im["height"], im["width"])[y0:y1, x0:x1]
    mask = read_image(tmp_path / "sal/masks/c000001.png")[..., 0]
    assert set(np.unique(mask)) == {0, 255} and np.array_equal(mask > 0, truth > 0)
    assert read_image(tmp_path / "sal/images/c000001.png").shape[:2] == truth.shape
    assert write_object_crops(coco, demo / "images", tmp_path / "none", image_ids=set(), min_side=24) == 0
