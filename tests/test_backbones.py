"""pseudomask.backbones: MMDetection ResNet / HRNet by name, levels and strides, local checkpoints only."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmdet.models", reason="backbones are MMDetection's")

from pseudomask.backbones import BackboneError, available_backbones, build_backbone  # noqa: E402


@pytest.mark.parametrize("name", ["resnet18_w16", "hrnetv2_w18_small"])
def test_levels_match_declared_channels_and_strides(name):
    bb = build_backbone(name)
    feats = bb(torch.rand(2, 3, 64, 96))
    assert len(feats) == 4
    assert [f.shape[1] for f in feats] == bb.out_channels
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in feats] == [(s, s) for s in bb.strides]
    assert bb.strides == [4, 8, 16, 32]


def test_out_indices_select_levels():
    bb = build_backbone("resnet18_w16", out_indices=(1, 3))
    feats = bb(torch.rand(1, 3, 64, 64))
    assert bb.strides == [8, 32] and bb.out_channels == [32, 128]
    assert [f.shape[1] for f in feats] == [32, 128]
    with pytest.raises(BackboneError, match="out_indices"):
        build_backbone("resnet18_w16", out_indices=(4,))


def test_paper_default_hrnetv2_w48():
    bb = build_backbone("hrnetv2_w48")
    assert bb.out_channels == [48, 96, 192, 384]  # HRNetV2-W48: 720 channels when the levels are fused
    with torch.no_grad():
        feats = bb.eval()(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(48, 8, 8), (96, 4, 4), (192, 2, 2), (384, 1, 1)]


def test_unknown_name_and_missing_timm():
    with pytest.raises(BackboneError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")
    assert "hrnetv2_w48" in available_backbones() and "resnet50" in available_backbones()
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(BackboneError, match="timm"):
            build_backbone("timm:resnet18")
    else:
        bb = build_backbone("timm:resnet18")
        assert len(bb(torch.rand(1, 3, 64, 64))) == len(bb.out_channels)


def test_checkpoint_round_trip_with_prefix(tmp_path):
    torch.manual_seed(0)
    src = build_backbone("resnet18_w16").eval()
    ck = tmp_path / "bb.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.body.state_dict().items()}}, ck)
    dst = build_backbone("resnet18_w16", checkpoint=ck).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            assert torch.equal(a, b)
    # a fresh random init differs, so the equality above is the loaded weights
    with torch.no_grad():
        assert not torch.equal(build_backbone("resnet18_w16").eval()(x)[0], src(x)[0])


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    ck = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18").body.state_dict(), ck)
    with pytest.raises(BackboneError, match=r"r18\.pth.*does not fit backbone 'resnet18_w16'.*other shape"):
        build_backbone("resnet18_w16", checkpoint=ck)
    ck2 = tmp_path / "hr.pth"
    torch.save(build_backbone("hrnetv2_w18_small").body.state_dict(), ck2)
    with pytest.raises(BackboneError, match=r"hr\.pth.*missing"):
        build_backbone("resnet18_w16", checkpoint=ck2)
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("resnet18_w16", checkpoint=tmp_path / "nope.pth")
    bad = tmp_path / "junk.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(BackboneError, match="junk.pth"):
        build_backbone("resnet18_w16", checkpoint=bad)
