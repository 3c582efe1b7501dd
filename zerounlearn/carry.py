"""Preservation that accumulates across requests, in bounded memory.

Each version carries, per edited layer, a factor L (d_ff, r) of the second moment of
the keys that later edits must honour: M = L L^T = sum_j w_j k_j k_j^T over
- the keys each earlier request protected (its retain-bank facts, substitutions and
  neighbours), weight carry_protect_weight: they keep their outputs;
- the forget keys of the records it forgot, weight carry_forget_weight: they stay at
  their edited outputs, so a later edit does not bring them back.
In the next edit's solve, M joins the preservation term exactly like protected keys
(a ||(W' - W) L||^2 term: L's columns are keys with their weights folded in), with W the
current, already edited weight. This is AlphaEdit's cumulative cache and RLSEdit's
exact cumulative least squares, anchored to the current weights rather than the base.

Bounded: r <= max_rank (at most d_ff, where it is exact). When new columns would exceed
it, the factor is compressed to its max_rank strongest directions (SVD's U S, from the
Gram matrix's eigenpairs: `strongest`), which keeps the best rank-r approximation of M.
So a version's carry does not grow with the number of requests.

The carry holds keys, not outputs: its term is ||(W' - W) L||^2 with W the current
weight, "do not move these keys from where they are now". A fact forgotten earlier is
held at its edited output; a fact protected earlier and forgotten now is pulled by
the forget term (weight forget_weight per key, 50x carry_protect_weight by default)
and by the carry, and the forget term wins (edit rounds retry what is left). The carry
is NOT cut along the new forget keys (M -> Pi M Pi): protected keys lie close to the
forget keys they are protected from (cosine ~0.9 for same-relation subjects), and
without their component along the forget keys the solve can no longer tell them
apart: on the tiny GPT-2 (tests/engine/test_retain_carry.py's case) a second request
kept 18 of 46 same-relation facts with the cut carry, 46 with the whole carry, 31
without any.
"""

from __future__ import annotations

import torch


def merge(factor: torch.Tensor | None, columns: list[torch.Tensor], max_rank: int
          ) -> torch.Tensor | None:
    """[L, columns...] compressed to at most max_rank columns (d_ff, r), float32 CPU
    holding bfloat16 values (a preservation weight needs no more than 3 digits)."""
    parts = [] if factor is None else [factor.detach().to("cpu", torch.float64)]
    parts += [c.detach().to("cpu", torch.float64) for c in columns if c.shape[1] > 0]
    if not parts:
        return None
    full = torch.cat(parts, dim=1)  # (d_ff, r + new)
    rank = min(max_rank, full.shape[0])
    if full.shape[1] > rank:
        full = strongest(full, rank)
    # rounded to bfloat16 (kept as float32 in memory): patches store the carry in half
    # the bytes, and a model materialised from them holds exactly the same values
    return full.to(torch.bfloat16).to(torch.float32).contiguous()


def strongest(full: torch.Tensor, rank: int) -> torch.Tensor:
    """U_r S_r of full's SVD (d, rank), float64: the factor of the best rank-r
    approximation of M = full full^T, up to the sign of each column (M does not see it).

    From the eigenpairs of the smaller Gram matrix rather than an SVD of `full`: with
    thousands of protected keys (d_ff 1536, 4,000 columns on SmolLM2) LAPACK's SVD took
    ~15 s a layer on one thread, the Gram matrix and its eigh ~1 s. Squaring loses
    nothing the carry keeps: eigenvalues err by ~1e-16 of the largest, and the carry
    is rounded to bfloat16 (3 digits)."""
    d, n = full.shape
    if n >= d:  # M (d, d) itself: L = V sqrt(lam) over its top eigenpairs
        lam, vec = torch.linalg.eigh(full @ full.T)  # ascending
        top = lam.flip(0)[:rank].clamp_min(0.0)
        return vec.flip(1)[:, :rank] * top.sqrt()
    # full^T full (n, n) = W S^2 W^T, and full W = U S: the same columns
    _, vec = torch.linalg.eigh(full.T @ full)
    return full @ vec.flip(1)[:, :rank]
