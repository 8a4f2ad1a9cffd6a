# Feature store: hidden states of every layer of a model, one vector per story word, one
# HDF5 entry per (model, extraction settings, story) at
# FEATURE_STORE/<model-slug>/<settings-hash>/<story>.h5 (see docs/outputs.md).
# The store can be shared between users and runs: words.tsv is an ancient() input, so a
# regenerated words.tsv with a newer mtime does not recompute an entry that exists;
# brainllm.store.read_entry verifies the words' sha256 instead and refuses a stale entry.


rule features:
    input:
        words=lambda wildcards: ancient(words_tsv(wildcards.story)),
    output:
        f"{FEATURE_STORE}/{{slug}}/{{settings}}/{{story}}.h5",
    params:
        model=lambda wildcards: feature_model(wildcards.slug, wildcards.settings),
    log:
        f"{RESULTS}/logs/features/{{slug}}/{{settings}}/{{story}}.log",
    wildcard_constraints:
        slug="[A-Za-z0-9._-]+",
        settings="[0-9a-f]{12}",
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/features.py"
