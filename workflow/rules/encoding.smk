# Encoding: one model per (subject, model, layer) fitted on the training stories and
# scored on the test stories (encoding.method: himalaya ridge, bootstrap ridge or the
# Lipschitz-bounded map); banded ridge over encoding.banded.layers when enabled; the
# best layer per (subject, model), chosen on validation r, with every layer compared with
# it over the test TRs. Output names follow docs/outputs.md.


rule encoding:
    input:
        unpack(encoding_extra_inputs),
        aligned=aligned_features("{subject}", "{model}"),
        responses=preprocessed("{subject}"),
        mask=preprocessed_mask("{subject}"),
    output:
        **encoding_outputs(f"{ENCODING_RESULT_STEM}_layer-{{layer}}"),
        **prediction_output(f"{ENCODING_RESULT_STEM}_layer-{{layer}}"),
    params:
        layers=lambda wildcards: [int(wildcards.layer)],
        settings=ENCODING,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/encoding/sub-{{subject}}_model-{{model}}_layer-{{layer}}.log",
    # layers are independent jobs: on a workstation running several at once beats BLAS threads
    # within one; the cluster profiles set more threads per job
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/encoding.py"


rule encoding_banded:
    input:
        unpack(encoding_extra_inputs),
        aligned=aligned_features("{subject}", "{model}"),
        responses=preprocessed("{subject}"),
        mask=preprocessed_mask("{subject}"),
    output:
        **encoding_outputs(f"{ENCODING_RESULT_STEM}_banded"),
        **prediction_output(f"{ENCODING_RESULT_STEM}_banded"),
    params:
        layers=ENCODING.get("banded", {}).get("layers", []),
        settings=ENCODING,
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
    log:
        f"{RESULTS}/logs/encoding/sub-{{subject}}_model-{{model}}_banded.log",
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/encoding.py"


rule best_layer:
    input:
        unpack(layer_predictions),
        scores=lambda wildcards: [
            encoding_file(wildcards.subject, wildcards.model, "scores.tsv", layer) for layer in model_layers(wildcards.model)
        ],
        mask=preprocessed_mask("{subject}"),
    output:
        best_map=f"{ENCODING_RESULT_STEM}_bestlayer.nii.gz",
        layers=f"{ENCODING_RESULT_STEM}_layers.tsv",
    params:
        layers=lambda wildcards: model_layers(wildcards.model),
        test_stories=DATASET["test_stories"],
        comparison={**ENCODING.get("comparison", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/encoding/sub-{{subject}}_model-{{model}}_best_layer.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/best_layer.py"


rule encoding_compare_models:
    input:
        layers=lambda wildcards: [encoding_file(wildcards.subject, model, "layers.tsv") for model in config["models"]],
        predictions=lambda wildcards: [
            encoding_file(wildcards.subject, model, "predictions.h5", layer) for model in config["models"] for layer in model_layers(model)
        ],
        responses=preprocessed("{subject}"),
    output:
        f"{RESULTS}/encoding/sub-{{subject}}/sub-{{subject}}_models.tsv",
    params:
        models=list(config["models"]),
        layers={model: model_layers(model) for model in config["models"]},
        test_stories=DATASET["test_stories"],
        comparison={**ENCODING.get("comparison", {}), "seed": ENCODING.get("seed", 0)},
    log:
        f"{RESULTS}/logs/encoding/sub-{{subject}}_models.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/compare_models.py"


rule encoding_group:
    input:
        layers=lambda wildcards: [encoding_file(subject, wildcards.model, "layers.tsv") for subject in SUBJECTS],
    output:
        f"{RESULTS}/encoding/group/model-{{model}}_layers.tsv",
    params:
        subjects=SUBJECTS,
    log:
        f"{RESULTS}/logs/encoding/group_model-{{model}}_layers.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/group_comparison.py"
