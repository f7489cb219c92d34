"""Peak finding, peak stimulation, proposal sampling and Grad-CAM stuff regions on constructed inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pseudomask.cam.extract import CamSettings
from pseudomask.cam.peaks import find_peaks, local_maxima, median_filter, peak_stimulation
from pseudomask.cam.sampling import ProposalPicker, choose, objectness_probabilities
from pseudomask.cam.stuff import grad_cam, stuff_regions
from pseudomask.cam.train import CamTrainSettings
from pseudomask.proposals import Proposals


def _bumps(h, w, centres, heights, sigma=1.5):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), np.float32)
    for (cy, cx), a in zip(centres, heights):
        m += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return m


def _peaks(m, win):
    t = torch.from_numpy(np.asarray(m, np.float32))[None, None]
    return {tuple(p) for p in np.argwhere(median_filter(t, local_maxima(t, win))[0, 0].numpy())}


def test_planted_maxima_are_found_exactly():
    centres = [(3, 4), (10, 15), (16, 5)]
    m = _bumps(20, 24, centres, [5.0, 3.0, 4.0])
    assert _peaks(m, 3) == set(centres)
    rows = find_peaks(m, 3)
    assert [tuple(map(int, r[:2])) for r in rows] == [(3, 4), (16, 5), (10, 15)]  # strongest first
    assert rows[0, 2] == pytest.approx(m[3, 4])


def test_window_decides_whether_close_maxima_are_separate():
    m = np.zeros((9, 12), np.float32)
    m[4, 4], m[4, 6] = 3.0, 2.0  # two maxima two pixels apart, a dip between them
    m[4, 5] = 0.5
    assert {(4, 4), (4, 6)} <= _peaks(m, 3)
    peaks5 = _peaks(m, 5)
    assert (4, 4) in peaks5 and (4, 6) not in peaks5  # inside the stronger one's 5x5 window
    with pytest.raises(ValueError):
        local_maxima(torch.zeros(1, 1, 4, 4), 4)


def test_ties_give_one_peak_per_plateau_at_its_first_pixel():
    m = np.zeros((8, 10), np.float32) - 1
    m[2:4, 3:6] = 2.0  # a 2x3 plateau
    m[6, 1] = m[6, 8] = 1.0  # two equal maxima far apart: both are peaks
    m[0, 8] = m[0, 9] = 1.5  # two equal neighbours: only the first (raster order)
    p = _peaks(m, 3)
    assert (2, 3) in p and not ({(2, 4), (2, 5), (3, 3), (3, 4), (3, 5)} & p)
    assert {(6, 1), (6, 8), (0, 8)} <= p and (0, 9) not in p


def test_median_filter_drops_background_peaks():
    m = _bumps(16, 16, [(8, 8)], [4.0], sigma=5.0)
    m[15, 15] = m[14, 14] + 0.05  # a strict local maximum of its corner, but below the median
    assert m[15, 15] < np.median(m)
    raw = local_maxima(torch.from_numpy(m)[None, None], 3)[0, 0]
    assert raw[15, 15] and raw[8, 8]
    assert _peaks(m, 3) == {(8, 8)}


def test_find_peaks_relative_threshold_and_cap():
    m = _bumps(20, 30, [(5, 5), (5, 15), (14, 25)], [4.0, 2.0, 1.0])
    med = float(np.median(m))
    all_ = find_peaks(m, 3, 0.0)
    assert len(all_) == 3
    half = find_peaks(m, 3, 0.5)  # threshold med + 0.5 * (4 - med) is about 2.0
    assert {tuple(map(int, r[:2])) for r in half} == ({(5, 5), (5, 15)} if m[5, 15] >= med + 0.5 * (m[5, 5] - med)
                                                      else {(5, 5)})
    assert len(find_peaks(m, 3, 1.0)) == 1
    assert len(find_peaks(m, 3, 0.0, max_peaks=2)) == 2


def test_peak_stimulation_scores_are_peak_means_and_gradient_reaches_only_peaks():
    a = _bumps(12, 12, [(3, 3), (8, 9)], [5.0, 3.0])
    b = _bumps(12, 12, [(6, 6)], [2.0]) - 1.0
    maps = torch.from_numpy(np.stack([a, b]))[None].requires_grad_(True)
    scores, peaks = peak_stimulation(maps, 3)
    assert scores.shape == (1, 2)
    assert scores[0, 0].item() == pytest.approx((a[3, 3] + a[8, 9]) / 2, rel=1e-5)
    assert scores[0, 1].item() == pytest.approx(b[6, 6], rel=1e-5)
    scores.sum().backward()
    g = maps.grad[0]
    assert torch.equal(g != 0, peaks[0])
    assert g[0, 3, 3].item() == pytest.approx(0.5) and g[1, 6, 6].item() == pytest.approx(1.0)


def _proposals():
    h, w = 12, 12
    masks = np.zeros((5, h, w), bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 4:6, 4:6] = True
    masks[2, 0:10, 0:10] = True
    masks[3, 5:12, 3:12] = True
    masks[4, 8:12, 8:12] = True  # does not contain (5, 5)
    return Proposals.from_masks(masks, np.array([1.0, 2.0, 3.0, 4.0, 100.0])), masks


def test_sampling_frequencies_follow_objectness():
    props, masks = _proposals()
    picker = ProposalPicker(props)
    assert list(picker.candidates(5, 5)) == [0, 1, 2, 3]
    rng = np.random.default_rng(0)
    n = 20000
    counts = np.bincount([picker.pick(5, 5, rng) for _ in range(n)], minlength=5)
    assert counts[4] == 0
    freq = counts[:4] / n
    expected = np.array([1, 2, 3, 4]) / 10
    assert np.abs(freq - expected).max() < 0.015, freq
    assert picker.pick(5, 5, rng, "best") == 3
    assert np.array_equal(picker.mask(3).astype(bool), masks[3])
    assert picker.box(1) == [4.0, 4.0, 2.0, 2.0]


def test_sampling_is_seeded_and_handles_degenerate_scores():
    props, _ = _proposals()
    picker = ProposalPicker(props)
    draw = lambda seed: [picker.pick(5, 5, np.random.default_rng(seed)) for _ in range(20)]  # noqa: E731
    assert draw(3) == draw(3)
    assert np.allclose(objectness_probabilities(np.array([0.0, 0.0, 0.0])), 1 / 3)
    assert np.allclose(objectness_probabilities(np.array([-1.0, 1.0, 3.0])), [0, 0.25, 0.75])
    assert choose(np.array([], int), np.array([1.0]), np.random.default_rng(0)) == -1
    with pytest.raises(ValueError):
        choose(np.array([0]), np.array([1.0]), np.random.default_rng(0), "worst")
    empty = Proposals.from_masks(np.zeros((1, 4, 4), bool), np.array([1.0]))
    assert ProposalPicker(empty).pick(1, 1, np.random.default_rng(0)) == -1


def test_stuff_threshold_is_half_the_maximum():
    heat = np.array([[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]]])
    r = stuff_regions(heat, 0.5)
    assert r[0, 0].tolist() == [False] * 4 + [True] * 4  # >= 4.0, half of 8
    assert not stuff_regions(np.zeros((1, 3, 3)), 0.5).any()  # no positive response: no region
    assert stuff_regions(heat, 0.9)[0, 0].sum() == 1


def test_smaller_stuff_region_wins_the_overlap():
    big = np.zeros((10, 10))
    big[0:8, 0:8] = 1.0
    small = np.zeros((10, 10))
    small[5:10, 5:10] = 1.0
    tiny = np.zeros((10, 10))
    tiny[6:8, 6:8] = 1.0
    r = stuff_regions(np.stack([big, small, tiny]), 0.5)
    assert r[2].sum() == 4 and r[2][6:8, 6:8].all()
    assert r[1].sum() == 25 - 4 and not r[1][6:8, 6:8].any()
    assert r[0].sum() == 64 - (9 - 4) - 4  # big loses the 3x3 overlap with small and the tiny square
    assert r.sum(0).max() == 1  # no pixel belongs to two classes
    same = stuff_regions(np.stack([small, small]), 0.5)  # equal areas: the earlier map keeps the pixels
    assert same[0].sum() == 25 and same[1].sum() == 0


def test_grad_cam_matches_the_closed_form():
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 5, 6, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    score = (w[:, None, None] * feats[0]).sum(0).max()  # gradient w at one of the 30 cells, 0 elsewhere
    cam = grad_cam(feats, score)
    alpha = w / 30.0  # spatially averaged gradient
    expected = torch.relu((alpha[:, None, None] * feats[0].detach()).sum(0))
    assert cam.shape == (5, 6) and torch.allclose(cam, expected, atol=1e-6)
    assert (cam > 0).any() and (cam == 0).any()  # the ReLU is applied
    feats.grad = None
    score2 = (feats[0, 1] * 2.0).mean()  # only channel 1 matters, weight 2/30 everywhere
    assert torch.allclose(grad_cam(feats, score2), torch.relu(feats[0, 1].detach() * 2.0 / 30.0), atol=1e-6)


def test_config_sections_map_onto_the_settings():
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    train, peaks = ({k: v for k, v in cfg[name].items() if k != "resources"} for name in ("cam_train", "cam"))
    assert CamTrainSettings.from_mapping(train).to_dict() == train
    assert CamSettings.from_mapping(peaks).to_dict() == peaks
