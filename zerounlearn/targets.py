"""Target states by delta optimisation, batched over all records (MEMIT's compute_v).

For each record b an additive delta_b (d_model) is added at the edit token of every
row of that record (all its context templates and its "{subject} is a" KL row), at a
hook point: block L's output (neutral targets Z_n) or layer l's down-projection output
(sensitive states M_f). Per record:

  loss_b = mean_t NLL(target tokens | template t)            (mean over tokens, templates)
         + kl_weight * KL(p_new || p_unedited) on "{subject} is a" (last token)
         + weight_decay * ||delta_b|| / ||h_b||

with h_b the hook point's clean-prompt value at the edit token. With `soft` target
distributions q_b (neutral_target "generic", zerounlearn.neutral) the first term is
KL(q_b || p_new) at the prompt's last token instead of the target tokens' NLL (it
reaches 0, so the early stop works as for tokens). The optimiser works on
u_b with delta_b = ||h_b|| / sqrt(d_model) u_b ("relative" units: Adam moves every
coordinate of u by about lr, so one step moves delta by about lr ||h_b||, whatever the
model's hidden size and norm) or delta_b = u_b ("absolute", the paper: on SmolLM2 lr 0.1
moves delta by ~2.4 = 0.01 ||h|| a step and never reaches the target). After each step
||delta_b|| is clamped to clamp * ||h_b||. A record whose stop loss falls below the
threshold stops changing, and its rows leave the batch.
Adam is element-wise and the loss is a sum over records, so every record follows the
same path it would follow alone: batched and one-at-a-time agree up to float rounding.

Upper blocks only (settings.upper_only, ours): nothing below the hook point changes
during the loop. The first pass is an ordinary forward that also records, for every
block above the point, its input and arguments (upper.py); later passes run only those
blocks (for the block point: L+1 .. last, on the clean block-L output plus delta; for
the down_proj point: l .. last, the hook adding delta inside block l) and the head at
the scored positions. The first pass checks that the recorded stack reproduces the
model's logits and falls back to full forward passes if it does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.adapters import block_hidden, replace_block_hidden, token_grid
from zerounlearn.keys import EditRequest, edit_index, templated
from zerounlearn.tokens import encode_prompt, pad_id, pad_rows
from zerounlearn.upper import UpperStack, capture_stack

if TYPE_CHECKING:
    from zerounlearn.config import TargetHParams
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


@dataclass
class TargetSettings:
    """What targets.py needs from a method's hyper-parameters (TargetHParams has them)."""

    lr: float = 0.1
    steps: int = 25
    stop_loss: float = 0.05
    early_stop_on: str = "nll"
    kl_weight: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 0.75
    step_units: str = "relative"
    batch_records: bool = True
    upper_only: bool = True  # passes after the first run only the blocks above the point

    @classmethod
    def from_hparams(cls, hp: TargetHParams) -> TargetSettings:
        return cls(hp.target_lr, hp.target_steps, hp.target_stop_loss, hp.early_stop_on,
                   hp.kl_weight, hp.weight_decay, hp.clamp, hp.step_units, hp.batch_records,
                   hp.upper_only)


@dataclass
class DeltaResult:
    """Per-record results, row b = record b (float32, CPU-independent of the model)."""

    delta: torch.Tensor  # (n, d_model) the optimised shift
    h: torch.Tensor  # (n, d_model) clean value at the hook point (the target is h + delta)
    nll: torch.Tensor  # (n,) target NLL at the last evaluation
    steps: torch.Tensor  # (n,) optimiser steps each record took

    @property
    def target(self) -> torch.Tensor:
        return self.h + self.delta  # (n, d_model)


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no parameter gradients; both restored on exit."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


@dataclass
class _Batch:
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
    kl_row: torch.Tensor  # (n,) the KL row of each record
    kl_pos: torch.Tensor  # (n,) its last token


def _build_batch(
    lm: LoadedModel, requests: Sequence[EditRequest], templates: Sequence[str],
    targets: Sequence[list[int]], widen: bool = False,
) -> _Batch:
    """widen: one more pad column when the width equals the number of rows, so that an
    UpperStack can tell batch dimensions from sequence dimensions."""
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
    for b, req in enumerate(requests):
        kl_ids = encode_prompt(tok, req.kl_text)
        kl_row.append(len(rows))
        kl_pos.append(len(kl_ids) - 1)
        rows.append(kl_ids)
        rec.append(b)
        pos.append(edit_index(tok, req.kl_text, req.kl_span))
    ids, mask = pad_rows(rows, pad_id(tok), device)
    if widen and ids.shape[0] == ids.shape[1]:
        ids = torch.cat([ids, ids.new_full((len(rows), 1), pad_id(tok))], dim=1)
        mask = torch.cat([mask, mask.new_zeros((len(rows), 1))], dim=1)

    def as_tensor(x: list[int] | list[float], dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype, device=device)

    return _Batch(ids=ids, mask=mask, rec=as_tensor(rec), pos=as_tensor(pos),
                  score_row=as_tensor(s_row), score_pos=as_tensor(s_pos),
                  score_ids=as_tensor(s_ids), score_rec=as_tensor(s_rec),
                  score_weight=as_tensor(s_w, torch.float32), kl_row=as_tensor(kl_row),
                  kl_pos=as_tensor(kl_pos))


def _kept_rows(batch: _Batch, keep: torch.Tensor) -> torch.Tensor:
    """(R',) the rows of the records where keep (n,) is True."""
    return keep[batch.rec].nonzero().squeeze(1)


def _subset(batch: _Batch, keep: torch.Tensor) -> _Batch:
    """The rows of the records where keep (n,) is True; record ids stay global."""
    rows = _kept_rows(batch, keep)  # (R',) old row indices
    new_index = torch.full_like(batch.rec, -1)
    new_index[rows] = torch.arange(len(rows), device=rows.device)
    scored = keep[batch.score_rec]  # (P,)
    kl = keep.nonzero().squeeze(1)  # (n',)
    return _Batch(batch.ids[rows], batch.mask[rows], batch.rec[rows], batch.pos[rows],
                  new_index[batch.score_row[scored]], batch.score_pos[scored],
                  batch.score_ids[scored], batch.score_rec[scored], batch.score_weight[scored],
                  new_index[batch.kl_row[kl]], batch.kl_pos[kl])


@dataclass
class _CleanPass:
    """What the first pass (u = 0, all rows) reads at the hook point."""

    h: torch.Tensor  # (n, d_model) each record's clean value at its edit token
    scale: torch.Tensor  # (n,) delta_b = scale_b u_b: ||h_b|| / sqrt(d_model), or 1
    hidden: torch.Tensor  # (R, T, d_model) the whole clean output: the upper stack's input


@dataclass
class _OptState:
    """What the forward hook and the passes of one _optimize call share."""

    batch: _Batch  # the rows of this pass (records that stopped have left)
    soft: tuple[torch.Tensor, torch.Tensor] | None = None  # q (n, V) and -H(q) (n,)
    first: _CleanPass | None = None  # set by the hook in the first pass
    stack: UpperStack | None = None  # the upper blocks, when they reproduce the model
    kl_init: torch.Tensor | None = None  # (n, V) "is a" log-probs of the first pass

    @property
    def clean(self) -> _CleanPass:
        if self.first is None:
            raise RuntimeError("the first pass has not run yet")
        return self.first

    @property
    def upper(self) -> UpperStack:
        if self.stack is None:
            raise RuntimeError("no upper stack was captured")
        return self.stack


def _shifted(hidden: torch.Tensor, batch: _Batch, delta: torch.Tensor) -> torch.Tensor:
    """hidden (R, T, d_model) + delta (n, d_model) of each row's record at its edit token."""
    dev = hidden.device  # with a device map, block L's device
    shift = torch.zeros_like(hidden)  # (R, T, d_model)
    rows = torch.arange(hidden.shape[0], device=dev)
    shift[rows, batch.pos.to(dev)] = delta.to(dev)[batch.rec.to(dev)].to(hidden.dtype)
    return hidden + shift


def _logits_at(lm: LoadedModel, batch: _Batch, rows: torch.Tensor, pos: torch.Tensor,
               upper: Callable[[], torch.Tensor] | None = None,
               stack: UpperStack | None = None) -> torch.Tensor:
    """Logits (k, V) at (rows, pos) only: the output head runs on k positions, not R * T.

    With a stack: only its blocks, on upper() (R, T, d_model), the input of its first block.
    """
    if stack is not None and upper is not None:
        return stack.logits_at(stack.run(upper()), rows, pos).to(rows.device)
    model = lm.model
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if head is None:  # no separate head: full forward
        every = model(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False).logits
        picked: torch.Tensor = every[rows.to(every.device), pos.to(every.device)]  # (k, V)
        return picked.float().to(rows.device)
    hidden = model.base_model(input_ids=batch.ids, attention_mask=batch.mask,
                              use_cache=False).last_hidden_state  # (R, T, d_model), normed
    dev = hidden.device
    logits: torch.Tensor = head(hidden[rows.to(dev), pos.to(dev)])  # (k, V)
    logits = logits.float().to(rows.device)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _hook_module(lm: LoadedModel, point: str, layer: int) -> torch.nn.Module:
    if point == "block":
        return lm.adapter.block(lm.model, layer)
    if point == "down_proj":
        return lm.adapter.down_proj(lm.model, layer)
    raise ValueError(f"unknown hook point {point!r}")


def optimize_deltas(
    lm: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    targets: Sequence[list[int]],
    *,
    point: str,
    layer: int,
    settings: TargetSettings,
    progress: Progress | None = None,
    soft: torch.Tensor | None = None,
) -> DeltaResult:
    """Deltas at (point, layer) that make each record's prompts emit its target tokens
    (or, with soft (n, V), reach that next-token distribution; targets then hold one
    token per record, which only places the scored position).

    With settings.batch_records False the records run one at a time (the paper's way).
    """
    if settings.batch_records:
        return _optimize(lm, requests, templates, targets, point, layer, settings, progress,
                         soft)
    parts = []
    for i in range(len(requests)):
        def sub(phase: str, f: float, i: int = i) -> None:
            if progress is not None:
                progress(phase, (i + f) / len(requests))
        parts.append(_optimize(lm, requests[i : i + 1], templates, targets[i : i + 1],
                               point, layer, settings, sub,
                               None if soft is None else soft[i : i + 1]))
    return DeltaResult(*(torch.cat([getattr(p, f) for p in parts]) for f in
                         ("delta", "h", "nll", "steps")))


def _optimize(
    lm: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    targets: Sequence[list[int]],
    point: str,
    layer: int,
    st: TargetSettings,
    progress: Progress | None,
    soft: torch.Tensor | None = None,
) -> DeltaResult:
    n, n_tpl = len(requests), len(templates)
    full = _build_batch(lm, requests, templates, targets, widen=st.upper_only)
    d_model = lm.adapter.d_model(lm.model)
    u = torch.zeros(n, d_model, device=lm.device, requires_grad=True)  # (n, d_model)
    opt = torch.optim.Adam([u], lr=st.lr)
    state = _OptState(batch=full)
    if soft is not None:
        q = soft.to(lm.device, torch.float32)  # (n, V)
        state.soft = (q, (q * q.clamp_min(1e-30).log()).sum(-1))  # q and -H(q) (n,)

    def add_delta(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        batch = state.batch
        if point == "block":
            hidden = block_hidden(output)  # (R, T, d_model)
        else:  # OPT's MLP output is (R*T, d_model): seen as (R, T, d_model), returned flat
            hidden = token_grid(output, *batch.ids.shape)  # (R, T, d_model)
        if state.first is None:  # first pass (u = 0, all rows): read the clean values
            clean = torch.arange(n, device=hidden.device) * n_tpl  # template 0 rows
            at = batch.pos.to(hidden.device)[clean]  # (n,) edit positions
            h = hidden[clean, at].detach().float().to(u.device)  # (n, d_model)
            rel = h.norm(dim=-1) / d_model ** 0.5  # Adam moves coordinates by ~lr
            state.first = _CleanPass(
                h=h, scale=rel if st.step_units == "relative" else torch.ones_like(rel),
                hidden=hidden.detach())
        hidden = _shifted(hidden, batch, u * state.clean.scale[:, None])
        if point == "block":
            return replace_block_hidden(output, hidden)
        return hidden.view(output.shape)  # the MLP output's own shape

    def upper_input() -> torch.Tensor:
        """The stack's first input: block L's output + delta, or block l's input."""
        stack = state.upper
        if stack.hidden is None:
            raise RuntimeError("the upper stack has no recorded input")
        if point == "block":
            return _shifted(stack.hidden, state.batch, u * state.clean.scale[:, None])
        return stack.hidden

    active = torch.ones(n, dtype=torch.bool, device=lm.device)
    steps = torch.zeros(n, dtype=torch.long)
    nll = torch.zeros(n)
    total_steps = max(1, st.steps)
    full_stack: UpperStack | None = None
    handle = _hook_module(lm, point, layer).register_forward_hook(add_delta)
    try:
        with frozen(lm.model), torch.enable_grad():
            for it in range(total_steps):
                # finished records leave the batch: their rows are no longer computed
                every = bool(active.all())
                state.batch = batch = full if every else _subset(full, active)
                idx = active.nonzero().squeeze(1)  # (n',) records in this pass
                rows, pos = _scored_sites(batch)
                if it == 0 and st.upper_only:
                    start = layer + 1 if point == "block" else layer
                    full_stack, logits = capture_stack(
                        lm, partial(_logits_at, lm, batch, rows, pos), start)
                    full_stack = _checked_stack(full_stack, point, state, logits,
                                                upper_input, rows, pos)
                elif full_stack is not None:
                    if state.upper.rows != len(batch.rec):  # records left: fewer rows
                        state.stack = full_stack.subset(_kept_rows(full, active))
                    logits = _logits_at(lm, batch, rows, pos, upper_input, state.upper)
                else:
                    logits = _logits_at(lm, batch, rows, pos)
                nll_b, kl_b = _losses(logits, batch, idx, state, it)  # (n',), (n',)
                h_norm = state.clean.h[idx].norm(dim=-1)  # (n',)
                delta_norm = (u[idx] * state.clean.scale[idx, None]).norm(dim=-1)  # (n',)
                total_b = nll_b + st.kl_weight * kl_b + st.weight_decay * delta_norm / h_norm
                stop_b = nll_b if st.early_stop_on == "nll" else total_b  # (n',)
                nll[idx.cpu()] = nll_b.detach().cpu()
                still = stop_b.detach() >= st.stop_loss  # (n',)
                if progress is not None:
                    progress("targets", (it + 1) / total_steps)
                if not still.any() or it == total_steps - 1:
                    break  # MEMIT: the last pass only evaluates
                frozen_u = u.detach().clone()
                opt.zero_grad()
                total_b[still].sum().backward()
                opt.step()
                active[idx[~still]] = False
                with torch.no_grad():
                    u[~active] = frozen_u[~active]  # stopped records do not move
                    _clamp(u, state.clean.scale, state.clean.h.norm(dim=-1), st.clamp)
                steps += active.cpu().long()
    finally:
        handle.remove()
    delta = (u * state.clean.scale[:, None]).detach().float()  # (n, d_model)
    return DeltaResult(delta=delta.cpu(), h=state.clean.h.cpu(), nll=nll, steps=steps)


def _scored_sites(batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, pos), (P' + n',) each: the target tokens' positions, then the KL rows'."""
    return (torch.cat([batch.score_row, batch.kl_row]),
            torch.cat([batch.score_pos, batch.kl_pos]))


def _checked_stack(
    stack: UpperStack, point: str, state: _OptState, logits: torch.Tensor,
    upper_input: Callable[[], torch.Tensor], rows: torch.Tensor, pos: torch.Tensor,
) -> UpperStack | None:
    """The stack if it reproduces the first (full) pass's logits (P, V), else None."""
    if point == "block":  # its input is block L's clean output (also with no block above)
        stack.hidden, stack.rows = state.clean.hidden, state.clean.hidden.shape[0]
    state.stack = stack
    try:
        with torch.no_grad():
            again = stack.logits_at(stack.run(upper_input()), rows, pos)  # (P, V)
    except Exception as exc:  # a family whose blocks cannot be called this way
        logger.warning("upper-block pass failed (%s: %s): using full forward passes (%s)",
                       type(exc).__name__, exc, stack.lm.adapter.name)
        return None
    ref = logits.detach()
    tol = 1e-3 if stack.hidden is not None and stack.hidden.dtype == torch.float32 else 5e-2
    err = float((again - ref).abs().max()) if ref.numel() else 0.0
    if err > tol * max(1.0, float(ref.abs().max())):
        logger.warning("upper-block pass differs from the full forward (%.2e): using full "
                       "forward passes (%s)", err, stack.lm.adapter.name)
        return None
    return stack


def _losses(
    logits: torch.Tensor, batch: _Batch, idx: torch.Tensor, state: _OptState, it: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record target NLL (mean over tokens, then templates) and KL on the "is a"
    row, for the records idx (n',) in the batch, both (n',), from the logits (P' + n', V)
    at _scored_sites(batch)."""
    k_t = len(batch.score_row)
    logp = torch.log_softmax(logits, dim=-1)  # (P' + n', V)
    if state.soft is not None:  # KL(q || p) at the one scored position of each row
        q, neg_entropy = state.soft
        q_rows = q[batch.score_rec]  # (P', V)
        token_nll = neg_entropy[batch.score_rec] - (q_rows * logp[:k_t]).sum(-1)  # (P',)
    else:
        token_nll = -logp[:k_t].gather(-1, batch.score_ids[:, None]).squeeze(-1)  # (P',)
    n = len(state.clean.h)
    nll_all = torch.zeros(n, device=logp.device).index_add(
        0, batch.score_rec, token_nll * batch.score_weight)  # (n,) sums to the mean per record
    nll_b = nll_all[idx]  # (n',)
    kl_logp = logp[k_t:]  # (n', V), records in idx order (kl rows are record-ordered)
    if it == 0 or state.kl_init is None:
        state.kl_init = kl_logp.detach()  # all records in the first pass
    init = state.kl_init[idx]  # (n', V)
    # KL(p_new || p_init), as MEMIT's kl_div(init, new, log_target=True)
    kl_b = (kl_logp.exp() * (kl_logp - init)).sum(dim=-1)  # (n',)
    return nll_b, kl_b


def _clamp(u: torch.Tensor, scale: torch.Tensor, h_norm: torch.Tensor, clamp: float) -> None:
    """In place: ||delta_b|| = scale_b ||u_b|| <= clamp ||h_b||."""
    limit = clamp * h_norm / scale  # (n,) bound on ||u_b||
    norm = u.norm(dim=-1)  # (n,)
    factor = torch.where(norm > limit, limit / norm.clamp_min(1e-12), torch.ones_like(norm))
    u.mul_(factor[:, None])
