"""Evaluation with the paper's definitions, so results compare with its tables.

- efficacy: % of forget prompts whose answer is still fully reproduced under teacher
  forcing (the argmax at every answer token is the answer token). Lower is better.
- generalization: the same on paraphrases (scored with the record's answer).
- specificity: the same on neighbour prompts with their own answers. Higher is better.
- perplexity: token-weighted, on reference texts.
- answer_probability: mean over records of exp(-mean NLL of the answer tokens).

The result of `evaluate` is JSON-able and holds no prompt, answer or generated text: it
goes into version manifests, and a forget request's text must not outlive the request.
Records are identified by their index. Greedy generations are compared with the answer
as TOKENS (" Paris" and "Paris" differ), never as decoded text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from zerounlearn.datasets import reference_texts as _packaged_reference_texts
from zerounlearn.records import ForgetRecord, validate_records
from zerounlearn.tokens import (
    answer_batch,
    encode_continuation,
    encode_prompt,
    max_positions,
    pad_id,
    score_answers,
)

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_REFERENCE_TEXTS: tuple[str, ...] = tuple(_packaged_reference_texts())

Progress = Callable[[str, float], None]


def _device(lm: LoadedModel) -> torch.device:
    device = getattr(lm, "device", None)
    return torch.device(device) if device is not None else next(lm.model.parameters()).device


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _percent(flags: Sequence[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def _score_pairs(
    lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str], batch_size: int
) -> list[tuple[bool, float]]:
    """Per pair: (answer fully reproduced?, exp(-mean NLL of its tokens))."""
    limit = max_positions(lm.model)
    device = _device(lm)
    out: list[tuple[bool, float]] = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        batch = answer_batch(
            lm.tokenizer, prompts[start:stop], answers[start:stop], device=device, limit=limit
        )
        for logprobs, reproduced in score_answers(lm.model, batch):
            out.append((reproduced, math.exp(float(logprobs.mean()))))
    return out


@torch.no_grad()
def greedy_continuations(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    batch_size: int = 16,
    expected: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Greedy token ids after each prompt, up to `max_new_tokens` of them.

    Batched with right padding and no KV cache: each step runs the whole batch and
    appends row b's argmax at its own length (causal attention ignores what follows).
    Meant for a few tokens, as in evaluation; `greedy_generate` serves long outputs.
    expected: per prompt, tokens to compare with; a batch stops as soon as every row
    has either produced all of its expected tokens or left them (the rest cannot change
    whether the generation starts with them).
    """
    device = _device(lm)
    limit = max_positions(lm.model)
    pad = pad_id(lm.tokenizer)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [encode_prompt(lm.tokenizer, p) for p in prompts[start : start + batch_size]]
        lengths = torch.tensor([len(r) for r in rows])
        steps = max(0, min(max_new_tokens, limit - int(lengths.max())))
        width = int(lengths.max()) + steps
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
        arange = torch.arange(len(rows))
        want = list(expected[start : start + batch_size]) if expected is not None else None
        done = 0  # tokens generated so far in this batch
        while done < steps and not (want is not None and _decided(ids, rows, want, done)):
            cur = int(lengths.max())
            mask = (torch.arange(cur)[None, :] < lengths[:, None]).long()  # (B, cur)
            logits = lm.model(
                input_ids=ids[:, :cur].to(device), attention_mask=mask.to(device)
            ).logits  # (B, cur, vocab)
            nxt = logits[arange.to(device), (lengths - 1).to(device)].argmax(-1).cpu()  # (B,)
            ids[arange, lengths] = nxt
            lengths = lengths + 1
            done += 1
        for b, row in enumerate(rows):
            out.append(ids[b, len(row) : len(row) + done].tolist())
    return out


def _decided(
    ids: torch.Tensor, rows: list[list[int]], want: list[Sequence[int]], done: int
) -> bool:
    """True when every row has produced all its expected tokens or already left them."""
    for b, (row, w) in enumerate(zip(rows, want, strict=True)):
        produced = ids[b, len(row) : len(row) + done].tolist()
        if len(produced) < len(w) and produced == list(w[: len(produced)]):
            return False
    return True


@torch.no_grad()
def greedy_generate(lm: LoadedModel, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy continuation of one prompt, as text (special tokens dropped), for callers
    that asked for it. Stops at the model's end-of-sequence token(s)."""
    device = _device(lm)
    ids = torch.tensor([encode_prompt(lm.tokenizer, prompt)], device=device)  # (1, T)
    room = max(0, max_positions(lm.model) - ids.shape[1])
    new = min(max_new_tokens, room)
    if new <= 0:
        return ""
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else 0
    # generate() comes from GenerationMixin, which the PreTrainedModel type lacks
    output = lm.model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=pad,
    )  # (1, T + new)
    text = lm.tokenizer.decode(output[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    return str(text)  # one sequence decodes to one str


@torch.no_grad()
def perplexity(lm: LoadedModel, texts: Iterable[str], batch_size: int = 8) -> float:
    """Token-weighted perplexity: exp(total NLL / number of predicted tokens).

    Each text is encoded with the tokenizer's own special-token rule and cut to the
    model's context; its first token is not predicted.
    """
    rows = [encode_prompt(lm.tokenizer, t)[: max_positions(lm.model)] for t in texts]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise ValueError("the reference texts hold no text of two tokens or more")
    device = _device(lm)
    total_nll = 0.0
    count = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, row in enumerate(chunk):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)[:, 1:]  # (B, T-1): token p+1 from logits p
        logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        nll = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),  # (B*(T-1), vocab)
            labels.reshape(-1).to(device),
            ignore_index=-100,
            reduction="sum",
        )
        total_nll += float(nll)
        count += int((labels != -100).sum())
    return math.exp(total_nll / count)


def reproduced(
    lm: LoadedModel, records: Iterable[ForgetRecord | Mapping[str, Any]], batch_size: int = 16
) -> list[bool]:
    """Per record: is its answer still fully reproduced after its prompt (teacher
    forcing, every answer token the argmax)? The efficacy test, without the rest."""
    recs = _as_records(records)
    scores = _score_pairs(lm, [r.prompt for r in recs], [r.answer for r in recs], batch_size)
    return [ok for ok, _ in scores]


def _as_records(records: Iterable[ForgetRecord | Mapping[str, Any]]) -> list[ForgetRecord]:
    items = list(records)
    return validate_records(items) if items else []


def evaluate(
    lm: LoadedModel,
    records: Iterable[ForgetRecord | Mapping[str, Any]],
    reference_texts: Sequence[str] | None = None,
    *,
    generate_tokens: int = 8,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score `lm` (a LoadedModel, or anything with .model and .tokenizer) on records.

    Returns {"summary": {...}, "records": [...]} (see the module docstring); text-free.
    reference_texts: None = DEFAULT_REFERENCE_TEXTS; an empty list skips perplexity.
    generate_tokens: greedy tokens generated per forget prompt (at least the answer's
    length; generation stops once its match with the answer is decided); 0 skips the
    greedy check (generation_matches_answer None).
    """
    recs = _as_records(records)
    report = progress or (lambda phase, fraction: None)
    report("evaluate", 0.0)

    forget = _score_pairs(lm, [r.prompt for r in recs], [r.answer for r in recs], batch_size)
    report("evaluate", 0.3)
    para_pairs = [(i, p, r.answer) for i, r in enumerate(recs) for p in r.paraphrases]
    para = _score_pairs(lm, [p for _, p, _ in para_pairs], [a for _, _, a in para_pairs],
                        batch_size)
    neigh_pairs = [(i, n.prompt, n.answer) for i, r in enumerate(recs) for n in r.neighbors]
    neigh = _score_pairs(lm, [p for _, p, _ in neigh_pairs], [a for _, _, a in neigh_pairs],
                         batch_size)
    report("evaluate", 0.6)

    answer_ids = [encode_continuation(lm.tokenizer, r.answer) for r in recs]
    matches: list[bool | None] = [None] * len(recs)
    if generate_tokens > 0 and recs:
        n_new = max([generate_tokens, *(len(a) for a in answer_ids)])
        generated = greedy_continuations(
            lm, [r.prompt for r in recs], n_new, batch_size=batch_size, expected=answer_ids
        )
        matches = [g[: len(a)] == a for g, a in zip(generated, answer_ids, strict=True)]
    report("evaluate", 0.8)

    per_record: list[dict[str, Any]] = []
    for i, (reproduced, prob) in enumerate(forget):
        per_record.append(
            {
                "index": i,
                "forgotten": not reproduced,
                "reproduced": reproduced,
                "answer_probability": _finite_or_none(prob),
                "paraphrases_reproduced": [
                    ok for (j, _, _), (ok, _) in zip(para_pairs, para, strict=True) if j == i
                ],
                "neighbors_reproduced": [
                    ok for (j, _, _), (ok, _) in zip(neigh_pairs, neigh, strict=True) if j == i
                ],
                "generation_matches_answer": matches[i],
            }
        )

    ppl: float | None = None
    texts = DEFAULT_REFERENCE_TEXTS if reference_texts is None else tuple(reference_texts)
    if texts:
        ppl = _finite_or_none(perplexity(lm, texts, batch_size=max(1, batch_size // 2)))
    report("evaluate", 1.0)

    probs = [p for _, p in forget if math.isfinite(p)]
    summary = {
        "efficacy": _percent([ok for ok, _ in forget]),
        "generalization": _percent([ok for ok, _ in para]),
        "specificity": _percent([ok for ok, _ in neigh]),
        "perplexity": ppl,
        "answer_probability": sum(probs) / len(probs) if probs else None,
        "generation_match": _percent([m for m in matches if m is not None]),
        "num_records": len(recs),
        "num_paraphrases": len(para),
        "num_neighbors": len(neigh),
    }
    logger.info(
        "evaluated %d records: efficacy %s, specificity %s, perplexity %s",
        len(recs), summary["efficacy"], summary["specificity"], ppl,
    )
    return {"summary": summary, "records": per_record}
