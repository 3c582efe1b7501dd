"""Sites batched by length: one forward per chunk of texts of similar length.

An edit reads activations at many sites at once: each record under each context
template, and the protected sites (substituted forget prompts, lookalikes, bank facts
with their answers). Right-padding them all to the longest text makes every row pay
for the longest one; on SmolLM2 at 50 records with the retain bank (1,906 sites:
the protected ones mostly 7-10 tokens, the records under templates ~20) most of the
keys phase went to pad tokens. Sorted by
token length and cut into chunks of at most `max_tokens` padded tokens, the padding
stays small and each chunk's matrices stay large enough to run well (there, 16,132
real tokens take 43,838 padded ones in one batch, 21,246 in chunks of 8,192 and 17,253
in chunks of 2,048).

Every reading is per site and token index, and right-padding keeps positions, so the
chunks give the same values (up to float rounding) as one batch; `in_site_order` puts
them back in the caller's column order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from zerounlearn.tokens import encode_prompt, pad_id, pad_rows

if TYPE_CHECKING:
    from zerounlearn.keys import Site
    from zerounlearn.loading import LoadedModel

CHUNK_TOKENS = 2048  # padded tokens per forward: rows x the chunk's longest text


@dataclass
class SiteChunk:
    """Some of the caller's sites as one right-padded batch."""

    members: list[int]  # the sites' indices in the caller's list, one per batch row
    ids: torch.Tensor  # (B, T) input ids
    mask: torch.Tensor  # (B, T) attention mask
    row_idx: torch.Tensor  # (S_c,) batch row of each reading
    pos_idx: torch.Tensor  # (S_c,) token position of each reading

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.ids.shape[0]), int(self.ids.shape[1])


def site_chunks(
    lm: LoadedModel, sites: Sequence[Site], max_tokens: int | None = None
) -> list[SiteChunk]:
    """The sites sorted by token length (stable) and cut into chunks whose padded size
    stays within max_tokens (default CHUNK_TOKENS; a single longer text gets a chunk of
    its own)."""
    max_tokens = CHUNK_TOKENS if max_tokens is None else max_tokens
    rows = [encode_prompt(lm.tokenizer, s.text) for s in sites]
    groups = length_groups([len(r) for r in rows], max_tokens)
    return [_chunk(lm, sites, rows, members) for members in groups]


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` sorted by length (stable), cut into groups whose padded size
    (members x the longest) stays within max_tokens; a longer single one is alone."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        # sorted ascending: the newcomer is the group's longest
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _chunk(
    lm: LoadedModel, sites: Sequence[Site], rows: list[list[int]], members: list[int]
) -> SiteChunk:
    ids, mask = pad_rows([rows[i] for i in members], pad_id(lm.tokenizer), lm.device)
    row_idx = torch.tensor([r for r, i in enumerate(members) for _ in sites[i].indices],
                           device=lm.device, dtype=torch.long)
    pos_idx = torch.tensor([p for i in members for p in sites[i].indices],
                           device=lm.device, dtype=torch.long)
    return SiteChunk(members, ids, mask, row_idx, pos_idx)


def in_site_order(
    sites: Sequence[Site], chunks: Sequence[SiteChunk], readings: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per-chunk readings (S_c, d) in the caller's order: (S, d), site by site and,
    within a site, index by index."""
    starts = [0]
    for s in sites:
        starts.append(starts[-1] + len(s.indices))
    where = torch.tensor([starts[i] + j for c in chunks for i in c.members
                          for j in range(len(sites[i].indices))], dtype=torch.long)
    stacked = torch.cat(list(readings))  # (S, d) in chunk order
    out = torch.empty_like(stacked)
    out[where.to(stacked.device)] = stacked
    return out
