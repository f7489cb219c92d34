"""The generated MMDetection config: readable by MMEngine, schedules, classes, and no weight downloads."""

from __future__ import annotations

import json

import pytest
import torch

from pseudomask.registry import STAGES
from pseudomask.retrain.mmdet_config import (CPU_PROFILE, RetrainError, RetrainSettings, build_config, resolve_schedule,
                                             scale_pair, scaled_lr, write_config)
from pseudomask.settings import SettingsError


def test_written_config_reads_back_in_mmengine(demo, tmp_path):
    from mmengine.config import Config

    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path / "run",
                       RetrainSettings(arch="r101", schedule="iters", max_iters=40, batch_size=3, scale=[800, 1333],
                                       lr=0.005, lr_batch=None))
    path = write_config(cfg, tmp_path / "run" / "mask_rcnn.py")
    text = path.read_text()
    assert text.startswith("# MMDetection Mask R-CNN r101-FPN config")
    back = Config.fromfile(str(path))
    assert back.to_dict() == Config(cfg).to_dict()
    gt = json.loads((demo / "annotations.json").read_text())
    assert back.pseudomask.category_ids == [c["id"] for c in gt["categories"]]
    assert back.train_dataloader.dataset.metainfo.classes == tuple(c["name"] for c in gt["categories"])
    assert back.model.backbone.depth == 101 and back.model.roi_head.mask_head.num_classes == len(gt["categories"])
    assert back.train_dataloader.batch_size == 3 and back.optim_wrapper.optimizer.lr == 0.005
    assert back.train_cfg.max_iters == 40 and back.param_scheduler[1].milestones == [27, 37]
    assert tuple(back.train_pipeline[2].scale) == (1333, 800) and back.train_pipeline[-1].type == "PackPseudoDetInputs"
    # random init: nothing to fetch, nothing frozen
    assert back.model.backbone.init_cfg is None and back.load_from is None
    assert back.model.backbone.frozen_stages == -1 and back.model.backbone.norm_eval is False
    assert "val_dataloader" not in back


def test_epoch_schedules_follow_the_dataset():
    s = RetrainSettings(schedule="1x", batch_size=4)
    assert resolve_schedule(s, 10) == (36, [24, 33], 36)  # 3 iterations an epoch, warm-up capped at the run
    assert resolve_schedule(RetrainSettings(schedule="2x", batch_size=2), 2000) == (24000, [16000, 22000], 500)
    iters = RetrainSettings(schedule="iters", max_iters=4, lr_steps=(0.5, 0.9), warmup_iters=10)
    assert resolve_schedule(iters, 99) == (4, [2, 4], 4)


def test_the_learning_rate_scales_with_the_total_batch():
    assert scaled_lr(0.02, 16) == 0.02 and scaled_lr(0.02, 2) == 0.0025 and scaled_lr(0.02, 64) == 0.08
    assert scaled_lr(0.01, 2, None) == 0.01 and scaled_lr(0.01, 8, base_batch=4) == 0.02


def test_gpu_defaults_and_the_cpu_profile_only_on_the_cpu():
    s = RetrainSettings()
    assert (s.schedule, s.lr, s.lr_batch, scale_pair(s.scale), s.warmup_iters, s.amp) == \
        ("1x", 0.02, 16, (1333, 800), 500, True)
    assert s.for_device("cuda") == s and s.for_device("cuda:1") == s
    cpu = s.for_device("cpu")
    assert {k: getattr(cpu, k) for k in CPU_PROFILE} == CPU_PROFILE and cpu.cpu == {}
    stage = STAGES["retrain"]
    assert stage.resolve({}, device="cuda") == s
    assert stage.resolve({}, device="cpu") == cpu
    # options given by the user win over the profile; a section's own `cpu` replaces it
    assert stage.resolve({}, {"max_iters": 5, "scale": 128}, device="cpu").max_iters == 5
    assert stage.resolve({"cpu": {}}, device="cpu").to_dict() == {**s.to_dict(), "cpu": {}}
    assert stage.resolve({"cpu": {"scale": 256}}, device="cpu").scale == 256
    assert stage.resolve({"cpu": {"scale": 256}}, device="cpu").schedule == "1x"
    assert stage.resolve({"amp": False}, {"schedule": "2x"}, device="cuda").schedule == "2x"
    hybrid = STAGES["retrain_hybrid"]
    assert hybrid.resolve({}, device="cuda").branch("small").schedule == "1x"
    small = hybrid.resolve({}, device="cpu").branch("small")
    assert (small.schedule, small.max_iters, small.lr, small.scale) == ("iters", 1000, 0.0015, 320)


def test_the_model_size_jitter_and_optimizer_reach_the_config(demo, tmp_path):
    """The CPU profile's narrow model: every layer's channels follow width and channels (the model builds and its
    FPN gives `channels` maps), proposals and RoIs per image, RandomResize with the jitter, AdamW."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    s = STAGES["retrain"].resolve({}, device="cpu")
    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path, s, device="cpu")
    m = cfg["model"]
    assert (m["backbone"]["depth"], m["backbone"]["base_channels"]) == (18, 32)
    assert m["neck"]["in_channels"] == [32, 64, 128, 256] and m["neck"]["out_channels"] == 64
    assert m["roi_head"]["bbox_head"]["fc_out_channels"] == 256 and m["roi_head"]["mask_head"]["in_channels"] == 64
    assert m["train_cfg"]["rpn_proposal"]["max_per_img"] == m["test_cfg"]["rpn"]["max_per_img"] == 100
    assert m["train_cfg"]["rcnn"]["sampler"]["num"] == 64
    assert cfg["train_pipeline"][2] == {"type": "RandomResize", "scale": (320, 320), "ratio_range": (0.8, 1.2),
                                        "keep_ratio": True}
    assert cfg["optim_wrapper"]["optimizer"] == {"type": "AdamW", "lr": 0.001, "weight_decay": 0.05}
    init_default_scope("mmdet")
    model = MODELS.build(Config(dict(model=m)).model)
    feats = model.extract_feat(torch.zeros(1, 3, 64, 64))
    assert len(feats) == 5 and all(f.shape[1] == 64 for f in feats)
    r50 = build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings(), device="cpu")
    assert r50["model"]["neck"]["in_channels"] == [256, 512, 1024, 2048] and r50["train_pipeline"][2]["type"] == "Resize"
    assert r50["optim_wrapper"]["optimizer"]["type"] == "SGD"


def test_cuda_config_trains_by_epochs_with_amp_and_checkpoints_every_epoch(demo, tmp_path):
    from mmengine.config import Config

    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings(), device="cuda")
    back = Config.fromfile(str(write_config(cfg, tmp_path / "mask_rcnn.py")))
    assert back.train_cfg.type == "EpochBasedTrainLoop" and back.train_cfg.max_epochs == 12
    warm, steps = back.param_scheduler
    assert (warm.type, warm.by_epoch, warm.end) == ("LinearLR", False, 48)  # 500 capped at 12 epochs of 4 iterations
    assert (steps.type, steps.by_epoch, steps.milestones) == ("MultiStepLR", True, [8, 11])
    assert back.optim_wrapper.type == "AmpOptimWrapper" and back.optim_wrapper.loss_scale == "dynamic"
    assert back.optim_wrapper.optimizer.lr == 0.0025  # 0.02 at 16, scaled to a total batch of 2
    ckpt = back.default_hooks.checkpoint
    assert (ckpt.by_epoch, ckpt.interval) == (True, 1)
    assert back.train_dataloader.sampler.type == "DefaultSampler" and back.log_processor.by_epoch
    assert tuple(back.train_pipeline[2].scale) == (1333, 800) and tuple(back.test_pipeline[1].scale) == (1333, 800)
    off = build_config(demo / "annotations.json", demo / "images", tmp_path,
                       RetrainSettings(amp=False, checkpoint_interval=100), device="cuda")
    assert off["optim_wrapper"]["type"] == "OptimWrapper" and "loss_scale" not in off["optim_wrapper"]
    assert (off["default_hooks"]["checkpoint"]["by_epoch"], off["default_hooks"]["checkpoint"]["interval"]) == (False, 100)
    # the CPU never gets AMP (MMEngine's AmpOptimWrapper needs CUDA); its profile is an iteration loop
    assert build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings(),
                        device="cpu")["optim_wrapper"]["type"] == "OptimWrapper"
    cpu = build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings().for_device("cpu"),
                       device="cpu")
    assert cpu["train_cfg"] == {"type": "IterBasedTrainLoop", "max_iters": 1000, "val_interval": 1001}
    assert cpu["optim_wrapper"]["optimizer"]["lr"] == 0.001 and cpu["train_dataloader"]["sampler"]["type"] == "InfiniteSampler"


def test_init_checkpoints_become_backbone_init_or_load_from(demo, tmp_path):
    backbone = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, backbone)
    detector = tmp_path / "mask_rcnn_coco.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "meta": {}}, detector)
    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings(init_checkpoint=str(backbone)))
    assert cfg["model"]["backbone"]["init_cfg"] == {"type": "Pretrained", "checkpoint": str(backbone.resolve())}
    assert cfg["model"]["backbone"]["frozen_stages"] == 1 and cfg["load_from"] is None
    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings(init_checkpoint=str(detector)))
    assert cfg["model"]["backbone"]["init_cfg"] is None and cfg["load_from"] == str(detector.resolve())


def test_bad_settings_and_inputs_are_named(demo, tmp_path):
    with pytest.raises(SettingsError, match="retrain.arch: must be one of"):
        RetrainSettings.from_mapping({"arch": "r152"})
    with pytest.raises(RetrainError, match="retrain.scale"):
        scale_pair([320])
    with pytest.raises(RetrainError, match="nope.pth: init checkpoint not found"):
        RetrainSettings.from_mapping({"init_checkpoint": str(tmp_path / "nope.pth")})
    assert RetrainSettings.from_mapping({"max_iters": 5}).max_iters == 5
    with pytest.raises(SettingsError, match="unknown key 'max_iter'.*did you mean 'max_iters'"):
        RetrainSettings.from_mapping({"max_iter": 5})
    bad = tmp_path / "dup.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}))
    with pytest.raises(RetrainError, match="dup.json: category name 'a' appears twice"):
        build_config(bad, demo / "images", tmp_path)
    with pytest.raises(RetrainError, match="nothere: image folder not found"):
        build_config(demo / "annotations.json", tmp_path / "nothere", tmp_path)


def test_several_processes_scale_the_lr_to_the_total_batch_and_may_sync_batchnorm(demo, tmp_path):
    def cfg(world, **kw):
        return build_config(demo / "annotations.json", demo / "images", tmp_path, RetrainSettings(**kw),
                            device="cuda", world=world)

    assert cfg(4)["optim_wrapper"]["optimizer"]["lr"] == 0.01  # 0.02 at 16, 4 processes x 2 images
    assert cfg(8, batch_size=4)["optim_wrapper"]["optimizer"]["lr"] == 0.04
    assert cfg(2, sync_bn=True)["sync_bn"] == "torch"
    assert "sync_bn" not in cfg(1, sync_bn=True) and "sync_bn" not in cfg(2)
