# Iterative ground truth (Li et al., sec. 3.4): rounds 2 .. retrain.rounds. Round k-1's Mask R-CNN predicts on
# the training images, refine_round turns its detections into round k's pseudo labels (matched to the boxes,
# DenseCRF, clipped to their boxes), which go through merge_drop and export and train round k's model. Round 1
# is the rules of refine.smk and retrain.smk (results/merge_drop, results/export, results/retrain); round k lives
# under results/round<k>/, so a later round reruns without redoing the earlier ones. The other round rules are
# `use rule` of round 1's: the same stage, settings, threads and resources (config sections), with the round's
# input, output and log; refine_round's section is used by rounds 2.. only.


use rule predict as round_predict_train with:
    input:
        checkpoint=previous_round("retrain/latest.pth"),
        mmdet_config=previous_round("retrain/mask_rcnn.py"),
        images=config["dataset"]["images"],
        coco=f"{R}/export/pseudo.json",
    output:
        out=this_round("train_predictions.json"),
    log:
        f"{LOGS}/round{{round}}/predict_train.log",


rule refine_round:
    input:
        predictions=train_predictions,
        masks=previous_round("merge_drop/{shard}.h5"),
    output:
        out=this_round("refine_round/{shard}.h5"),
    params:
        **stage_params("refine_round"),
    log:
        f"{LOGS}/round{{round}}/refine_round/{{shard}}.log",
    threads: stage_threads("refine_round")
    resources:
        **stage_resources("refine_round"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


use rule merge_drop as round_merge_drop with:
    input:
        masks=this_round("refine_round/{shard}.h5"),
        scorer=scorer_model(),
    output:
        out=this_round("merge_drop/{shard}.h5"),
    log:
        f"{LOGS}/round{{round}}/merge_drop/{{shard}}.log",


use rule export as round_export with:
    input:
        artifacts=round_shards("merge_drop/{shard}.h5"),
    output:
        out=this_round("export/pseudo.json"),
    log:
        f"{LOGS}/round{{round}}/export.log",


use rule evaluate_masks as round_evaluate_masks with:
    input:
        pseudo=this_round("export/pseudo.json"),
        ground_truth=ground_truth(),
    output:
        out=this_round("evaluate/pseudo_masks.json"),
    log:
        f"{LOGS}/round{{round}}/evaluate_masks.log",


use rule retrain as round_retrain with:
    input:
        annotations=this_round("export/pseudo.json"),
        images=config["dataset"]["images"],
    output:
        checkpoint=this_round("retrain/latest.pth"),
        mmdet_config=this_round("retrain/mask_rcnn.py"),
    log:
        f"{LOGS}/round{{round}}/retrain.log",


use rule predict as round_predict with:
    input:
        checkpoint=this_round("retrain/latest.pth"),
        mmdet_config=this_round("retrain/mask_rcnn.py"),
        images=config["workflow"]["test_images"] or config["dataset"]["images"],
        coco=config["workflow"]["test_annotations"] or f"{R}/export/pseudo.json",
    output:
        out=this_round("retrain/predictions.json"),
    log:
        f"{LOGS}/round{{round}}/predict.log",


use rule evaluate_model as round_evaluate_model with:
    input:
        predictions=this_round("retrain/predictions.json"),
        ground_truth=config["workflow"]["test_annotations"] or ground_truth(),
    output:
        out=this_round("evaluate/model.json"),
    log:
        f"{LOGS}/round{{round}}/evaluate_model.log",
