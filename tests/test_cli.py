import json
import subprocess
import sys

import numpy as np
import pytest

from pseudomask.cli import main
from pseudomask.images import read_image


def test_demo_ingest_inspect_show_evaluate(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert main(["demo-data", "--annotations", str(demo / "annotations.json"), "--scenes", "3", "--seed", "2",
                 "--salient-images", "1"]) == 0
    assert main(["ingest", "--annotations", str(demo / "annotations.json"), "--images", str(demo / "images"),
                 "--shard-size", "2", "--shards", str(tmp_path / "ing"), "--manifest", str(tmp_path / "m.json")]) == 0
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["shards"] == ["s00000", "s00001"] and manifest["supervision"] == "boxes"
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "ing/s00000.h5"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    n = sum(1 for a in json.loads((demo / "annotations.json").read_text())["annotations"] if a["image_id"] <= 2)
    assert s["stage"] == "ingest" and s["images"] == 2 and s["instances"] == n and s["status"] == {"kept": n}
    assert main(["inspect", str(tmp_path / "ing/s00000.h5")]) == 0
    text = capsys.readouterr().out
    assert "stage ingest" in text and "by category:" in text and "sha256:" in text
    png = tmp_path / "show.png"
    assert main(["show", str(tmp_path / "ing/s00000.h5"), "--image", "1", "--out", str(png)]) == 0
    drawn, plain = read_image(png), read_image(demo / "images/000001.png")
    assert drawn.shape == (plain.shape[0] * 2, plain.shape[1] * 2, 3)  # small images are shown enlarged
    assert np.any(drawn[::2, ::2] != plain)  # boxes were drawn
    capsys.readouterr()
    gt = str(demo / "annotations.json")
    assert main(["evaluate", "--gt", gt, gt, "--json", "--out", str(tmp_path / "m.json")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["miou"] == 1.0 and json.loads((tmp_path / "m.json").read_text()) == r


def test_errors_are_messages_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    proc = subprocess.run([sys.executable, "-m", "pseudomask", "ingest", "--annotations", str(bad), "--images",
                           str(tmp_path), "--shards", str(tmp_path / "o"), "--manifest", str(tmp_path / "o.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.json: malformed JSON at line 1" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pseudomask", "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a readable HDF5 file" in proc.stderr


def test_show_unknown_image(demo_shard, tmp_path):
    with pytest.raises(Exception, match="no image 999"):
        from pseudomask.commands.show import run
        run(type("A", (), {"file": str(demo_shard), "image": 999, "out": str(tmp_path / "x.png"), "images": None}))


def test_a_stage_command_builds_only_its_own_options():
    """Running one stage's subcommand builds that stage's options only (its job does not import every
    stage's settings module), and parses them as the full parser does."""
    code = ("import sys; from pseudomask.cli import build_parser; "
            "a = build_parser('merge-drop').parse_args(['merge-drop', '--masks', 'm.h5', '--out', 'o.h5']); "
            "b = build_parser().parse_args(['merge-drop', '--masks', 'm.h5', '--out', 'o.h5']); "
            "print(sorted((k, str(v)) for k, v in vars(a).items() if k != 'func') == "
            "sorted((k, str(v)) for k, v in vars(b).items() if k != 'func'), "
            "'pseudomask.mcg.proposals' in sys.modules)")
    lazy = ("import sys; from pseudomask.cli import build_parser; build_parser('merge-drop'); "
            "print('pseudomask.mcg.proposals' in sys.modules)")
    same = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert same == ["True", "True"]  # the full parser imports every stage's settings
    only = subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout.split()
    assert only == ["False"]
