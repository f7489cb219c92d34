# Retraining (issue 5): MMDetection Mask R-CNN on the exported pseudo masks (mask_ignore rows out of the mask
# loss only), its predictions, and their COCO / VOC-style metrics. Settings: config `retrain:` (README).

# keys of `retrain:` that are not training settings: changing them must not retrain the model
RETRAIN_OTHER_KEYS = ("enabled", "score_thr", "test_annotations", "test_images", "threads", "mem_mb", "runtime")


rule retrain:
    input:
        train=f"{R}/export/pseudo.json",
        images=config["dataset"]["images"],
    output:
        checkpoint=f"{R}/retrain/latest.pth",
        config=f"{R}/retrain/mask_rcnn.py",
    params:
        settings={k: v for k, v in config["retrain"].items() if k not in RETRAIN_OTHER_KEYS},
        # MMEngine's logs and full checkpoints; an interrupted run of the same config resumes from them
        work_dir=f"{R}/retrain/work",
    log:
        f"{LOGS}/retrain.log",
    threads: config["retrain"].get("threads", 2)
    resources:
        mem_mb=config["retrain"].get("mem_mb", 8000),
        runtime=config["retrain"].get("runtime", 60),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/retrain.py"


rule predict:
    input:
        checkpoint=f"{R}/retrain/latest.pth",
        config=f"{R}/retrain/mask_rcnn.py",
        # the images to predict and their ids: retrain.test_annotations, else the training images
        images=config["retrain"].get("test_images") or config["dataset"]["images"],
        coco=config["retrain"].get("test_annotations") or f"{R}/export/pseudo.json",
    output:
        f"{R}/retrain/predictions.json",
    params:
        score_thr=config["retrain"].get("score_thr", 0.05),
    log:
        f"{LOGS}/predict.log",
    threads: config["retrain"].get("threads", 2)
    resources:
        mem_mb=config["retrain"].get("mem_mb", 8000),
        runtime=config["retrain"].get("runtime", 60),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/predict.py"


rule evaluate_model:
    input:
        predictions=f"{R}/retrain/predictions.json",
        ground_truth=config["retrain"].get("test_annotations") or ground_truth(),
    output:
        f"{R}/evaluate/model.json",
    log:
        f"{LOGS}/evaluate_model.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/evaluate_model.py"
