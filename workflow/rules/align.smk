# Alignment: every layer's word features of a model → the subject's TR grid (Lanczos on
# word midpoints, trimmed like the responses, z-scored per story); FIR delays are applied
# at fit time. words.tsv is ancient() as in rule features: the store entry carries its
# sha256, which brainllm.store.read_entry verifies.


rule align:
    input:
        responses=preprocessed("{subject}"),
        entries=lambda wildcards: [feature_entry(wildcards.model, story) for story in STORIES],
        words=[ancient(words_tsv(story)) for story in STORIES],
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
    script:
        "../scripts/align.py"
