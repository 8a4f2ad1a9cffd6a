"""The Japanese demo: four short original stories, one subject, planted responses from a tiny Japanese model.

``generate_japanese`` (called by ``brainllm.demo.generate_demo``) writes, under the demo's
``out_dir``, a BIDS dataset ``bids_ja/`` and its ``ground_truth_ja.json`` (the English
demo's format, read by the workflow as ``dataset.ground_truth``). The stories are
written without spaces, as Japanese is. ``events.tsv`` lists clauses (text up to a
、 or 。), not words: the workflow cuts them into words with ``dataset.segmenter:
fugashi``, sharing each clause's time among its words by length, as a sentence-level
transcript allows. The demo times the words the same way (through
``brainllm.segmentation``), so the planted words and times are those ingestion finds.

The model (``MODEL_SOURCE``, a ``package:`` source like the English MiniLM) is a tiny
GPT-2 built here, offline and deterministically: a byte-level BPE trained on wordfreq's
most frequent Japanese words and the stories (byte-level: every text is covered, there is
no unknown token), and random weights from a fixed seed. It is built once into
``$BRAINLLM_CACHE_DIR`` (``get_model_path``), so it exists when a run is planned.
Its initialisation range is ``INIT_RANGE`` rather than GPT-2's 0.02: at 0.02 each block
adds little to the residual stream, and the word features of consecutive hidden states are
nearly the same (linear CKA 0.97 on a story), so no layer could be told from its
neighbours; at 0.2 consecutive states have CKA 0.37–0.92 and the planted layer is the
best one on validation (tests/test_demo_ja.py).

The planted signal is hidden state ``PLANTED_LAYER`` of each word's last token in its own
window of the previous ``CONTEXT_WORDS`` words joined with "" (one plain forward pass
per word), then resampled, delayed, mixed and noised by the English demo's functions.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from brainllm import __version__
from brainllm import demo
from brainllm.io import InputError, atomic_path, open_h5, write_json, write_tsv

logger = logging.getLogger(__name__)

SUBJECT = "JA01"
VOLUME_LIKE = "UTS01"  # the subject's brain has the shape of the English demo's UTS01
TRAIN_STORIES = ("yukieki", "yamayubin", "toshokan")
TEST_STORY = "watashibune"
LANGUAGE = "ja"
BIDS_DIR = "bids_ja"
GROUND_TRUTH = "ground_truth_ja.json"
PLANTED_FEATURES = "planted_features_ja.h5"
EVENTS_TRIAL_TYPE = "clause"

MODEL_SOURCE = "package:brainllm.demo_ja"
MODEL_RECIPE = 1  # raise when the model's recipe changes (its cache directory changes with it)
MODEL_SEED = 0
VOCAB_SIZE = 3000
WORDFREQ_WORDS = 10000  # wordfreq's most frequent Japanese words in the tokenizer's corpus
N_LAYERS = 4
HIDDEN = 64
N_HEADS = 4
MAX_POSITIONS = 256
INIT_RANGE = 0.2
PLANTED_LAYER = 2  # hidden-state index: 0 = embeddings, 1..N_LAYERS = blocks
CONTEXT_WORDS = 20

SECONDS_PER_CHARACTER = 0.2  # an unhurried narrator: about 5 characters (7 morae) a second
PAUSE_S = {"comma": (0.15, 0.35), "sentence": (0.5, 1.0)}
CLAUSE = re.compile(r"[^、。！？\n]+[、。！？」』]*")  # a clause with the punctuation that closes it

# Random streams: default_rng([seed, stream, ...]), apart from the English demo's (1–8).
_STREAM_TIMING, _STREAM_MIXING, _STREAM_SUBJECT, _STREAM_RUN = 101, 102, 103, 104


# --------------------------------------------------------------------------- stories


def story_names() -> tuple[str, ...]:
    return TRAIN_STORIES + (TEST_STORY,)


def story_text(story: str) -> str:
    """The packaged Japanese prose of ``story`` (paragraphs on lines, no spaces)."""
    return demo.packaged_story("stories_ja", story, story_names())


def story_clauses(text: str) -> list[tuple[str, str]]:
    """``(clause, pause after)`` in reading order; the pause is ``comma`` after 、 and ``sentence`` otherwise."""
    clauses = []
    for paragraph in text.splitlines():
        for clause in CLAUSE.findall(paragraph):
            clauses.append((clause, "comma" if clause.rstrip("」』").endswith("、") else "sentence"))
    return clauses


def speak_clauses(clauses: list[tuple[str, str]], rng: np.random.Generator) -> tuple[pd.DataFrame, int]:
    """Clause events (onset in scan seconds, duration, text) and the run's raw TRs.

    A clause lasts ``SECONDS_PER_CHARACTER`` per letter or digit (punctuation takes no time),
    jittered by ±15 % per clause; pauses follow 、 and 。. The scan starts ``demo.AUDIO_ONSET_S``
    before the audio and ends 10–12 s after it (as in the English demo).
    """
    rows = []
    t = rng.uniform(0.3, 0.8)
    for clause, pause in clauses:
        n_characters = sum(ch.isalnum() for ch in clause)
        duration = round(SECONDS_PER_CHARACTER * n_characters * np.exp(rng.normal(0.0, 0.15)), 3)
        rows.append({"onset": round(demo.AUDIO_ONSET_S + t, 3), "duration": duration, "trial_type": EVENTS_TRIAL_TYPE, "word": clause})
        t += duration + rng.uniform(*PAUSE_S[pause])
    audio_s = round(t + rng.uniform(0.4, 0.8), 3)
    n_trs_raw = int(np.ceil((demo.AUDIO_ONSET_S + audio_s + rng.uniform(10.0, 12.0)) / demo.TR))
    return pd.DataFrame(rows), n_trs_raw


def clause_words(events: pd.DataFrame) -> pd.DataFrame:
    """The words of the clause events with their times, cut as ingestion cuts them (``dataset.segmenter: fugashi``)."""
    from brainllm.segmentation import segment_words

    rows = pd.DataFrame({"word": events["word"], "onset": events["onset"], "offset": events["onset"] + events["duration"]})
    return segment_words(rows, "fugashi", "the Japanese demo's clauses")


# --------------------------------------------------------------------------- the model


def get_model_path() -> str:
    """Directory of the tiny Japanese model, built on first use into ``$BRAINLLM_CACHE_DIR/models``."""
    from brainllm.models import built_model_path

    return built_model_path("demo-ja-gpt2", MODEL_RECIPE, ("wordfreq", "tokenizers", "transformers", "torch"), build_model)


def tokenizer_corpus() -> list[str]:
    """wordfreq's most frequent Japanese words, then the stories' paragraphs."""
    import wordfreq

    corpus = list(wordfreq.top_n_list(LANGUAGE, WORDFREQ_WORDS))
    for story in story_names():
        corpus += story_text(story).splitlines()
    return corpus


def build_tokenizer():
    """A byte-level BPE (GPT-2's scheme, no spaces needed) trained on :func:`tokenizer_corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    end = "<|endoftext|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[end], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=end, eos_token=end, pad_token=end)


def build_model(directory: str | os.PathLike) -> Path:
    """Write the tokenizer and a random-weight GPT-2 (``MODEL_SEED``) into ``directory`` (safetensors)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_embd=HIDDEN, n_layer=N_LAYERS, n_head=N_HEADS,
        initializer_range=INIT_RANGE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(MODEL_SEED)
    model = GPT2LMHeadModel(config)
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def planted_word_features(story_words: dict[str, list[str]], model_dir: str | os.PathLike, layer: int = PLANTED_LAYER,
                          context_words: int = CONTEXT_WORDS) -> dict[str, np.ndarray]:
    """Story → ``(n_words, hidden)``: state ``layer`` of each word's last token in ``"".join(its window)``.

    One unbatched forward pass per word; the word's last token is the last one whose
    character span ends inside the word (a token spanning the previous word's end and this
    word's start belongs to both).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    features = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add their synchronisation (ms per operation on a busy machine)
    try:
        with torch.inference_mode():
            for story, words in story_words.items():
                states = np.empty((len(words), model.config.hidden_size), dtype=np.float32)
                for i, word in enumerate(words):
                    text = "".join(words[max(0, i - context_words + 1) : i + 1])
                    encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
                    offsets = encoded.pop("offset_mapping")[0].tolist()
                    begin = len(text) - len(word)
                    own = [t for t, (a, b) in enumerate(offsets) if b > a and b > begin]
                    if not own:
                        raise InputError(None, f"{story}: word {word!r} produced no tokens.", "remove it from the story.")
                    hidden = model(**encoded, output_hidden_states=True).hidden_states[layer]
                    states[i] = hidden[0, own[-1]].numpy()
                features[story] = states
    finally:
        torch.set_num_threads(threads)
    return features


# --------------------------------------------------------------------------- the dataset


BIDS_README = """\
brainllm Japanese demo dataset (synthetic)
==========================================

One simulated subject (JA01) listens to four short Japanese stories written for this
dataset. `events.tsv` lists the clauses heard (trial_type `clause`, text in the `word`
column): cut them into words with a Japanese morphological analyser (brainllm:
dataset.segmenter fugashi). The BOLD series are simulated responses to one layer of a tiny
Japanese language model plus autocorrelated noise and drift. Masks and a region atlas are
in derivatives/demo; the planted ground truth is in ../ground_truth_ja.json.
"""


def generate_japanese(out_dir: str | os.PathLike, seed: int) -> dict:
    """Write ``bids_ja/``, ``planted_features_ja.h5`` and ``ground_truth_ja.json`` under ``out_dir``; return a summary."""
    out_dir = Path(out_dir)
    bids = out_dir / BIDS_DIR
    derivatives = bids / "derivatives" / "demo"
    stories = story_names()
    tr = demo.TR

    events, words, n_trs = {}, {}, {}
    for index, story in enumerate(stories):
        events[story], n_trs[story] = speak_clauses(story_clauses(story_text(story)), np.random.default_rng([seed, _STREAM_TIMING, index]))
        words[story] = clause_words(events[story])
        logger.info("%s: %d clauses, %d words, %d raw TRs", story, len(events[story]), len(words[story]), n_trs[story])

    model_dir = get_model_path()
    word_features = planted_word_features({story: words[story]["word"].tolist() for story in stories}, model_dir)

    delayed, cleaning = {}, {}
    for story in stories:
        midpoints_s = ((words[story]["onset"] + words[story]["offset"]) / 2.0).to_numpy()
        on_grid = demo.lanczos_resample(word_features[story].astype(np.float64), midpoints_s, demo.tr_centres_s(n_trs[story], tr), tr)
        standard = demo.zscore_with_kept_stats(on_grid, demo.TRIM_START, demo.TRIM_END)
        delayed[story] = demo.weighted_delays(standard, demo.DELAYS_TRS, demo.DELAY_WEIGHTS)
        cleaning.setdefault(n_trs[story], demo.cleaning_operator(n_trs[story], tr))
    train_inputs = np.vstack([delayed[s][demo.TRIM_START : delayed[s].shape[0] - demo.TRIM_END] for s in TRAIN_STORIES])
    feature_map = demo.planted_feature_map(train_inputs, np.random.default_rng([seed, _STREAM_MIXING]))

    volume = demo.make_subject_volume(VOLUME_LIKE, np.random.default_rng([seed, _STREAM_SUBJECT]))
    affine = demo.demo_affine()
    func = bids / f"sub-{SUBJECT}" / "func"
    for index, story in enumerate(stories):
        bold = demo.simulate_run(delayed[story] @ feature_map, volume, cleaning[n_trs[story]], np.random.default_rng([seed, _STREAM_RUN, index]))
        series = np.zeros(demo.GRID_SHAPE + (n_trs[story],), dtype=np.float32)
        series[volume.mask] = bold.T
        demo._write_nifti(func / f"sub-{SUBJECT}_task-{story}_bold.nii.gz", series, affine, np.float32, tr=tr)
        write_tsv(func / f"sub-{SUBJECT}_task-{story}_events.tsv", events[story])
        write_json(bids / f"task-{story}_bold.json", {"RepetitionTime": tr, "TaskName": story})
    anatomy = derivatives / f"sub-{SUBJECT}" / "func"
    demo._write_nifti(anatomy / f"sub-{SUBJECT}_desc-brain_mask.nii.gz", volume.mask, affine, np.uint8)
    demo._write_nifti(anatomy / f"sub-{SUBJECT}_desc-rois_dseg.nii.gz", volume.rois, affine, np.int16)
    write_tsv(derivatives / "desc-rois_dseg.tsv", pd.DataFrame({"index": [r.index for r in demo.ROIS], "name": [r.name for r in demo.ROIS]}))
    description = {"BIDSVersion": "1.9.0", "GeneratedBy": [{"Name": "brainllm.demo_ja", "Version": __version__}]}
    write_json(bids / "dataset_description.json", {"Name": "brainllm Japanese demo: simulated story listening", **description, "DatasetType": "raw", "License": "CC0"})
    write_json(derivatives / "dataset_description.json", {"Name": "brainllm Japanese demo masks and regions", **description, "DatasetType": "derivative"})
    write_tsv(bids / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{SUBJECT}"]}))
    with atomic_path(bids / "README") as tmp:
        tmp.write_text(BIDS_README, encoding="utf-8")

    with atomic_path(out_dir / PLANTED_FEATURES) as tmp:
        with open_h5(tmp, "w") as h5:
            h5.attrs.update(model=MODEL_SOURCE, layer=PLANTED_LAYER, context_words=CONTEXT_WORDS, word_separator="")
            for story in stories:
                group = h5.create_group(story)
                group.create_dataset("words", data=np.array(words[story]["word"].tolist(), dtype=object), dtype=h5py.string_dtype("utf-8"))
                group.create_dataset("onset", data=words[story]["onset"].to_numpy())
                group.create_dataset("offset", data=words[story]["offset"].to_numpy())
                group.create_dataset(f"layer_{PLANTED_LAYER:02d}", data=word_features[story])

    from brainllm.models import directory_sha256

    n_voxels = int(volume.mask.sum())
    truth = {
        "seed": seed,
        "language": LANGUAGE,
        "model": {"source": MODEL_SOURCE, "weights_sha256": directory_sha256(model_dir), "hidden_size": HIDDEN, "n_layers": N_LAYERS,
                  "architecture": f"GPT-2, random weights (seed {MODEL_SEED}, initializer_range {INIT_RANGE})",
                  "tokenizer": f"byte-level BPE, {VOCAB_SIZE} tokens, trained on wordfreq's top {WORDFREQ_WORDS} Japanese words and the stories"},
        "planted_layer": PLANTED_LAYER,
        "context": "per-word",
        "context_words": CONTEXT_WORDS,
        "pooling": "last",
        "word_separator": "",
        "segmentation": "events rows are clauses; words by fugashi (unidic-lite), punctuation dropped, a clause's time shared by word length",
        "tr": tr,
        "audio_onset_s": demo.AUDIO_ONSET_S,
        "trim_start": demo.TRIM_START,
        "trim_end": demo.TRIM_END,
        "delays": list(demo.DELAYS_TRS),
        "delay_weights": list(demo.DELAY_WEIGHTS),
        "rank": demo.MIXING_RANK,
        "planted_subspace_pcs": demo.PLANTED_SUBSPACE_PCS,
        "preprocessing": dict(demo.PREPROCESS),
        "subjects": [SUBJECT],
        "stories": {
            "train": list(TRAIN_STORIES),
            "test": [TEST_STORY],
            "n_trs_raw": n_trs,
            "n_words": {story: len(words[story]) for story in stories},
            "repeats": {story: 1 for story in stories},
        },
        "rois": {str(r.index): {"name": r.name, "peak_snr": r.peak_snr} for r in demo.ROIS},
        "voxel_order": "numpy C order of mask > 0",
        "per_subject": {SUBJECT: {
            "n_voxels": n_voxels,
            "snr": np.round(volume.snr, 6).tolist(),
            "noise_ar1": np.round(volume.noise_ar1, 6).tolist(),
            "signal_voxels": np.flatnonzero(volume.snr > 0).tolist(),
            "ceiling_r_single_run": np.round(demo.ceiling_r(volume.snr, 1), 6).tolist(),
            "ceiling_r_test": np.round(demo.ceiling_r(volume.snr, 1), 6).tolist(),
            "roi": volume.rois[volume.mask].astype(int).tolist(),
        }},
    }
    write_json(out_dir / GROUND_TRUTH, truth)
    return {"bids": BIDS_DIR, "ground_truth": GROUND_TRUTH, "planted_layer": PLANTED_LAYER, "model": MODEL_SOURCE,
            "weights_sha256": truth["model"]["weights_sha256"]}
