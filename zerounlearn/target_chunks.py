"""The target optimisation's rows in chunks of similar length (site_chunks.py's idea,
for the loop of targets.py).

The optimisation runs ~25 passes over every row of every record: each record under
each context template (the raw prompt is short, the prefixed ones ~10 tokens longer)
plus its "{subject} is a" KL row. Right-padded to the longest row in one batch, every
pass pays for pad tokens (on SmolLM2 at 50 records, rows of 3-24 tokens, mean 16).
Sorted by length and cut into chunks of at most `max_tokens` padded tokens, each chunk
is its own batch (with its own recorded upper stack, targets.py); the logits at the
scored positions are gathered back into the one order the losses use, so the loss,
its gradient and every step are those of the single batch, up to float rounding.

Row indices here are rows of the full batch (targets._Batch); a chunk's `ids` keep
their positions, since right padding only cuts columns off the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zerounlearn.site_chunks import length_groups
from zerounlearn.upper import UpperStack

TARGET_CHUNK_TOKENS = 2048  # padded tokens per chunk and pass: rows x the chunk's longest


@dataclass
class RowChunk:
    """Some rows of the full batch as one right-padded batch."""

    rows: torch.Tensor  # (r,) their rows in the full batch, shortest first
    ids: torch.Tensor  # (r, T_c) input ids cut to the chunk's longest row
    mask: torch.Tensor  # (r, T_c)
    stack: UpperStack | None = None  # the blocks above the hook point, recorded on these rows
    ref: torch.Tensor | None = None  # (s, V) the clean pass's logits at the chunk's sites


@dataclass
class SitePlan:
    """One chunk's share of a pass: which of its rows run and which sites they score."""

    chunk: int  # index into the chunk list
    kept: torch.Tensor  # (r',) the chunk's rows still in the batch (indices into chunk.rows)
    sites: torch.Tensor  # (s,) the sites' places in the caller's site order
    rows: torch.Tensor  # (s,) each site's row among the kept rows
    pos: torch.Tensor  # (s,) each site's token position


def row_chunks(ids: torch.Tensor, mask: torch.Tensor, pad: int, max_tokens: int,
               widen: bool, starts: torch.Tensor | None = None) -> list[RowChunk]:
    """ids, mask (R, T) right-padded rows, chunked by length. widen: one more pad column
    where a chunk's width equals its row count, so that an UpperStack can tell batch
    dimensions from sequence dimensions. starts (R,): each row's edit position; rows
    edited at different positions then never share a chunk, so a chunk's positions
    before its edit position are the same in every pass (upper_suffix.py)."""
    lengths = [int(x) for x in mask.sum(dim=1).tolist()]  # (R,) real tokens per row
    chunks = []
    for members in _groups(lengths, max_tokens, starts):
        rows = torch.tensor(members, dtype=torch.long, device=ids.device)
        width = max(lengths[i] for i in members)
        c_ids, c_mask = ids[rows, :width], mask[rows, :width]
        if widen and width == len(members):
            c_ids = torch.cat([c_ids, c_ids.new_full((len(members), 1), pad)], dim=1)
            c_mask = torch.cat([c_mask, c_mask.new_zeros((len(members), 1))], dim=1)
        chunks.append(RowChunk(rows, c_ids, c_mask))
    return chunks


def _groups(lengths: list[int], max_tokens: int, starts: torch.Tensor | None
            ) -> list[list[int]]:
    """Row indices in groups of similar length (length_groups), within one edit
    position each when starts (R,) is given."""
    if starts is None:
        return length_groups(lengths, max_tokens)
    by_start: dict[int, list[int]] = {}
    for i, start in enumerate(starts.tolist()):
        by_start.setdefault(int(start), []).append(i)
    groups = []
    for start in sorted(by_start):
        members = by_start[start]
        groups += [[members[j] for j in group] for group in
                   length_groups([lengths[i] for i in members], max_tokens)]
    return groups


def plan_sites(chunks: list[RowChunk], kept_rows: torch.Tensor, site_rows: torch.Tensor,
               site_pos: torch.Tensor, total_rows: int) -> list[SitePlan]:
    """Per chunk holding any of kept_rows (R',) (full-batch rows still in the pass): its
    kept rows and the sites (site_rows, site_pos (S,), full-batch rows) on them. Chunks
    with no kept row are left out."""
    dev = kept_rows.device
    kept = torch.zeros(total_rows, dtype=torch.bool, device=dev)
    kept[kept_rows] = True
    plans = []
    for index, chunk in enumerate(chunks):
        local = kept[chunk.rows].nonzero().squeeze(1)  # (r',)
        if len(local) == 0:
            continue
        new_row = torch.full((total_rows,), -1, dtype=torch.long, device=dev)
        new_row[chunk.rows[local]] = torch.arange(len(local), device=dev)
        sites = (new_row[site_rows] >= 0).nonzero().squeeze(1)  # (s,)
        plans.append(SitePlan(index, local, sites, new_row[site_rows[sites]],
                              site_pos[sites]))
    return plans


def in_caller_order(plans: list[SitePlan], parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-plan logits (s, V) as one (S, V) tensor in the caller's site order (every site
    lies on exactly one chunk); differentiable."""
    order = torch.cat([p.sites for p in plans])  # (S,) caller place of each stacked row
    stacked = torch.cat(parts)  # (S, V) in plan order
    return stacked[torch.argsort(order.to(stacked.device))]
