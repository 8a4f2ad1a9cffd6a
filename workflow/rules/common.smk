# Shared definitions: paths, wildcard constraints, input functions.

import os
import sys

from brainllm import configuration as brainllm_configuration

RESULTS = config["results"]
DATASET = config["dataset"]
# dataset.modality eeg: the subjects are EEG subjects only (EEG_SUBJECTS), no fMRI stage runs
EEG_ONLY = brainllm_configuration.is_eeg_only(config)
SUBJECTS = [] if EEG_ONLY else DATASET["subjects"]  # fMRI subjects
STORIES = DATASET["train_stories"] + DATASET["test_stories"]


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    story="[A-Za-z0-9]+",
    model="[A-Za-z0-9]+",
    layer="[0-9]+",


def dataset_ready():
    """The generated demo dataset when the config asks for it, else nothing."""
    if config["demo"]["generate"]:
        return [os.path.join(config["demo"]["out_dir"], "ground_truth.json")]
    return []


# Every dataset file an ingest rule reads is one of its inputs (brainllm.sources), so
# editing one reruns exactly the jobs downstream of it. A generated demo dataset is
# represented by its ground_truth.json, written last (its files do not exist when the
# first run is planned, and a changed input list would rerun ingestion once).
from brainllm import sources as brainllm_sources


brainllm_sources.check_plan(DATASET, config["encoding"]["delays"])


def story_sources(wildcards):
    return dataset_ready() or brainllm_sources.story_sources(DATASET, wildcards.story, EEG_WORD_SOURCE)


def subject_sources(wildcards):
    return dataset_ready() or brainllm_sources.subject_sources(DATASET, wildcards.subject)


def atlas_sources(wildcards):
    return dataset_ready() or brainllm_sources.atlas_sources(DATASET, wildcards.subject)


def words_tsv(story):
    return f"{RESULTS}/ingest/stories/{story}/words.tsv"


def preprocessed(subject):
    return f"{RESULTS}/preprocess/sub-{subject}/responses.h5"


# --- ingest / preprocess ----------------------------------------------------------


def ingested(subject):
    return f"{RESULTS}/ingest/sub-{subject}/responses.h5"


def ingest_mask(subject):
    return f"{RESULTS}/ingest/sub-{subject}/mask.nii.gz"


def preprocessed_mask(subject):
    return f"{RESULTS}/preprocess/sub-{subject}/mask.nii.gz"


def trimming_checks(subject):
    return f"{RESULTS}/preprocess/sub-{subject}/trimming.tsv"


def atlas_files(subject):
    """[atlas.nii.gz, atlas.tsv] of a subject when dataset.atlas is set, else []."""
    if not DATASET.get("atlas"):
        return []
    return [
        f"{RESULTS}/ingest/sub-{subject}/atlas.nii.gz",
        f"{RESULTS}/ingest/sub-{subject}/atlas.tsv",
    ]


# --- end ingest / preprocess ------------------------------------------------------


# --- features (feature store) ------------------------------------------------------


FEATURE_STORE = os.path.normpath(config["feature_store"])

# Job priorities: among ready jobs the scheduler starts the short ones that unblock a chain
# (ingestion, features, LoRA training) first, then the long leaves, and fills free cores
# with the rest (per-layer encoding, reports).
UNBLOCKS = 2
LONG_JOB = 1
MODELS = config["models"]


onstart:
    # Temporaries of jobs killed in an earlier run (no job runs yet; in the shared store
    # only day-old ones, a concurrent run elsewhere may be writing).
    from brainllm.io import remove_stale_temporaries

    for _tmp in remove_stale_temporaries(RESULTS, shared=FEATURE_STORE):
        print(f"removed {_tmp}, left by a killed job")


def feature_manifest(model, story):
    """This checkout's record of the store entry of (model, story): R/features/<model>/<story>.json.

    The store itself is a cache, not a Snakemake output (docs/outputs.md, feature store):
    the features job reuses or computes the entry and writes this manifest; align reads
    the entry through it.
    """
    return f"{RESULTS}/features/{model}/{story}.json"


_MODEL_LAYERS = {}


def model_layers(model):
    """Hidden-state indices used for a model (`layers: all` or the configured list; its config read once)."""
    from brainllm.models import model_layers as configured_layers

    if model not in _MODEL_LAYERS:
        _MODEL_LAYERS[model] = configured_layers(MODELS[model])
    return _MODEL_LAYERS[model]


def names_pattern(names):
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    import re

    return "|".join(re.escape(name) for name in names) or "(?!)"


# --- end features -----------------------------------------------------------------


# --- contrastive (brain↔text training, BrainLLM) ------------------------------------
# The stage runs when the config has a `contrastive` section (not null, not
# `enabled: false`). With `lora.enabled`, every
# (subject, configured model) gets a brain-tuned model <model>tuned<subject>: the base
# model's settings plus `adapter` (its LoRA adapter directory) and `adapter_recipe`.
# Tuned models join MODELS (every model the DAG knows by name: feature_manifest,
# model_layers, ...) but not config["models"], which stays what the user configured
# and is what stages enumerate (a tuned model is scored for its own subject only, as
# requested by contrastive_compare). Rule features_tuned (contrastive.smk) extracts its
# entries; their store key holds the trained adapter's content hash.

from brainllm import contrastive_settings as brainllm_contrastive

CONTRASTIVE = brainllm_configuration.stage_settings(config, "contrastive")  # {} = stage off
CONTRASTIVE_KEEP_CHECKPOINTS = bool(CONTRASTIVE.pop("keep_checkpoints", False))  # not part of any recipe
CONTRASTIVE_ENABLED = brainllm_configuration.stage_enabled(config, "contrastive")
CONTRASTIVE_SETTINGS = brainllm_contrastive.resolve_settings(CONTRASTIVE)
CONTRASTIVE_OUT = f"{RESULTS}/contrastive/sub-{{subject}}/model-{{model}}"


def lora_adapter_dir(subject, model):
    return f"{RESULTS}/contrastive/sub-{subject}/model-{model}/lora/adapter"


TUNED_MODELS = {}  # tuned model name -> (subject, base model)
if CONTRASTIVE_ENABLED and CONTRASTIVE_SETTINGS["lora"]["enabled"]:
    MODELS = dict(config["models"])
    for _subject in SUBJECTS:
        for _model in config["models"]:
            _name = brainllm_contrastive.tuned_model_name(_model, _subject)
            MODELS[_name] = brainllm_contrastive.tuned_model_config(
                config["models"][_model], CONTRASTIVE, _subject, DATASET, lora_adapter_dir(_subject, _model)
            )
            TUNED_MODELS[_name] = (_subject, _model)


def tuned_model_name(model, subject):
    return brainllm_contrastive.tuned_model_name(model, subject)


def tuned_adapter_files(model):
    """Adapter files of a tuned model."""
    directory = lora_adapter_dir(*TUNED_MODELS[model])
    return [f"{directory}/adapter_model.safetensors", f"{directory}/adapter_config.json"]


def contrastive_encoding_scores(subject, model):
    """Per-layer encoding scores of a model on the held-out stories."""
    return [encoding_file(subject, model, "scores.tsv", layer) for layer in model_layers(model)]


def contrastive_targets():
    """Retrieval of every (subject, model, contrastive layer); with LoRA, its retrieval and base_vs_tuned."""
    if not CONTRASTIVE_ENABLED:
        return []
    targets = []
    for subject in SUBJECTS:
        for model in config["models"]:
            directory = CONTRASTIVE_OUT.format(subject=subject, model=model)
            targets += [f"{directory}/layer-{int(layer):02d}/retrieval.json" for layer in CONTRASTIVE_SETTINGS["layers"]]
            if TUNED_MODELS:
                targets += [f"{directory}/lora/retrieval.json", f"{directory}/base_vs_tuned.tsv"]
    if TUNED_MODELS and len(SUBJECTS) >= 3:  # base vs tuned across subjects (sign-flip test)
        targets += [f"{RESULTS}/contrastive/group/model-{model}_base_vs_tuned.tsv" for model in config["models"]]
    return targets


# --- end contrastive --------------------------------------------------------------


# --- report -----------------------------------------------------------------------
# Figure registry: a stage's .smk appends the report() files its figure rules write
# (paths, or functions without arguments returning paths; functions are called once
# every rule file is parsed). Rule `report` requests all of them, so a new stage adds
# its figures by appending here, without touching other stages' rules.
REPORT_TARGETS = []
REPORT = config["report"]
REPORT_DIR = f"{RESULTS}/report"
REPORT_ENCODING_STEM = f"{REPORT_DIR}/encoding/sub-{{subject}}/sub-{{subject}}_model-{{model}}"
REPORT_CONTRASTIVE_STEM = f"{REPORT_DIR}/contrastive/sub-{{subject}}/sub-{{subject}}_model-{{model}}"


def report_targets(wildcards=None):
    """Every registered report file, in registration order."""
    targets = []
    for entry in REPORT_TARGETS:
        produced = entry() if callable(entry) else entry
        targets += [produced] if isinstance(produced, str) else list(produced)
    return targets


def report_figure(stem, caption, category, subcategory, labels):
    """Outputs of a figure rule: PNG (shown in the HTML report), SVG and source table <stem>.tsv."""
    return {
        "png": report(f"{stem}.png", caption=caption, category=category, subcategory=subcategory, labels=labels),
        "svg": f"{stem}.svg",
        "tsv": f"{stem}.tsv",
    }


def report_figure_files(stems):
    return [f"{stem}.{ext}" for stem in stems for ext in ("png", "svg", "tsv")]


def report_model_sizes():
    """Parameter count of each configured model (None when unknown), for the scaling plot."""
    return {name: settings.get("size_params") for name, settings in config["models"].items()}


def report_encoding_layers(subject, model, suffix):
    """One per-layer encoding output of every layer of a model."""
    return [encoding_file(subject, model, suffix, layer) for layer in model_layers(model)]


def report_ground_truth(subject):
    """Ground truth and the two masks that map it onto the analysed voxels ({} without one)."""
    if not DATASET.get("ground_truth"):
        return {}
    return {
        "truth": DATASET["ground_truth"],
        "dataset_mask": ingest_mask(subject),
        "analysis_mask": preprocessed_mask(subject),
    }


def report_encoding_figures():
    """Encoding figures and the metrics table (when the encoding stage is in the workflow and there are fMRI subjects)."""
    if not (SUBJECTS and rules.has("best_layer")):
        return []
    stems = [f"{REPORT_DIR}/encoding/layer_curves", f"{REPORT_DIR}/encoding/roi_ranking"]
    for subject in SUBJECTS:
        for model in config["models"]:
            stem = REPORT_ENCODING_STEM.format(subject=subject, model=model)
            stems += [f"{stem}_r_histogram", f"{stem}_r_map", f"{stem}_bestlayer_map"]
    if model_comparison_tables():
        stems.append(f"{REPORT_DIR}/encoding/model_comparison")
    return report_figure_files(stems) + [f"{RESULTS}/summary.tsv", f"{REPORT_DIR}/metrics.html"]


def report_contrastive_figures():
    """Training and retrieval figures per contrastive run (layer-NN, lora) and base vs tuned."""
    if not (CONTRASTIVE_ENABLED and rules.has("contrastive")):
        return []
    stems = []
    for subject in SUBJECTS:
        for model in config["models"]:
            stem = REPORT_CONTRASTIVE_STEM.format(subject=subject, model=model)
            runs = [f"layer-{int(layer):02d}" for layer in CONTRASTIVE_SETTINGS["layers"]]
            if TUNED_MODELS and rules.has("contrastive_lora"):
                runs.append("lora")
                stems.append(f"{stem}_base_vs_tuned")
            stems += [f"{stem}_{run}_{name}" for run in runs for name in ("training", "retrieval")]
    return report_figure_files(stems)


# --- end report -------------------------------------------------------------------


# --- align / encoding -------------------------------------------------------------

ENCODING = config["encoding"]


def aligned_features(subject, model):
    """Word features of a model on the subject's TR grid (docs/outputs.md, alignment)."""
    return f"{RESULTS}/align/sub-{subject}/model-{model}/features.h5"


def encoding_file(subject, model, suffix, layer=None):
    """R/encoding/sub-S/model-M/sub-S_model-M[_layer-NN]_<suffix> (docs/outputs.md, encoding)."""
    stem = f"sub-{subject}_model-{model}" + ("" if layer is None else f"_layer-{int(layer):02d}")
    return f"{RESULTS}/encoding/sub-{subject}/model-{model}/{stem}_{suffix}"


ENCODING_RESULT_STEM = encoding_file("{subject}", "{model}", "").rstrip("_")


def encoding_outputs(stem):
    """Outputs of one encoding model: scores, r map, ROI table, summary (+ weights when saved)."""
    outputs = {
        "scores": f"{stem}_scores.tsv",
        "r_map": f"{stem}_r.nii.gz",
        "rois": f"{stem}_roi.tsv",
        "summary": f"{stem}_summary.json",
    }
    if ENCODING.get("save_weights"):
        outputs["weights"] = f"{stem}_weights.safetensors"
    return outputs


def prediction_output(stem):
    """The test-TR predictions of one encoding model, when encoding.save_predictions."""
    return {"predictions": f"{stem}_predictions.h5"} if ENCODING.get("save_predictions", True) else {}


def layer_predictions(wildcards):
    """Test predictions of every layer and the responses (paired layer comparison), when saved."""
    if not ENCODING.get("save_predictions", True):
        return {}
    return {
        "predictions": [encoding_file(wildcards.subject, wildcards.model, "predictions.h5", layer) for layer in model_layers(wildcards.model)],
        "responses": preprocessed(wildcards.subject),
    }


def encoding_extra_inputs(wildcards):
    """Atlas (ROI summary) and ground truth (the demo) of a subject, when configured."""
    extra = {}
    if DATASET.get("atlas"):
        extra["atlas_nii"], extra["atlas_tsv"] = atlas_files(wildcards.subject)
    if DATASET.get("ground_truth"):
        extra["truth"] = DATASET["ground_truth"]
        extra["dataset_mask"] = ingest_mask(wildcards.subject)
    return extra


def model_comparison_tables():
    """Per subject, the configured models compared at their best layers (with 2 or more models and saved predictions)."""
    if len(config["models"]) < 2 or not ENCODING.get("save_predictions", True):
        return []
    return [f"{RESULTS}/encoding/sub-{subject}/sub-{subject}_models.tsv" for subject in SUBJECTS]


def encoding_targets():
    """Best-layer map and layer table of every (subject, configured model), banded models when enabled."""
    targets = []
    for subject in SUBJECTS:
        for model in config["models"]:
            targets += [encoding_file(subject, model, "bestlayer.nii.gz"), encoding_file(subject, model, "layers.tsv")]
            if ENCODING.get("banded", {}).get("enabled"):
                targets.append(encoding_file(subject, model, "banded_summary.json"))
    targets += model_comparison_tables()
    if len(SUBJECTS) >= 3:  # layer comparison across subjects (sign-flip test)
        targets += [f"{RESULTS}/encoding/group/model-{model}_layers.tsv" for model in config["models"]]
    return targets


# --- end align / encoding ---------------------------------------------------------


# --- decoding ---------------------------------------------------------------------
# Runs when the config has a `decoding:` section (config/README.md) and the encoding
# stage saves its test predictions.

DECODING_ENABLED = brainllm_configuration.stage_enabled(config, "decoding") and ENCODING.get("save_predictions", True)
DECODING = brainllm_configuration.stage_settings(config, "decoding")


def decoding_file(subject, model, suffix):
    """R/decoding/sub-S/model-M/sub-S_model-M_<suffix> (docs/outputs.md, decoding)."""
    return f"{RESULTS}/decoding/sub-{subject}/model-{model}/sub-{subject}_model-{model}_{suffix}"


def decoding_targets():
    """Segment identification of every (subject, configured model)."""
    if not DECODING_ENABLED:
        return []
    return [decoding_file(subject, model, "identification.tsv") for subject in SUBJECTS for model in config["models"]]


# through the contrastive runs (frozen and LoRA): identification and whole-vocabulary word classification
FROZEN_DECODING_ENABLED = DECODING_ENABLED and CONTRASTIVE_ENABLED and bool(CONTRASTIVE_SETTINGS["layers"])
LORA_DECODING_ENABLED = DECODING_ENABLED and bool(TUNED_MODELS)
CONTRASTIVE_DECODING_ENABLED = FROZEN_DECODING_ENABLED or LORA_DECODING_ENABLED
VOCABULARY = f"{RESULTS}/decoding/vocabulary/words.tsv"
CONTRASTIVE_DECODING_SUFFIXES = ("contrastive-identification.tsv", "words.tsv", "vocabulary.tsv", "words.json")


LABELS_ENABLED = DECODING_ENABLED and bool(DECODING.get("labels"))
LABEL_SUFFIXES = ("labels.tsv", "labels_classes.tsv", "labels_confusion.tsv", "labels_predictions.tsv")


def label_file(subject, suffix):
    """R/decoding/sub-S/sub-S_<suffix> (docs/outputs.md, decoding)."""
    return f"{RESULTS}/decoding/sub-{subject}/sub-{subject}_{suffix}"


LABEL_SOURCE = DECODING.get("labels", {}).get("source", "table")


def label_table(subject):
    """The annotation table a subject's labels are decoded from: the user's, or the one built from events or lexicons."""
    return DECODING["labels"]["table"] if LABEL_SOURCE == "table" else label_file(subject, "annotations.tsv")


def label_table_input(wildcards):
    """The annotation table; the demo's ground truth when the generated demo writes the table."""
    table = label_table(wildcards.subject)
    demo_dir = os.path.abspath(config["demo"]["out_dir"]) + os.sep
    generated = LABEL_SOURCE == "table" and config["demo"]["generate"] and os.path.abspath(table).startswith(demo_dir)
    return dataset_ready() if generated else [table]


def annotation_sources(wildcards):
    """What the annotation table is built from: the subject's dataset files (events) or every story's words (lexicon)."""
    if LABEL_SOURCE == "events":
        return subject_sources(wildcards)
    return [words_tsv(story) for story in STORIES]


def label_targets(suffix="labels.tsv"):
    return [label_file(subject, suffix) for subject in SUBJECTS] if LABELS_ENABLED else []


RIDGE_WORDS = DECODING.get("words", {}).get("ridge", {}) if DECODING_ENABLED else {}
# the ridge decoder holds the validation story out and cross-validates α over the other training stories
RIDGE_WORDS_ENABLED = DECODING_ENABLED and bool(RIDGE_WORDS.get("enabled", True)) and len(DATASET["train_stories"]) >= 3
RIDGE_WORDS_NOTE = (
    f"decoding: no ridge word classification (it needs three or more training stories, dataset.train_stories lists "
    f"{len(DATASET['train_stories'])}; set decoding.words.ridge.enabled: false to silence this)"
    if DECODING_ENABLED and RIDGE_WORDS.get("enabled", True) and not RIDGE_WORDS_ENABLED else ""
)
if RIDGE_WORDS_NOTE and workflow.is_main_process:
    print(RIDGE_WORDS_NOTE, file=sys.stderr)


def ridge_words_file(subject, model, suffix):
    """R/decoding/sub-S/model-M/sub-S_model-M_desc-ridge_<suffix>: word classification by the ridge decoder."""
    return decoding_file(subject, model, f"desc-ridge_{suffix}")


def ridge_words_targets(suffix="words.json"):
    """The ridge word classification of every (subject, configured model), with the decoding section."""
    if not RIDGE_WORDS_ENABLED:
        return []
    return [ridge_words_file(subject, model, suffix) for subject in SUBJECTS for model in config["models"]]


def word_classification_runs(suffix):
    """One file of every word classification run: ridge (fMRI), contrastive (frozen, LoRA), EEG."""
    return ridge_words_targets(suffix) + contrastive_decoding_targets(suffix) + eeg_word_targets(suffix)


def vocabulary_manifest(model):
    """This checkout's record of the store entry of the vocabulary read alone by a model."""
    return f"{RESULTS}/decoding/vocabulary/model-{model}.json"


def contrastive_decoding_file(subject, model, layer, suffix):
    """R/decoding/sub-S/model-M/sub-S_model-M_layer-NN_<suffix>; ``layer`` an index or the "{layer}" wildcard."""
    return decoding_file(subject, model, f"layer-{layer if isinstance(layer, str) else f'{int(layer):02d}'}_{suffix}")


def lora_decoding_file(subject, model, suffix):
    """R/decoding/sub-S/model-M/sub-S_model-M_layer-NN_desc-lora_<suffix>, NN = contrastive.lora.layer."""
    return decoding_file(subject, model, f"layer-{int(CONTRASTIVE_SETTINGS['lora']['layer']):02d}_desc-lora_{suffix}")


def contrastive_decoding_targets(suffix):
    """One file of every (subject, configured model) and frozen contrastive layer, then of every LoRA run."""
    frozen = [contrastive_decoding_file(s, m, layer, suffix) for s in SUBJECTS for m in config["models"]
              for layer in CONTRASTIVE_SETTINGS["layers"]] if FROZEN_DECODING_ENABLED else []
    lora = [lora_decoding_file(s, m, suffix) for s in SUBJECTS for m in config["models"]] if LORA_DECODING_ENABLED else []
    return frozen + lora


def contrastive_run_inputs(wildcards):
    """Inputs of a frozen contrastive run beyond its features and responses: the encoding scores at its
    layer (contrastive.voxel_fraction) and the vocabulary with the training stories' words (contrastive.words)."""
    inputs = {}
    if CONTRASTIVE_SETTINGS["voxel_fraction"] is not None:
        inputs["scores"] = encoding_file(wildcards.subject, wildcards.model, "scores.tsv", wildcards.layer)
    if CONTRASTIVE_SETTINGS["words"]["enabled"]:
        inputs.update(
            words=[words_tsv(story) for story in DATASET["train_stories"]],
            vocabulary=VOCABULARY,
            vocabulary_manifest=vocabulary_manifest(wildcards.model),
            train_entries=[feature_manifest(wildcards.model, story) for story in DATASET["train_stories"]],
        )
    return inputs


def contrastive_decoding_stories():
    """Validation and test stories of the contrastive runs (their words are scored)."""
    split = brainllm_contrastive.story_split(DATASET["train_stories"], DATASET["test_stories"], CONTRASTIVE_SETTINGS["validation_story"])
    return split["validation"] + split["test"]


def report_decoding_figures():
    """The identification curves and, with word classification runs (ridge, contrastive, EEG), its figure and tables."""
    files = []
    if DECODING_ENABLED and SUBJECTS and rules.has("decoding_identification"):
        files += report_figure_files([f"{REPORT_DIR}/decoding/identification"])
        if LABELS_ENABLED and rules.has("decoding_labels"):
            files += report_figure_files([f"{REPORT_DIR}/decoding/labels"])
    if word_classification_runs("words.json") and rules.has("report_word_classification"):
        files += report_figure_files([f"{REPORT_DIR}/decoding/word_classification"])
        files += vocabulary_tables()
    return files


def vocabulary_tables():
    """The searchable HTML vocabulary table of every word classification run, in the report."""
    return [path.replace(f"{RESULTS}/decoding/", f"{REPORT_DIR}/decoding/").replace(f"{RESULTS}/eeg/encoding/", f"{REPORT_DIR}/decoding/eeg/")
            .replace("_vocabulary.tsv", "_vocabulary.html") for path in word_classification_runs("vocabulary.tsv")]


# --- end decoding -----------------------------------------------------------------


# --- BIDS derivative ------------------------------------------------------------------

from brainllm import derivatives as brainllm_derivatives


def derivative_maps():
    """Every NIfTI map of the run → what its sidecar describes (brainllm.derivatives)."""
    maps = {}
    for subject in SUBJECTS:
        ingest_dir = os.path.dirname(ingested(subject))
        maps[ingest_mask(subject)] = {"kind": "mask", "subject": subject, "sources": []}
        maps[f"{ingest_dir}/mean.nii.gz"] = {"kind": "mean", "subject": subject, "sources": []}
        if DATASET.get("atlas"):
            maps[atlas_files(subject)[0]] = {"kind": "atlas", "subject": subject, "sources": [ingest_mask(subject)]}
        maps[preprocessed_mask(subject)] = {"kind": "analysis_mask", "subject": subject, "sources": [ingest_mask(subject)]}
        models = [(model, model) for model in config["models"]]
        models += [(name, base) for name, (tuned_subject, base) in TUNED_MODELS.items() if tuned_subject == subject]
        for model, _ in models:
            encoding = {"subject": subject, "model": model, "model_cfg": MODELS[model]}
            layers = model_layers(model)
            for layer in layers:
                maps[encoding_file(subject, model, "r.nii.gz", layer)] = {
                    **encoding, "kind": "r", "layer": int(layer),
                    "summary": encoding_file(subject, model, "summary.json", layer),
                    "sources": [aligned_features(subject, model), preprocessed(subject), preprocessed_mask(subject)],
                }
            if model in config["models"]:
                maps[encoding_file(subject, model, "bestlayer.nii.gz")] = {
                    **encoding, "kind": "bestlayer",
                    "sources": [encoding_file(subject, model, "scores.tsv", layer) for layer in layers],
                }
    return maps


# --- end BIDS derivative --------------------------------------------------------------


# --- group (across subjects) --------------------------------------------------------
# Runs when the config has a `group:` section (two or more subjects; config/README.md)
# and the encoding stage saves its test predictions.

GROUP_ENABLED = brainllm_configuration.stage_enabled(config, "group") and ENCODING.get("save_predictions", True)
GROUP = brainllm_configuration.stage_settings(config, "group")


def group_file(model, suffix):
    """R/group/model-M_<suffix> (docs/outputs.md, group)."""
    return f"{RESULTS}/group/model-{model}_{suffix}"


def group_targets(suffix="transfer.tsv"):
    return [group_file(model, suffix) for model in config["models"]] if GROUP_ENABLED else []


def isc_targets():
    return [f"{RESULTS}/group/isc.json"] if GROUP_ENABLED else []


def group_transfer_inputs(wildcards):
    """Every subject's responses, layer table, per-layer scores and predictions (and ground truth)."""
    inputs = {
        "responses": [preprocessed(subject) for subject in SUBJECTS],
        "layers": [encoding_file(subject, wildcards.model, "layers.tsv") for subject in SUBJECTS],
        "scores": [encoding_file(s, wildcards.model, "scores.tsv", layer) for s in SUBJECTS for layer in model_layers(wildcards.model)],
        "predictions": [encoding_file(s, wildcards.model, "predictions.h5", layer) for s in SUBJECTS for layer in model_layers(wildcards.model)],
    }
    if DATASET.get("ground_truth"):
        inputs["truth"] = DATASET["ground_truth"]
        inputs["dataset_masks"] = [ingest_mask(subject) for subject in SUBJECTS]
        inputs["masks"] = [preprocessed_mask(subject) for subject in SUBJECTS]
    return inputs


def group_isc_inputs(wildcards):
    """Every subject's responses and mask, its atlas (when configured) and the ground truth (the demo)."""
    inputs = {"responses": [preprocessed(s) for s in SUBJECTS], "masks": [preprocessed_mask(s) for s in SUBJECTS]}
    if DATASET.get("atlas"):
        inputs["atlases"] = [path for s in SUBJECTS for path in atlas_files(s)]
    if DATASET.get("ground_truth"):
        inputs["truth"] = DATASET["ground_truth"]
        inputs["dataset_masks"] = [ingest_mask(s) for s in SUBJECTS]
    return inputs


# group.shared_encoder, for the contrastive_shared rule. One contrastive model across subjects, scored on the
# test story for its training subjects and for held-out subjects through a new input layer
SHARED_ENCODER_SECTION = brainllm_configuration.shared_encoder_section(config) if GROUP_ENABLED else None
SHARED_ENCODER = None if SHARED_ENCODER_SECTION is None else brainllm_contrastive.shared_encoder_settings(
    SHARED_ENCODER_SECTION, brainllm_contrastive.frozen_section(CONTRASTIVE), SUBJECTS
)


def shared_encoder_targets(suffix="shared_encoder.tsv"):
    return group_targets(suffix) if SHARED_ENCODER is not None else []


def shared_encoder_single_runs():
    """(subject, layer) of the single-subject contrastive runs beside the shared encoder: its layers that rule contrastive trains."""
    layers = [int(layer) for layer in SHARED_ENCODER.contrastive["layers"] if layer in CONTRASTIVE_SETTINGS["layers"]]
    return [(subject, layer) for subject in SUBJECTS for layer in layers]


def shared_encoder_inputs(wildcards):
    """Every subject's aligned features and responses, and the single-subject runs' config and weights."""
    runs = [f"{CONTRASTIVE_OUT.format(subject=s, model=wildcards.model)}/layer-{layer:02d}" for s, layer in shared_encoder_single_runs()]
    return {
        "features": [aligned_features(subject, wildcards.model) for subject in SUBJECTS],
        "responses": [preprocessed(subject) for subject in SUBJECTS],
        "single_configs": [f"{run}/config.json" for run in runs],
        "single_weights": [f"{run}/model.safetensors" for run in runs],
    }


def report_group_figures():
    if not (GROUP_ENABLED and rules.has("group_transfer")):
        return []
    stems = [f"{REPORT_DIR}/group/subjects", f"{REPORT_DIR}/group/transfer", f"{REPORT_DIR}/group/isc"]
    if SHARED_ENCODER is not None and rules.has("report_group_shared_encoder"):
        stems.append(f"{REPORT_DIR}/group/shared_encoder")
    return report_figure_files(stems)


# --- end group ----------------------------------------------------------------------


# --- generation (brain → text) -------------------------------------------------------
# Runs when the config has a `generation:` section. llm.source workflow:story-lm is the
# word-level LM that rule story_lm trains on the training stories (brainllm.story_lm).

GENERATION_ENABLED = brainllm_configuration.stage_enabled(config, "generation")
GENERATION = brainllm_configuration.stage_settings(config, "generation")
STORY_LM_SOURCE = "workflow:story-lm"
STORY_LM_DIR = f"{RESULTS}/generation/story-lm"


def generation_llm():
    """The generation LLM's model entry, the workflow's story LM resolved to its directory."""
    llm = dict(GENERATION.get("llm") or {})
    if llm.get("source") == STORY_LM_SOURCE:
        llm["source"] = STORY_LM_DIR
    return llm


def generation_llm_files():
    """The story LM's weights when generation uses it (a rule input), else nothing."""
    if (GENERATION.get("llm") or {}).get("source") == STORY_LM_SOURCE:
        return [f"{STORY_LM_DIR}/model.safetensors"]
    return []


def story_lm_stories():
    """The story LM's stories: the training stories but generation's validation story, so that the
    decoders' early stopping reads text the generator never saw."""
    validation = GENERATION.get("brain_prompt", {}).get("validation_story") or DATASET["train_stories"][-1]
    return [story for story in DATASET["train_stories"] if story != validation]


def generation_file(subject, suffix):
    """R/generation/sub-S/brain_prompt/<suffix> (docs/outputs.md, generation)."""
    return f"{RESULTS}/generation/sub-{subject}/brain_prompt/{suffix}"


def generation_targets(suffix="scores.json"):
    return [generation_file(subject, suffix) for subject in SUBJECTS] if GENERATION_ENABLED else []


def eeg_generation_file(subject, suffix):
    """R/eeg/generation/sub-S/brain_prompt/<suffix>: EEG → text (docs/outputs.md, EEG)."""
    return f"{RESULTS}/eeg/generation/sub-{subject}/brain_prompt/{suffix}"


def eeg_generation_targets(suffix="scores.json"):
    return [eeg_generation_file(subject, suffix) for subject in EEG_SUBJECTS] if GENERATION_ENABLED and EEG_ENABLED else []


BEAM_SEARCH = GENERATION.get("beam_search")
BEAM_SEARCH_MODEL = (BEAM_SEARCH or {}).get("model") or next(iter(config["models"]))


def beam_search_file(subject, suffix):
    """R/generation/sub-S/beam_search/<suffix> (docs/outputs.md, generation)."""
    return f"{RESULTS}/generation/sub-{subject}/beam_search/{suffix}"


def beam_search_targets(suffix="scores.json"):
    return [beam_search_file(subject, suffix) for subject in SUBJECTS] if GENERATION_ENABLED and BEAM_SEARCH is not None else []


def report_generation_figures():
    if not (GENERATION_ENABLED and rules.has("report_generation")):
        return []
    files = report_figure_files([f"{REPORT_DIR}/generation/brain_prompt"]) + [f"{REPORT_DIR}/generation/brain_prompt_examples.tsv"]
    return files + ([f"{REPORT_DIR}/generation/beam_search.tsv"] if BEAM_SEARCH is not None else [])


# --- end generation -----------------------------------------------------------------


def final_targets():
    targets = [words_tsv(story) for story in STORIES]
    targets += [preprocessed(subject) for subject in SUBJECTS]
    targets += [feature_manifest(model, story) for model in MODELS for story in STORIES]
    targets += encoding_targets()
    targets += contrastive_targets()
    targets += decoding_targets()
    targets += contrastive_decoding_targets("words.json") + ridge_words_targets()
    targets += label_targets()
    targets += group_targets() + group_targets("subject_layers.tsv") + isc_targets() + shared_encoder_targets()
    targets += generation_targets() + beam_search_targets()
    targets += eeg_targets() + eeg_word_targets() + eeg_generation_targets()
    targets += [f"{RESULTS}/report/manifest.tsv"]  # report: every registered figure
    targets += [f"{RESULTS}/dataset_description.json"]  # results/ as a BIDS derivative
    return targets


# --- EEG ---------------------------------------------------------------------------


EEG_ENABLED = brainllm_configuration.stage_enabled(config, "eeg")
EEG = brainllm_configuration.stage_settings(config, "eeg")
EEG_SUBJECTS = [str(s) for s in (EEG.get("subjects") or DATASET["subjects"])] if EEG_ENABLED else []
EEG_ROOT = EEG.get("root") or DATASET["root"]
EEG_MODELS = [model for model in MODELS if model not in TUNED_MODELS]  # brain-tuned models belong to an fMRI subject


def eeg_sources(wildcards):
    """Every file of a subject's EEG recordings (data, sidecars, channels, events) under the BIDS root."""
    if dataset_ready():
        return dataset_ready()
    import glob

    from brainllm.eeg import recording_stories

    folder = os.path.join(EEG_ROOT, f"sub-{wildcards.subject}")
    files = [path for task in recording_stories(STORIES, DATASET)
             for path in glob.glob(os.path.join(folder, "**", "eeg", f"sub-{wildcards.subject}_*task-{task}_*"), recursive=True)]
    files += glob.glob(os.path.join(folder, "**", "eeg", "*_electrodes.tsv"), recursive=True)
    files += glob.glob(os.path.join(folder, "**", "eeg", "*_coordsystem.json"), recursive=True)
    return sorted(set(files))


# What each EEG job reads of the config (params: a change reruns only the jobs it concerns)
EEG_DATASET = {key: DATASET.get(key) for key in ("subjects", "root", "bids", "segments", "train_stories", "test_stories")}
EEG_INGEST = {key: EEG[key] for key in ("subjects", "root", "montage", "word_column", "events_trial_type", "h_freq") if key in EEG}
# an EEG-only dataset's story words come from the recordings' events (rule ingest_words)
EEG_WORD_SOURCE = {key: EEG[key] for key in ("subjects", "root", "word_column", "events_trial_type") if key in EEG} if EEG_ONLY else {}
EEG_ENCODING = {key: value for key, value in EEG.items() if key not in ("epochs", "generation")}
EEG_WORDS = {key: EEG[key] for key in ("alphas", "epochs", "block_words", "seed") if key in EEG}
EEG_GENERATION = {key: EEG[key] for key in ("epochs", "generation", "block_words") if key in EEG}
# generation.brain_prompt less fMRI's segment keys, which EEG → text does not read
EEG_BRAIN_PROMPT = {key: value for key, value in GENERATION.get("brain_prompt", {}).items()
                    if key not in ("segment_trs", "stride_trs", "delays", "block_trs")}
EEG_PREPROCESS = {key: EEG[key] for key in ("line_freq", "l_freq", "h_freq", "reference", "interpolate_bads", "ica", "resample_hz", "seed") if key in EEG}


def eeg_file(subject, model, name):
    return f"{RESULTS}/eeg/encoding/sub-{subject}/model-{model}/sub-{subject}_model-{model}_{name}"


def eeg_targets(name="summary.json"):
    return [eeg_file(subject, model, name) for subject in EEG_SUBJECTS for model in EEG_MODELS] if EEG_ENABLED else []


def eeg_word_targets(name="words.json"):
    """EEG word classification (with the decoding section)."""
    return eeg_targets(name) if brainllm_configuration.stage_enabled(config, "decoding") else []


def eeg_ground_truth():
    """The demo's ground truth (planted channels and latency) when the dataset has one."""
    return {"truth": DATASET["ground_truth"]} if DATASET.get("ground_truth") else {}


def report_eeg_figures():
    if not (EEG_ENABLED and rules.has("report_eeg")):
        return []
    return report_figure_files([f"{REPORT_DIR}/eeg/model-{model}" for model in EEG_MODELS])
