"""Memory follows the boxes' pixels: a dense scene and a large image through the mask stages and export in a
subprocess, whose peak RSS must stay far below what (K, H, W) stacks of the image's masks would take."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# one process runs every stage by the CLI's entry point
CHAIN = """
import sys
from pseudomask.cli import main
d = sys.argv[1]
calls = [["ingest", "--annotations", f"{d}/ann.json", "--images", f"{d}/images", "--manifest", f"{d}/m.json",
          "--shards", f"{d}/shards"]]
shard = f"{d}/shards/s00000.h5"
for stage, ports in (("grabcut", ["--shard", shard]), ("mcg", ["--shard", shard]),
                     ("agree", ["--grabcut", f"{d}/grabcut.h5", "--mcg", f"{d}/mcg.h5"]),
                     ("validity", ["--masks", f"{d}/grabcut.h5"]), ("merge-drop", ["--masks", f"{d}/validity.h5"])):
    calls.append([stage, "--threads", "1", *ports, "--out", f"{d}/{stage}.h5"])
calls.append(["export", "--artifacts", f"{d}/merge-drop.h5", "--out", f"{d}/export.json"])
for argv in calls:
    assert main(argv) == 0, argv
"""

# a small fresh process runs CHAIN as its child and prints the child's peak RSS (bytes): a process forked from
# pytest itself would start its peak at pytest's size
WRAP = """
import json, resource, subprocess, sys
p = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(json.dumps({"rc": p.returncode, "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def scene(d: Path, width: int, height: int, boxes: int) -> None:
    """A noisy image with `boxes` filled rectangles on a grid, and a COCO JSON of their boxes."""
    rng = np.random.default_rng(0)
    img = rng.integers(80, 120, (height, width, 3), dtype=np.uint8)
    cols = int(np.ceil(np.sqrt(boxes * width / height)))
    cw, ch = width / cols, height / int(np.ceil(boxes / cols))
    anns = []
    for k in range(boxes):
        x0, y0 = int((k % cols + 0.2) * cw), int((k // cols + 0.2) * ch)
        x1, y1 = int((k % cols + 0.9) * cw), int((k // cols + 0.9) * ch)
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(int(c) for c in rng.integers(150, 256, 3)), -1)
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1 + k % 2, "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1]})
    (d / "images").mkdir(parents=True)
    cv2.imwrite(str(d / "images" / "scene.png"), img)
    (d / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "scene.png", "width": width, "height": height}], "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))


@pytest.mark.parametrize("width,height,boxes,limit_gb", [(1280, 960, 400, 0.8), (4000, 3000, 12, 1.1)])
def test_dense_scene_and_large_image_in_bounded_memory(tmp_path, width, height, boxes, limit_gb):
    """(K, H, W) stacks would take K x H x W bytes per copy (0.5 GB for 400 boxes at 1280x960, several copies
    in agree; about 2 GB in agree at 4000x3000): the whole chain must stay under `limit_gb`."""
    scene(tmp_path, width, height, boxes)
    env = {**os.environ, "PYTHONPATH": str(SRC), "PSEUDOMASK_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", WRAP, CHAIN, str(tmp_path)], env=env, capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and got["rc"] == 0, out.stderr[-3000:]
    rss = got["rss"]
    assert rss < limit_gb * 1e9, f"peak RSS {rss / 1e9:.2f} GB on {width}x{height} with {boxes} boxes"
    coco = json.loads((tmp_path / "export.json").read_text())
    assert len(coco["annotations"]) == boxes
    kept = [a for a in coco["annotations"] if a["status"] == "kept"]
    assert len(kept) > boxes // 2 and all(a["area"] > 0 for a in kept)
