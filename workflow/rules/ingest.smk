# Ingestion: story words and per-subject responses, mask and mean image from the
# configured dataset (layouts ds003020, bids, wordcsv; see docs/outputs.md).


rule ingest_words:
    input:
        dataset_ready(),
    output:
        words_tsv("{story}"),
    params:
        dataset=DATASET,
    log:
        f"{RESULTS}/logs/ingest/words_{{story}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/ingest_words.py"


rule ingest:
    input:
        dataset_ready(),
    output:
        responses=ingested("{subject}"),
        mask=ingest_mask("{subject}"),
        mean=f"{RESULTS}/ingest/sub-{{subject}}/mean.nii.gz",
    params:
        dataset=DATASET,
        confounds=config["preprocess"].get("confounds", []),
    log:
        f"{RESULTS}/logs/ingest/sub-{{subject}}.log",
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/ingest.py"


rule ingest_atlas:
    input:
        dataset_ready(),
        mask=ingest_mask("{subject}"),
    output:
        atlas=f"{RESULTS}/ingest/sub-{{subject}}/atlas.nii.gz",
        labels=f"{RESULTS}/ingest/sub-{{subject}}/atlas.tsv",
    params:
        dataset=DATASET,
    log:
        f"{RESULTS}/logs/ingest/atlas_sub-{{subject}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/ingest_atlas.py"
