# Image stimuli (dataset.stimuli: images): BIDS runs whose events name image files.
# Trial responses per subject → every layer of each vision model's tower (feature store)
# → visual encoding per layer → layers chosen on validation r per ROI; identification
# (ridge and contrastive decoders to the image embedding or a layer); pixel-space
# reconstruction and, with visual.reconstruction.generative, unCLIP reconstruction.
# Outputs under <results>/visual/ (docs/outputs.md), figures in the Snakemake report.


if config["demo"]["generate"]:

    rule visual_demo_dataset:
        output:
            os.path.join(config["demo"]["out_dir"], "ground_truth.json"),
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            seed=config["demo"]["seed"],
        log:
            f"{RESULTS}/logs/visual/demo_dataset.log",
        localrule: True
        conda:
            "../../envs/cpu.yaml"
        script:
            "../scripts/visual_demo_dataset.py"


rule visual_trials:
    input:
        visual_subject_sources,
    output:
        responses=trials_file("{subject}", "images.h5"),
        mask=trials_file("{subject}", "mask.nii.gz"),
        trials=trials_file("{subject}", "trials.tsv"),
    params:
        dataset=settings_subset(DATASET, RUN_KEYS),
        visual=settings_subset(VISUAL, STIMULUS_KEYS + ("responses",)),
        preprocess=config.get("preprocess", {}),
    log:
        f"{RESULTS}/logs/visual/trials_sub-{{subject}}.log",
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_trials.py"


rule visual_features:
    input:
        visual_stimulus_sources,
    output:
        f"{RESULTS}/features/model-{{model}}/images.json",
    params:
        model=lambda wildcards: VISUAL_MODELS[wildcards.model],
        store=FEATURE_STORE,
        dataset=settings_subset(DATASET, RUN_KEYS),
        visual=settings_subset(VISUAL, STIMULUS_KEYS),
    log:
        f"{RESULTS}/logs/visual/features_model-{{model}}.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/visual_features.py"


rule visual_encoding:
    input:
        responses=trials_file("{subject}", "images.h5"),
        mask=trials_file("{subject}", "mask.nii.gz"),
        features=f"{RESULTS}/features/model-{{model}}/images.json",
        labels_and_truth=visual_labels_and_truth,
    output:
        scores=encoding_file("{subject}", "{model}", "{layer}", "scores.tsv"),
        summary=encoding_file("{subject}", "{model}", "{layer}", "summary.json"),
        r_map=encoding_file("{subject}", "{model}", "{layer}", "r.nii.gz"),
    params:
        settings=config["encoding"],
        dataset=settings_subset(DATASET, ("root", "mask", "atlas", "atlas_labels", "ground_truth")),
    log:
        f"{RESULTS}/logs/visual/encoding_sub-{{subject}}_model-{{model}}_layer-{{layer}}.log",
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_encoding.py"


rule visual_layers:
    input:
        summaries=lambda wildcards: [encoding_file(wildcards.subject, wildcards.model, layer, "summary.json") for layer in visual_layers(wildcards.model)],
    output:
        table=visual_file("{subject}", "{model}", "layers.tsv"),
        png=report(visual_file("{subject}", "{model}", "layers.png"), caption="../report/visual_layers.rst", category="Visual",
                   subcategory="Encoding", labels={"subject": "{subject}", "model": "{model}", "figure": "layers per ROI"}),
        svg=visual_file("{subject}", "{model}", "layers.svg"),
    params:
        model="{model}",
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/layers_sub-{{subject}}_model-{{model}}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_layers.py"


rule visual_identification:
    input:
        responses=trials_file("{subject}", "images.h5"),
        features=f"{RESULTS}/features/model-{{model}}/images.json",
    output:
        summary=visual_file("{subject}", "{model}", "identification.json"),
        images=visual_file("{subject}", "{model}", "identification_images.tsv"),
        similarity=visual_file("{subject}", "{model}", "identification_similarity.tsv"),
        weights=visual_file("{subject}", "{model}", "identification_contrastive.safetensors"),
        history=visual_file("{subject}", "{model}", "identification_training.tsv"),
        png=report(visual_file("{subject}", "{model}", "identification.png"), caption="../report/visual_identification.rst",
                   category="Visual", subcategory="Identification", labels={"subject": "{subject}", "model": "{model}", "figure": "identification"}),
        svg=visual_file("{subject}", "{model}", "identification.svg"),
    params:
        settings=VISUAL["identification"],
        encoding=settings_subset(config["encoding"], ("alphas", "backend", "solver", "cv_score")),
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/identification_sub-{{subject}}_model-{{model}}.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_identification.py"


rule visual_reconstruction:
    input:
        responses=trials_file("{subject}", "images.h5"),
        mask=trials_file("{subject}", "mask.nii.gz"),
        sources=visual_stimulus_sources,
        labels_and_truth=visual_labels_and_truth,
    output:
        summary=trials_file("{subject}", "reconstruction.json"),
        images=trials_file("{subject}", "reconstruction_images.tsv"),
        reconstructions=trials_file("{subject}", "reconstruction.h5"),
        png=report(trials_file("{subject}", "reconstruction.png"), caption="../report/visual_reconstruction.rst", category="Visual",
                   subcategory="Reconstruction", labels={"subject": "{subject}", "figure": "pixel-space reconstruction"}),
        svg=trials_file("{subject}", "reconstruction.svg"),
    params:
        dataset=settings_subset(DATASET, ("root", "mask", "ground_truth")),
        visual={**settings_subset(VISUAL, STIMULUS_KEYS + ("models",)),
                "reconstruction": {k: v for k, v in VISUAL["reconstruction"].items() if k != "generative"}},
        encoding=settings_subset(config["encoding"], ("alphas", "backend")),
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/reconstruction_sub-{{subject}}.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_reconstruction.py"


rule visual_generative:
    input:
        responses=trials_file("{subject}", "images.h5"),
        linear=trials_file("{subject}", "reconstruction.h5"),
        sources=visual_stimulus_sources,
    output:
        summary=trials_file("{subject}", "generative.json"),
        images=trials_file("{subject}", "generative.h5"),
        png=report(trials_file("{subject}", "generative.png"), caption="../report/visual_generative.rst", category="Visual",
                   subcategory="Reconstruction", labels={"subject": "{subject}", "figure": "generative reconstruction"}),
        svg=trials_file("{subject}", "generative.svg"),
    params:
        dataset=settings_subset(DATASET, ("root",)),
        visual=settings_subset(VISUAL, STIMULUS_KEYS + ("models", "reconstruction")),
        encoding=settings_subset(config["encoding"], ("alphas", "backend")),
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/generative_sub-{{subject}}.log",
    threads: TORCH_JOB_THREADS
    resources:
        mem_mb=32000,
        runtime=120,
    conda:
        "../../envs/gpu.yaml"
    script:
        "../scripts/visual_generative.py"


rule visual_summary:
    input:
        layers=[visual_file(s, m, "layers.tsv") for s in SUBJECTS for m in VISUAL_MODELS],
        identification=[visual_file(s, m, "identification.json") for s in SUBJECTS for m in VISUAL_MODELS],
        reconstruction=[trials_file(s, "reconstruction.json") for s in SUBJECTS],
    output:
        summary=report(f"{VISUAL_OUT}/summary.tsv", caption="../report/visual_summary.rst", category="Visual", subcategory="Summary",
                       labels={"figure": "summary table"}),
        png=report(f"{VISUAL_OUT}/roi_ranking.png", caption="../report/visual_roi_ranking.rst", category="Visual", subcategory="Encoding",
                   labels={"figure": "model × ROI ranking"}),
        svg=f"{VISUAL_OUT}/roi_ranking.svg",
        tsv=f"{VISUAL_OUT}/roi_ranking.tsv",
    params:
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/summary.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_summary.py"
