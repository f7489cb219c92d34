"""The `pseudomask` CLI's tools besides the stages: init, inspect, show, evaluate.

Their options are declared here and their code is `run(args)` in `commands/<tool>.py`, imported only when
that tool runs, so that `pseudomask --help` and a stage's job do not import the tools' dependencies.
"""

from __future__ import annotations

import importlib
from typing import Callable


def _runner(tool: str) -> Callable[..., int]:
    def run(args) -> int:
        # imported here, not at the top: only the tool that runs is imported (CLI start-up time)
        return importlib.import_module(f"{__name__}.{tool}").run(args)

    return run


def register(sub) -> None:
    """Add the tools' subcommands to the CLI's subparsers."""
    p = sub.add_parser("evaluate", help="score pseudo masks (artifact or COCO JSON), panoptic output or detector "
                                        "predictions against GT")
    p.add_argument("pred", help="artifact .h5, COCO dataset JSON of pseudo masks, COCO panoptic JSON (PNGs in the "
                                "folder of the same name without .json), or COCO results list")
    p.add_argument("--gt", required=True, help="COCO instances JSON with true masks, or COCO panoptic JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.set_defaults(func=_runner("evaluate"))

    p = sub.add_parser("init", help="check a dataset and write a complete config.yaml for it (every key with "
                                    "its help as a comment)")
    p.add_argument("--annotations", required=True, help="COCO JSON, Pascal VOC folder, or CSV of image,tag")
    p.add_argument("--images", required=True, help="image folder (for VOC: the folder of JPEGImages)")
    p.add_argument("--ground-truth", default="", help="COCO JSON with true masks, for evaluation only")
    p.add_argument("--strong", default="", help="true masks of some images: COCO JSON, or a text file of image ids "
                                                "(mixed supervision; dataset.strong)")
    p.add_argument("--out", default="config.yaml", help="config file to write (default: config.yaml)")
    p.add_argument("--supervision", choices=("boxes", "tags"),
                   help="default: boxes if the annotations have boxes, else tags")
    p.add_argument("--salient", default="", help="DUTS-style images/ + masks/ folder for BoxCaseg "
                                                 "(none: BoxCaseg is off)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_runner("init"))

    p = sub.add_parser("inspect", help="summarise an HDF5 artifact: provenance, counts by status and category, sizes")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_runner("inspect"))

    p = sub.add_parser("show", help="draw one image of an artifact with its boxes, masks and ignore regions")
    p.add_argument("file")
    p.add_argument("--image", type=int, required=True, help="image id")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--images", help="image folder (default: the one recorded in the artifact)")
    p.set_defaults(func=_runner("show"))
