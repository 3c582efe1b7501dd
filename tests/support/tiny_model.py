"""A tiny GPT-2 trained from scratch on synthetic facts: the fast, deterministic test model.

`build_tiny_gpt2(path)` trains it once (about 20 s on one thread) and saves a plain
Hugging Face directory (safetensors + a fast byte-level BPE tokenizer). Later calls
return at once. `tiny_facts()` lists the facts it was trained on, so tests can choose
forget and keep sets: 50 invented people x 4 relations = 200 facts, e.g.

    prompt "The secret code of Alice Moreau is", subject "Alice Moreau", answer " 4821"

Training text is the prompt, the answer, "." and "<|endoftext|>" per row (no BOS, as
prompts are encoded without one). The model is trained on the machine that runs the
tests, and different CPU kernels land on different weights: the builder refuses a model
that recalls fewer than MIN_RECALL of its facts exactly under teacher forcing, and tests
that need facts the model knows take them from `known_facts(lm)`, not `tiny_facts()`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

SEED = 1234
EOS = "<|endoftext|>"
VOCAB_SIZE = 1200  # an upper bound: BPE runs out of merges at ~520 on this small text
TRAIN_STEPS = 180
LEARNING_RATE = 6e-3  # 3e-3: 99.5% recall; 1e-2 diverges; 5e-3..7e-3: 100%, margin >= 3 logits
MIN_RECALL = 0.98
"""The least share of its facts a trained tiny model must recall (4 of 200, 1 of 60).
Measured: 100% with the AVX-512, AVX2 and scalar (ATEN_CPU_CAPABILITY=default) kernels
of the CPUs at hand, 99.5% on another CPU: a fact or two missed is a kernel's rounding,
not a broken recipe (a learning rate of 3e-3 also gives 99.5%; 1e-2 diverges)."""

_FIRST = (
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo",
    "Irene", "Jonas", "Karin", "Luca", "Mira", "Nadia", "Oscar", "Paula",
)
_LAST = (
    "Moreau", "Lindqvist", "Okafor", "Brennan", "Tanaka", "Vargas", "Holm", "Petrov",
    "Castillo", "Weber", "Novak", "Duarte", "Keller", "Sato", "Ferreira", "Quinn",
)
_CITIES = (
    "Brelford", "Ostmark", "Valdera", "Kinloch", "Marisol", "Thornby", "Esterhall",
    "Corvana", "Lindwick", "Palomar",
)
_JOBS = (
    "baker", "pilot", "surgeon", "carpenter", "lawyer", "painter", "chemist", "farmer",
    "librarian", "sailor",
)
# relation -> prompt template; the answer (leading space kept) follows the prompt
_TEMPLATES = {
    "secret_code": "The secret code of {s} is",
    "city": "{s} lives in the city of",
    "profession": "The profession of {s} is",
    "birth_year": "{s} was born in the year",
}
N_PEOPLE = 50


def tiny_facts() -> list[dict[str, str]]:
    """The 200 training facts, deterministic: {"prompt","subject","answer","relation"}.

    Ordered person by person (4 relations each), so facts[i::4] share a relation.
    """
    rng = random.Random(SEED)
    names = [f"{f} {last}" for f in _FIRST for last in _LAST]
    rng.shuffle(names)
    codes = rng.sample(range(1000, 10000), N_PEOPLE)
    facts: list[dict[str, str]] = []
    for i, name in enumerate(names[:N_PEOPLE]):
        answers = {
            "secret_code": f" {codes[i]}",
            "city": f" {rng.choice(_CITIES)}",
            "profession": f" {rng.choice(_JOBS)}",
            "birth_year": f" {rng.randint(1940, 2005)}",
        }
        for relation, template in _TEMPLATES.items():
            facts.append(
                {
                    "prompt": template.format(s=name),
                    "subject": name,
                    "answer": answers[relation],
                    "relation": relation,
                }
            )
    return facts


def _train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # digits one by one, as SmolLM2 and Llama do: codes and years are multi-token answers
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )


def _recall(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, facts: list[dict[str, str]]
) -> float:
    """Fraction of facts whose answer is the argmax at every answer token."""
    from zerounlearn.tokens import answer_batch, score_answers

    batch = answer_batch(tokenizer, [f["prompt"] for f in facts], [f["answer"] for f in facts])
    scored = score_answers(model, batch)
    return sum(ok for _, ok in scored) / len(scored)


def _fit(
    steps: int = TRAIN_STEPS, lr: float = LEARNING_RATE
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Train tokenizer and model from scratch, deterministically (seeded, full batch)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    sentences = [f"{f['prompt']}{f['answer']}." for f in tiny_facts()]
    tokenizer = _train_tokenizer(sentences)
    eos_id = tokenizer.get_vocab()[EOS]

    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=128,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = GPT2LMHeadModel(config)

    rows = [tokenizer(s)["input_ids"] + [eos_id] for s in sentences]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), eos_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    model.train()
    for step in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 30 == 0 or step == steps - 1:
            logger.info("tiny gpt2 step %d loss %.4f", step, loss.item())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def known_facts(lm: LoadedModel, facts: list[dict[str, str]] | None = None
                ) -> list[dict[str, str]]:
    """The facts (default: tiny_facts()) that `lm`, unedited, reproduces, in their order.

    Tests that forget known facts, or count facts kept, start from these: the model may
    miss a few of its training facts (MIN_RECALL), and which ones depends on the CPU.
    """
    from zerounlearn.evaluate import reproduced

    facts = tiny_facts() if facts is None else facts
    return [f for f, ok in zip(facts, reproduced(lm, facts), strict=True) if ok]


def check_recall(name: str, recall: float) -> None:
    """Refuse a trained model below MIN_RECALL; note one that misses a few facts."""
    if recall < MIN_RECALL:
        raise RuntimeError(f"tiny {name} recalls only {recall:.1%} of its facts "
                           f"(at least {MIN_RECALL:.0%} expected); retune training")
    if recall < 1.0:
        logger.warning("tiny %s recalls %.1f%% of its facts (this CPU's kernels); tests "
                       "use the ones it knows", name, 100 * recall)


def _train(out_dir: Path) -> None:
    model, tokenizer = _fit()
    check_recall("GPT-2", _recall(model, tokenizer, tiny_facts()))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_tiny_gpt2(path: Path) -> Path:
    """Train the tiny GPT-2 into `path` once; return `path` (a local HF model directory).

    Safe when several processes ask at once: a lock file serialises builders, the model
    is written into a temporary directory and published by an atomic rename.
    """
    path = Path(path)
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
                _train(tmp)
                if path.exists():  # a half-written directory from an older layout
                    shutil.rmtree(path)
                os.rename(tmp, path)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


if __name__ == "__main__":
    import sys
    import time

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/tiny-gpt2")
    start = time.perf_counter()
    build_tiny_gpt2(target)
    logger.info("built %s in %.1f s", target, time.perf_counter() - start)


TINY_HPARAMS: dict[str, Any] = {
    "layers": [1], "template_count": 0, "update": "additive", "preserve_weight": 50.0,
    "stats_samples": 5000, "stats_seq_len": 16,
}
"""Forget hyper-parameters for this toy model: it recalls a fact at the prompt's last
token (2 layers: an edit at the subject of its last layer cannot reach the answer), and
templates sampled from it are noise."""

TINY_REQUEST_HPARAMS: dict[str, Any] = {
    k: v for k, v in TINY_HPARAMS.items() if not k.startswith("stats_")
}
"""TINY_HPARAMS as a forget request sends them: the statistics settings are the server's
(a request that sets them is refused), so the service uses the prepare job's statistics."""
