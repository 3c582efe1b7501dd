"""The rows of a target optimisation (targets.py): every record under every context
template, then one "{subject} is a" KL row per record, then any anchor rows, with the
positions each row is edited at and scored at.

Rows of record b are contiguous (its templates in order, template 0 the raw prompt);
the KL rows follow all template rows, in record order, and the anchor rows follow them.
An anchor is a prompt whose next-token distribution the record's delta should not move
(a lookalike: the forget prompt with another subject, lookalikes.py); it is scored like
the KL rows, KL(p_new || p_unedited) at its last token, with the delta added at its own
edit position. Scored sites are listed target tokens first (record by record), then the
KL rows' and anchors' last tokens: the order the losses read their logits in.
An anchor's KL leaves out its record's first answer token: an anchor that shares the
forgotten answer ("The city of Delhi is located in the country of" beside Mumbai's) must
not hold the answer up against the forgetting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from zerounlearn.keys import EditRequest, Span, edit_index, templated
from zerounlearn.tokens import encode_prompt, pad_id, pad_rows

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel


@dataclass
class TargetBatch:
    """All rows of a set of records, right-padded; rows of record b are contiguous."""

    ids: torch.Tensor  # (R, T) n * n_tpl target rows (record-major), then n KL rows
    mask: torch.Tensor  # (R, T)
    rec: torch.Tensor  # (R,) record of each row
    pos: torch.Tensor  # (R,) edit position of each row
    score_row: torch.Tensor  # (P,) row of each scored target token
    score_pos: torch.Tensor  # (P,) position whose logits predict it
    score_ids: torch.Tensor  # (P,) the target token
    score_rec: torch.Tensor  # (P,) its record
    score_weight: torch.Tensor  # (P,) 1 / (tokens of its row * templates): sums to 1 a record
    kl_row: torch.Tensor  # (K,) the KL rows: each record's "is a" row, then the anchors
    kl_pos: torch.Tensor  # (K,) their last tokens
    kl_rec: torch.Tensor  # (K,) their records
    kl_weight: torch.Tensor  # (K,) float: each row's weight in its record's loss
    kl_index: torch.Tensor  # (K,) each row's place among the full batch's KL rows
    kl_skip: torch.Tensor  # (K,) a token its KL leaves out (an anchor's record's first
    # answer token), or -1
    n_records: int  # records of the full batch (ids stay global in subsets)


def build_batch(
    lm: LoadedModel, requests: Sequence[EditRequest], templates: Sequence[str],
    targets: Sequence[list[int]], *, kl_weight: float = 1.0,
    anchors: Sequence[Sequence[tuple[str, Span | None]]] | None = None,
    anchor_weight: float = 0.0,
) -> TargetBatch:
    """Every row of the records, right-padded to the longest (target_chunks.py cuts it
    into chunks of similar length for the passes).

    anchors: per record, (text, subject span or None = the last token) of each anchor
    prompt; with anchor_weight > 0 they add anchor_weight times their mean KL to the
    record's loss (the "is a" row adds kl_weight times its KL)."""
    tok, device = lm.tokenizer, lm.device
    rows: list[list[int]] = []
    rec: list[int] = []
    pos: list[int] = []
    s_row: list[int] = []
    s_pos: list[int] = []
    s_ids: list[int] = []
    s_rec: list[int] = []
    s_w: list[float] = []
    for b, (req, tgt) in enumerate(zip(requests, targets, strict=True)):
        for prefix in templates:
            text, span = templated(req, prefix)
            p_ids = encode_prompt(tok, text)
            for j, token in enumerate(tgt):
                s_row.append(len(rows))
                s_pos.append(len(p_ids) - 1 + j)  # logits at p predict token p + 1
                s_ids.append(token)
                s_rec.append(b)
                s_w.append(1.0 / (len(tgt) * len(templates)))
            # the last target token is never an input whose logits are read: scored
            # positions end at len(p_ids) + len(tgt) - 2, so the row stops there
            rows.append(p_ids + list(tgt[:-1]))
            rec.append(b)
            pos.append(edit_index(tok, text, span))
    kl_row: list[int] = []
    kl_pos: list[int] = []
    kl_rec: list[int] = []
    kl_w: list[float] = []
    kl_skip: list[int] = []

    def kl_site(b: int, text: str, span: Span | None, weight: float, skip: int) -> None:
        kl_ids = encode_prompt(tok, text)
        kl_skip.append(skip)
        kl_row.append(len(rows))
        kl_pos.append(len(kl_ids) - 1)
        kl_rec.append(b)
        kl_w.append(weight)
        rows.append(kl_ids)
        rec.append(b)
        pos.append(edit_index(tok, text, span))

    for b, req in enumerate(requests):
        kl_site(b, req.kl_text, req.kl_span, kl_weight, -1)
    if anchors is not None and anchor_weight > 0:
        for b, own in enumerate(anchors):
            for text, span in own:
                skip = requests[b].answer_ids[0] if requests[b].answer_ids else -1
                kl_site(b, text, span, anchor_weight / len(own), skip)
    ids, mask = pad_rows(rows, pad_id(tok), device)

    def as_tensor(x: list[int] | list[float], dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype, device=device)

    return TargetBatch(ids=ids, mask=mask, rec=as_tensor(rec), pos=as_tensor(pos),
                  score_row=as_tensor(s_row), score_pos=as_tensor(s_pos),
                  score_ids=as_tensor(s_ids), score_rec=as_tensor(s_rec),
                  score_weight=as_tensor(s_w, torch.float32), kl_row=as_tensor(kl_row),
                  kl_pos=as_tensor(kl_pos), kl_rec=as_tensor(kl_rec),
                  kl_weight=as_tensor(kl_w, torch.float32),
                  kl_index=torch.arange(len(kl_row), device=device),
                  kl_skip=as_tensor(kl_skip),
                  n_records=len(requests))


def kept_rows(batch: TargetBatch, keep: torch.Tensor) -> torch.Tensor:
    """(R',) the rows of the records where keep (n,) is True."""
    return keep[batch.rec].nonzero().squeeze(1)


def subset_of(batch: TargetBatch, keep: torch.Tensor) -> TargetBatch:
    """The rows of the records where keep (n,) is True; record ids stay global."""
    rows = kept_rows(batch, keep)  # (R',) old row indices
    new_index = torch.full_like(batch.rec, -1)
    new_index[rows] = torch.arange(len(rows), device=rows.device)
    scored = keep[batch.score_rec]  # (P,)
    kl = keep[batch.kl_rec]  # (K,)
    return TargetBatch(batch.ids[rows], batch.mask[rows], batch.rec[rows], batch.pos[rows],
                       new_index[batch.score_row[scored]], batch.score_pos[scored],
                       batch.score_ids[scored], batch.score_rec[scored],
                       batch.score_weight[scored], new_index[batch.kl_row[kl]],
                       batch.kl_pos[kl], batch.kl_rec[kl], batch.kl_weight[kl],
                       batch.kl_index[kl], batch.kl_skip[kl], batch.n_records)


def global_sites(full: TargetBatch, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, pos) (P' + K',) of the active records' scored sites as full-batch rows, in
    the order the losses read them: the target tokens (as listed in subset_of(full,
    active)), then the active records' KL and anchor rows."""
    scored = active[full.score_rec]  # (P,)
    kl = active[full.kl_rec]  # (K,)
    return (torch.cat([full.score_row[scored], full.kl_row[kl]]),
            torch.cat([full.score_pos[scored], full.kl_pos[kl]]))

