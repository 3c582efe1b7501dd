"""Protected prompts: keys whose outputs the edit must keep (the preservation term).

The spec's finding: neighbours that share a relation with a forgotten fact die with it
because subjects of one relation have similar keys at the edited layers. The cure is to
name such keys in the solve with a weight c: c ||D W K_p - W K_p||^2. Two sources:

- the request's neighbours: every token of each neighbour prompt and of its answer but
  the last (the subject position where the fact is recalled is not marked in a
  neighbour, so all positions are kept; see fact_site for the answer's);
- substitutions: each forget prompt with its subject replaced by ANOTHER record's
  subject ("The capital of France is" + "Goethe" -> "The capital of Goethe is"), from
  the subject's first token to the end: same-relation context, different subject.

A protected key that coincides with a forget key (same text up to the edit token) would
ask the solve to both keep and change one output; `drop_overlapping` removes those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from zerounlearn.keys import EditRequest, Site
from zerounlearn.records import ForgetRecord

MAX_COSINE = 0.99  # a protected key this close to a forget key is the same key


def token_indices_from(tokenizer: Any, text: str, start_char: int) -> tuple[int, ...]:
    """Indices of the tokens that end after `start_char` (the tail of the text)."""
    enc = tokenizer(text, return_offsets_mapping=True)
    return tuple(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and b > start_char)


def fact_site(tokenizer: Any, prompt: str, answer: str, start_char: int = -1) -> Site | None:
    """A known fact as a protected site: prompt + answer, every token from start_char
    on except the last. Those are the positions that produce the answer (the prompt's
    last token predicts its first token, each answer token the next): protecting only
    the prompt would push an edit's damage onto the answer positions, where a multi-token
    answer is lost all the same."""
    text = prompt + answer
    indices = token_indices_from(tokenizer, text, start_char)[:-1]
    return Site(text, indices) if indices else None


def neighbor_sites(tokenizer: Any, records: Sequence[ForgetRecord]) -> list[Site]:
    """Every token of every distinct neighbour prompt of the request."""
    seen: set[str] = set()
    sites = []
    for r in records:
        for nb in r.neighbors:
            if nb.prompt in seen:
                continue
            seen.add(nb.prompt)
            site = fact_site(tokenizer, nb.prompt, nb.answer)
            if site is not None:
                sites.append(site)
    return sites


def substitution_sites(
    tokenizer: Any, requests: Sequence[EditRequest], subjects: Sequence[str] | None = None,
    seen: set[str] | None = None,
) -> list[Site]:
    """Forget prompts with another subject (default: the other records'), from that
    subject to the end. A text already in `seen` is skipped (and added when new)."""
    if subjects is None:
        subjects = sorted({r.prompt[r.span[0] : r.span[1]] for r in requests if r.span})
    heads = forget_heads(requests)
    seen = set() if seen is None else seen
    sites = []
    for req in requests:
        sites += substituted(tokenizer, req, subjects, heads, seen)
    return sites


def forget_heads(requests: Sequence[EditRequest]) -> set[str]:
    """The text up to (and including) each forget edit token: a site equal to one is a
    forget key, not a protected one."""
    return {r.prompt[: r.span[1]] if r.span else r.prompt for r in requests}


def substituted(
    tokenizer: Any, req: EditRequest, subjects: Sequence[str], heads: set[str],
    seen: set[str],
) -> list[Site]:
    """One forget prompt with each of `subjects` in its subject's place, from that
    subject to the end; skips its own subject, forget heads and texts in `seen`."""
    if req.span is None:
        return []
    start, end = req.span
    own = req.prompt[start:end]
    sites = []
    for other in subjects:
        if other == own:
            continue
        head = req.prompt[:start] + other
        text = head + req.prompt[end:]
        if head in heads or text in seen:
            continue
        seen.add(text)
        indices = token_indices_from(tokenizer, text, start)
        if indices:
            sites.append(Site(text, indices))
    return sites


def protected_sites(
    tokenizer: Any,
    records: Sequence[ForgetRecord],
    requests: Sequence[EditRequest],
    *,
    neighbors: bool = True,
    substitutions: bool = True,
) -> list[Site]:
    sites: list[Site] = []
    if neighbors:
        sites += neighbor_sites(tokenizer, records)
    if substitutions:
        sites += substitution_sites(tokenizer, requests)
    return sites


def drop_overlapping(
    k_p: torch.Tensor, k_forget: torch.Tensor, max_cosine: float = MAX_COSINE
) -> torch.Tensor:
    """Columns of K_p (d_ff, p) whose cosine with every forget key (d_ff, n) is below max."""
    if k_p.shape[1] == 0:
        return k_p
    a = torch.nn.functional.normalize(k_p.double(), dim=0)  # (d_ff, p)
    b = torch.nn.functional.normalize(k_forget.double(), dim=0)  # (d_ff, n)
    cos = (a.T @ b).max(dim=1).values  # (p, n) -> (p,)
    return k_p[:, cos < max_cosine]
