"""The run's configuration, checked before any job runs (called by the Snakefile; no torch).

One config describes a run: the user's files (``--configfile a.yaml [b.yaml …]``, later
files updating earlier ones) or, when none is given, ``config/config.yaml``; never a merge
of the two. ``--config key=value`` updates either. Defaults come from the schema
(``default:`` values, filled in by validation). Order, as the Snakefile calls it:

1. :func:`check_files`: every config file parses and holds no key twice (YAML otherwise
   keeps the last silently, e.g. a model listed twice).
2. :func:`prepare`: unknown top-level sections, keys given twice (``trim_start`` and
   ``trim_start_s``), ``--config`` strings coerced where the schema wants numbers/booleans.
3. :func:`validate`: the schema's types and ranges, its defaults filled in.
4. :func:`finish`: trims in seconds → TRs, settings that only make sense together
   (models with identical settings, trims vs delays), configured files that are missing.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from .io import InputError

logger = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
# model settings that do not change the extracted numbers (two models differing only in them are one model)
MODEL_RUNTIME_KEYS = ("batch_size", "device", "layers", "size_params", "trust_remote_code")


# --------------------------------------------------------------------------- files


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping holding the same key twice."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise InputError(
                loader.name,
                f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                "YAML would silently keep the last.",
                "keep one entry (give each model its own name).",
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FastSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the 46 kB schema in 0.02 s, not 0.15 s


def load_strict(path: str | Path) -> dict:
    """A YAML config file as a dict; a duplicated key or a non-mapping top level is an error."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        loader = _StrictLoader(handle)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as error:
            raise InputError(path, f"not valid YAML: {error}", "fix the syntax at the line shown.") from None
        finally:
            loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "a config file must be a mapping of sections (results:, dataset:, models:, …).", None)
    return data


def check_files(paths: Sequence[str | Path]) -> None:
    for path in paths:
        load_strict(path)


# --------------------------------------------------------------------------- before validation


@functools.cache
def _parsed_schema() -> dict:
    return yaml.load(SCHEMA.read_text(encoding="utf-8"), Loader=_FastSafeLoader)


def load_schema() -> dict:
    """The config schema (parsed once per process; each caller gets its own copy)."""
    return copy.deepcopy(_parsed_schema())


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _leaf_paths(value, (*prefix, index))
    else:
        yield prefix, tree


def _type_errors(errors):
    for error in errors:
        if error.validator == "type":
            yield error
        yield from _type_errors(error.context or ())


def coerce_cli_values(config: dict, cli_config: Mapping, schema: Mapping) -> None:
    """Turn strings set by ``--config`` into numbers, booleans or null where the schema wants one.

    Snakemake parses nested ``--config`` values (``encoding={alphas: {log10_min: -2}}``) as
    strings; a string stays a string wherever the schema accepts one (subject labels).
    """
    import jsonschema

    cli_paths = {path for path, value in _leaf_paths(dict(cli_config)) if isinstance(value, str)}
    validator = jsonschema.Draft202012Validator(schema)
    for _ in range(len(cli_paths) + 1):
        changed = False
        for error in _type_errors(validator.iter_errors(config)):
            path = tuple(error.absolute_path)
            wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            if path not in cli_paths or not isinstance(error.instance, str) or "string" in wanted:
                continue
            value = yaml.safe_load(error.instance)
            kinds = {"number": (int, float), "integer": (int,), "boolean": (bool,), "null": (type(None),)}
            if any(isinstance(value, kinds.get(kind, ())) and not (kind != "boolean" and isinstance(value, bool)) for kind in wanted):
                parent = config
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = value
                changed = True
        if not changed:
            return


def prepare(config: dict, cli_config: Mapping, schema: Mapping | None = None) -> None:
    """Checks and coercions that must happen before the schema fills in defaults."""
    schema = load_schema() if schema is None else schema
    known = list(schema["properties"])
    unknown = [key for key in config if key not in known]
    if unknown:
        raise InputError(
            None,
            f"config section(s) {', '.join(map(repr, unknown))} are not part of brainllm (sections: {', '.join(known)}).",
            "remove the section or fix its spelling (config/README.md lists every key).",
        )
    for key in [key for key, value in config.items() if value is None]:
        del config[key]  # a null section is an absent one (an optional stage is off)
    dataset = config.get("dataset") or {}
    for name in ("trim_start", "trim_end"):
        if name in dataset and f"{name}_s" in dataset and dataset[f"{name}_s"] is not None:
            raise InputError(
                None, f"dataset.{name} (TRs) and dataset.{name}_s (seconds) are both set.", f"keep one of the two."
            )
    coerce_cli_values(config, cli_config, schema)


# --------------------------------------------------------------------------- after validation


def trs_from_seconds(seconds: float, tr: float) -> int:
    """TRs that cover ``seconds`` (rounded up: at least that much is removed)."""
    return int(math.ceil(seconds / tr - 1e-6))


def resolve_trims(dataset: dict) -> None:
    """``trim_start_s``/``trim_end_s`` (seconds) → ``trim_start``/``trim_end`` (TRs), in place."""
    for name in ("trim_start", "trim_end"):
        seconds = dataset.get(f"{name}_s")
        if seconds is not None:
            dataset[name] = trs_from_seconds(seconds, dataset["tr"])
            logger.info("dataset.%s_s = %g s -> %s = %d TRs of %g s", name, seconds, name, dataset[name], dataset["tr"])


def max_delay(config: Mapping) -> int:
    """Largest FIR delay in TRs over the stages that use delays."""
    delays = list(config["encoding"]["delays"])
    contrastive = config.get("contrastive")
    if contrastive and contrastive.get("enabled", True):
        delays += list(contrastive.get("delays") or [])
    return max(delays)


def min_kept_trs(config: Mapping) -> int:
    """Fewest TRs a run may keep after trimming: two of the longest delay (docs: config/README.md)."""
    return 2 * max_delay(config)


def check_models(models: Mapping[str, Mapping]) -> None:
    """Two model names with the same source and extraction settings are one model listed twice."""
    seen: dict = {}
    for name, settings in models.items():
        key = repr(sorted((k, repr(v)) for k, v in settings.items() if k not in MODEL_RUNTIME_KEYS))
        if key in seen:
            raise InputError(
                None,
                f"models.{seen[key]} and models.{name} have the same source and extraction settings: the model is listed twice.",
                f"remove one of them (or change a setting such as context_words).",
            )
        seen[key] = name


def check_run_lengths(config: Mapping, n_trs_by_run: Mapping[tuple[str, str], int]) -> None:
    """Every run keeps at least :func:`min_kept_trs` TRs after ``trim_start`` + ``trim_end``."""
    dataset = config["dataset"]
    trim_start, trim_end, needed = dataset["trim_start"], dataset["trim_end"], min_kept_trs(config)
    for (subject, story), n_trs in sorted(n_trs_by_run.items()):
        if n_trs - trim_start - trim_end < needed:
            raise InputError(
                None,
                f"dataset.trim_start = {trim_start} and dataset.trim_end = {trim_end} TRs leave "
                f"{n_trs - trim_start - trim_end} of the {n_trs} TRs of run {story!r} (subject {subject}); "
                f"at least {needed} (2 × the longest delay) are needed.",
                "lower dataset.trim_start / trim_end (or give them in seconds: trim_start_s / trim_end_s).",
            )


def _dataset_files(dataset: Mapping) -> list[tuple[str, str]]:
    """(key, path) of every configured file inside the dataset, ``{subject}`` filled in."""
    root = Path(dataset["root"])
    files = []
    for key in ("mask", "atlas"):
        if dataset.get(key):
            files += [(f"dataset.{key}", str(root / dataset[key].format(subject=s))) for s in dataset["subjects"]]
    if dataset.get("atlas_labels"):
        files.append(("dataset.atlas_labels", str(root / dataset["atlas_labels"])))
    if dataset.get("atlas") and not dataset.get("atlas_labels"):
        raise InputError(None, "dataset.atlas is set but dataset.atlas_labels is not.", "give the TSV with columns index name.")
    if (dataset.get("wordcsv") or {}).get("words"):
        files.append(("dataset.wordcsv.words", str(root / dataset["wordcsv"]["words"])))
    if dataset.get("ground_truth"):
        files.append(("dataset.ground_truth", dataset["ground_truth"]))
    return files


def check_dataset_files(dataset: Mapping) -> None:
    """The dataset root and every configured file in it exist (call when the dataset is not generated by the run)."""
    root = Path(dataset["root"])
    if not root.is_dir():
        raise InputError(root, "dataset.root is not a folder.", "set dataset.root to your copy of the dataset.")
    for key, path in _dataset_files(dataset):
        if not Path(path).is_file():
            raise InputError(path, f"{key} is set but this file does not exist.", f"fix {key} (relative to dataset.root) or set it to null.")


def ds003020_run_lengths(dataset: Mapping) -> dict[tuple[str, str], int]:
    """Raw TRs per (subject, story) from respdict.json (the same for every subject)."""
    import json

    path = Path(dataset["root"]) / "derivative" / "respdict.json"
    if not path.is_file():
        return {}
    respdict = json.loads(path.read_text())
    runs = set(dataset["train_stories"]) | set(dataset["test_stories"]) | set(dataset.get("segments") or {})
    return {(subject, story): int(respdict[story]) for subject in dataset["subjects"] for story in runs if story in respdict}


def bids_run_lengths(dataset: Mapping) -> dict[tuple[str, str], int]:
    """Raw TRs per (subject, task) of raw BIDS BOLD runs, read from the NIfTI headers (shortest run)."""
    import nibabel as nib

    root = Path(dataset["root"])
    bids = dataset.get("bids") or {}
    if bids.get("space") or bids.get("desc"):
        return {}  # fMRIPrep derivatives: checked at preprocessing
    runs = set(dataset["train_stories"]) | set(dataset["test_stories"]) | set(dataset.get("segments") or {})
    lengths: dict[tuple[str, str], int] = {}
    for subject in dataset["subjects"]:
        for story in runs:
            for path in root.glob(f"sub-{subject}/**/func/sub-{subject}_*task-{story}_*bold.nii*"):
                shape = nib.load(path).shape
                n_trs = shape[3] if len(shape) == 4 else 1
                lengths[(subject, story)] = min(n_trs, lengths.get((subject, story), n_trs))
    return lengths


def validate(config: dict, schema: Mapping | None = None) -> None:
    """Check ``config`` against the schema and fill in its ``default:`` values, in place.

    A mapping's defaults are set before its keys are checked (as Snakemake's ``validate``
    does), so a section given as ``{}`` gets every default of its keys. The first error
    (jsonschema's best match) stops the run, naming the key."""
    import jsonschema

    schema = load_schema() if schema is None else schema
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, spec in properties.items():
                if "default" in spec and name not in instance:
                    instance[name] = copy.deepcopy(spec["default"])
        yield from check_properties(validator, properties, instance, subschema)

    errors = list(jsonschema.validators.extend(base, {"properties": fill_defaults})(schema).iter_errors(config))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        where = ".".join(map(str, error.absolute_path)) or "(top level)"
        raise InputError(None, f"config key {where}: {error.message}.",
                         "see config/README.md for the key (its type and range: workflow/schemas/config.schema.yaml).")


def finish(config: dict, check_inputs: bool = True) -> dict:
    """Resolve and cross-check the validated config in place; returns it.

    ``check_inputs``: also check the dataset's files and run lengths (the Snakefile does
    it once, in the main process, and skips it when the run generates the dataset).
    """
    dataset = config["dataset"]
    if is_image_dataset(config):
        check_images(config)
        if check_inputs:
            check_dataset_files(dataset)
            generative = (config["visual"].get("reconstruction") or {}).get("generative")
            if generative and not Path(generative["pipeline"]).is_dir():
                raise InputError(generative["pipeline"], "visual.reconstruction.generative.pipeline is not a folder.",
                                 "give the local folder of a StableUnCLIPImg2ImgPipeline (e.g. stable-diffusion-2-1-unclip), or set generative: null.")
        return config
    if stage_enabled(config, "visual"):
        raise InputError(None, "the visual section analyses image stimuli, but dataset.stimuli is words.",
                         "set dataset.stimuli: images (events with a stim_file column), or remove the visual section.")
    check_modality(config)
    if not is_eeg_only(config):  # TRs: fMRI only
        resolve_trims(dataset)
    check_models(config["models"])
    overlap = sorted(set(dataset["train_stories"]) & set(dataset["test_stories"]))
    if overlap:
        raise InputError(None, f"stories {overlap} are in both dataset.train_stories and dataset.test_stories.", "list each story once.")
    generation = config.get("generation") if stage_enabled(config, "generation") else None
    if dataset.get("word_separator", " ") != " ":  # every model joins the dataset's words as its script needs, unless set per model
        for model_cfg in config["models"].values():
            model_cfg.setdefault("word_separator", dataset["word_separator"])
        if generation and generation["llm"].get("source") != "workflow:story-lm":  # the story LM's words are space-separated
            generation["llm"].setdefault("word_separator", dataset["word_separator"])
    words = (config.get("decoding") or {}).get("words")
    if isinstance(words, dict):  # the vocabulary's word list and frequencies are the stories' language unless set
        words.setdefault("vocabulary", {}).setdefault("language", dataset.get("language", "en"))
    beam_model = ((generation or {}).get("beam_search") or {}).get("model")
    if beam_model is not None and beam_model not in config["models"]:
        raise InputError(None, f"generation.beam_search.model {beam_model!r} is not one of models: {', '.join(config['models'])}.",
                         "name a models: entry (its encoding model scores the candidates), or null for the first.")
    labels = (config.get("decoding") or {}).get("labels") or {}
    if labels.get("source") == "lexicon" and dataset.get("language", "en") != "en":
        raise InputError(None, f"decoding.labels.source is lexicon but dataset.language is {dataset['language']!r}; the NRC and VADER "
                         "lexicons are English.", "give the annotations as a table or in the events (source: table or events).")
    if stage_enabled(config, "group") and len(dataset["subjects"]) < 2:
        raise InputError(None, f"the group section compares subjects, dataset.subjects lists {len(dataset['subjects'])}.",
                         "list two or more subjects, or leave the group section out.")
    if stage_enabled(config, "group") and not config["encoding"].get("save_predictions", True):
        raise InputError(None, "the group section needs the encoding models' test predictions, but encoding.save_predictions is false.",
                         "set encoding.save_predictions: true, or leave the group section out.")
    check_contrastive_layers(config)
    check_shared_encoder(config)
    check_segmenter(dataset)
    check_word_separator(dataset)
    check_eeg(config)
    if check_inputs:
        check_dataset_files(dataset)
        if not is_eeg_only(config):
            lengths = ds003020_run_lengths(dataset) if dataset["layout"] == "ds003020" else bids_run_lengths(dataset)
            check_run_lengths(config, lengths)
    return config


# mappings whose order means something: the first model is a default, and figures list models in the config's order
ORDERED_MAPPINGS = {("models",), ("visual", "models")}


def canonical_order(value, path: tuple = ()) -> None:
    """Sort every mapping's keys in place, recursively, but the model lists' order.

    Rules pass config sections as params, and Snakemake compares params with their key
    order: without this, the same config written with its keys in another order (a
    reformatted YAML, a tool's dump) would rerun every job.
    """
    if isinstance(value, dict):
        for key in (list(value) if path in ORDERED_MAPPINGS else sorted(value)):
            item = value.pop(key)
            value[key] = item
            canonical_order(item, path + (key,))
    elif isinstance(value, list):
        for item in value:
            canonical_order(item, path + ("[]",))


def is_image_dataset(config: Mapping) -> bool:
    """``dataset.stimuli: images``: events name image files; only the visual section's stages run."""
    return config["dataset"].get("stimuli", "words") == "images"


# the stages that read words (every section but the visual one is about stories)
WORD_SECTIONS = ("models", "contrastive", "decoding", "group", "generation", "eeg")


def check_images(config: dict) -> dict:
    """An image dataset: fMRI in BIDS, a visual section, no stage that needs words; train and test runs distinct."""
    dataset = config["dataset"]
    if dataset["layout"] != "bids":
        raise InputError(None, f"dataset.stimuli images reads BIDS runs whose events name images, but dataset.layout is {dataset['layout']!r}.",
                         "set dataset.layout: bids.")
    if dataset.get("modality", "fmri") != "fmri":
        raise InputError(None, "dataset.stimuli images analyses fMRI responses, but dataset.modality is eeg.", "set dataset.modality: fmri.")
    for section in WORD_SECTIONS:
        if config.get(section) is not None:
            what = "lists language models (vision models go in visual.models)" if section == "models" else "analyses words"
            raise InputError(None, f"the {section} section {what}, but dataset.stimuli is images.", f"remove the {section} section.")
    if dataset.get("segments") or dataset.get("segmenter", "none") != "none" or dataset.get("wordcsv"):
        raise InputError(None, "dataset.segments / segmenter / wordcsv cut or read words, but dataset.stimuli is images.", "remove them.")
    overlap = sorted(set(dataset["train_stories"]) & set(dataset["test_stories"]))
    if overlap:
        raise InputError(None, f"runs {overlap} are in both dataset.train_stories and dataset.test_stories.", "list each run (task) once.")
    return config


def is_eeg_only(config: Mapping) -> bool:
    """``dataset.modality: eeg``: the dataset's subjects have EEG recordings only, no fMRI stage runs."""
    return config["dataset"].get("modality", "fmri") == "eeg"


# what an EEG-only dataset cannot have: settings naming fMRI files or layouts, and stages that read BOLD responses
FMRI_ONLY_DATASET_KEYS = {
    "mask": "a brain mask of the BOLD grid", "atlas": "an ROI atlas of the BOLD grid", "atlas_labels": "the atlas's labels",
    "repeats_dir": "ds003020 repeat runs", "wordcsv": "a word table for fMRI runs",
}
FMRI_ONLY_SECTIONS = {
    "contrastive": "trains brain↔text models on fMRI responses",
    "group": "compares the fMRI subjects' encoding models and responses",
}


def check_modality(config: Mapping) -> None:
    """With ``dataset.modality: eeg``: an eeg section, BIDS, and no setting or stage that needs fMRI."""
    if not is_eeg_only(config):
        return
    dataset = config["dataset"]
    fix = "leave it out (an EEG-only dataset has no BOLD), or set dataset.modality: fmri."
    if not stage_enabled(config, "eeg"):
        raise InputError(None, "dataset.modality is eeg but the config has no (enabled) eeg section, so nothing would run.",
                         "add an eeg section: `eeg: {}` takes every default (config/README.md, eeg).")
    others = sorted(set(config["eeg"].get("subjects") or ()) - set(dataset["subjects"]))
    if others:
        raise InputError(None, f"eeg.subjects {others} are not in dataset.subjects, which are the EEG subjects of an EEG-only dataset.",
                         "list every subject in dataset.subjects (eeg.subjects may pick some of them), or set eeg.subjects: null.")
    if dataset["layout"] != "bids":
        raise InputError(None, f"dataset.modality eeg reads BIDS EEG (sub-*/eeg/ with *_events.tsv), but dataset.layout is {dataset['layout']!r}.",
                         "set dataset.layout: bids.")
    for key, what in FMRI_ONLY_DATASET_KEYS.items():
        if dataset.get(key):
            raise InputError(None, f"dataset.{key} ({what}) is set but dataset.modality is eeg.", fix)
    for key in ("space", "desc"):
        if (dataset.get("bids") or {}).get(key):
            raise InputError(None, f"dataset.bids.{key} chooses fMRIPrep BOLD series but dataset.modality is eeg.", fix)
    if dataset.get("segments"):
        raise InputError(None, "dataset.segments cuts runs at TR boundaries of the fMRI, and dataset.modality is eeg: an EEG-only "
                         "dataset cannot split a recording into stories.", "record (or export) each story as its own BIDS task and list those.")
    if dataset.get("segmenter", "none") != "none":
        raise InputError(None, f"dataset.segmenter {dataset['segmenter']!r} cuts event rows into words, but EEG events must list words "
                         "(each word's epoch starts at its own onset).", "set dataset.segmenter: none and list one word per events row.")
    for section, what in FMRI_ONLY_SECTIONS.items():
        if stage_enabled(config, section):
            raise InputError(None, f"the {section} section {what}, but dataset.modality is eeg.", f"remove the {section} section.")
    if ((config.get("decoding") or {}).get("labels")) and stage_enabled(config, "decoding"):
        raise InputError(None, "decoding.labels decodes annotations from fMRI responses, but dataset.modality is eeg.",
                         "remove decoding.labels (EEG word classification runs with the decoding section).")
    if ((config.get("generation") or {}).get("beam_search")) is not None and stage_enabled(config, "generation"):
        raise InputError(None, "generation.beam_search scores candidates with an fMRI encoding model, but dataset.modality is eeg.",
                         "remove generation.beam_search (EEG → text runs with the generation section).")


def contrastive_section(config: Mapping) -> dict:
    """The enabled contrastive section as its settings ({} when off): without ``enabled`` and ``keep_checkpoints``."""
    return {key: value for key, value in stage_settings(config, "contrastive").items() if key != "keep_checkpoints"}


def shared_encoder_section(config: Mapping) -> dict | None:
    """``group.shared_encoder`` when the group stage runs and the subsection is present (not null), else None."""
    return (config.get("group") or {}).get("shared_encoder") if stage_enabled(config, "group") else None


def check_contrastive_layers(config: Mapping) -> None:
    """Frozen contrastive runs read the aligned features (and, with ``voxel_fraction``, the encoding scores) of
    ``contrastive.layers``: each must be among the layers of every model that lists its layers."""
    if not stage_enabled(config, "contrastive"):
        return
    layers = contrastive_section(config).get("layers", [3])
    for name, model_cfg in config["models"].items():
        listed = model_cfg.get("layers", "all")
        missing = sorted(set(layers) - set(listed)) if isinstance(listed, list) else []
        if missing:
            raise InputError(None, f"contrastive.layers {missing} are not among models.{name}.layers {listed}, so no features "
                             "(nor encoding scores) exist for them.", f"add them to models.{name}.layers, or choose contrastive.layers among those.")


def check_shared_encoder(config: Mapping) -> None:
    """``group.shared_encoder`` needs the contrastive section and two or more training subjects."""
    from .contrastive_settings import shared_encoder_settings

    section = shared_encoder_section(config)
    if section is None:
        return
    if not stage_enabled(config, "contrastive"):
        raise InputError(None, "group.shared_encoder trains the contrastive model across subjects with the contrastive section's "
                         "settings, but the config has no (enabled) contrastive section.",
                         "add a contrastive section (`contrastive: {}` takes every default), or remove group.shared_encoder.")
    shared_encoder_settings(section, contrastive_section(config), config["dataset"]["subjects"])


#: languages whose script writes words together (ISO 639-1): their words are joined with ""
UNSPACED_LANGUAGES = ("ja", "zh", "th", "lo", "km", "my", "bo")


def check_word_separator(dataset: Mapping) -> None:
    """The separator that rebuilds text from words must be the language's: a model reading "猫 が 寝る" or "thecatsleeps"
    gets text no tokenizer was trained on, and nothing downstream would say so."""
    language, separator = dataset.get("language", "en"), dataset.get("word_separator", " ")
    unspaced = language.split("-")[0].lower() in UNSPACED_LANGUAGES
    if unspaced and separator != "":
        raise InputError(None, f"dataset.language is {language!r}, written without spaces between words, but dataset.word_separator is "
                         f"{separator!r}: models would read the words spaced apart.", 'set dataset.word_separator: "".')
    if not unspaced and separator == "":
        raise InputError(None, f'dataset.word_separator is "" (words written together), but dataset.language {language!r} spaces its words.',
                         'set dataset.word_separator: " ", or dataset.language to the stories\' language (e.g. ja, zh).')


def check_segmenter(dataset: Mapping) -> None:
    """fugashi segments Japanese: the language and the separator its words are joined with must say so."""
    if dataset.get("segmenter", "none") == "fugashi":
        if dataset.get("language", "en") != "ja":
            raise InputError(None, f"dataset.segmenter fugashi segments Japanese, but dataset.language is {dataset.get('language', 'en')!r}.",
                             "set dataset.language: ja, or dataset.segmenter: none.")
        if dataset.get("word_separator", " ") != "":
            raise InputError(None, "dataset.segmenter fugashi gives Japanese words, which are written together, but dataset.word_separator "
                             f"is {dataset.get('word_separator', ' ')!r}.", 'set dataset.word_separator: "".')


MAX_TRF_COLUMNS = 8192  # the direct TRF solver's dense Gram matrix (512 MB) and its eigendecomposition per fold


def check_eeg(config: Mapping) -> None:
    """Windows, lags and filter edges of the eeg section that the schema cannot check."""
    if not stage_enabled(config, "eeg"):
        return
    eeg = config["eeg"]
    for name, (start, end) in (eeg.get("windows") or {}).items():
        if not start < end:
            raise InputError(None, f"eeg.windows.{name} is [{start}, {end}]: its start must precede its end.", "give [start, end] in seconds after the word onset.")
    trf = eeg.get("trf") or {}
    if not trf.get("tmin", -0.1) < trf.get("tmax", 0.7):
        raise InputError(None, f"eeg.trf.tmin ({trf.get('tmin')}) must be below eeg.trf.tmax ({trf.get('tmax')}).", "set the lags in seconds, tmin < tmax.")
    components = trf.get("n_components", 16)
    rate = eeg.get("resample_hz", 100.0)
    columns = None if components is None else components * (round(trf.get("tmax", 0.7) * rate) - round(trf.get("tmin", -0.1) * rate) + 1)  # eeg.lag_samples
    if trf.get("solver") == "direct" and columns is not None and columns > MAX_TRF_COLUMNS:
        raise InputError(None, f"eeg.trf.solver is direct, and the TRF would have {columns} columns (eeg.trf.n_components × lags at "
                         f"eeg.resample_hz); the direct solver eigendecomposes a dense Gram matrix per fold, limited to {MAX_TRF_COLUMNS} columns.",
                         "set eeg.trf.solver: auto (conjugate gradients above the limit), or lower n_components, the lag range or resample_hz.")
    if eeg.get("h_freq", 20.0) * 2 >= eeg.get("resample_hz", 100.0):
        raise InputError(None, f"eeg.h_freq ({eeg.get('h_freq', 20.0)} Hz) must be below half eeg.resample_hz ({eeg.get('resample_hz', 100.0)} Hz).",
                         "lower h_freq or raise resample_hz.")
    dataset = config["dataset"]
    if len(dataset["train_stories"]) < 2:
        raise InputError(None, f"the eeg section chooses α, window and layer by leave-one-story-out cross-validation, and "
                         f"dataset.train_stories lists {len(dataset['train_stories'])}.", "list two or more training stories, or leave eeg out.")
    if stage_enabled(config, "decoding") and len(dataset["train_stories"]) < 3:
        raise InputError(None, "EEG word classification (the eeg and decoding sections) holds the validation story out and chooses α by "
                         f"leave-one-story-out over the other training stories: it needs three or more, dataset.train_stories lists "
                         f"{len(dataset['train_stories'])}.", "list three or more training stories, or leave decoding or eeg out.")
    if eeg.get("l_freq") and eeg["l_freq"] >= eeg.get("h_freq", 20.0):
        raise InputError(None, f"eeg.l_freq ({eeg['l_freq']} Hz) must be below eeg.h_freq ({eeg.get('h_freq', 20.0)} Hz).", "lower l_freq or raise h_freq.")
    epochs = eeg.get("epochs") or {}
    start, end = epochs.get("window", (0.3, 0.5))
    bins = (end - start) / epochs.get("bin_s", 0.2)
    if not start < end or abs(bins - round(bins)) > 1e-6:
        raise InputError(None, f"eeg.epochs.window [{start}, {end}] must run forward and hold a whole number of bin_s "
                         f"({epochs.get('bin_s', 0.2)} s) bins.", "e.g. window: [0.0, 0.8] with bin_s: 0.1.")


def stage_enabled(config: Mapping, section: str) -> bool:
    """An optional stage runs exactly when its section is present (not null) and not ``enabled: false``."""
    settings = config.get(section)
    return settings is not None and bool(settings.get("enabled", True))


def stage_settings(config: Mapping, section: str) -> dict:
    """The section of an enabled optional stage without its ``enabled`` switch ({} when off)."""
    if not stage_enabled(config, section):
        return {}
    return {key: copy.deepcopy(value) for key, value in config[section].items() if key != "enabled"}
