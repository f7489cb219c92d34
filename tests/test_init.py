"""`pseudomask init`: a complete, valid config for a dataset, its checks of the inputs, and the command."""

import json

import pytest
import yaml

from pseudomask.cli import main
from pseudomask.config import complete_config, default_config
from pseudomask.dataset import DatasetError
from pseudomask.dataset_config import ONE_X_FROM, InitError, choose_schedule, choose_shard_size, init_config
from pseudomask.retrain.hybrid import RetrainHybridSettings
from pseudomask.retrain.mmdet_config import RetrainSettings, build_config


def _read(path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("n,size", [(0, 1), (1, 1), (3, 1), (8, 2), (100, 25), (1000, 250), (100_000, 300)])
def test_shard_size_rule(n, size):
    assert choose_shard_size(n) == size


@pytest.mark.parametrize("n,schedule", [(1, "2x"), (ONE_X_FROM - 1, "2x"), (ONE_X_FROM, "1x"), (118_287, "1x")])
def test_schedule_rule(n, schedule):
    assert choose_schedule(n) == schedule


def test_init_config_trains_by_epochs_with_amp_on_cuda_and_the_short_run_on_the_cpu(demo, tmp_path):
    init_config(demo / "annotations.json", demo / "images", tmp_path / "config.yaml")
    section = {k: v for k, v in _read(tmp_path / "config.yaml")["retrain"].items() if k != "resources"}
    gpu = RetrainSettings.from_mapping(section).for_device("cuda")
    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path / "run", gpu, device="cuda")
    assert cfg["train_cfg"]["type"] == "EpochBasedTrainLoop" and cfg["train_cfg"]["max_epochs"] == 24
    assert cfg["optim_wrapper"]["type"] == "AmpOptimWrapper"
    assert cfg["default_hooks"]["checkpoint"]["by_epoch"] and cfg["default_hooks"]["checkpoint"]["interval"] == 1
    assert cfg["train_pipeline"][2]["scale"] == (1333, 800)
    cpu = RetrainSettings.from_mapping(section).for_device("cpu")
    cfg = build_config(demo / "annotations.json", demo / "images", tmp_path / "run", cpu, device="cpu")
    assert cfg["train_cfg"] == {"type": "IterBasedTrainLoop", "max_iters": 1000, "val_interval": 1001}
    assert cfg["optim_wrapper"]["type"] == "OptimWrapper" and cfg["train_pipeline"][2]["scale"] == (320, 320)
    hybrid = {k: v for k, v in _read(tmp_path / "config.yaml")["retrain_hybrid"].items() if k != "resources"}
    assert RetrainHybridSettings.from_mapping(hybrid).for_device("cuda").branch("large").schedule == "2x"


def test_demo_config_is_complete_valid_and_commented(demo, tmp_path):
    out = tmp_path / "cfg" / "config.yaml"
    facts = init_config(demo / "annotations.json", demo / "images", out)
    cfg = _read(out)
    assert complete_config(cfg) == cfg  # every key written, and the workflow's check passes
    assert cfg["dataset"] == {"annotations": str((demo / "annotations.json").resolve()),
                              "images": str((demo / "images").resolve()), "supervision": "boxes",
                              "ground_truth": "", "salient": "", "strong": ""}
    assert cfg["ingest"]["shard_size"] == 2 and cfg["workflow"]["boxcaseg"] is False
    default = default_config()
    assert cfg["retrain"] == {**default["retrain"], "schedule": "2x"}  # 8 images: the small dataset's schedule
    assert cfg["retrain_hybrid"] == {**default["retrain_hybrid"], "schedule": "2x"}
    ours = ("dataset", "ingest", "workflow", "retrain", "retrain_hybrid")
    assert {k: v for k, v in cfg.items() if k not in ours} == {k: v for k, v in default.items() if k not in ours}
    assert cfg["workflow"]["test_annotations"] == cfg["workflow"]["test_images"] == ""  # not the demo's held-out set
    assert {**cfg["workflow"], "boxcaseg": True, "test_annotations": default["workflow"]["test_annotations"],
            "test_images": default["workflow"]["test_images"]} == default["workflow"]
    keys = [line for line in out.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(" # " in line for line in keys)  # every key with its help
    assert facts["images"] == 8 and facts["shards"] == 4 and facts["missing"] == 0
    assert facts["instances"] == len(json.loads((demo / "annotations.json").read_text())["annotations"])


def test_salient_and_ground_truth_turn_boxcaseg_and_evaluation_on(demo, tmp_path):
    init_config(demo / "annotations.json", demo / "images", tmp_path / "c.yaml", salient=str(demo / "salient"),
                ground_truth=str(demo / "annotations.json"))
    cfg = _read(tmp_path / "c.yaml")
    assert cfg["workflow"]["boxcaseg"] is True and cfg["dataset"]["salient"] == str((demo / "salient").resolve())
    assert cfg["dataset"]["ground_truth"] == str((demo / "annotations.json").resolve())
    with pytest.raises(InitError, match="lacks masks/"):
        init_config(demo / "annotations.json", demo / "images", tmp_path / "d.yaml", salient=str(demo))
    with pytest.raises(InitError, match="nope.json: ground-truth annotation file not found"):
        init_config(demo / "annotations.json", demo / "images", tmp_path / "d.yaml",
                    ground_truth=str(tmp_path / "nope.json"))
    assert not (tmp_path / "d.yaml").exists()


def test_tags_only_dataset_gets_tag_supervision(demo, tmp_path):
    data = json.loads((demo / "annotations.json").read_text())
    data["annotations"] = [{k: a[k] for k in ("id", "image_id", "category_id")} for a in data["annotations"]]
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps(data))
    facts = init_config(tags, demo / "images", tmp_path / "c.yaml")
    cfg = _read(tmp_path / "c.yaml")
    assert facts["supervision"] == cfg["dataset"]["supervision"] == "tags"
    assert cfg["workflow"]["merge_drop_source"] == "cam" and complete_config(cfg) == cfg
    assert (cfg["merge_drop"]["criterion"], cfg["merge_drop"]["rule"]) == ("proxy_box_iou", "smaller_box")
    with pytest.raises(InitError, match="tags.json: supervision 'boxes' asked for"):
        init_config(tags, demo / "images", tmp_path / "d.yaml", supervision="boxes")


def test_missing_images_are_counted_and_named(demo, tmp_path):
    data = json.loads((demo / "annotations.json").read_text())
    extra = [{"id": 100 + i, "file_name": f"gone{i}.png", "width": 320, "height": 240} for i in range(7)]
    data["images"] += extra
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    facts = init_config(ann, demo / "images", tmp_path / "c.yaml")
    assert facts["missing"] == 7 and facts["missing_first"] == [f"gone{i}.png" for i in range(5)]
    assert facts["images"] == 15 and _read(tmp_path / "c.yaml")["ingest"]["shard_size"] == 4
    with pytest.raises(InitError, match=r"none of its 8 image files is in .*first: 000001.png"):
        init_config(demo / "annotations.json", tmp_path, tmp_path / "d.yaml")


def test_bad_annotations_give_the_loaders_error(tmp_path, demo):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match="bad.json: malformed JSON at line 2"):
        init_config(bad, demo / "images", tmp_path / "c.yaml")


def test_refuses_to_overwrite_unless_forced(demo, tmp_path):
    out = tmp_path / "config.yaml"
    out.write_text("mine: 1\n")
    with pytest.raises(InitError, match="config.yaml: already exists; pass --force"):
        init_config(demo / "annotations.json", demo / "images", out)
    assert out.read_text() == "mine: 1\n"
    init_config(demo / "annotations.json", demo / "images", out, force=True)
    assert _read(out)["dataset"]["supervision"] == "boxes"


def test_cli_prints_counts_and_the_command(demo, tmp_path, capsys):
    out = tmp_path / "c.yaml"
    args = ["init", "--annotations", str(demo / "annotations.json"), "--images", str(demo / "images"),
            "--out", str(out), "--salient", str(demo / "salient")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "images      8" in printed and "shards      4" in printed and "missing     0" in printed
    assert f"snakemake --cores all --configfile {out}" in printed
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


def test_strong_masks_are_checked_at_init_and_written(demo, tmp_path):
    ids = tmp_path / "strong.txt"
    ids.write_text("1\n2\n")
    facts = init_config(demo / "annotations.json", demo / "images", tmp_path / "a.yaml", strong=str(ids))
    assert _read(tmp_path / "a.yaml")["dataset"]["strong"] == str(ids.resolve())
    n = sum(a["image_id"] in (1, 2) for a in json.loads((demo / "annotations.json").read_text())["annotations"])
    assert facts["strong"] == n > 0
    ids.write_text("1\n999\n")
    with pytest.raises(Exception, match="image 999 is not an image of the dataset"):
        init_config(demo / "annotations.json", demo / "images", tmp_path / "b.yaml", strong=str(ids))
    assert not (tmp_path / "b.yaml").exists()
