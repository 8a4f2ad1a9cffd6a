# Contrastive brain↔text training (brainllm.contrastive, brainllm.brainlora,
# brainllm.contrastive_shared); outputs in docs/outputs.md. `contrastive`: frozen LLM
# features per (subject, model, layer); with contrastive.voxel_fraction it also reads the encoding
# scores at its layer, with contrastive.words the vocabulary and the training stories' words.
# `contrastive_lora`: LoRA adapters on the LLM per (subject, model); `features_tuned`
# extracts (or reuses) the store entries of the tuned model <model>tuned<subject> through the
# adapter, the usual align/encoding rules score it, and `contrastive_compare` sets its
# held-out encoding r beside the base model's. Both training rules resume from their
# checkpoint/ directory (not a declared output, so a failed job keeps it); a finished
# job removes it unless contrastive.keep_checkpoints. `contrastive_shared` (with
# group.shared_encoder): one model across subjects, each through its own input layer, per
# model; a held-out subject gets only a new input layer; every subject scored on the test
# story beside its single-subject run.


rule contrastive:
    input:
        unpack(contrastive_run_inputs),
        features=aligned_features("{subject}", "{model}"),
        responses=preprocessed("{subject}"),
    output:
        curves=f"{CONTRASTIVE_OUT}/layer-{{layer}}/curves.tsv",
        config=f"{CONTRASTIVE_OUT}/layer-{{layer}}/config.json",
        weights=f"{CONTRASTIVE_OUT}/layer-{{layer}}/model.safetensors",
        retrieval=f"{CONTRASTIVE_OUT}/layer-{{layer}}/retrieval.json",
    params:
        checkpoint_dir=lambda wildcards, output: os.path.join(os.path.dirname(output.retrieval), "checkpoint"),
        settings=brainllm_contrastive.frozen_section(CONTRASTIVE),
        keep_checkpoints=CONTRASTIVE_KEEP_CHECKPOINTS,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
        embedding=DECODING.get("words", {}).get("embedding", "mapped"),
    log:
        f"{RESULTS}/logs/contrastive/sub-{{subject}}_model-{{model}}_layer-{{layer}}.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/contrastive.py"


rule contrastive_lora:
    input:
        responses=preprocessed("{subject}"),
        words=[words_tsv(story) for story in STORIES],
    output:
        adapter_weights=f"{CONTRASTIVE_OUT}/lora/adapter/adapter_model.safetensors",
        adapter_config=f"{CONTRASTIVE_OUT}/lora/adapter/adapter_config.json",
        adapter_info=f"{CONTRASTIVE_OUT}/lora/adapter/adapter_info.json",
        towers=f"{CONTRASTIVE_OUT}/lora/towers.safetensors",
        curves=f"{CONTRASTIVE_OUT}/lora/curves.tsv",
        config=f"{CONTRASTIVE_OUT}/lora/config.json",
        retrieval=f"{CONTRASTIVE_OUT}/lora/retrieval.json",
    params:
        checkpoint_dir=lambda wildcards, output: os.path.join(os.path.dirname(output.retrieval), "checkpoint"),
        model_cfg=lambda wildcards: config["models"][wildcards.model],
        dataset={key: DATASET.get(key) for key in brainllm_contrastive.RECIPE_DATASET_KEYS},
        settings=brainllm_contrastive.lora_section(CONTRASTIVE),
        keep_checkpoints=CONTRASTIVE_KEEP_CHECKPOINTS,
        stories=STORIES,
    log:
        f"{RESULTS}/logs/contrastive/sub-{{subject}}_model-{{model}}_lora.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/gpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/contrastive_lora.py"


rule features_tuned:
    input:
        words=[words_tsv(story) for story in STORIES],
        adapter=lambda wildcards: tuned_adapter_files(wildcards.model),
    output:
        [feature_manifest("{model}", story) for story in STORIES],
    params:
        model_cfg=lambda wildcards: MODELS[wildcards.model],
        stories=STORIES,
        store=FEATURE_STORE,
    log:
        f"{RESULTS}/logs/features/model-{{model}}.log",
    wildcard_constraints:
        model=names_pattern(TUNED_MODELS),
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=480,
    conda:
        "../../envs/gpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/features.py"


rule contrastive_compare:
    input:
        base=lambda wildcards: contrastive_encoding_scores(wildcards.subject, wildcards.model),
        tuned=lambda wildcards: contrastive_encoding_scores(wildcards.subject, tuned_model_name(wildcards.model, wildcards.subject)),
        base_predictions=lambda wildcards: [
            encoding_file(wildcards.subject, wildcards.model, "predictions.h5", layer) for layer in model_layers(wildcards.model)
        ],
        tuned_predictions=lambda wildcards: [
            encoding_file(wildcards.subject, tuned_model_name(wildcards.model, wildcards.subject), "predictions.h5", layer)
            for layer in model_layers(wildcards.model)
        ],
        responses=preprocessed("{subject}"),
    output:
        f"{CONTRASTIVE_OUT}/base_vs_tuned.tsv",
    params:
        layers=lambda wildcards: model_layers(wildcards.model),
        test_stories=DATASET["test_stories"],
        comparison={**ENCODING.get("comparison", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/contrastive/sub-{{subject}}_model-{{model}}_base_vs_tuned.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/contrastive_compare.py"


rule contrastive_compare_group:
    input:
        layers=lambda wildcards: [f"{RESULTS}/contrastive/sub-{subject}/model-{wildcards.model}/base_vs_tuned.tsv" for subject in SUBJECTS],
    output:
        f"{RESULTS}/contrastive/group/model-{{model}}_base_vs_tuned.tsv",
    params:
        subjects=SUBJECTS,
    log:
        f"{RESULTS}/logs/contrastive/group_model-{{model}}_base_vs_tuned.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/group_comparison.py"


rule contrastive_shared:
    input:
        unpack(shared_encoder_inputs),
    output:
        table=group_file("{model}", "shared_encoder.tsv"),
        summary=group_file("{model}", "shared_encoder.json"),
        weights=group_file("{model}", "shared_encoder.safetensors"),
        curves=group_file("{model}", "shared_encoder_curves.tsv"),
    params:
        checkpoint_dir=lambda wildcards: group_file(wildcards.model, "shared_encoder_checkpoint"),
        section=SHARED_ENCODER_SECTION,
        settings=brainllm_contrastive.frozen_section(CONTRASTIVE),
        keep_checkpoints=CONTRASTIVE_KEEP_CHECKPOINTS,
        subjects=SUBJECTS,
        single_runs=lambda wildcards: shared_encoder_single_runs(),
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/group/model-{{model}}_shared_encoder.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/contrastive_shared.py"
