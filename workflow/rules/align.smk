# Alignment: every layer's word features of a model → the subject's TR grid (Lanczos on
# word midpoints, trimmed like the responses, z-scored per story); FIR delays are applied
# at fit time. Entries are read through the features manifests; brainllm.store.read_entry
# checks each layer's hash, the manifest's content id and the words' sha256.


rule align:
    input:
        responses=preprocessed("{subject}"),
        entries=lambda wildcards: [feature_manifest(wildcards.model, story) for story in STORIES],
        words=[words_tsv(story) for story in STORIES],
    output:
        aligned_features("{subject}", "{model}"),
    params:
        stories=STORIES,
        layers=lambda wildcards: model_layers(wildcards.model),
        settings={key: ENCODING[key] for key in ("lanczos_window", "lanczos_cutoff_mult", "lanczos_normalise")},
    log:
        f"{RESULTS}/logs/align/sub-{{subject}}_model-{{model}}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/align.py"
