# EEG (brainllm.eeg), when the eeg section is present: each subject's recordings of the
# dataset's stories read from BIDS EEG with mne-bids, preprocessed with MNE (notch,
# band-pass, optional ICA, re-reference, bad channels interpolated, resampled), then
# word-level encoding of every layer and window and a continuous TRF at the layer chosen
# on validation r, per (subject, model), with the stories' features; with the decoding
# section, whole-vocabulary word classification from each word's epoch. Figure per model.


rule ingest_eeg:
    input:
        eeg_sources,
        words=[words_tsv(story) for story in STORIES],
    output:
        f"{RESULTS}/eeg/ingest/sub-{{subject}}/raw.h5",
    params:
        settings=EEG_INGEST,
        dataset=EEG_DATASET,
        stories=STORIES,
    log:
        f"{RESULTS}/logs/eeg/sub-{{subject}}_ingest.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/ingest_eeg.py"


rule preprocess_eeg:
    input:
        f"{RESULTS}/eeg/ingest/sub-{{subject}}/raw.h5",
    output:
        f"{RESULTS}/eeg/preprocess/sub-{{subject}}/eeg.h5",
    params:
        settings=EEG_PREPROCESS,
        dataset=EEG_DATASET,
    log:
        f"{RESULTS}/logs/eeg/sub-{{subject}}_preprocess.log",
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/preprocess_eeg.py"


rule encoding_eeg:
    input:
        unpack(lambda wildcards: eeg_ground_truth()),
        eeg=f"{RESULTS}/eeg/preprocess/sub-{{subject}}/eeg.h5",
        manifests=lambda wildcards: [feature_manifest(wildcards.model, story) for story in STORIES],
        words=[words_tsv(story) for story in STORIES],
    output:
        word_level=eeg_file("{subject}", "{model}", "wordlevel.tsv"),
        trf=eeg_file("{subject}", "{model}", "trf.tsv"),
        identification=eeg_file("{subject}", "{model}", "identification.tsv"),
        trf_weights=eeg_file("{subject}", "{model}", "trf.h5"),
        summary=eeg_file("{subject}", "{model}", "summary.json"),
    params:
        settings=EEG_ENCODING,
        dataset=EEG_DATASET,
        stories=STORIES,
        layers=lambda wildcards: model_layers(wildcards.model),
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/eeg/sub-{{subject}}_model-{{model}}_encoding.log",
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/cpu.yaml"
    priority: LONG_JOB
    script:
        "../scripts/encoding_eeg.py"


rule decoding_words_eeg:
    input:
        eeg=f"{RESULTS}/eeg/preprocess/sub-{{subject}}/eeg.h5",
        summary=eeg_file("{subject}", "{model}", "summary.json"),
        words=[words_tsv(story) for story in STORIES],
        vocabulary=VOCABULARY,
        vocabulary_manifest=vocabulary_manifest("{model}"),
        train_entries=lambda wildcards: [feature_manifest(wildcards.model, story) for story in DATASET["train_stories"]],
    output:
        words=eeg_file("{subject}", "{model}", "words.tsv"),
        vocabulary=eeg_file("{subject}", "{model}", "vocabulary.tsv"),
        summary=eeg_file("{subject}", "{model}", "words.json"),
    params:
        settings=EEG_WORDS,
        words={**DECODING.get("words", {}), "seed": EEG.get("seed", 0)},
        stories=STORIES,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/eeg/sub-{{subject}}_model-{{model}}_words.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/decoding_words_eeg.py"


rule report_eeg:
    input:
        summaries=lambda wildcards: [eeg_file(subject, wildcards.model, "summary.json") for subject in EEG_SUBJECTS],
        word_level=lambda wildcards: [eeg_file(subject, wildcards.model, "wordlevel.tsv") for subject in EEG_SUBJECTS],
        trf=lambda wildcards: [eeg_file(subject, wildcards.model, "trf.h5") for subject in EEG_SUBJECTS],
    output:
        **report_figure(
            f"{REPORT_DIR}/eeg/model-{{model}}",
            "../report/eeg.rst",
            "EEG",
            "Model {model}",
            {"model": "{model}", "figure": "EEG encoding"},
        ),
    params:
        subjects=EEG_SUBJECTS,
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/eeg_model-{{model}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_eeg.py"


REPORT_TARGETS.append(report_eeg_figures)
