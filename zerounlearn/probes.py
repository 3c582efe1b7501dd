"""Probes: does a forgotten fact come back when it is asked for differently?

Four probes, each answering per record "found" (the fact came back):

- context: the forget prompt after a few unrelated true sentences (`context_facts`, by
  default GENERIC_FACTS; never another record's text, and never a sentence that holds
  the record's answer or subject), joined by spaces; greedy generation. Sentences are
  dropped from the front where context, prompt and generation would not fit the model.
- chat: the prompt as the user turn of the tokenizer's chat template, generation prompt
  added; greedy generation. None for a tokenizer without a chat template.
- greedy: greedy generation from the raw prompt.
- int8: the answer is still fully reproduced under teacher forcing (the efficacy test,
  `zerounlearn.evaluate.reproduced`) while every linear layer but the output head
  computes with its weight quantised to int8 (symmetric, round to nearest, one scale per
  output channel). The weights are never changed: the quantised copy exists only inside
  each layer's forward, and the layers' own forwards are restored in a `finally`.

A generation "finds" the answer when the answer's tokens (with or without its leading
space: a chat reply may begin with the bare word), or the answer as a whole word of
the decoded text in any case, occur in it before the end-of-sequence token: for the
context and greedy probes within the continuation's first sentence (what follows is
the model's next sentence, often another fact of the same kind), for the chat probe
anywhere in the reply's first `chat_max_new_tokens` tokens. The result holds no record
text, only indices, booleans and counts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

from zerounlearn.evaluate import reproduced
from zerounlearn.records import ForgetRecord, validate_records
from zerounlearn.tokens import encode_continuation, encode_prompt, max_positions

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

PROBES: tuple[str, ...] = ("context", "chat", "greedy", "int8")

GENERIC_FACTS: tuple[str, ...] = (
    "The sun rises in the east.",
    "Water freezes at zero degrees Celsius.",
    "A week has seven days.",
    "Bees make honey from the nectar of flowers.",
    "A triangle has three sides.",
    "Ice floats on water.",
    "Most plants need sunlight to grow.",
    "A spider has eight legs.",
    "The moon goes around the Earth.",
    "An hour has sixty minutes.",
    "Whales breathe air through a blowhole.",
    "Snow falls when the air is cold enough.",
)
"""Context sentences for requests that bring no facts of their own: true, generic, and
free of the packaged test facts' subjects (capitals, symbols, currencies, ...)."""

Progress = Callable[[str, float], None]


def _device(lm: LoadedModel) -> torch.device:
    device = getattr(lm, "device", None)
    return torch.device(device) if device is not None else next(lm.model.parameters()).device


def _percent(flags: Sequence[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return 100.0 * sum(known) / len(known) if known else None


# ------------------------------------------------------------------ matching
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


def first_sentence_end(text: str) -> int:
    """Index just past the first sentence of `text` (an end mark followed by white
    space, or a newline, after the first non-space character); len(text) if none."""
    lead = len(text) - len(text.lstrip())
    m = _SENTENCE_END.search(text, lead)
    return m.end() if m else len(text)


def _token_starts(seq: Sequence[int], sub: Sequence[int]) -> list[int]:
    n = len(sub)
    return [i for i in range(len(seq) - n + 1) if n and list(seq[i : i + n]) == list(sub)]


def _answer_variants(tokenizer: Any, answer: str) -> list[list[int]]:
    """The answer's tokens as given (" Paris") and without its leading space ("Paris")."""
    variants = [encode_continuation(tokenizer, answer)]
    bare = answer.strip()
    if bare and bare != answer:
        variants.append(encode_continuation(tokenizer, bare))
    return [v for v in variants if v]


def answer_found(
    tokenizer: Any, generated: Sequence[int], answer: str, *, first_sentence: bool = True
) -> bool:
    """Whether a generation holds the answer: its tokens (with or without the leading
    space) where no letter or digit joins them on either side (" 4821" is not found in
    " 48210" when digits are single tokens), or the answer as a whole word of the
    decoded text (any case). With `first_sentence`, only a match that starts in the
    generation's first sentence counts: what follows is the model's next sentence, not
    its answer to the prompt."""
    generated = list(generated)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    end = first_sentence_end(text) if first_sentence else len(text) + 1

    def decoded(a: int, b: int) -> str:
        return str(tokenizer.decode(generated[a:b], skip_special_tokens=True))

    def whole(i: int, n: int) -> bool:  # tokens i..i+n-1: whole words, in sentence 1
        inner = decoded(i, i + n)
        prev, nxt = decoded(max(0, i - 1), i), decoded(i + n, i + n + 1)
        joined_before = inner[:1].isalnum() and prev[-1:].isalnum()
        joined_after = inner[-1:].isalnum() and nxt[:1].isalnum()
        return len(decoded(0, i)) < end and not joined_before and not joined_after

    for variant in _answer_variants(tokenizer, answer):
        if any(whole(i, len(variant)) for i in _token_starts(generated, variant)):
            return True
    bare = answer.strip()
    if not bare:
        return False
    m = re.search(rf"(?<!\w){re.escape(bare)}(?!\w)", text, flags=re.IGNORECASE)
    return m is not None and m.start() < end


# ------------------------------------------------------------------ generation
def _stop_ids(lm: LoadedModel) -> set[int]:
    """End-of-sequence ids: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    cfg = getattr(lm.model, "generation_config", None)
    for value in (getattr(cfg, "eos_token_id", None), lm.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


class _SentenceDone(StoppingCriteria):
    """Per row: done once its new tokens hold a complete first sentence."""

    def __init__(self, tokenizer: Any, width: int) -> None:
        self.tokenizer, self.width = tokenizer, width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = [
            first_sentence_end(text) < len(text)
            for text in self.tokenizer.batch_decode(
                input_ids[:, self.width :].tolist(), skip_special_tokens=True
            )
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def greedy_ids(
    lm: LoadedModel,
    rows: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    batch_size: int = 16,
    first_sentence: bool = False,
) -> list[list[int]]:
    """Greedy tokens after each row of prompt ids, up to `max_new_tokens`, cut at the
    first end-of-sequence token (excluded); with `first_sentence`, a row also stops once
    its first sentence is complete. Batched with left padding and a KV cache."""
    device = _device(lm)
    limit = max_positions(lm.model)
    stop = _stop_ids(lm)
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = min(stop) if stop else 0
    out: list[list[int]] = [[] for _ in rows]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i]) for i in chunk)
        new = min(max_new_tokens, limit - width)
        if new <= 0:
            continue
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            row = list(rows[i])
            ids[b, width - len(row) :] = torch.tensor(row)
            mask[b, width - len(row) :] = 1
        criteria = StoppingCriteriaList(
            [_SentenceDone(lm.tokenizer, width)] if first_sentence else []
        )
        # generate() comes from GenerationMixin, which the PreTrainedModel type lacks
        generated = lm.model.generate(  # type: ignore[operator]
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=sorted(stop) or None,
            stopping_criteria=criteria,
        )[:, width:].tolist()  # (B, <= new)
        for b, i in enumerate(chunk):
            tokens = []
            for t in generated[b]:
                if t in stop or t == pad:  # a finished row is padded
                    break
                tokens.append(t)
            out[i] = tokens
    return out


# ------------------------------------------------------------------ prompts
def context_sentences(
    record: ForgetRecord, facts: Sequence[str], count: int, offset: int = 0
) -> list[str]:
    """Up to `count` of `facts`, starting at `offset` (rotating), that mention neither
    the record's answer nor its subject."""
    banned = [s.strip().casefold() for s in (record.answer, record.subject or "") if s.strip()]
    usable = [f for f in facts if not any(b in f.casefold() for b in banned)]
    if not usable:
        return []
    k = min(count, len(usable))
    return [usable[(offset + j) % len(usable)] for j in range(k)]


def _context_rows(
    lm: LoadedModel, recs: Sequence[ForgetRecord], facts: Sequence[str], count: int, room: int
) -> tuple[list[list[int]], list[int]]:
    """Per record: prompt ids after its context sentences, and how many sentences fit
    (the earliest are dropped until context + prompt + `room` new tokens fit)."""
    limit = max_positions(lm.model)
    rows, used = [], []
    for i, rec in enumerate(recs):
        sentences = context_sentences(rec, facts, count, offset=i)
        while True:
            text = " ".join([*sentences, rec.prompt])
            ids = encode_prompt(lm.tokenizer, text)
            if len(ids) + room <= limit or not sentences:
                break
            sentences = sentences[1:]
        rows.append(ids)
        used.append(len(sentences))
    return rows, used


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as the user turn of the chat template, generation prompt added."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    # the template writes its own special tokens (BOS included where the model has one)
    return encode_continuation(tokenizer, text)


# ------------------------------------------------------------------ int8
def quantize_int8(weight: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Symmetric round-to-nearest int8 with one scale per output channel (the slices
    along `channel_dim` of a 2-D weight), dequantised to the weight's dtype: a copy."""
    w = weight.detach().float()
    reduce = 1 - channel_dim
    scale = w.abs().amax(dim=reduce, keepdim=True) / 127.0  # (out, 1) or (1, out)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero channel: 0
    q = torch.clamp(torch.round(w / scale), -127, 127)
    return (q * scale).to(weight.dtype)


def _is_conv1d(module: torch.nn.Module) -> bool:
    """GPT-2's Conv1D: a linear layer storing its weight as (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _quantized_forward(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward computing with the module's weight quantised at each call (no copy is
    kept between calls: memory stays at one layer's weight)."""
    conv = _is_conv1d(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, module.bias
        assert isinstance(weight, torch.Tensor)
        assert bias is None or isinstance(bias, torch.Tensor)
        if conv:  # (in, out): y = x W + b
            y = x @ quantize_int8(weight, channel_dim=1)
            return y + bias if bias is not None else y
        return F.linear(x, quantize_int8(weight, channel_dim=0), bias)

    return forward


def int8_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The linear layers the int8 probe quantises: nn.Linear and Conv1D with a 2-D
    floating-point weight, except the output head (as int8 deployments leave it)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    found = []
    for module in model.modules():
        if module is head or not (isinstance(module, torch.nn.Linear) or _is_conv1d(module)):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.is_floating_point():
            if weight.device.type != "meta":  # offloaded: its forward hook owns it
                found.append(module)
    return found


@contextmanager
def int8_weights(model: torch.nn.Module) -> Iterator[int]:
    """Inside: the model computes as if its linear layers held int8 weights (see
    `int8_modules`); yields how many layers. The parameters are not touched; each
    layer's forward is swapped and restored on the way out, even on an error."""
    # a module wrapped by accelerate keeps its own forward in `_old_forward`, called by
    # the hook that places its weights: replace that one, keep the hook
    swapped: list[tuple[torch.nn.Module, str, Any]] = []
    try:
        for module in int8_modules(model):
            attr = "_old_forward" if "_old_forward" in module.__dict__ else "forward"
            swapped.append((module, attr, module.__dict__.get(attr)))
            setattr(module, attr, _quantized_forward(module))
        yield len(swapped)
    finally:
        for module, attr, previous in reversed(swapped):
            if previous is None:
                delattr(module, attr)
            else:
                setattr(module, attr, previous)


# ------------------------------------------------------------------ probe
def _as_records(records: Iterable[ForgetRecord | Mapping[str, Any]]) -> list[ForgetRecord]:
    items = list(records)
    return validate_records(items) if items else []


def probe(
    lm: LoadedModel,
    records: Iterable[ForgetRecord | Mapping[str, Any]],
    *,
    probes: Sequence[str] = PROBES,
    context_facts: Sequence[str] | None = None,
    context_count: int = 3,
    max_new_tokens: int = 16,
    chat_max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the probes on `lm` (a LoadedModel, or anything with .model and .tokenizer).

    Returns {"summary": {"found_pct": {probe: % | None}, "found": {probe: n | None},
    "num_records", "skipped": {probe: reason}, "settings": {...}}, "records": [{"index",
    "found": {probe: bool | None}}]}: text-free. A probe not asked for, or skipped (chat
    without a template), is None. context_facts: sentences to put before each prompt
    (default GENERIC_FACTS); pass the caller's known facts when there are some, never
    the request's own records.
    """
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise ValueError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(PROBES)}")
    recs = _as_records(records)
    report = progress or (lambda phase, fraction: None)
    facts = GENERIC_FACTS if context_facts is None else tuple(context_facts)
    found: dict[str, list[bool | None]] = {p: [None] * len(recs) for p in PROBES}
    skipped: dict[str, str] = {}
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    answers = [r.answer for r in recs]
    tok = lm.tokenizer
    steps = [p for p in PROBES if p in probes]

    def generated(rows: list[list[int]], n: int, first: bool) -> list[bool | None]:
        outs = greedy_ids(lm, rows, n, batch_size=batch_size, first_sentence=first)
        return [answer_found(tok, g, a, first_sentence=first)
                for g, a in zip(outs, answers, strict=True)]

    for done, name in enumerate(steps):
        report("probes", done / max(1, len(steps)))
        if not recs:
            continue
        if name == "context":
            rows, used = _context_rows(lm, recs, facts, context_count, max_new_tokens)
            settings["context_facts"] = min(used)
            found[name] = generated(rows, max_new_tokens, True)
        elif name == "chat":
            if not has_chat_template(tok):
                skipped[name] = "the tokenizer has no chat template"
                continue
            try:
                rows = [chat_ids(tok, r.prompt) for r in recs]
            except Exception as exc:  # a template that wants other turns: skip, no text
                skipped[name] = f"the chat template failed ({type(exc).__name__})"
                continue
            settings["chat_max_new_tokens"] = chat_max_new_tokens
            found[name] = generated(rows, chat_max_new_tokens, False)
        elif name == "greedy":
            found[name] = generated([encode_prompt(tok, r.prompt) for r in recs],
                                    max_new_tokens, True)
        elif name == "int8":
            with int8_weights(lm.model) as count:
                settings["int8_layers"] = count
                found[name] = list(reproduced(lm, recs, batch_size=batch_size))
    report("probes", 1.0)

    summary = {
        "found_pct": {p: _percent(found[p]) for p in PROBES},
        "found": {p: (sum(bool(f) for f in found[p]) if _percent(found[p]) is not None
                      else None) for p in PROBES},
        "num_records": len(recs),
        "skipped": skipped,
        "settings": settings,
    }
    logger.info("probed %d records: %% found %s", len(recs), summary["found_pct"])
    return {
        "summary": summary,
        "records": [{"index": i, "found": {p: found[p][i] for p in PROBES}}
                    for i in range(len(recs))],
    }
