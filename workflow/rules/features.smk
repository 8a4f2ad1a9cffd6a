# Feature store: hidden states of every layer of a model, one vector per story word. The
# store (FEATURE_STORE, shareable between checkouts and users) is a cache, not a Snakemake
# output: the job reuses the entry of (model settings, story words) when one exists and
# verifies it, else computes it once under a lock beside it; it never replaces an entry.
# The rule's output is this checkout's manifest naming the entry (docs/outputs.md).


rule features:
    input:
        words=words_tsv("{story}"),
    output:
        feature_manifest("{model}", "{story}"),
    params:
        model_cfg=lambda wildcards: MODELS[wildcards.model],
        store=FEATURE_STORE,
    log:
        f"{RESULTS}/logs/features/model-{{model}}/{{story}}.log",
    wildcard_constraints:
        model=names_pattern(config["models"]),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/features.py"
