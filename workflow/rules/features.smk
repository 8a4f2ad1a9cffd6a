# Feature store: hidden states of every layer of a model, one vector per story word. The
# store (FEATURE_STORE, shareable between checkouts and users) is a cache, not a Snakemake
# output: the job reuses the entry of (model settings, story words) when one exists and
# verifies it, else computes it once under a lock beside it; it never replaces an entry.
# The rule's outputs are this checkout's manifests naming the entries (docs/outputs.md).
# One job per model covers every story, so the model is loaded once; when one story's
# words change the job reruns, reusing the other stories' entries from the store.


rule features:
    input:
        words=[words_tsv(story) for story in STORIES],
    output:
        [feature_manifest("{model}", story) for story in STORIES],
    params:
        model_cfg=lambda wildcards: MODELS[wildcards.model],
        stories=STORIES,
        store=FEATURE_STORE,
    log:
        f"{RESULTS}/logs/features/model-{{model}}.log",
    wildcard_constraints:
        model=names_pattern(config["models"]),
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=480,
    conda:
        "../../envs/gpu.yaml"
    priority: UNBLOCKS
    script:
        "../scripts/features.py"
