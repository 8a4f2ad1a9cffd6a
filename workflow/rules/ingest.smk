# Ingestion: story words and per-subject responses, mask and mean image from the
# configured dataset (layouts ds003020, bids, wordcsv; see docs/outputs.md); an EEG-only
# dataset's words from its recordings' events (the EEG itself: eeg.smk). Inputs: every
# dataset file a rule reads (common.smk, brainllm.sources), so an edited one reruns its jobs.


rule ingest_words:
    input:
        story_sources,
    output:
        words_tsv("{story}"),
    params:
        dataset=DATASET,
        **({"eeg": EEG_WORD_SOURCE} if EEG_ONLY else {}),
    log:
        f"{RESULTS}/logs/ingest/words_{{story}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/ingest_words.py"


rule ingest:
    input:
        subject_sources,
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
    priority: UNBLOCKS
    script:
        "../scripts/ingest.py"


rule ingest_atlas:
    input:
        atlas_sources,
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
