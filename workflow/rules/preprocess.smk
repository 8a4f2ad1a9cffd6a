# fMRI preprocessing: confound regression, detrending, trimming and z-scoring per run;
# NaN or constant voxels dropped from every story and from the mask. trimming.tsv
# records what trimming removed per story and warns (log, report) when a run loses more
# than 20 % of its TRs or a trim cuts into the stimulus. words.tsv is ancient(): only the
# check reads it.


rule preprocess:
    input:
        responses=ingested("{subject}"),
        mask=ingest_mask("{subject}"),
        words=[ancient(words_tsv(story)) for story in STORIES],
    output:
        responses=preprocessed("{subject}"),
        mask=preprocessed_mask("{subject}"),
        trimming=trimming_checks("{subject}"),
    params:
        preprocess=config["preprocess"],
        trim_start=DATASET["trim_start"],
        trim_end=DATASET["trim_end"],
        stories=STORIES,
    log:
        f"{RESULTS}/logs/preprocess/sub-{{subject}}.log",
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/preprocess.py"
