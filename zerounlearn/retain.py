"""The retain bank in an edit: which of the facts a model must keep get protected.

A bank may hold hundreds of facts; protecting all of them would spend the solve's
capacity on facts no edit endangers. What an edit endangers is what reads keys like the
forget keys (the spec: same-relation subjects share keys at the edited layers). So:

1. candidates, each a Site whose keys the preservation term would keep:
   - every bank fact, prompt and answer, from its subject's first token to the answer's
     last but one (every token when it names no subject; protect.fact_site);
   - substitutions: each forget prompt with its subject replaced by a bank fact's
     subject ("The capital of France is" + bank "Spain" -> "The capital of Spain is"),
     from that subject to the end: the same relation, a subject the model must keep.
2. one forward of the unedited model reads the candidates' keys and the forget keys at
   the first edited layer; each candidate scores the largest cosine between any of its
   keys and any forget key;
3. the `top_k` highest-scoring candidates are protected (ties keep bank order).

A candidate equal to a forget prompt up to its edit token is the forget key itself and
is never protected: the request wins over the bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.adapters import token_grid
from zerounlearn.keys import EditRequest, Site, record_sites
from zerounlearn.protect import fact_site, substitution_sites
from zerounlearn.records import RetainFact
from zerounlearn.site_chunks import SiteChunk, in_site_order, site_chunks

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel


@dataclass(frozen=True)
class Candidate:
    site: Site
    kind: str  # "fact" | "substitution"


def candidate_sites(
    tokenizer: Any, requests: Sequence[EditRequest], bank: Sequence[RetainFact],
    substitutions: bool = True,
) -> list[Candidate]:
    """Bank facts and forget prompts with bank subjects, as sites (see the module doc)."""
    forget_prompts = {r.prompt for r in requests}
    seen: set[str] = set()
    out: list[Candidate] = []
    for fact in bank:
        if fact.prompt in forget_prompts or fact.prompt in seen:
            continue  # the request wins: a fact being forgotten is not kept
        seen.add(fact.prompt)
        start = fact.prompt.find(fact.subject) if fact.subject else -1
        site = fact_site(tokenizer, fact.prompt, fact.answer, start)
        if site is not None:
            out.append(Candidate(site, "fact"))
    if not substitutions:
        return out
    subjects = list(dict.fromkeys(f.subject for f in bank if f.subject))
    out += [Candidate(site, "substitution")
            for site in substitution_sites(tokenizer, requests, subjects, seen)]
    return out


class _Enough(Exception):
    """Raised in a hook once the keys are read: nothing above the layer needs to run."""


@torch.no_grad()
def keys_at(lm: LoadedModel, sites: Sequence[Site], layer: int) -> torch.Tensor:
    """Down-projection inputs of `layer` at every site index, (d_ff, S), one forward
    per chunk of sites of similar length (site_chunks.py); each stops there (the blocks
    above and the output head never run)."""
    chunks = site_chunks(lm, sites)
    return in_site_order(sites, chunks, [_keys_in(lm, c, layer) for c in chunks]).T.contiguous()


def _keys_in(lm: LoadedModel, chunk: SiteChunk, layer: int) -> torch.Tensor:
    """One chunk's keys at `layer`, (S_c, d_ff)."""
    got: dict[str, torch.Tensor] = {}

    def grab(_module: Any, args: tuple) -> None:
        k = token_grid(args[0], *chunk.shape)  # (B, T, d_ff)
        rows, pos = chunk.row_idx.to(k.device), chunk.pos_idx.to(k.device)
        got["k"] = k[rows, pos].detach()  # (S_c, d_ff)
        raise _Enough

    handle = lm.adapter.down_proj(lm.model, layer).register_forward_pre_hook(grab)
    try:
        lm.model(input_ids=chunk.ids, attention_mask=chunk.mask, use_cache=False)
    except _Enough:
        pass
    finally:
        handle.remove()
    return got["k"]


@torch.no_grad()
def select_at_risk(
    lm: LoadedModel, requests: Sequence[EditRequest], candidates: Sequence[Candidate], layer: int,
    top_k: int, batch_sites: int = 2048,
) -> tuple[list[Site], dict[str, Any]]:
    """The top_k candidates whose keys at `layer` lie closest to the forget keys, and
    a text-free summary (counts per kind, the score range kept)."""
    if not candidates or top_k <= 0:
        return [], {"candidates": len(candidates), "protected": 0}
    forget_sites = record_sites(lm.tokenizer, requests, [""])  # the clean prompts
    k_f = keys_at(lm, forget_sites, layer)  # (d_ff, n)
    k_f = torch.nn.functional.normalize(k_f.double(), dim=0)
    scores: list[float] = []
    for start in range(0, len(candidates), batch_sites):
        chunk = [c.site for c in candidates[start : start + batch_sites]]
        k_c = keys_at(lm, chunk, layer)  # (d_ff, sum of indices)
        cos = torch.nn.functional.normalize(k_c.double(), dim=0).T @ k_f  # (S, n)
        best = cos.max(dim=1).values  # (S,): per key, its closest forget key
        at = 0
        for site in chunk:  # per site, its closest key
            scores.append(float(best[at : at + len(site.indices)].max()))
            at += len(site.indices)
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:top_k]
    order.sort()  # keep bank order among the chosen: the solve is order-free anyway
    chosen = [candidates[i] for i in order]
    info = {
        "candidates": len(candidates),
        "protected": len(chosen),
        "protected_facts": sum(c.kind == "fact" for c in chosen),
        "protected_substitutions": sum(c.kind == "substitution" for c in chosen),
        "min_score": round(min(scores[i] for i in order), 4) if order else None,
    }
    return [c.site for c in chosen], info
