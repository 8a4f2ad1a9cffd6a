# fMRI preprocessing: confound regression, detrending, trimming and z-scoring per run;
# NaN or constant voxels dropped from every story and from the mask.


rule preprocess:
    input:
        responses=ingested("{subject}"),
        mask=ingest_mask("{subject}"),
    output:
        responses=preprocessed("{subject}"),
        mask=preprocessed_mask("{subject}"),
    params:
        preprocess=config["preprocess"],
        trim_start=DATASET.get("trim_start", 10),
        trim_end=DATASET.get("trim_end", 10),
    log:
        f"{RESULTS}/logs/preprocess/sub-{{subject}}.log",
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/preprocess.py"
