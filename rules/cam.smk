# CAM peaks (issue 7): the image-level-tags entry point (WISE / PRM; Grad-CAM for stuff classes as in Li et al.).
# A tag classifier is trained on all shards, then per shard each tagged class's peaks pick MCG proposals.
# GPU stages: they declare gpu=1 for cluster profiles and run on CPU when there is none (device: auto).


rule cam_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
    output:
        model=f"{R}/cam/model.pt",
    params:
        # only the training keys: changing a peak setting must not retrain the classifier
        cam={
            k: config["cam"][k]
            for k in "backbone backbone_checkpoint iters batch_size lr optimizer weight_decay input_size window levels seed save_every workers".split()
        },
    log:
        f"{LOGS}/cam_train.log",
    threads: config["cam"]["threads"]
    resources:
        mem_mb=config["cam"]["mem_mb"],
        runtime=config["cam"]["train_runtime"],
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/cam_train.py"


rule cam_peaks:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
        model=f"{R}/cam/model.pt",
        proposals=f"{R}/mcg/{{shard}}.h5",
    output:
        f"{R}/cam/{{shard}}.h5",
    wildcard_constraints:
        shard=r"[^/.]+",
    params:
        cam={
            k: config["cam"][k]
            for k in "select seed peak_threshold max_peaks stuff_classes stuff_threshold".split()
        },
    log:
        f"{LOGS}/cam_peaks/{{shard}}.log",
    threads: config["cam"]["threads"]
    resources:
        mem_mb=config["cam"]["mem_mb"],
        runtime=config["cam"]["peaks_runtime"],
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/cam_peaks.py"
