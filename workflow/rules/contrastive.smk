# Contrastive brain↔text training (brainllm.contrastive, brainllm.brainlora); outputs in
# docs/outputs.md. `contrastive`: frozen LLM features per (subject, model, layer).
# `contrastive_lora`: LoRA adapters on the LLM per (subject, model); `features_tuned`
# re-extracts the store entries of the tuned model <model>tuned<subject> through the
# adapter, the usual align/encoding rules score it, and `contrastive_compare` sets its
# held-out encoding r beside the base model's. Both training rules resume from their
# checkpoint/ directory (not a declared output, so a failed job keeps it); a finished
# job removes it unless contrastive.keep_checkpoints.


rule contrastive:
    input:
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
    log:
        f"{RESULTS}/logs/contrastive/sub-{{subject}}_model-{{model}}_layer-{{layer}}.log",
    threads: 2
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
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/contrastive_lora.py"


rule features_tuned:
    input:
        words=lambda wildcards: ancient(words_tsv(wildcards.story)),
        adapter=lambda wildcards: tuned_adapter_files(wildcards.settings),
    output:
        f"{FEATURE_STORE}/{{slug}}/{{settings}}/{{story}}.h5",
    params:
        model_cfg=lambda wildcards: MODELS[TUNED_BY_SETTINGS[wildcards.settings]],
    log:
        f"{RESULTS}/logs/features/{{slug}}/{{settings}}/{{story}}.log",
    wildcard_constraints:
        slug="[A-Za-z0-9._-]+",
        settings=TUNED_SETTINGS_PATTERN,
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/contrastive_features_tuned.py"


ruleorder: features_tuned > features


rule contrastive_compare:
    input:
        base=lambda wildcards: contrastive_encoding_scores(wildcards.subject, wildcards.model),
        tuned=lambda wildcards: contrastive_encoding_scores(wildcards.subject, tuned_model_name(wildcards.model, wildcards.subject)),
    output:
        f"{CONTRASTIVE_OUT}/base_vs_tuned.tsv",
    params:
        layers=lambda wildcards: model_layers(wildcards.model),
    log:
        f"{RESULTS}/logs/contrastive/sub-{{subject}}_model-{{model}}_base_vs_tuned.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/contrastive_compare.py"
