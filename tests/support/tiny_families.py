"""One tiny model per supported family, trained from scratch on synthetic facts in-session.

`build_tiny_family(family, path)` trains a 3-layer model of that family (GPT-NeoX, OPT,
Phi, Gemma, Qwen2, Mistral, Llama, GPT-2) on `family_facts()`, the first N_FACTS facts
of the tiny GPT-2's set (tiny_model.tiny_facts: 15 people x 4 relations), and saves a
plain Hugging Face directory (safetensors + the tiny GPT-2's kind of byte-level BPE
tokenizer, digits one by one). Later calls return at once. About 8 s a family on one
thread of the development machine (Mistral is converted from Llama: SAME_AS).

Every family gets the same width, depth, data and recipe, so differences in how an
edit behaves come from the architecture (parallel residuals, embedding scaling,
flattened MLP inputs, ...), not from the training. What makes these models behave
towards the engine like language models rather than lookup tables (each seen in
tests/engine/test_trained_families.py while building them):
- Documents: the tokenizer puts the separator <|endoftext|> in front of every text (as
  Llama's and OPT's tokenizers put their BOS), and every row is a document of two facts.
  The engine samples its statistics text from the separator and puts context templates
  ("<sampled text>. ") before prompts. Trained on one fact per row from position 0, the
  models sampled mostly garbage after the first fact, read prompts under a template as
  noise, and kept far fewer of their other facts.
- d_ff = 8 d_model: with 4 d_model the keys of same-relation prompts were less separable
  (GPT-2 kept 68-74% of its other facts in runs where it keeps about 90% now).
- Label smoothing 0.1: without it the answers were certain to 1e-3, the neutral target
  could not be reached within the engine's clamp and Gemma forgot none of 3 facts.
- Gemma's head is not tied to its (sqrt(d_model)-scaled) embeddings: tied, it needed
  100-200 more steps and on one seed never recalled every fact.
After the main schedule, short restarts run while a fact is not recalled exactly under
teacher forcing, so a machine whose float arithmetic lands on other weights
(ATEN_CPU_CAPABILITY=avx2 here) still gets a model that knows its facts; the builder
refuses one below tiny_model.MIN_RECALL (59 of 60), and tests take the facts a model
knows from tiny_model.known_facts. Tests must not depend on the exact weights: trained
with 4 other seeds, the 8 models kept 81-100% of their other facts in that test.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tests.support.tiny_model import (
    EOS,
    SEED,
    _recall,
    _train_tokenizer,
    check_recall,
    tiny_facts,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

N_FACTS = 60  # 15 people x 4 relations; facts[i::4] share a relation
LAYERS = 3
D_MODEL = 64
D_FF = 512
HEADS = 4
POSITIONS = 48  # the engine keeps 32 positions free for context templates
TRAIN_STEPS = 100  # one-cycle schedule (then POLISH cycles until full recall)
POLISH_CYCLES = 4  # at most: short one-cycle restarts while a fact is not recalled
POLISH_STEPS = 40
POLISH_RATE = 0.5  # their peak rate, relative to LEARNING_RATE
LEARNING_RATE = 1e-2
PER_ROW = 2  # facts per training row
CLIP = 1.0  # gradient norm clipping
LABEL_SMOOTHING = 0.1


def family_facts() -> list[dict[str, str]]:
    """The facts every family model is trained on: {"prompt","subject","answer","relation"}."""
    return tiny_facts()[:N_FACTS]


def _llama_like(vocab: int, eos_id: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=D_FF,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        max_position_embeddings=POSITIONS, bos_token_id=eos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, tie_word_embeddings=False,
    )


def _config(family: str, vocab: int, eos_id: int) -> PretrainedConfig:
    """A small config of the family: LAYERS blocks of D_MODEL, no dropout."""
    import transformers as tf

    ids = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if family == "llama":
        return tf.LlamaConfig(**_llama_like(vocab, eos_id))
    if family == "mistral":
        return tf.MistralConfig(**_llama_like(vocab, eos_id), sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**_llama_like(vocab, eos_id))
    if family == "gemma":  # embeddings scaled by sqrt(d_model); the head is not tied here
        # (tied, the model needed 100-200 more steps and on some seeds never recalled all)
        return tf.GemmaConfig(**_llama_like(vocab, eos_id), head_dim=D_MODEL // HEADS)
    if family == "phi":  # parallel attention + MLP, partial rotary, LayerNorm
        return tf.PhiConfig(vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=D_FF,
                            num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            max_position_embeddings=POSITIONS, resid_pdrop=0.0,
                            embd_pdrop=0.0, attention_dropout=0.0, **ids)
    if family == "gpt_neox":  # parallel residual, partial rotary
        return tf.GPTNeoXConfig(vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=D_FF,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                max_position_embeddings=POSITIONS, hidden_dropout=0.0,
                                attention_dropout=0.0, tie_word_embeddings=False, **ids)
    if family == "opt":  # learned positions, MLP on (B*T, d) rows
        return tf.OPTConfig(vocab_size=vocab, hidden_size=D_MODEL, ffn_dim=D_FF,
                            num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            word_embed_proj_dim=D_MODEL, max_position_embeddings=POSITIONS,
                            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                            layerdrop=0.0, **ids)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=D_MODEL, n_inner=D_FF, n_layer=LAYERS,
                             n_head=HEADS, n_positions=POSITIONS, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    raise ValueError(f"no tiny config for family {family!r}")


FAMILIES: tuple[str, ...] = ("gpt_neox", "opt", "phi", "gemma", "qwen2", "mistral", "llama",
                             "gpt2")
"""Adapter names of the families trained here (zerounlearn.adapters)."""


def training_texts(facts: list[dict[str, str]]) -> list[str]:
    """One row per fact: the fact (first, right after the separator, as the tests prompt
    it) followed by PER_ROW - 1 other facts in a seeded random order, joined by spaces.
    The model also
    sees facts after other text, so prompts under a context template, and the text it
    samples for its own statistics, are in its training distribution."""
    import random

    sentences = [f"{f['prompt']}{f['answer']}." for f in facts]
    rng = random.Random(SEED)
    texts = []
    for i, first in enumerate(sentences):
        others = rng.sample([s for j, s in enumerate(sentences) if j != i], PER_ROW - 1)
        texts.append(" ".join([first, *others]))
    return texts


def _with_bos(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tokenizer, adding the document separator in front of every text, as Llama's,
    Gemma's and OPT's add their BOS: the model then always sees a document start the way
    the engine samples its statistics text (from the separator, zerounlearn.stats)."""
    from tokenizers import processors

    eos_id = tokenizer.get_vocab()[EOS]
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B",
                                      special_tokens=[(EOS, eos_id)]),
    ])
    return tokenizer


def _rows(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], eos_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids (N, T), attention_mask (N, T), labels (N, T)), right-padded with EOS."""
    rows = [tokenizer(t)["input_ids"] + [eos_id] for t in texts]  # separator, text, EOS
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), eos_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return input_ids, mask, input_ids.masked_fill(mask == 0, -100)


def _fit(family: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train tokenizer and model from scratch (seeded, full batch) until full recall."""
    from transformers import AutoModelForCausalLM

    facts = family_facts()
    texts = training_texts(facts)
    tokenizer = _with_bos(_train_tokenizer(texts))
    eos_id = tokenizer.get_vocab()[EOS]
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(_config(family, len(tokenizer), eos_id))
    input_ids, mask, labels = _rows(tokenizer, texts, eos_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=TRAIN_STEPS, pct_start=0.1,
        final_div_factor=100.0,
    )
    started = time.perf_counter()

    def step() -> float:
        model.train()
        logits = model(input_ids=input_ids, attention_mask=mask).logits  # (N, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),  # (N * (T - 1), V)
            labels[:, 1:].reshape(-1), ignore_index=-100, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        return loss.item()

    loss = 0.0
    for _ in range(TRAIN_STEPS):
        loss = step()
        schedule.step()
    model.eval()
    recall = _recall(model, tokenizer, facts)
    steps = TRAIN_STEPS
    for _ in range(POLISH_CYCLES):  # short warm restarts until every fact is recalled
        if recall == 1.0:
            break
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=LEARNING_RATE * POLISH_RATE, total_steps=POLISH_STEPS,
            pct_start=0.1,
            final_div_factor=100.0)
        for _ in range(POLISH_STEPS):
            loss = step()
            schedule.step()
        steps += POLISH_STEPS
        model.eval()
        recall = _recall(model, tokenizer, facts)
    for p in model.parameters():
        p.requires_grad_(False)
    info = {"family": family, "steps": steps, "loss": loss, "recall": recall,
            "seconds": time.perf_counter() - started}
    logger.info("tiny %s: %d steps, loss %.4f, recall %.3f, %.1f s", family, steps, loss,
                recall, info["seconds"])
    return model, tokenizer, info


def _train(family: str, out_dir: Path) -> None:
    model, tokenizer, info = _fit(family)
    check_recall(f"{family} (after {info['steps']} steps)", info["recall"])
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_once(path: Path, make: Callable[[Path], None]) -> Path:
    """make(tmp) once into `path`, safely when several processes ask at once: a lock file
    serialises builders, the result is published by an atomic rename."""
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (path / "config.json").exists():
                return path
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
            try:
                make(tmp)
                if path.exists():  # a half-written directory from an older layout
                    shutil.rmtree(path)
                os.rename(tmp, path)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def _convert(family: str, source: Path, out_dir: Path) -> None:
    """The model in `source` under `family`'s own class and config (same weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    eos_id = tokenizer.get_vocab()[EOS]
    model = AutoModelForCausalLM.from_config(_config(family, len(tokenizer), eos_id))
    trained = AutoModelForCausalLM.from_pretrained(source)
    model.load_state_dict(trained.state_dict())  # strict: same names and shapes
    model.eval()
    check_recall(f"{family} (from {source.name})", _recall(model, tokenizer, family_facts()))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


SAME_AS: dict[str, str] = {"mistral": "llama"}
"""Families whose tiny model is another family's weights under its own class: Mistral
without a sliding window computes what Llama computes (trained separately from the same
seed, the two came out identical), so it is converted rather than trained again."""


def build_tiny_family(family: str, path: Path) -> Path:
    """Train the tiny model of `family` into `path` once; return `path` (an HF directory).

    A family in SAME_AS is converted from its twin, built first at path.parent / twin.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    path = Path(path)
    twin = SAME_AS.get(family)
    if twin is not None:
        source = build_tiny_family(twin, path.parent / twin)
        return _build_once(path, lambda tmp: _convert(family, source, tmp))
    return _build_once(path, lambda tmp: _train(family, tmp))


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/tiny-families")
    for name in sys.argv[2:] or FAMILIES:
        t0 = time.perf_counter()
        build_tiny_family(name, root / name)
        logger.info("built %s in %.1f s", name, time.perf_counter() - t0)
