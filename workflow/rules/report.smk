# Report: one small rule per figure family, each figure registered with report() and in
# REPORT_TARGETS (common.smk); rule `report` collects them all. Build the HTML report
# after a run with `snakemake --report results/report.html` (docs/report.md).
# A family is registered only when the rules of its stage are part of the workflow.
# Figures of a rule: <stem>.png (in the report), <stem>.svg and <stem>.tsv (source data).


REPORT_TARGETS.append(report_encoding_figures)
REPORT_TARGETS.append(report_contrastive_figures)


# --- encoding figures ----------------------------------------------------------------


rule report_layer_curves:
    input:
        layers=lambda wildcards: [encoding_file(s, m, "layers.tsv") for s in SUBJECTS for m in config["models"]],
    output:
        **report_figure(
            f"{REPORT_DIR}/encoding/layer_curves",
            "../report/layer_curves.rst",
            "Encoding",
            "All subjects",
            {"figure": "layer curves"},
        ),
    params:
        model_sizes=report_model_sizes(),
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/layer_curves.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_layer_curves.py"


rule report_roi_ranking:
    input:
        layers=lambda wildcards: [encoding_file(s, m, "layers.tsv") for s in SUBJECTS for m in config["models"]],
        rois=lambda wildcards: [
            path for s in SUBJECTS for m in config["models"] for path in report_encoding_layers(s, m, "roi.tsv")
        ],
    output:
        **report_figure(
            f"{REPORT_DIR}/encoding/roi_ranking",
            "../report/roi_ranking.rst",
            "Encoding",
            "All subjects",
            {"figure": "model × ROI ranking"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/roi_ranking.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_roi_ranking.py"


rule report_model_comparison:
    input:
        tables=lambda wildcards: model_comparison_tables(),
    output:
        **report_figure(
            f"{REPORT_DIR}/encoding/model_comparison",
            "../report/model_comparison.rst",
            "Encoding",
            "All subjects",
            {"figure": "model vs model"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/model_comparison.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_model_comparison.py"


rule report_r_histogram:
    input:
        unpack(lambda wildcards: report_ground_truth(wildcards.subject)),
        unpack(layer_predictions),
        layers=encoding_file("{subject}", "{model}", "layers.tsv"),
        scores=lambda wildcards: report_encoding_layers(wildcards.subject, wildcards.model, "scores.tsv"),
        summaries=lambda wildcards: report_encoding_layers(wildcards.subject, wildcards.model, "summary.json"),
    output:
        **report_figure(
            f"{REPORT_ENCODING_STEM}_r_histogram",
            "../report/r_histogram.rst",
            "Encoding",
            "sub-{subject} · {model}",
            {"figure": "voxel r histogram"},
        ),
    params:
        bins=REPORT["histogram_bins"],
        dpi=REPORT["dpi"],
        test_stories=DATASET["test_stories"],
        significance=ENCODING.get("significance", {}),
    log:
        f"{RESULTS}/logs/report/sub-{{subject}}_model-{{model}}_r_histogram.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_r_histogram.py"


rule report_brain_maps:
    input:
        layers=encoding_file("{subject}", "{model}", "layers.tsv"),
        scores=lambda wildcards: report_encoding_layers(wildcards.subject, wildcards.model, "scores.tsv"),
        r_maps=lambda wildcards: report_encoding_layers(wildcards.subject, wildcards.model, "r.nii.gz"),
        bestlayer=encoding_file("{subject}", "{model}", "bestlayer.nii.gz"),
        mean=f"{RESULTS}/ingest/sub-{{subject}}/mean.nii.gz",
        mask=preprocessed_mask("{subject}"),
    output:
        **{
            f"r_{kind}": path
            for kind, path in report_figure(
                f"{REPORT_ENCODING_STEM}_r_map",
                "../report/r_map.rst",
                "Encoding",
                "sub-{subject} · {model}",
                {"figure": "r map"},
            ).items()
        },
        **{
            f"layer_{kind}": path
            for kind, path in report_figure(
                f"{REPORT_ENCODING_STEM}_bestlayer_map",
                "../report/bestlayer_map.rst",
                "Encoding",
                "sub-{subject} · {model}",
                {"figure": "best-layer map"},
            ).items()
        },
    params:
        slices=REPORT["mosaic_slices"],
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/sub-{{subject}}_model-{{model}}_brain_maps.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_brain_maps.py"


rule report_metrics:
    input:
        unpack(
            lambda wildcards: {
                f"{key}_{subject}": path for subject in SUBJECTS for key, path in report_ground_truth(subject).items()
            }
        ),
        summaries=lambda wildcards: [
            path for s in SUBJECTS for m in config["models"] for path in report_encoding_layers(s, m, "summary.json")
        ],
        scores=lambda wildcards: [
            path for s in SUBJECTS for m in config["models"] for path in report_encoding_layers(s, m, "scores.tsv")
        ],
        trimming=[trimming_checks(subject) for subject in SUBJECTS],
        identification=lambda wildcards: decoding_targets(),
        words=lambda wildcards: contrastive_decoding_targets("words.json") + ridge_words_targets(),
        labels=lambda wildcards: label_targets(),
        contrastive_identification=lambda wildcards: contrastive_decoding_targets("contrastive-identification.tsv"),
    output:
        tsv=report(
            f"{RESULTS}/summary.tsv",
            caption="../report/metrics.rst",
            category="Summary",
            subcategory="Metrics",
            labels={"table": "metrics (TSV)"},
        ),
        html=report(
            f"{REPORT_DIR}/metrics.html",
            caption="../report/metrics.rst",
            category="Summary",
            subcategory="Metrics",
            labels={"table": "metrics"},
        ),
    params:
        subjects=SUBJECTS,
        invariance=ENCODING["invariance"],
    log:
        f"{RESULTS}/logs/report/metrics.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_metrics.py"


# --- contrastive figures -------------------------------------------------------------
# {run} is one training run of the contrastive stage: layer-<NN> (frozen features) or lora.


rule report_contrastive_training:
    input:
        curves=f"{CONTRASTIVE_OUT}/{{run}}/curves.tsv",
    output:
        **report_figure(
            f"{REPORT_CONTRASTIVE_STEM}_{{run}}_training",
            "../report/contrastive_training.rst",
            "Contrastive (BrainLLM)",
            "sub-{subject} · {model}",
            {"figure": "training curves", "run": "{run}"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/sub-{{subject}}_model-{{model}}_{{run}}_training.log",
    wildcard_constraints:
        run="layer-[0-9]+|lora",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_contrastive_training.py"


rule report_retrieval:
    input:
        retrieval=f"{CONTRASTIVE_OUT}/{{run}}/retrieval.json",
    output:
        **report_figure(
            f"{REPORT_CONTRASTIVE_STEM}_{{run}}_retrieval",
            "../report/retrieval.rst",
            "Contrastive (BrainLLM)",
            "sub-{subject} · {model}",
            {"figure": "held-out retrieval", "run": "{run}"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/sub-{{subject}}_model-{{model}}_{{run}}_retrieval.log",
    wildcard_constraints:
        run="layer-[0-9]+|lora",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_retrieval.py"


rule report_base_vs_tuned:
    input:
        comparison=f"{CONTRASTIVE_OUT}/base_vs_tuned.tsv",
    output:
        **report_figure(
            f"{REPORT_CONTRASTIVE_STEM}_base_vs_tuned",
            "../report/base_vs_tuned.rst",
            "Contrastive (BrainLLM)",
            "sub-{subject} · {model}",
            {"figure": "base vs brain-tuned", "run": "lora"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/sub-{{subject}}_model-{{model}}_base_vs_tuned.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_base_vs_tuned.py"


# --- collection ----------------------------------------------------------------------


rule report:
    input:
        report_targets,
    output:
        f"{REPORT_DIR}/manifest.tsv",
    log:
        f"{RESULTS}/logs/report/manifest.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_manifest.py"
