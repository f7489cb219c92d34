# Retraining: MMDetection Mask R-CNN on the exported pseudo masks (mask_ignore rows out of the mask loss
# only), its predictions, and their COCO / VOC-style metrics. MMEngine's run folder is results/retrain/work:
# an interrupted run of the same config resumes from it.


rule retrain:
    input:
        annotations=f"{R}/export/pseudo.json",
        images=config["dataset"]["images"],
    output:
        checkpoint=f"{R}/retrain/latest.pth",
        mmdet_config=f"{R}/retrain/mask_rcnn.py",
    params:
        settings=settings("retrain"),
    log:
        f"{LOGS}/retrain.log",
    threads: res("retrain", "threads")
    resources:
        mem_mb=res("retrain", "mem_mb"),
        runtime=res("retrain", "runtime"),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule predict:
    input:
        checkpoint=f"{R}/retrain/latest.pth",
        mmdet_config=f"{R}/retrain/mask_rcnn.py",
        images=config["workflow"]["test_images"] or config["dataset"]["images"],
        coco=test_annotations(),
    output:
        out=f"{R}/retrain/predictions.json",
    params:
        settings=settings("predict"),
    log:
        f"{LOGS}/predict.log",
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule evaluate_model:
    input:
        predictions=f"{R}/retrain/predictions.json",
        ground_truth=config["workflow"]["test_annotations"] or ground_truth(),
    output:
        out=f"{R}/evaluate/model.json",
    params:
        settings=settings("evaluate_model"),
    log:
        f"{LOGS}/evaluate_model.log",
    threads: res("evaluate_model", "threads")
    resources:
        mem_mb=res("evaluate_model", "mem_mb"),
        runtime=res("evaluate_model", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
