# Image stimuli (dataset.stimuli: images): paths, wildcard constraints and input
# functions of the visual stages (their rules: visual.smk).

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


def settings_subset(mapping, keys):
    """The keys a job reads, as its params (the config is in canonical key order), so editing another setting does not rerun it."""
    return {key: mapping[key] for key in keys if key in mapping}


RUN_KEYS = ("root", "tr", "mask", "subjects", "train_stories", "test_stories")
STIMULUS_KEYS = ("stim_column", "stimuli_dir", "trial_type", "image_size")


def visual_subject_sources(wildcards):
    """Every BOLD and events file of a subject's runs and the mask (edits rerun the subject)."""
    if config["demo"]["generate"]:
        return visual_dataset_ready()
    files = []
    for run in brainllm_visual.subject_runs(DATASET, wildcards.subject):
        files += [str(run.bold), str(run.events)] + [str(path) for path in (run.confounds, run.brain_mask) if path is not None]
    if DATASET.get("mask"):
        files.append(os.path.join(DATASET["root"], DATASET["mask"].format(subject=wildcards.subject)))
    return files


def visual_labels_and_truth(wildcards):
    """The atlas, its labels and the ground truth, when configured (ROI tables, detection, controls)."""
    if config["demo"]["generate"]:
        return visual_dataset_ready()
    root = DATASET["root"]
    files = [os.path.join(root, DATASET["atlas"].format(subject=wildcards.subject))] if DATASET.get("atlas") else []
    files += [os.path.join(root, DATASET["atlas_labels"])] if DATASET.get("atlas_labels") else []
    return files + ([DATASET["ground_truth"]] if DATASET.get("ground_truth") else [])


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


