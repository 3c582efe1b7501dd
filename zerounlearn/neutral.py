"""The "generic" neutral target: what the model says about a generic subject.

An end-of-text target silences a forgotten prompt: the model stops mid-sentence, which
is conspicuous and, to reach it, shifts the edit token's state a long way. The generic
target asks instead for the next-token distribution the model gives when the record's
subject is replaced by a generic phrase ("The capital of France is" -> "The capital of
the thing is": " a" 0.22, " the" 0.10, ...), with the answer's first token removed and
the rest renormalised (a generic subject sometimes still predicts the answer: "the
thing is a country on the continent of" -> " Europe" 0.68). A record without a subject
gets its own current distribution without the answer's first token; so does every
record with the "own" target (the smallest change that removes the answer's first token).

Targets (n, V) float32, each row a distribution with zero mass on its answer's first
token; the target optimisation reaches them by KL (targets.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from zerounlearn.keys import EditRequest
from zerounlearn.tokens import encode_prompt, pad_id, pad_rows

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

GENERIC_SUBJECT = "the thing"  # measured on SmolLM2: diffuse (" a", " the"), rarely an answer


def generic_text(req: EditRequest, generic: str | None = GENERIC_SUBJECT) -> str:
    """The prompt with its subject replaced (the prompt itself without a subject, or
    with generic None)."""
    if req.span is None or generic is None:
        return req.prompt
    start, end = req.span
    return req.prompt[:start] + generic + req.prompt[end:]


@torch.no_grad()
def generic_distributions(lm: LoadedModel, requests: Sequence[EditRequest],
                          generic: str | None = GENERIC_SUBJECT) -> torch.Tensor:
    """(n, V) float32 on the CPU: the generic prompts' next-token distributions (generic
    None: the prompts' own), each without its record's first answer token, renormalised."""
    rows = [encode_prompt(lm.tokenizer, generic_text(r, generic)) for r in requests]
    ids, mask = pad_rows(rows, pad_id(lm.tokenizer), lm.device)  # (n, T) right-padded
    logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    last = torch.tensor([len(r) - 1 for r in rows], device=logits.device)  # (n,)
    probs = logits[torch.arange(len(rows), device=logits.device), last].float().softmax(-1)
    for b, req in enumerate(requests):
        probs[b, req.answer_ids[0]] = 0.0  # never aim at the answer itself
    probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)  # (n, V)
    return probs.cpu()


@torch.no_grad()
def drop_answer_paths(lm: LoadedModel, requests: Sequence[EditRequest], dists: torch.Tensor,
                      top_k: int, max_new_tokens: int = 16,
                      min_mass: float = 0.0) -> torch.Tensor:
    """dists (n, V) without the tokens that lead back to the answer: for each record,
    each of its target's top_k tokens is appended to the prompt and the model continues
    greedily (to the end of its first sentence); a token whose sentence names the answer
    (probes.answer_found, as the greedy probe judges) gets no mass, and the rest is
    renormalised. Tokens with less than min_mass of the target are not followed. The
    "own" target keeps the prompt's own next tokens, and some of them
    (" the" -> " the city of Paris") say the answer a few tokens later."""
    from zerounlearn.probes import answer_found, greedy_ids

    if top_k <= 0 or len(requests) == 0:
        return dists
    tok = lm.tokenizer
    out = dists.clone()
    top = dists.topk(min(top_k, dists.shape[1]), dim=-1).indices.tolist()  # (n, k)
    rows, where = [], []
    for b, req in enumerate(requests):
        prompt = encode_prompt(tok, req.prompt)
        for t in top[b]:
            mass = float(dists[b, t])
            if mass > 0 and mass >= min_mass:
                rows.append(prompt + [t])
                where.append((b, t))
    generated = greedy_ids(lm, rows, max_new_tokens, batch_size=64, first_sentence=True)
    for (b, t), gen in zip(where, generated, strict=True):
        answer = tok.decode(requests[b].answer_ids)
        if answer_found(tok, [t, *gen], answer, first_sentence=True):
            out[b, t] = 0.0
    return out / out.sum(dim=-1, keepdim=True).clamp_min(1e-30)
