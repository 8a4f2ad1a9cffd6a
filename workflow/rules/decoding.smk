# Decoding: reading the brain out from the fitted encoding models. Semantic
# identification of held-out segments per (subject, model), every layer, every segment
# length in decoding.identification.segment_trs; voxels chosen on validation r.


rule decoding_identification:
    input:
        unpack(layer_predictions),
        scores=lambda wildcards: report_encoding_layers(wildcards.subject, wildcards.model, "scores.tsv"),
    output:
        tsv=decoding_file("{subject}", "{model}", "identification.tsv"),
    params:
        layers=lambda wildcards: model_layers(wildcards.model),
        test_stories=DATASET["test_stories"],
        settings={**DECODING.get("identification", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/decoding/sub-{{subject}}_model-{{model}}_identification.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/decoding_identification.py"


REPORT_TARGETS.append(report_decoding_figures)


rule report_identification:
    input:
        identification=lambda wildcards: decoding_targets(),
        contrastive=lambda wildcards: contrastive_decoding_targets("contrastive-identification.tsv"),
        layers=lambda wildcards: [encoding_file(s, m, "layers.tsv") for s in SUBJECTS for m in config["models"]],
    output:
        **report_figure(
            f"{REPORT_DIR}/decoding/identification",
            "../report/identification.rst",
            "Decoding",
            "All subjects",
            {"figure": "semantic identification"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/identification.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_identification.py"


# Through the frozen contrastive runs (contrastive.layers): identification of held-out
# segments by cosine in the shared space, and whole-vocabulary word classification. The
# vocabulary's text features are a feature-store entry per model (each word read alone).


rule decoding_vocabulary:
    input:
        words=[words_tsv(story) for story in STORIES],
        files=DECODING.get("words", {}).get("vocabulary", {}).get("files", []),
    output:
        VOCABULARY,
    params:
        stories=STORIES,
        settings=DECODING.get("words", {}),
    log:
        f"{RESULTS}/logs/decoding/vocabulary.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/decoding_vocabulary.py"


rule features_vocabulary:
    input:
        words=VOCABULARY,
    output:
        vocabulary_manifest("{model}"),
    params:
        model_cfg=lambda wildcards: config["models"][wildcards.model],
        store=FEATURE_STORE,
    log:
        f"{RESULTS}/logs/features/model-{{model}}/vocabulary.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    priority: LONG_JOB
    script:
        "../scripts/features_vocabulary.py"


rule decoding_contrastive:
    input:
        config=f"{CONTRASTIVE_OUT}/layer-{{layer}}/config.json",
        weights=f"{CONTRASTIVE_OUT}/layer-{{layer}}/model.safetensors",
        features=aligned_features("{subject}", "{model}"),
        responses=preprocessed("{subject}"),
        words=[words_tsv(story) for story in contrastive_decoding_stories()],
        vocabulary=VOCABULARY,
        vocabulary_manifest=vocabulary_manifest("{model}"),
        train_entries=lambda wildcards: [feature_manifest(wildcards.model, story) for story in DATASET["train_stories"]],
    output:
        **{
            suffix.replace("-", "_").replace(".", "_"): contrastive_decoding_file("{subject}", "{model}", "{layer}", suffix)
            for suffix in CONTRASTIVE_DECODING_SUFFIXES
        },
    params:
        stories=contrastive_decoding_stories(),
        train_stories=DATASET["train_stories"],
        identification={**DECODING.get("identification", {}), "seed": ENCODING.get("seed", 0)},
        words={**DECODING.get("words", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/decoding/sub-{{subject}}_model-{{model}}_layer-{{layer}}_contrastive.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/decoding_contrastive.py"


# Through the LoRA runs (BrainLLM): the same decoding, the text side the adapted LLM (each
# vocabulary word read alone by it), per (subject, model).


rule decoding_lora:
    input:
        config=f"{CONTRASTIVE_OUT}/lora/config.json",
        towers=f"{CONTRASTIVE_OUT}/lora/towers.safetensors",
        adapter=f"{CONTRASTIVE_OUT}/lora/adapter/adapter_model.safetensors",
        responses=preprocessed("{subject}"),
        words=[words_tsv(story) for story in contrastive_decoding_stories()],
        vocabulary=VOCABULARY,
    output:
        **{
            suffix.replace("-", "_").replace(".", "_"): lora_decoding_file("{subject}", "{model}", suffix)
            for suffix in CONTRASTIVE_DECODING_SUFFIXES
        },
    params:
        stories=contrastive_decoding_stories(),
        identification={**DECODING.get("identification", {}), "seed": ENCODING.get("seed", 0)},
        words={**DECODING.get("words", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/decoding/sub-{{subject}}_model-{{model}}_lora.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/gpu.yaml"
    priority: LONG_JOB
    script:
        "../scripts/decoding_lora.py"


# A ridge decoder from the responses after each word to its text features (no contrastive
# run needed), per (subject, model), at the layer and voxels the encoding chose on validation r.


rule decoding_words_ridge:
    input:
        responses=preprocessed("{subject}"),
        layers=encoding_file("{subject}", "{model}", "layers.tsv"),
        scores=lambda wildcards: report_encoding_layers(wildcards.subject, wildcards.model, "scores.tsv"),
        words=[words_tsv(story) for story in STORIES],
        vocabulary=VOCABULARY,
        vocabulary_manifest=vocabulary_manifest("{model}"),
        train_entries=lambda wildcards: [feature_manifest(wildcards.model, story) for story in DATASET["train_stories"]],
    output:
        words=ridge_words_file("{subject}", "{model}", "words.tsv"),
        vocabulary=ridge_words_file("{subject}", "{model}", "vocabulary.tsv"),
        summary=ridge_words_file("{subject}", "{model}", "words.json"),
    params:
        layers=lambda wildcards: model_layers(wildcards.model),
        stories=STORIES,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
        delays=ENCODING["delays"],
        alphas=ENCODING.get("alphas", {}),
        block_trs=ENCODING.get("significance", {}).get("block_trs", 20),
        ridge=RIDGE_WORDS,
        words={**DECODING.get("words", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/decoding/sub-{{subject}}_model-{{model}}_words_ridge.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/decoding_words_ridge.py"


rule report_word_classification:
    input:
        summaries=lambda wildcards: word_classification_runs("words.json"),
        words=lambda wildcards: word_classification_runs("words.tsv"),
        vocabularies=lambda wildcards: word_classification_runs("vocabulary.tsv"),
    output:
        **report_figure(
            f"{REPORT_DIR}/decoding/word_classification",
            "../report/word_classification.rst",
            "Decoding",
            "All subjects",
            {"figure": "word classification"},
        ),
        tables=[
            report(path, caption="../report/vocabulary_table.rst", category="Decoding", subcategory="Vocabulary tables",
                   labels={"table": os.path.basename(path)})
            for path in vocabulary_tables()
        ],
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/word_classification.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_word_classification.py"


# Annotated segments (decoding.labels: emotion categories, valence, ...) decoded per subject
# from the responses, cross-validated by story. The annotations are the user's table, or
# built per subject from its events files or from the words through emotion lexicons.


rule decoding_annotations:
    input:
        annotation_sources,
    output:
        table=label_file("{subject}", "annotations.tsv"),
        sidecar=label_file("{subject}", "annotations.json"),
    params:
        dataset=DATASET,
        stories=STORIES,
        settings=DECODING.get("labels", {}),
    log:
        f"{RESULTS}/logs/decoding/sub-{{subject}}_annotations.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/decoding_annotations.py"


rule decoding_labels:
    input:
        responses=preprocessed("{subject}"),
        table=label_table_input,
    output:
        **{suffix.removesuffix(".tsv"): label_file("{subject}", suffix) for suffix in LABEL_SUFFIXES},
    params:
        stories=STORIES,
        settings=lambda wildcards: {**DECODING.get("labels", {}), "table": label_table(wildcards.subject), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/decoding/sub-{{subject}}_labels.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/decoding_labels.py"


rule report_labels:
    input:
        scores=lambda wildcards: label_targets(),
        confusion=lambda wildcards: label_targets("labels_confusion.tsv"),
        predictions=lambda wildcards: label_targets("labels_predictions.tsv"),
    output:
        **report_figure(
            f"{REPORT_DIR}/decoding/labels",
            "../report/labels.rst",
            "Decoding",
            "All subjects",
            {"figure": "label decoding"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/labels.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_labels.py"
