# Iterative ground truth (Li et al., sec. 3.4): rounds 2 .. retrain.rounds. Round k-1's Mask R-CNN predicts on
# the training images, refine_round turns its detections into round k's pseudo labels (matched to the boxes,
# DenseCRF, clipped to their boxes), which go through merge_drop and export and train round k's model. Round 1
# is the rules of refine.smk and retrain.smk (results/merge_drop, results/export, results/retrain); round k lives
# under results/round<k>/, so a later round reruns without redoing the earlier ones. The round rules run the
# same stages (stages.RULE_ALIASES) with the same config sections; refine_round's section is used by rounds 2.. only.


rule round_predict_train:
    input:
        checkpoint=previous_round("retrain/latest.pth"),
        mmdet_config=previous_round("retrain/mask_rcnn.py"),
        images=config["dataset"]["images"],
        coco=f"{R}/export/pseudo.json",
    output:
        out=this_round("train_predictions.json"),
    params:
        settings=settings("predict"),
    log:
        f"{LOGS}/round{{round}}/predict_train.log",
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule refine_round:
    input:
        predictions=train_predictions,
        masks=previous_round("merge_drop/{shard}.h5"),
    output:
        out=this_round("refine_round/{shard}.h5"),
    params:
        settings=settings("refine_round"),
    log:
        f"{LOGS}/round{{round}}/refine_round/{{shard}}.log",
    threads: res("refine_round", "threads")
    resources:
        mem_mb=res("refine_round", "mem_mb"),
        runtime=res("refine_round", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule round_merge_drop:
    input:
        masks=this_round("refine_round/{shard}.h5"),
        scorer=scorer_model(),
    output:
        out=this_round("merge_drop/{shard}.h5"),
    params:
        settings=settings("merge_drop"),
    log:
        f"{LOGS}/round{{round}}/merge_drop/{{shard}}.log",
    threads: res("merge_drop", "threads")
    resources:
        mem_mb=res("merge_drop", "mem_mb"),
        runtime=res("merge_drop", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule round_export:
    input:
        artifacts=round_shards("merge_drop/{shard}.h5"),
    output:
        out=this_round("export/pseudo.json"),
    params:
        settings=settings("export"),
    log:
        f"{LOGS}/round{{round}}/export.log",
    threads: res("export", "threads")
    resources:
        mem_mb=res("export", "mem_mb"),
        runtime=res("export", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule round_evaluate_masks:
    input:
        pseudo=this_round("export/pseudo.json"),
        ground_truth=ground_truth(),
    output:
        out=this_round("evaluate/pseudo_masks.json"),
    params:
        settings=settings("evaluate_masks"),
    log:
        f"{LOGS}/round{{round}}/evaluate_masks.log",
    threads: res("evaluate_masks", "threads")
    resources:
        mem_mb=res("evaluate_masks", "mem_mb"),
        runtime=res("evaluate_masks", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule round_retrain:
    input:
        annotations=this_round("export/pseudo.json"),
        images=config["dataset"]["images"],
    output:
        checkpoint=this_round("retrain/latest.pth"),
        mmdet_config=this_round("retrain/mask_rcnn.py"),
    params:
        settings=settings("retrain"),
    log:
        f"{LOGS}/round{{round}}/retrain.log",
    threads: res("retrain", "threads")
    resources:
        mem_mb=res("retrain", "mem_mb"),
        runtime=res("retrain", "runtime"),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule round_predict:
    input:
        checkpoint=this_round("retrain/latest.pth"),
        mmdet_config=this_round("retrain/mask_rcnn.py"),
        images=config["workflow"]["test_images"] or config["dataset"]["images"],
        coco=config["workflow"]["test_annotations"] or f"{R}/export/pseudo.json",
    output:
        out=this_round("retrain/predictions.json"),
    params:
        settings=settings("predict"),
    log:
        f"{LOGS}/round{{round}}/predict.log",
    threads: res("predict", "threads")
    resources:
        mem_mb=res("predict", "mem_mb"),
        runtime=res("predict", "runtime"),
        gpu=1,
    conda:
        "../envs/mmdet.yaml"
    script:
        "../scripts/run_stage.py"


rule round_evaluate_model:
    input:
        predictions=this_round("retrain/predictions.json"),
        ground_truth=config["workflow"]["test_annotations"] or ground_truth(),
    output:
        out=this_round("evaluate/model.json"),
    params:
        settings=settings("evaluate_model"),
    log:
        f"{LOGS}/round{{round}}/evaluate_model.log",
    threads: res("evaluate_model", "threads")
    resources:
        mem_mb=res("evaluate_model", "mem_mb"),
        runtime=res("evaluate_model", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
