"""Atomic writes (pseudomask.files) and the checkpoint format of the project's own models (pseudomask.checkpoints)."""

from __future__ import annotations

import json

import pytest
import torch

from pseudomask import __version__, checkpoints
from pseudomask.files import atomic_path, write_json, write_text_atomic


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".out.json.tmp-")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    write_text_atomic("old", target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_stale_temp_of_a_killed_writer_is_removed(tmp_path):
    stale = tmp_path / ".a.json.tmp-99999"
    stale.write_text("partial")
    other = tmp_path / ".b.json.tmp-99999"  # another target's: left alone
    other.write_text("partial")
    write_json({"x": [1, 2]}, tmp_path / "a.json", indent=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.json.tmp-99999", "a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    write_json({"x": 1}, tmp_path / "c.json")
    assert (tmp_path / "c.json").read_text() == '{"x":1}'  # compact without indent


def test_checkpoint_header_and_weights_only_load(tmp_path):
    state = {"w": torch.arange(3.0)}
    path = checkpoints.save(tmp_path / "m.pt", stage="cam_train", settings={"lr": 0.1, "levels": [-1]}, state=state,
                            config={"classes": ["a"]})
    raw = torch.load(path, weights_only=True)  # plain types and tensors only
    assert {k: raw[k] for k in ("format", "format_version", "stage", "settings", "package_version")} == {
        "format": "pseudomask-checkpoint", "format_version": 1, "stage": "cam_train",
        "settings": {"lr": 0.1, "levels": [-1]}, "package_version": __version__}
    ck = checkpoints.load(path, "cam_train")
    assert torch.equal(ck["state"]["w"], state["w"]) and ck["config"] == {"classes": ["a"]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_checkpoint_errors_name_the_file_and_the_stage(tmp_path):
    path = checkpoints.save(tmp_path / "m.pt", stage="cam_train", settings={}, state={})
    with pytest.raises(checkpoints.CheckpointError, match=r"m\.pt: a checkpoint of stage 'cam_train', not a "
                                                          r"BoxCaseg checkpoint \(stage 'boxcaseg_train'\)"):
        checkpoints.load(path, "boxcaseg_train", what="BoxCaseg")
    with pytest.raises(checkpoints.CheckpointError, match=r"missing\.pt: pseudomask checkpoint not found"):
        checkpoints.load(tmp_path / "missing.pt", "cam_train")
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"plain\.pt: not a CAM checkpoint"):
        checkpoints.load(tmp_path / "plain.pt", "cam_train", what="CAM", error=ValueError)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match=r"junk\.pt: not a pseudomask checkpoint"):
        checkpoints.load(tmp_path / "junk.pt", "cam_train")


def test_resume_state_is_used_only_for_the_same_key(tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert checkpoints.resume_path(out) == tmp_path / "model.pt.resume.pt"
    assert checkpoints.load_resume(out, "cam_train", {"seed": 0}, iters=10) is None
    checkpoints.save_resume(out, stage="cam_train", settings={}, state={"w": torch.ones(1)}, optimizer={},
                            iteration=4, resume_key={"seed": 0}, log=[0.5, 0.4])
    ck = checkpoints.load_resume(out, "cam_train", {"seed": 0}, iters=10)
    assert ck["iteration"] == 4 and ck["log"] == [0.5, 0.4]
    assert checkpoints.load_resume(out, "cam_train", {"seed": 1}, iters=10) is None
    assert checkpoints.load_resume(out, "cam_train", {"seed": 0}, iters=3) is None  # past this run's end
    assert checkpoints.load_resume(out, "boxcaseg_train", {"seed": 0}, iters=10) is None  # another stage's
    err = capsys.readouterr().err
    assert "resuming from" in err and "other settings" in err and "not a pseudomask checkpoint" in err
