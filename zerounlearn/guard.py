"""The guard: protected sites an edit damaged are protected harder, and the edit redone.

The preservation term is soft: each protected key weighs c against the forget keys, and
a same-relation fact the model held by a small margin (a capital at p = 0.13) dies from
a leak of a few hundredths. Which protected sites an edit hurt is cheap to see: their
next-token argmax at the protected positions before and after it. Those sites get their
weight multiplied (guard_boost) and the round is solved again from the same weights,
so the solve spends its freedom where the first try did damage.

Text stays in memory: only counts leave this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from zerounlearn.keys import Site, site_batch

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel


@torch.no_grad()
def site_argmax(lm: LoadedModel, sites: Sequence[Site], batch_size: int = 64
                ) -> list[tuple[int, ...]]:
    """Per site, the model's next-token argmax at each of its indices."""
    out: list[tuple[int, ...]] = []
    for start in range(0, len(sites), batch_size):
        chunk = sites[start : start + batch_size]
        ids, mask, row_idx, pos_idx = site_batch(lm, chunk)
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        top = logits[row_idx, pos_idx].argmax(dim=-1).tolist()  # (S,)
        at = 0
        for site in chunk:
            out.append(tuple(top[at : at + len(site.indices)]))
            at += len(site.indices)
    return out


def damaged(before: Sequence[tuple[int, ...]], after: Sequence[tuple[int, ...]]
            ) -> list[bool]:
    """Per site: did any protected position's argmax change?"""
    return [b != a for b, a in zip(before, after, strict=True)]


def boosted(sites: Sequence[Site], hurt: Sequence[bool], boost: float) -> list[Site]:
    """The sites, those hurt with their weight multiplied by `boost`."""
    return [dataclasses.replace(s, weight=s.weight * boost) if h else s
            for s, h in zip(sites, hurt, strict=True)]
