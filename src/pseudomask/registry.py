"""The stage registry: every stage of the pipeline declared once.

A stage is a name (also its config section, its rule, its CLI subcommand with '-' for '_', and the `stage`
attribute of the artifacts it writes), the library function it runs, its settings dataclass, its named inputs
and outputs, whether it runs once per shard, whether it wants a GPU, and its default cluster resources.
The CLI (`pseudomask.cli`), the workflow's generic script (`scripts/run_stage.py`), the config schema and the
configuration docs (`pseudomask.config`) are derived from it, so the two doors run the same code with
the same defaults. A rule names its stage in its params, and takes its threads and resources (with gpu=1
for a GPU stage) from it and the config (rules/common.smk). A training stage (`distributed`) runs as
resources.gpus processes on each of resources.nodes nodes when either is above 1 (pseudomask.launch).

Every stage function has the signature `fn(settings, *, threads, **ports) -> dict`: the settings object, the
number of CPU threads it may use, and one path (or list of paths, or None) per declared port; it returns a
JSON-able summary that the CLI prints and the rule logs.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .launch import launch
from .logs import redirect_output
from .settings import SettingsError, suggest
from .workers import thread_limit


@dataclass(frozen=True)
class Port:
    """A named input or output of a stage: one path, several (`many`), or none (`optional`)."""

    name: str
    help: str
    many: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    run: str                    # "module:function", relative to the pseudomask package
    settings: str               # "module:Class"
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    per_shard: bool = False
    gpu: bool = False
    masks: bool = False         # writes an artifact with one mask per instance (a mask source)
    distributed: bool = False   # trains on resources.gpus x resources.nodes processes (pseudomask.launch)
    resources: Mapping[str, int] = field(default_factory=lambda: {"threads": 1, "mem_mb": 2000, "runtime": 30})

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def module(self) -> str:
        return f"pseudomask.{self.run.split(':')[0]}"

    def settings_class(self) -> type:
        mod, cls = self.settings.split(":")
        return getattr(importlib.import_module(f"pseudomask.{mod}"), cls)

    def function(self) -> Callable[..., dict]:
        mod, fn = self.run.split(":")
        return getattr(importlib.import_module(f"pseudomask.{mod}"), fn)

    def resolve(self, section: Mapping[str, Any] | None = None, given: Mapping[str, Any] | None = None,
                device: str | None = None):
        """The settings this stage runs with: its config section (without `resources`) over the defaults,
        then the profile of the device (`device`, default: the settings' own; e.g. BoxCaseg's short CPU
        training), then options given explicitly."""
        values = {k: v for k, v in (section or {}).items() if k != "resources"}
        s = self.settings_class().from_mapping(values, self.name).for_device(device)
        return s.replace(**given) if given else s

    def __call__(self, settings, *, threads: int = 1, gpus: int = 1, nodes: int = 1, **ports: Any) -> dict:
        """Run the stage; a training stage with `gpus` x `nodes` > 1 runs as that many processes (`threads`
        each), started here (pseudomask.launch)."""
        names = {p.name for p in self.inputs + self.outputs}
        unknown = set(ports) - names
        if unknown:
            raise TypeError(f"stage {self.name}: unknown port(s) {sorted(unknown)}; ports: {sorted(names)}")
        if gpus * nodes > 1 and not self.distributed:
            raise SettingsError(f"stage {self.name} runs as one process; gpus and nodes are for the training "
                                f"stages ({', '.join(s.name for s in STAGES.values() if s.distributed)})")
        for p in self.outputs:  # as Snakemake does for a rule's outputs
            for path in ([] if ports.get(p.name) is None else
                         ports[p.name] if isinstance(ports[p.name], list) else [ports[p.name]]):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        ports = {n: ports.get(n) for n in names}
        if gpus * nodes > 1:
            first = ports[self.outputs[0].name]
            return launch(self.name, settings, threads=threads, ports=ports, gpus=gpus, nodes=nodes,
                          where=Path(first[0] if isinstance(first, list) else first).parent)
        with thread_limit(threads):  # the job's cores, as its rule's `threads:` says
            return self.function()(settings, threads=threads, **ports)


def _p(name: str, help: str, **kw: Any) -> Port:
    return Port(name, help, **kw)


DATASET = _p("shard", "ingested shard (.h5), or a COCO JSON / VOC folder / tags CSV with --images")
IMAGES = _p("images", "image folder of a COCO JSON or tags CSV (a shard knows its own)", optional=True)
OUT = _p("out", "artifact to write (.h5)")
MASKS = _p("masks", "artifact of a mask stage (.h5)")
SHARDS = _p("shards", "ingested shards (.h5), or one COCO JSON with --images", many=True)
SCORER = _p("scorer", "quality model written by scorer-train (.json); overrides the `model` setting", optional=True)
GPU_RESOURCES = {"threads": 2, "mem_mb": 8000, "runtime": 120}
GPU_HOUR = {**GPU_RESOURCES, "runtime": 60}
RUN_RESOURCES = {"threads": 1, "mem_mb": 4000, "runtime": 30}  # a once-per-run stage that reads every shard
PREDICT_IMAGES = _p("images", "image folder")
PREDICT_COCO = _p("coco", "COCO JSON of the images to predict; none: every image file, ids 1.. in name order",
                  optional=True)
RESULTS = _p("out", "COCO results JSON to write")
GROUND_TRUTH = _p("ground_truth", "COCO JSON with true masks")
METRICS = _p("out", "metrics JSON to write")


def detector_predictions(name: str, help: str, run: str, settings: str, models: tuple[Port, ...]) -> Stage:
    """A stage that runs trained detectors (`models`: their weights and configs) over images: COCO results."""
    return Stage(name, help, run, settings, inputs=(*models, PREDICT_IMAGES, PREDICT_COCO), outputs=(RESULTS,),
                 gpu=True, resources=GPU_HOUR)


def detector_evaluation(name: str, help: str, predictions: str) -> Stage:
    """A stage that scores a detector's COCO results against true masks (one function, two doors)."""
    return Stage(name, help, "detection_metrics:run_stage", "mask_metrics:EvaluateSettings",
                 inputs=(_p("predictions", predictions), GROUND_TRUTH), outputs=(METRICS,), resources=RUN_RESOURCES)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("demo_data", "render the synthetic demo dataset (COCO JSON with masks, images, salient set)",
          "demo:run_stage", "demo:DemoDataSettings", inputs=(),
          outputs=(_p("annotations", "COCO JSON to write (its folder also gets images/ and salient/)"),
                   _p("images", "image folder written: <annotations folder>/images", optional=True),
                   _p("salient", "salient-object folder written: <annotations folder>/salient", optional=True),
                   _p("test_annotations", "COCO JSON of the held-out scenes: <annotations folder>/test/annotations.json",
                      optional=True),
                   _p("test_images", "their image folder: <annotations folder>/test/images", optional=True)),
          resources={"threads": 1, "mem_mb": 1000, "runtime": 10}),
    Stage("ingest", "read COCO / VOC / tags input, check it, and split it into shard records (HDF5)",
          "ingest:run_stage", "ingest:IngestSettings",
          inputs=(_p("annotations", "COCO JSON, Pascal VOC folder, or CSV of image,tag"),
                  _p("images", "image folder (not needed for VOC)", optional=True),
                  _p("strong", "true masks of some images (COCO JSON, or a text file of image ids whose masks "
                               "the annotations hold): source gt in every stage", optional=True)),
          outputs=(_p("manifest", "manifest JSON to write (shard names, counts)"),
                   _p("shards", "folder to write the shard records into"))),
    Stage("grabcut", "fast GrabCut from each box (crop, downscale, retry, fallback; deterministic)",
          "grabcut:run_stage", "grabcut:GrabCutSettings", inputs=(DATASET, IMAGES), outputs=(OUT,),
          per_shard=True, masks=True, resources={"threads": 2, "mem_mb": 2000, "runtime": 60}),
    Stage("mcg", "MCG-style proposals per image; per box the proposal with the highest IoU with it",
          "mcg.boxes:run_stage", "mcg.proposals:McgSettings", inputs=(DATASET, IMAGES), outputs=(OUT,),
          per_shard=True, masks=True, resources={"threads": 1, "mem_mb": 2000, "runtime": 60}),
    Stage("agree", "GrabCut ∩ MCG agreement: foreground where both agree, ignore where they differ",
          "agree:run_stage", "agree:AgreeSettings",
          inputs=(_p("grabcut", "grabcut artifact (.h5)"), _p("mcg", "mcg artifact of the same shard (.h5)")),
          outputs=(OUT,), per_shard=True, masks=True),
    Stage("validity", "box-agreement validity: invalid when IoU(box of the mask, given box) is low",
          "validity:run_stage", "validity:ValiditySettings",
          inputs=(MASKS,), outputs=(OUT,), per_shard=True, masks=True),
    Stage("crf", "DenseCRF refinement (DeepLab's parameters) of every mask of a mask artifact, on its box crop",
          "crf:run_stage", "crf:CrfSettings", inputs=(MASKS,), outputs=(OUT,), per_shard=True, masks=True,
          resources={"threads": 2, "mem_mb": 2000, "runtime": 60}),
    Stage("boxcaseg_train", "train BoxCaseg on the boxes and a salient-object folder",
          "boxcaseg.train:run_stage", "boxcaseg.settings:BoxcasegTrainSettings",
          inputs=(SHARDS, IMAGES, _p("salient", "salient-object folder with images/ and masks/")),
          outputs=(_p("model", "checkpoint to write (.pt)"), _p("losses", "loss log to write (.csv)")),
          gpu=True, distributed=True, resources={**GPU_RESOURCES, "runtime": 1440}),
    Stage("boxcaseg", "BoxCaseg mask in every box with a trained checkpoint",
          "boxcaseg.infer:run_stage", "boxcaseg.settings:BoxcasegSettings",
          inputs=(DATASET, IMAGES, _p("model", "checkpoint written by boxcaseg-train")), outputs=(OUT,),
          per_shard=True, gpu=True, masks=True, resources=GPU_RESOURCES),
    Stage("cam_train", "train the tag classifier (CAM + peak stimulation) on image-level tags",
          "cam.train:run_stage", "cam.settings:CamTrainSettings", inputs=(SHARDS, IMAGES),
          outputs=(_p("model", "checkpoint to write (.pt)"),), gpu=True, distributed=True,
          resources={**GPU_RESOURCES, "threads": 2, "runtime": 240}),
    Stage("cam", "CAM peaks of the tagged classes pick proposal masks (WISE); Grad-CAM for stuff",
          "cam.extract:run_stage", "cam.settings:CamSettings",
          inputs=(DATASET, IMAGES, _p("model", "classifier written by cam-train"),
                  _p("proposals", "mcg artifact of the shard (its proposals); none: computed on the fly",
                     optional=True)),
          outputs=(OUT,), per_shard=True, gpu=True, masks=True, resources={**GPU_RESOURCES, "threads": 2}),
    Stage("scorer_train", "train the quality scorer on the strong instances (true masks) of the shards",
          "quality.training:run_stage", "quality.training:ScorerTrainSettings", inputs=(SHARDS, IMAGES),
          outputs=(_p("model", "quality model to write (.json; a .md report beside it)"),),
          resources={"threads": 2, "mem_mb": 4000, "runtime": 120}),
    Stage("select", "per box the best candidate mask (sources, union, ellipse, box) by predicted quality",
          "quality.select:run_stage", "quality.select:SelectSettings",
          inputs=(_p("masks", "artifacts of mask stages of the same shard (.h5), e.g. grabcut mcg agree", many=True),
                  SCORER),
          outputs=(OUT,), per_shard=True, masks=True),
    Stage("merge_drop", "merge overlapping masks (merge_drop.rule) and drop (proxy box IoU and/or quality) "
                        "of a mask artifact",
          "merge_drop:run_stage", "merge_drop:MergeDropSettings",
          inputs=(MASKS, SCORER), outputs=(OUT,), per_shard=True, masks=True),
    Stage("export", "pseudo masks of merge_drop (or any mask) artifacts as one COCO JSON",
          "export:run_stage", "export:ExportSettings",
          inputs=(_p("artifacts", "artifacts (.h5), e.g. every shard of merge_drop", many=True),),
          outputs=(_p("out", "COCO instances JSON to write"),
                   _p("panoptic_json", "COCO panoptic JSON to write with --panoptic (its PNGs: the folder of the same "
                      "name without .json); default: <out>_panoptic.json", optional=True)),
          resources=RUN_RESOURCES),
    Stage("evaluate_masks", "pseudo masks (COCO JSON or artifact) against true masks: mIoU by size and invalid "
          "rates (boxes) or AP^r, ABO, COCO AP (tags); PQ",
          "mask_metrics:run_stage", "mask_metrics:EvaluateSettings",
          inputs=(_p("pseudo", "COCO JSON of pseudo masks or an artifact"),
                  GROUND_TRUTH),
          outputs=(METRICS,), resources=RUN_RESOURCES),
    Stage("retrain", "train MMDetection Mask R-CNN on pseudo masks (mask_ignore rows train box and class only)",
          "retrain.train:run_stage", "retrain.mmdet_config:RetrainSettings",
          inputs=(_p("annotations", "COCO JSON of pseudo masks (mask_ignore honoured)"), _p("images", "image folder of the training JSON"),
                  _p("val", "COCO JSON with true masks, evaluated at the end of training", optional=True),
                  _p("val_images", "image folder of --val", optional=True)),
          outputs=(_p("checkpoint", "weights to write (.pth); MMEngine's run folder is work/ beside it"),
                   _p("mmdet_config", "MMDetection config to write (.py)")),
          gpu=True, distributed=True, resources=GPU_HOUR),
    detector_predictions("predict", "COCO results (RLE masks, boxes, scores) of a trained Mask R-CNN",
                         "retrain.predict:run_stage", "retrain.predict:PredictSettings",
                         (_p("checkpoint", "weights written by retrain"),
                          _p("mmdet_config", "MMDetection config (default: mask_rcnn.py beside the checkpoint)",
                             optional=True))),
    detector_evaluation("evaluate_model", "detector predictions against true masks: COCO AP and VOC-style AP^r, "
                        "ABO", "COCO results JSON"),
    Stage("hybrid_split", "hybrid networks: valid masks train the large-object branch, invalid ones' boxes the small",
          "retrain.hybrid:run_split", "retrain.hybrid:HybridSplitSettings",
          inputs=(_p("annotations", "COCO JSON of pseudo masks (the export)"),
                  _p("validity", "validity artifacts of every shard (.h5): box agreement below its min_iou", many=True),
                  _p("masks", "the artifacts validity checked (.h5): a `fallback` replacement is invalid too",
                     many=True, optional=True)),
          outputs=(_p("large", "COCO JSON of the large-object branch to write (invalid rows mask_ignore)"),
                   _p("small", "COCO JSON of the small-object branch to write (the invalid rows' boxes)"))),
    Stage("retrain_hybrid", "hybrid networks: Mask R-CNN (PAFPN) on the valid masks, Faster R-CNN on the invalid boxes",
          "retrain.hybrid:run_train", "retrain.hybrid:RetrainHybridSettings",
          inputs=(_p("large", "COCO JSON of the large-object branch (hybrid-split)"),
                  _p("small", "COCO JSON of the small-object branch (hybrid-split)"),
                  _p("images", "image folder of the training JSONs")),
          outputs=(_p("large_checkpoint", "Mask R-CNN weights to write (.pth); its run folder is work/ beside it"),
                   _p("large_config", "its MMDetection config to write (.py)"),
                   _p("small_checkpoint", "Faster R-CNN weights to write (.pth); its run folder is work/ beside it"),
                   _p("small_config", "its MMDetection config to write (.py)")),
          gpu=True, distributed=True, resources={"threads": 2, "mem_mb": 8000, "runtime": 120}),
    detector_predictions("predict_hybrid", "hybrid networks: both branches, size fusion at 64x64 px, GrabCut of the "
                         "small detections", "retrain.hybrid:run_predict", "retrain.hybrid:PredictHybridSettings",
                         (_p("large_checkpoint", "Mask R-CNN weights written by retrain-hybrid"),
                          _p("large_config", "its MMDetection config", optional=True),
                          _p("small_checkpoint", "Faster R-CNN weights written by retrain-hybrid"),
                          _p("small_config", "its MMDetection config", optional=True))),
    detector_evaluation("evaluate_hybrid", "hybrid predictions against true masks: COCO AP (by size), AP^r, ABO, "
                        "as evaluate-model", "COCO results JSON of predict-hybrid"),
    Stage("refine_round", "next round's pseudo labels: a model's detections matched to the boxes, DenseCRF, "
          "clipped to their boxes", "rounds:run_stage", "rounds:RefineRoundSettings",
          inputs=(_p("predictions", "COCO results JSON of the previous round's model on the training images"),
                  _p("masks", "the pseudo labels the previous round trained on: its merge_drop artifact of the shard")),
          outputs=(OUT,), per_shard=True, masks=True),
    Stage("annotation_cost", "annotation cost (the paper's Table 1 model) of the run's labels and of full masks",
          "annotation.cost:run_stage", "annotation.cost:AnnotationCostSettings",
          inputs=(SHARDS, IMAGES, _p("strong", "strong file: COCO JSON or list of image ids", optional=True)),
          outputs=(_p("out", "cost JSON to write"),)),
    Stage("choose_images", "images for a person to annotate: mean predicted quality closest to beta, lowest or random",
          "annotation.choose:run_stage", "annotation.choose:ChooseImagesSettings",
          inputs=(_p("masks", "artifacts of a mask stage with quality, e.g. every shard of merge_drop", many=True),
                  _p("strong", "strong file: COCO JSON or list of image ids (never chosen)", optional=True),
                  _p("cost", "annotation-cost JSON whose model prices the images (default: the paper's)",
                     optional=True)),
          outputs=(_p("out", "choice JSON to write (chosen image ids, scores, budget)"),)),
    Stage("annotation_job", "COCO job of the chosen images, the pseudo masks as polygon pre-annotations",
          "annotation.job:run_stage", "annotation.job:AnnotationJobSettings",
          inputs=(_p("choice", "choice JSON written by choose-images"),
                  _p("masks", "artifacts of the mask stage the images were chosen from", many=True)),
          outputs=(_p("out", "COCO job JSON to write"),
                   _p("image_list", "text file to write: the job's image paths, one a line", optional=True))),
    Stage("yolo_export", "YOLO-seg folder of the whole dataset: images/, labels/*.txt polygons, data.yaml",
          "annotation.yolo:run_stage", "annotation.yolo:YoloExportSettings",
          inputs=(_p("masks", "artifacts of a mask stage, e.g. every shard of merge_drop", many=True),),
          outputs=(_p("out", "folder to write"),)),
    Stage("take_back", "an annotator's corrected COCO file as the strong file (dataset ids), conflicts reported",
          "annotation.take_back:run_stage", "annotation.take_back:TakeBackSettings",
          inputs=(_p("corrections", "COCO JSON with masks exported by the annotation tool"), SHARDS, IMAGES,
                  _p("job", "the job JSON the corrections answer (finds deleted instances and untouched box "
                            "outlines)", optional=True)),
          outputs=(_p("out", "strong COCO JSON to write"), _p("report", "conflict report JSON to write"))),
    Stage("report", "self-contained HTML report: counts, reasons, drop curve, quality, overlays, provenance",
          "report:run_stage", "report:ReportSettings",
          inputs=(_p("artifacts", "artifacts (.h5) or folders of them", many=True),
                  _p("ground_truth", "COCO JSON with true masks", optional=True),
                  _p("cost", "annotation cost JSON written by annotation-cost", optional=True),
                  _p("choice", "images chosen for annotation (JSON written by choose-images)", optional=True),
                  _p("evaluations", "metrics JSONs of evaluate-masks / evaluate-model / evaluate-hybrid (every "
                                    "round's)", many=True, optional=True)),
          outputs=(_p("out", "HTML file to write"),), resources=RUN_RESOURCES),
)}


def run_rule(smk: Any) -> dict:
    """Run the stage a Snakemake rule names in its params (`params.stage`, with `params.settings`) from the
    rule's `snakemake` object (input, output, threads, log), logging to the rule's log; the rule's input and
    output names must be the stage's ports."""
    stage = get(smk.params.stage)
    names = {p.name for p in stage.inputs + stage.outputs}
    given = set(smk.input.keys()) | set(smk.output.keys())
    if given - names:
        raise TypeError(f"rule {smk.rule}: input/output names {sorted(given - names)} are not ports of the stage "
                        f"{stage.name} (ports: {sorted(names)})")
    ports: dict[str, Any] = {}
    for p in stage.inputs + stage.outputs:
        files = smk.input if p in stage.inputs else smk.output
        value = files.get(p.name) if p.name in files.keys() else None
        if p.many:
            value = [str(v) for v in value] if value else None
        elif value is not None and not isinstance(value, str):
            value = str(value[0]) if len(value) else None
        ports[p.name] = value or None
    gpus, nodes = int(smk.resources.get("nproc_per_node", 1)), int(smk.resources.get("nodes", 1))
    with redirect_output(smk.log[0] if smk.log else None):
        summary = stage(stage.resolve(smk.params.settings), threads=max(1, smk.threads // gpus), gpus=gpus,
                        nodes=nodes, **ports)
        print(json.dumps(summary, default=str))
    return summary


def get(name: str) -> Stage:
    try:
        return STAGES[name.replace("-", "_")]
    except KeyError:
        raise SettingsError(f"no stage {name!r}{suggest(name, STAGES)}; stages: {', '.join(STAGES)}") from None


def mask_stages() -> tuple[str, ...]:
    """Names of the stages whose artifacts hold one mask per instance, in pipeline order."""
    return tuple(s.name for s in STAGES.values() if s.masks)
