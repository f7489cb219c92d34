# The hybrid networks recipe (retrain.recipe: hybrid): the export split by validity into the large-object
# branch (every instance, invalid masks mask_ignore) and the small-object branch (the invalid boxes), Mask R-CNN
# (PAFPN) and Faster R-CNN trained on them, their detections fused by size (GrabCut for the small ones), and
# the fused predictions' metrics. Everything under results/hybrid/.


rule hybrid_split:
    input:
        annotations=f"{R}/export/pseudo.json",
        validity=per_shard(mask_artifact("validity")),
        masks=per_shard(mask_artifact(config["workflow"]["validity_input"])),
    output:
        large=f"{R}/hybrid/large.json",
        small=f"{R}/hybrid/small.json",
    params:
        **stage_params("hybrid_split"),
    log:
        f"{LOGS}/hybrid_split.log",
    threads: stage_threads("hybrid_split")
    resources:
        **stage_resources("hybrid_split"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule retrain_hybrid:
    input:
        large=f"{R}/hybrid/large.json",
        small=f"{R}/hybrid/small.json",
        images=config["dataset"]["images"],
    output:
        large_checkpoint=f"{R}/hybrid/large/latest.pth",
        large_config=f"{R}/hybrid/large/mask_rcnn.py",
        small_checkpoint=f"{R}/hybrid/small/latest.pth",
        small_config=f"{R}/hybrid/small/faster_rcnn.py",
    params:
        **stage_params("retrain_hybrid"),
    log:
        f"{LOGS}/retrain_hybrid.log",
    threads: stage_threads("retrain_hybrid")
    resources:
        **stage_resources("retrain_hybrid"),
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule predict_hybrid:
    input:
        large_checkpoint=f"{R}/hybrid/large/latest.pth",
        large_config=f"{R}/hybrid/large/mask_rcnn.py",
        small_checkpoint=f"{R}/hybrid/small/latest.pth",
        small_config=f"{R}/hybrid/small/faster_rcnn.py",
        images=config["workflow"]["test_images"] or config["dataset"]["images"],
        coco=test_annotations(),
    output:
        out=f"{R}/hybrid/predictions.json",
    params:
        **stage_params("predict_hybrid"),
    log:
        f"{LOGS}/predict_hybrid.log",
    threads: stage_threads("predict_hybrid")
    resources:
        **stage_resources("predict_hybrid"),
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule evaluate_hybrid:
    input:
        predictions=f"{R}/hybrid/predictions.json",
        ground_truth=config["workflow"]["test_annotations"] or ground_truth(),
    output:
        out=f"{R}/evaluate/hybrid.json",
    params:
        **stage_params("evaluate_hybrid"),
    log:
        f"{LOGS}/evaluate_hybrid.log",
    threads: stage_threads("evaluate_hybrid")
    resources:
        **stage_resources("evaluate_hybrid"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
