# Across subjects (brainllm.group), per model: the subjects' layer and ROI scores side by
# side with group rows (a sign-flip test from three subjects on); every subject's encoding
# model scored in every other subject after a response-to-response alignment learned on
# the training stories, each subject at its layer chosen on validation r; the inter-subject
# correlation of the responses (voxels of a common grid, atlas ROIs), model-free. Figures:
# layer curves with the between-subject interval and subject × ROI scores; the transfer
# matrix; the ISC distribution and ROI bars; with group.shared_encoder, the shared contrastive
# encoder's test retrieval per subject beside the single-subject models (rule contrastive_shared
# in contrastive.smk).


rule group_subjects:
    input:
        layers=lambda wildcards: [encoding_file(subject, wildcards.model, "layers.tsv") for subject in SUBJECTS],
        rois=lambda wildcards: [encoding_file(s, wildcards.model, "roi.tsv", layer) for s in SUBJECTS for layer in model_layers(wildcards.model)],
        maps=lambda wildcards: [encoding_file(s, wildcards.model, "r.nii.gz", layer) for s in SUBJECTS for layer in model_layers(wildcards.model)],
        masks=[preprocessed_mask(s) for s in SUBJECTS],
    output:
        layers=group_file("{model}", "subject_layers.tsv"),
        rois=group_file("{model}", "subject_rois.tsv"),
        similarity=group_file("{model}", "map_similarity.tsv"),
        differences=group_file("{model}", "subject_differences.tsv"),
    params:
        subjects=SUBJECTS,
        layers=lambda wildcards: model_layers(wildcards.model),
    log:
        f"{RESULTS}/logs/group/model-{{model}}_subjects.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/group_subjects.py"


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


rule group_isc:
    input:
        unpack(group_isc_inputs),
    output:
        voxels=f"{RESULTS}/group/isc_voxels.tsv",
        rois=f"{RESULTS}/group/isc_rois.tsv",
        map=f"{RESULTS}/group/isc_map.nii.gz",
        summary=f"{RESULTS}/group/isc.json",
    params:
        subjects=SUBJECTS,
        stories=STORIES,
        settings=GROUP.get("isc", {}),
        seed=ENCODING.get("seed", 0),
    log:
        f"{RESULTS}/logs/group/isc.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/group_isc.py"


rule report_group_isc:
    input:
        voxels=rules.group_isc.output.voxels,
        rois=rules.group_isc.output.rois,
    output:
        **report_figure(
            f"{REPORT_DIR}/group/isc",
            "../report/group_isc.rst",
            "Group",
            "All subjects",
            {"figure": "inter-subject correlation"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/group_isc.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_group_isc.py"


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


rule report_group_subjects:
    input:
        layers=lambda wildcards: group_targets("subject_layers.tsv"),
        rois=lambda wildcards: group_targets("subject_rois.tsv"),
    output:
        **report_figure(
            f"{REPORT_DIR}/group/subjects",
            "../report/group_subjects.rst",
            "Group",
            "All subjects",
            {"figure": "subjects side by side"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/group_subjects.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_group_subjects.py"


rule report_group_shared_encoder:
    input:
        tables=lambda wildcards: shared_encoder_targets(),
    output:
        **report_figure(
            f"{REPORT_DIR}/group/shared_encoder",
            "../report/group_shared_encoder.rst",
            "Group",
            "All subjects",
            {"figure": "shared contrastive encoder"},
        ),
    params:
        dpi=REPORT["dpi"],
    log:
        f"{RESULTS}/logs/report/group_shared_encoder.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/report_group_shared_encoder.py"


REPORT_TARGETS.append(report_group_figures)
