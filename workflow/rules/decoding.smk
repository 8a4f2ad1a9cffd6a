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
