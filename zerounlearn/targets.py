"""Target states by delta optimisation, batched over all records (MEMIT's compute_v).

For each record b an additive delta_b (d_model) is added at the edit token of every
row of that record (all its context templates and its "{subject} is a" KL row), at a
hook point: block L's output (neutral targets Z_n) or layer l's down-projection output
(sensitive states M_f). Per record:

  loss_b = mean_t NLL(target tokens | template t)            (mean over tokens, templates)
         + kl_weight * KL(p_new || p_unedited) on "{subject} is a" (last token)
         + anchor_weight * mean_a KL(p_new || p_unedited) on its anchors (last token)
         + weight_decay * ||delta_b|| / ||h_b||

Anchors (optional, per record): prompts the record's delta is added to (at their own
edit token) whose next-token distribution it should not move, such as the forget prompt
with a lookalike subject. A closed-form edit leaks each record's shift onto similar keys;
a delta chosen to leave its lookalikes' predictions alone does less harm where it leaks
(the neighbour-assisted targets of the scaling anchors).

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

Rows run in chunks of similar length (target_chunks.py), each its own batch; the
logits at the scored positions are gathered back into one order, so losses and steps
are those of one batch. A clean pass (u = 0, no gradient) reads h_b at every record's
template-0 row.

Upper blocks only (settings.upper_only, ours): nothing below the hook point changes
during the loop. The clean pass is an ordinary forward that also records, per chunk,
for every block above the point, its input and arguments (upper.py); the passes of the
loop run only those blocks (for the block point: L+1 .. last, on the clean block-L
output plus delta; for the down_proj point: l .. last, the hook adding delta inside
block l) and the head at the scored positions. The loop's first pass checks that the
recorded stacks reproduce the clean pass's logits and falls back to full forward
passes if they do not.

Suffixes (settings.suffix, ours, block point): rows are chunked by edit position too,
and the recorded blocks run on each chunk's positions from its edit position on, with
the earlier positions' keys and values held from the clean pass (upper_suffix.py):
with the edit at the prompt's last token, one position a row. The first pass checks
them against the clean pass's logits as well and runs whole rows where they differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.adapters import block_hidden, replace_block_hidden, token_grid
from zerounlearn.keys import EditRequest, Span
from zerounlearn.target_batch import (
    TargetBatch,
    build_batch,
    global_sites,
    kept_rows,
    subset_of,
)
from zerounlearn.target_chunks import (
    TARGET_CHUNK_TOKENS,
    RowChunk,
    SitePlan,
    in_caller_order,
    plan_sites,
    row_chunks,
)
from zerounlearn.tokens import pad_id
from zerounlearn.upper import UpperStack, capture_stack
from zerounlearn.upper_suffix import SuffixStack, SuffixUnsupported, suffix_stack

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
    suffix: bool = True  # ... and at the block point on each row's last positions only

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
class _CleanPass:
    """What the clean pass (u = 0, all rows) reads at the hook point."""

    h: torch.Tensor  # (n, d_model) each record's clean value at its edit token
    scale: torch.Tensor  # (n,) delta_b = scale_b u_b: ||h_b|| / sqrt(d_model), or 1


@dataclass
class _RowView:
    """The rows the model is running now: what the forward hook needs to place deltas."""

    rec: torch.Tensor  # (r,) record of each row
    pos: torch.Tensor  # (r,) its edit position
    shape: tuple[int, int]  # (r, T) the batch's ids shape


@dataclass
class _OptState:
    """What the forward hook and the passes of one _optimize call share."""

    view: _RowView | None = None  # set before every forward
    soft: tuple[torch.Tensor, torch.Tensor] | None = None  # q (n, V) and -H(q) (n,)
    first: _CleanPass | None = None  # set after the clean pass
    seen: torch.Tensor | None = None  # (r, T, d_model) the hook's clean reading of a chunk
    kl_init: torch.Tensor | None = None  # (K, V) KL rows' log-probs of the first pass

    @property
    def clean(self) -> _CleanPass:
        if self.first is None:
            raise RuntimeError("the clean pass has not run yet")
        return self.first

    @property
    def rows(self) -> _RowView:
        if self.view is None:
            raise RuntimeError("no rows are being run")
        return self.view


def _shifted(hidden: torch.Tensor, rec: torch.Tensor, pos: torch.Tensor,
             delta: torch.Tensor) -> torch.Tensor:
    """hidden (r, T, d_model) + delta (n, d_model) of each row's record rec (r,) at its
    edit position pos (r,)."""
    dev = hidden.device  # with a device map, block L's device
    shift = torch.zeros_like(hidden)  # (r, T, d_model)
    rows = torch.arange(hidden.shape[0], device=dev)
    shift[rows, pos.to(dev)] = delta.to(dev)[rec.to(dev)].to(hidden.dtype)
    return hidden + shift


def _forward_logits(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor,
                    rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits (k, V) float32 at (rows, pos) of a full forward on ids, mask (r, T): the
    output head runs on k positions, not r * T."""
    model = lm.model
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if head is None:  # no separate head: full forward
        every = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        picked: torch.Tensor = every[rows.to(every.device), pos.to(every.device)]  # (k, V)
        return picked.float().to(rows.device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask,
                              use_cache=False).last_hidden_state  # (r, T, d_model), normed
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
    max_tokens: int | None = None,
    anchors: Sequence[Sequence[tuple[str, Span | None]]] | None = None,
    anchor_weight: float = 0.0,
) -> DeltaResult:
    """Deltas at (point, layer) that make each record's prompts emit its target tokens
    (or, with soft (n, V), reach that next-token distribution; targets then hold one
    token per record, which only places the scored position).

    With settings.batch_records False the records run one at a time (the paper's way).
    max_tokens: padded tokens per chunk of rows (target_chunks.py; default
    TARGET_CHUNK_TOKENS); the result does not depend on it beyond float rounding.
    anchors: per record, (text, subject span or None = last token) of prompts whose
    next-token distribution its delta should keep (weight anchor_weight; module doc).
    """
    budget = TARGET_CHUNK_TOKENS if max_tokens is None else max_tokens
    if anchors is not None and len(anchors) != len(requests):
        raise ValueError("anchors need one list per record")
    if settings.batch_records:
        return _optimize(lm, requests, templates, targets, point, layer, settings, progress,
                         soft, budget, anchors, anchor_weight)
    parts = []
    for i in range(len(requests)):
        def sub(phase: str, f: float, i: int = i) -> None:
            if progress is not None:
                progress(phase, (i + f) / len(requests))
        parts.append(_optimize(lm, requests[i : i + 1], templates, targets[i : i + 1],
                               point, layer, settings, sub,
                               None if soft is None else soft[i : i + 1], budget,
                               None if anchors is None else anchors[i : i + 1],
                               anchor_weight))
    return DeltaResult(*(torch.cat([getattr(p, f) for p in parts]) for f in
                         ("delta", "h", "nll", "steps")))


@dataclass
class _Passes:
    """Runs the rows of the still-active records, chunk by chunk, at the current delta."""

    lm: LoadedModel
    full: TargetBatch
    chunks: list[RowChunk]
    point: str
    state: _OptState
    u: torch.Tensor  # (n, d_model) the optimised variable
    stacks: bool  # run only the recorded upper blocks (else full forwards)
    suffix: bool = False  # ... and only their positions from the chunk's edit position
    subsets: dict[int, UpperStack] = field(default_factory=dict)  # chunk -> its stack, cut
    suffixes: dict[int, SuffixStack | None] = field(default_factory=dict)  # chunk -> whole
    suffix_cuts: dict[int, SuffixStack] = field(default_factory=dict)  # chunk -> cut

    def delta(self) -> torch.Tensor:
        return self.u * self.state.clean.scale[:, None]  # (n, d_model)

    def logits(self, plans: list[SitePlan]) -> torch.Tensor:
        """(S, V) at the sites the plans were made for, in their order."""
        return in_caller_order(plans, [self.chunk_logits(p) for p in plans])

    def chunk_logits(self, plan: SitePlan) -> torch.Tensor:
        chunk = self.chunks[plan.chunk]
        rows = chunk.rows[plan.kept]  # (r',) full-batch rows
        rec, pos = self.full.rec[rows], self.full.pos[rows]
        self.state.view = _RowView(rec, pos, (len(rows), int(chunk.ids.shape[1])))
        if self.stacks and chunk.stack is not None:
            stack = self._stack(plan, chunk.stack)
            if stack.hidden is None:
                raise RuntimeError("the upper stack has no recorded input")
            start = (_shifted(stack.hidden, rec, pos, self.delta()) if self.point == "block"
                     else stack.hidden)  # down_proj: the hook adds delta inside block l
            suffix = self._suffix(plan) if self.suffix else None
            if suffix is not None:  # positions before suffix.start are the clean pass's
                out = suffix.run(start[:, suffix.start:])  # (r', T - p0, d_model)
                return stack.logits_at(out, plan.rows, plan.pos - suffix.start).to(
                    self.lm.device)
            return stack.logits_at(stack.run(start), plan.rows, plan.pos).to(self.lm.device)
        every = len(rows) == len(chunk.rows)
        ids = chunk.ids if every else chunk.ids[plan.kept]
        mask = chunk.mask if every else chunk.mask[plan.kept]
        return _forward_logits(self.lm, ids, mask, plan.rows, plan.pos)

    def _suffix(self, plan: SitePlan) -> SuffixStack | None:
        """The chunk's suffix stack for its kept rows (built on first use from the
        chunk's clean stack, from its first edit position), or None where the chunk
        cannot be run so (its arguments, or a site before that position)."""
        chunk = self.chunks[plan.chunk]
        if plan.chunk not in self.suffixes:
            whole = None
            if chunk.stack is not None:
                try:
                    whole = suffix_stack(chunk.stack, int(self.full.pos[chunk.rows].min()))
                except SuffixUnsupported as exc:
                    logger.debug("chunk %d runs whole: %s", plan.chunk, exc)
            self.suffixes[plan.chunk] = whole
        whole = self.suffixes[plan.chunk]
        if whole is None or (len(plan.pos) and int(plan.pos.min()) < whole.start):
            return None
        if len(plan.kept) == whole.stack.rows:
            return whole
        cut = self.suffix_cuts.get(plan.chunk)
        if cut is None or cut.stack.rows != len(plan.kept):
            cut = self.suffix_cuts[plan.chunk] = whole.subset(plan.kept)
        return cut

    def _stack(self, plan: SitePlan, whole: UpperStack) -> UpperStack:
        """The chunk's stack for its kept rows (cut again only when records left)."""
        if len(plan.kept) == whole.rows:
            return whole
        cut = self.subsets.get(plan.chunk)
        if cut is None or cut.rows != len(plan.kept):
            cut = self.subsets[plan.chunk] = whole.subset(plan.kept)
        return cut


def _clean_pass(passes: _Passes, plans: list[SitePlan], layer: int, n_tpl: int,
                record_stacks: bool, relative: bool) -> None:
    """u = 0 on every chunk: each record's clean value h at its edit token (from its
    template-0 row), and (record_stacks) each chunk's upper stack and its logits."""
    lm, full, state, point = passes.lm, passes.full, passes.state, passes.point
    n = full.n_records
    h: torch.Tensor | None = None
    for plan in plans:
        chunk = passes.chunks[plan.chunk]
        state.view = _RowView(full.rec[chunk.rows], full.pos[chunk.rows],
                              (len(chunk.rows), int(chunk.ids.shape[1])))
        run = partial(_forward_logits, lm, chunk.ids, chunk.mask, plan.rows, plan.pos)
        if record_stacks:
            start = layer + 1 if point == "block" else layer
            chunk.stack, chunk.ref = capture_stack(lm, run, start)
        else:
            run()
        seen = state.seen  # (r, T, d_model) the hook's reading
        if seen is None:
            raise RuntimeError("the hook point did not run")
        if record_stacks and point == "block" and chunk.stack is not None:
            # the stack's input is block L's clean output (also with no block above)
            chunk.stack.hidden, chunk.stack.rows = seen, int(seen.shape[0])
        first = (chunk.rows % n_tpl == 0) & (chunk.rows < n * n_tpl)  # template-0 rows
        local = first.nonzero().squeeze(1)  # (k,)
        picked = seen[local.to(seen.device), full.pos[chunk.rows[local]].to(seen.device)]
        if h is None:
            h = torch.zeros(n, seen.shape[-1], device=lm.device)
        h[chunk.rows[local] // n_tpl] = picked.float().to(lm.device)  # (k, d_model)
        state.seen = None
    if h is None:
        raise RuntimeError("no rows to optimise")
    d_model = h.shape[1]
    rel = h.norm(dim=-1) / d_model ** 0.5  # Adam moves coordinates by ~lr
    state.first = _CleanPass(h=h, scale=rel if relative else torch.ones_like(rel))


def _stacks_agree(passes: _Passes, plans: list[SitePlan], logits: torch.Tensor,
                  fallback: str = "full forward passes") -> bool:
    """Whether the stacks' first logits (S, V) reproduce the clean pass's full forwards
    (a warning names the fallback when they do not)."""
    for plan in plans:
        chunk = passes.chunks[plan.chunk]
        ref = chunk.ref
        if ref is None or chunk.stack is None:
            return False
        ref = ref.detach()
        mine = logits[plan.sites.to(logits.device)].detach()  # (s, V)
        hidden = chunk.stack.hidden
        tol = 1e-3 if hidden is not None and hidden.dtype == torch.float32 else 5e-2
        err = float((mine - ref).abs().max()) if ref.numel() else 0.0
        if err > tol * max(1.0, float(ref.abs().max())):
            logger.warning("upper-block pass differs from the full forward (%.2e): using %s "
                           "(%s)", err, fallback, passes.lm.adapter.name)
            return False
    return True


def _first_logits(passes: _Passes, plans: list[SitePlan]) -> torch.Tensor:
    """The first pass's logits (S, V): through the recorded stacks (on the rows'
    suffixes where they serve) when they reproduce the model, else (and from then on)
    through the whole stacks, or full forwards."""
    if passes.stacks and passes.suffix:
        try:
            logits = passes.logits(plans)
        except Exception as exc:  # a family whose blocks cannot be called this way
            logger.warning("suffix pass failed (%s: %s): running whole rows (%s)",
                           type(exc).__name__, exc, passes.lm.adapter.name)
        else:
            if _stacks_agree(passes, plans, logits, "whole rows"):
                return logits
        passes.suffix = False
    if passes.stacks:
        try:
            logits = passes.logits(plans)
        except Exception as exc:  # a family whose blocks cannot be called this way
            logger.warning("upper-block pass failed (%s: %s): using full forward passes (%s)",
                           type(exc).__name__, exc, passes.lm.adapter.name)
            passes.stacks = False
        else:
            if _stacks_agree(passes, plans, logits):
                return logits
            passes.stacks = False
    return passes.logits(plans)


def _optimize(
    lm: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    targets: Sequence[list[int]],
    point: str,
    layer: int,
    st: TargetSettings,
    progress: Progress | None,
    soft: torch.Tensor | None,
    max_tokens: int,
    anchors: Sequence[Sequence[tuple[str, Span | None]]] | None = None,
    anchor_weight: float = 0.0,
) -> DeltaResult:
    n, n_tpl = len(requests), len(templates)
    full = build_batch(lm, requests, templates, targets, kl_weight=st.kl_weight,
                       anchors=anchors, anchor_weight=anchor_weight)
    # chunked by edit position also for full forwards, so both ways batch alike
    by_start = st.suffix and point == "block"
    chunks = row_chunks(full.ids, full.mask, pad_id(lm.tokenizer), max_tokens,
                        widen=st.upper_only, starts=full.pos if by_start else None)
    suffix = st.upper_only and by_start
    d_model = lm.adapter.d_model(lm.model)
    u = torch.zeros(n, d_model, device=lm.device, requires_grad=True)  # (n, d_model)
    opt = torch.optim.Adam([u], lr=st.lr)
    state = _OptState()
    if soft is not None:
        q = soft.to(lm.device, torch.float32)  # (n, V)
        state.soft = (q, (q * q.clamp_min(1e-30).log()).sum(-1))  # q and -H(q) (n,)
    passes = _Passes(lm, full, chunks, point, state, u, stacks=st.upper_only, suffix=suffix)

    def add_delta(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        view = state.rows
        if point == "block":
            hidden = block_hidden(output)  # (r, T, d_model)
        else:  # OPT's MLP output is (r*T, d_model): seen as (r, T, d_model), returned flat
            hidden = token_grid(output, *view.shape)  # (r, T, d_model)
        if state.first is None:  # the clean pass (u = 0): read, change nothing
            state.seen = hidden.detach()
            return output
        hidden = _shifted(hidden, view.rec, view.pos, passes.delta())
        if point == "block":
            return replace_block_hidden(output, hidden)
        return hidden.view(output.shape)  # the MLP output's own shape

    active = torch.ones(n, dtype=torch.bool, device=lm.device)
    all_rows = torch.arange(len(full.rec), device=lm.device)
    steps = torch.zeros(n, dtype=torch.long)
    nll = torch.zeros(n)
    total_steps = max(1, st.steps)
    handle = _hook_module(lm, point, layer).register_forward_hook(add_delta)
    try:
        with frozen(lm.model):
            plans = plan_sites(chunks, all_rows, *global_sites(full, active), len(full.rec))
            with torch.no_grad():
                _clean_pass(passes, plans, layer, n_tpl, record_stacks=st.upper_only,
                            relative=st.step_units == "relative")
            with torch.enable_grad():
                for it in range(total_steps):
                    # finished records leave the batch: their rows are no longer computed
                    every = bool(active.all())
                    batch = full if every else subset_of(full, active)
                    idx = active.nonzero().squeeze(1)  # (n',) records in this pass
                    if it == 0:
                        logits = _first_logits(passes, plans)
                    else:
                        if not every:
                            plans = plan_sites(chunks, kept_rows(full, active),
                                               *global_sites(full, active), len(full.rec))
                        logits = passes.logits(plans)
                    nll_b, kl_b = _losses(logits, batch, idx, state, it)  # (n',), (n',)
                    # kl_b carries its weights (kl_weight, anchor_weight)
                    h_norm = state.clean.h[idx].norm(dim=-1)  # (n',)
                    delta_norm = (u[idx] * state.clean.scale[idx, None]).norm(dim=-1)
                    total_b = (nll_b + kl_b
                               + st.weight_decay * delta_norm / h_norm)  # (n',)
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


def _losses(
    logits: torch.Tensor, batch: TargetBatch, idx: torch.Tensor, state: _OptState, it: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record target NLL (mean over tokens, then templates) and weighted KL on the
    "is a" row and the anchors, for the records idx (n',) in the batch, both (n',), from
    the logits (P' + K', V) at global_sites(full, active)."""
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
    kl_logp = logp[k_t:]  # (K', V), the batch's KL rows in order
    skip = batch.kl_skip >= 0  # (K',) anchors: without their record's answer token
    if bool(skip.any()):
        kl_logits = logits[k_t:].float().clone()
        rows = skip.nonzero().squeeze(1)
        kl_logits[rows, batch.kl_skip[rows]] = -1e4  # finite: no inf - inf in the KL
        kl_logp = torch.log_softmax(kl_logits, dim=-1)
    if it == 0 or state.kl_init is None:
        state.kl_init = kl_logp.detach()  # all records in the first pass
    init = state.kl_init[batch.kl_index]  # (K', V)
    # KL(p_new || p_init), as MEMIT's kl_div(init, new, log_target=True)
    kl_rows = (kl_logp.exp() * (kl_logp - init)).sum(dim=-1)  # (K',)
    kl_all = torch.zeros(n, device=logp.device).index_add(
        0, batch.kl_rec, kl_rows * batch.kl_weight)  # (n,)
    return nll_b, kl_all[idx]


def _clamp(u: torch.Tensor, scale: torch.Tensor, h_norm: torch.Tensor, clamp: float) -> None:
    """In place: ||delta_b|| = scale_b ||u_b|| <= clamp ||h_b||."""
    limit = clamp * h_norm / scale  # (n,) bound on ||u_b||
    norm = u.norm(dim=-1)  # (n,)
    factor = torch.where(norm > limit, limit / norm.clamp_min(1e-12), torch.ones_like(norm))
    u.mul_(factor[:, None])
