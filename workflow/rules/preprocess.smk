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
        trim_start=DATASET["trim_start"],
        trim_end=DATASET["trim_end"],
    log:
        f"{RESULTS}/logs/preprocess/sub-{{subject}}.log",
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/preprocess.py"
