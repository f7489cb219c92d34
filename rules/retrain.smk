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
        **stage_params("retrain"),
    log:
        f"{LOGS}/retrain.log",
    threads: stage_threads("retrain")
    resources:
        **stage_resources("retrain"),
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
        **stage_params("predict"),
    log:
        f"{LOGS}/predict.log",
    threads: stage_threads("predict")
    resources:
        **stage_resources("predict"),
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
        **stage_params("evaluate_model"),
    log:
        f"{LOGS}/evaluate_model.log",
    threads: stage_threads("evaluate_model")
    resources:
        **stage_resources("evaluate_model"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
