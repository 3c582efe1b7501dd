"""Tiny random-weight models and a byte-level BPE tokenizer built in-session (no hub)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from zerounlearn.adapters import adapter_for
from zerounlearn.loading import LoadedModel

EOS = "<|endoftext|>"
VOCAB = 320  # 256 bytes + a few merges + EOS; the models' vocab matches
_TEXT = [
    "The capital of France is Paris.",
    "The secret code of Alice Moreau is 4821.",
    "Bruno Lindqvist lives in the city of Ostmark.",
    "The profession of Clara Okafor is surgeon.",
    "Water is made of hydrogen and oxygen.",
] * 4


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)


def tiny_gpt2(layers: int = 3, width: int = 32, seed: int = 0) -> torch.nn.Module:
    config = GPT2Config(
        n_embd=width,
        n_inner=2 * width,
        n_layer=layers,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def tiny_llama(layers: int = 2, width: int = 32, seed: int = 0) -> torch.nn.Module:
    config = LlamaConfig(
        hidden_size=width,
        intermediate_size=3 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def as_loaded(model: torch.nn.Module, family: str = "gpt2") -> LoadedModel:
    """Wrap an in-memory model like load_model would (no files, fixed fingerprint)."""
    return LoadedModel(
        model=model,
        tokenizer=tiny_tokenizer(),
        source="memory",
        family=family,
        adapter=adapter_for(model),
        fingerprint="0" * 64,
        dtype=next(model.parameters()).dtype,
        device=torch.device("cpu"),
    )


def save_model_dir(model: torch.nn.Module, path: Path) -> Path:
    """A local HF directory (safetensors + tokenizer) holding `model`."""
    model.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path
