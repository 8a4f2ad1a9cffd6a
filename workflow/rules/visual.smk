# Image stimuli (dataset.stimuli: images): BIDS runs whose events name image files.
# Trial responses per subject → every layer of each vision model's tower (feature store)
# → visual encoding per layer → layers chosen on validation r per ROI; identification
# (ridge and contrastive decoders to the image embedding); pixel-space reconstruction
# and, with visual.reconstruction.generative, unCLIP reconstruction. Outputs under
# <results>/visual/ (docs/outputs.md), figures in the Snakemake report.

import os

from brainllm import configuration as brainllm_configuration
from brainllm import visual as brainllm_visual

RESULTS = config["results"]
DATASET = config["dataset"]
SUBJECTS = DATASET["subjects"]
VISUAL = config["visual"]
VISUAL_MODELS = VISUAL["models"]
VISUAL_SETTINGS = brainllm_visual.VisualSettings.from_config(VISUAL)
VISUAL_OUT = f"{RESULTS}/visual"
FEATURE_STORE = os.path.normpath(config["feature_store"])
GENERATIVE = VISUAL["reconstruction"].get("generative")
DPI = config["report"]["dpi"]
_CORES = workflow.resource_settings.cores
TORCH_THREADS = max(1, min(_CORES, os.cpu_count() or 1) // 2) if isinstance(_CORES, int) else 1


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    model="[A-Za-z0-9]+",
    layer="[0-9]+",


onstart:
    from brainllm.io import remove_stale_temporaries

    for _tmp in remove_stale_temporaries(RESULTS, shared=FEATURE_STORE):
        print(f"removed {_tmp}, left by a killed job")


def visual_dataset_ready():
    """The generated demo's ground truth when the config asks for the demo (its files do not exist at planning)."""
    if config["demo"]["generate"]:
        return [os.path.join(config["demo"]["out_dir"], "ground_truth.json")]
    return []


def visual_subject_sources(wildcards):
    """Every BOLD and events file of a subject's runs, the mask and atlas (edits rerun the subject)."""
    if config["demo"]["generate"]:
        return visual_dataset_ready()
    files = []
    for run in brainllm_visual.subject_runs(DATASET, wildcards.subject):
        files += [str(run.bold), str(run.events)]
    root = DATASET["root"]
    files += [os.path.join(root, DATASET[key].format(subject=wildcards.subject)) for key in ("mask", "atlas") if DATASET.get(key)]
    return files


def visual_stimulus_sources(wildcards):
    """Every image some run shows (edits or additions recompute the features)."""
    if config["demo"]["generate"]:
        return visual_dataset_ready()
    return brainllm_visual.stimulus_files(DATASET, VISUAL_SETTINGS, SUBJECTS)


_VISUAL_LAYERS = {}


def visual_layers(model):
    """Hidden-state indices analysed for a vision model (its config read once)."""
    from brainllm.vision_features import n_vision_hidden_states

    if model not in _VISUAL_LAYERS:
        layers = VISUAL_MODELS[model].get("layers", "all")
        _VISUAL_LAYERS[model] = list(range(n_vision_hidden_states(VISUAL_MODELS[model]))) if layers == "all" else [int(l) for l in layers]
    return _VISUAL_LAYERS[model]


def trials_file(subject, name):
    return f"{VISUAL_OUT}/sub-{subject}/sub-{subject}_{name}"


def encoding_file(subject, model, layer, suffix):
    """Per-layer encoding output; ``layer`` an index, or "{layer}" in a rule's pattern (two digits)."""
    layer = layer if isinstance(layer, str) else f"{int(layer):02d}"
    return f"{VISUAL_OUT}/sub-{subject}/encoding/sub-{subject}_model-{model}_layer-{layer}_{suffix}"


def visual_file(subject, model, suffix):
    return f"{VISUAL_OUT}/sub-{subject}/sub-{subject}_model-{model}_{suffix}"


def visual_targets():
    targets = [f"{VISUAL_OUT}/summary.tsv"]
    for subject in SUBJECTS:
        targets += [trials_file(subject, "reconstruction.json")]
        for model in VISUAL_MODELS:
            targets += [visual_file(subject, model, "layers.tsv"), visual_file(subject, model, "identification.json")]
        if GENERATIVE:
            targets.append(trials_file(subject, "generative.json"))
    return targets


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
        dataset=DATASET,
        visual=VISUAL,
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
        dataset=DATASET,
        visual=VISUAL,
    log:
        f"{RESULTS}/logs/visual/features_model-{{model}}.log",
    threads: TORCH_THREADS
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
        truth=visual_dataset_ready(),
    output:
        scores=encoding_file("{subject}", "{model}", "{layer}", "scores.tsv"),
        summary=encoding_file("{subject}", "{model}", "{layer}", "summary.json"),
        r_map=encoding_file("{subject}", "{model}", "{layer}", "r.nii.gz"),
    params:
        settings=config["encoding"],
        dataset=DATASET,
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
        encoding=config["encoding"],
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/identification_sub-{{subject}}_model-{{model}}.log",
    threads: TORCH_THREADS
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
        truth=visual_dataset_ready(),
    output:
        summary=trials_file("{subject}", "reconstruction.json"),
        images=trials_file("{subject}", "reconstruction_images.tsv"),
        reconstructions=trials_file("{subject}", "reconstruction.h5"),
        png=report(trials_file("{subject}", "reconstruction.png"), caption="../report/visual_reconstruction.rst", category="Visual",
                   subcategory="Reconstruction", labels={"subject": "{subject}", "figure": "pixel-space reconstruction"}),
        svg=trials_file("{subject}", "reconstruction.svg"),
    params:
        dataset=DATASET,
        visual=VISUAL,
        encoding=config["encoding"],
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/reconstruction_sub-{{subject}}.log",
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
        dataset=DATASET,
        visual=VISUAL,
        encoding=config["encoding"],
        dpi=DPI,
    log:
        f"{RESULTS}/logs/visual/generative_sub-{{subject}}.log",
    threads: TORCH_THREADS
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
        report(f"{VISUAL_OUT}/summary.tsv", caption="../report/visual_summary.rst", category="Visual", subcategory="Summary",
               labels={"figure": "summary table"}),
    log:
        f"{RESULTS}/logs/visual/summary.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/visual_summary.py"
