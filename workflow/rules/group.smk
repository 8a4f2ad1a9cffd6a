# Across subjects: every subject's encoding model scored in every other subject after a
# response-to-response alignment learned on the training stories (brainllm.group), per
# model, each subject at its layer chosen on validation r; the transfer matrix figure.


rule group_transfer:
    input:
        unpack(group_transfer_inputs),
    output:
        group_file("{model}", "transfer.tsv"),
    params:
        subjects=SUBJECTS,
        layers=lambda wildcards: model_layers(wildcards.model),
        train_stories=DATASET["train_stories"],
        test_stories=DATASET["test_stories"],
        settings=ENCODING,
        voxel_fraction=GROUP.get("transfer", {}).get("voxel_fraction", 0.1),
    log:
        f"{RESULTS}/logs/group/model-{{model}}_transfer.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/group_transfer.py"


rule report_group_transfer:
    input:
        tables=lambda wildcards: group_targets(),
    output:
        **report_figure(
            f"{REPORT_DIR}/group/transfer",
            "../report/group_transfer.rst",
            "Group",
            "All subjects",
            {"figure": "cross-subject transfer"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/group_transfer.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_group_transfer.py"


REPORT_TARGETS.append(report_group_figures)
