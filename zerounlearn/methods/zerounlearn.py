"""ZeroUnlearn, closed form: "zerounlearn" (our default variant) and "zerounlearn-paper".

The layer loop of the spec, for edited layers l_0 < ... < l_{m-1} = L:
  once:  Z_n = H_L + delta, delta optimised so each prompt emits its neutral target
  for i, l in enumerate(layers):
    1. K_f, W K_f, H_L on the partly edited model (one batched forward)
    2. V* = W K_f + (Z_n - H_L) / (m - i)
    3. Q = basis of span(M_f)  (M_f = W K_f, or optimised towards the true answer)
    4. P = (1 + eps) I - Q Q^T
    5. the float64 normal equations (global / key-gated / none, + protected keys)
    6. W <- D W (the paper, update="multiplicative"), or W <- W' solved in key space
       (ours, update="additive": W' = D W can only act through W k, d_model numbers,
       and could not tell same-relation keys apart; see solve.direct_update)
Rounds (max_rounds): after the loop, records the edited model still reproduces (with
retry_generated: or whose greedy continuation names the answer) are edited again on
top (from round 2 at the prompt's last token, retry_at_last_token; with edit_token
"last" round 1 edits there too), at cfg.retry_layers when set. The patch holds every
layer some round edited. The protected sites are built once per request
(ZeroUnlearnBase.protected) and kept by every round.
The model is unchanged on return: edits are made on the model's own weights for the
forward passes of later layers, and every edited weight is restored in a `finally`,
also when an error interrupts the loop. The new weights travel in the returned Patch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn import carry, solve
from zerounlearn.config import ZeroUnlearnHParams, config_for_model, edited_layers
from zerounlearn.errors import InvalidHyperParameters
from zerounlearn.evaluate import reproduced
from zerounlearn.keys import (
    EditRequest,
    KeyState,
    ProtectedPrefix,
    Site,
    Span,
    compute_keys,
    key_prefix,
    prepare_requests,
)
from zerounlearn.lookalikes import lookalike_prompts, lookalike_sites
from zerounlearn.methods.edit_state import EditRun, RoundRecords, RoundState
from zerounlearn.methods.registry import register_method
from zerounlearn.neutral import GENERIC_SUBJECT, drop_answer_paths, generic_distributions
from zerounlearn.patch import Patch
from zerounlearn.probes import probe
from zerounlearn.protect import drop_overlapping, protected_sites
from zerounlearn.records import ForgetRecord, RetainFact, validate_records
from zerounlearn.retain import candidate_sites, select_at_risk
from zerounlearn.targets import TargetSettings, optimize_deltas
from zerounlearn.templates import TemplateCache, chat_opening
from zerounlearn.timing import Timer, timed

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel
    from zerounlearn.stats import StatsCache

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


def _report(progress: Progress | None, phase: str, fraction: float) -> None:
    if progress is not None:
        progress(phase, min(1.0, max(0.0, fraction)))


def neutral_goal(
    requests: Sequence[EditRequest],
) -> tuple[list[list[int]], torch.Tensor | None]:
    """What optimize_deltas aims each record at: its target tokens, or, when every record
    has a generic target distribution, those (n, V) with one token per record (which only
    places the scored position)."""
    dists = [r.target_dist for r in requests if r.target_dist is not None]
    soft = torch.stack(dists) if len(dists) == len(requests) else None  # (n, V)
    return [r.target_ids[:1] if soft is not None else r.target_ids for r in requests], soft


def neutral_targets(
    lm: LoadedModel, requests: Sequence[EditRequest], templates: Sequence[str], last_layer: int,
    cfg: ZeroUnlearnHParams, progress: Progress | None = None,
    anchors: Sequence[Sequence[tuple[str, Span | None]]] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Z_n (d_model, n): block L's output at the edit token, shifted to emit the target
    (its tokens, or with neutral_target "generic" its distribution: neutral.py), keeping
    the anchors' next-token distributions (cfg.lookalike_anchor_weight)."""
    targets, soft = neutral_goal(requests)
    res = optimize_deltas(
        lm, requests, templates, targets, point="block", layer=last_layer,
        settings=TargetSettings.from_hparams(cfg), progress=progress, soft=soft,
        anchors=anchors, anchor_weight=cfg.lookalike_anchor_weight,
    )
    info = {"target_nll": [round(float(x), 4) for x in res.nll],
            "target_steps": [int(x) for x in res.steps]}
    return res.target.T.contiguous(), info  # (n, d_model) -> (d_model, n)


def with_generic_targets(
    lm: LoadedModel, requests: list[EditRequest], cfg: ZeroUnlearnHParams
) -> list[EditRequest]:
    """The requests with their target distributions (neutral_target "generic", or "own":
    the prompt's own without the answer), computed once on the model as it is before the
    edit; else unchanged."""
    if cfg.neutral_target not in ("generic", "own"):
        return requests
    dists = generic_distributions(
        lm, requests, None if cfg.neutral_target == "own" else GENERIC_SUBJECT)  # (n, V)
    if cfg.neutral_target == "own" and cfg.generic_share > 0:
        # both lack the answer's first token, so the blend does too
        dists = (1 - cfg.generic_share) * dists \
            + cfg.generic_share * generic_distributions(lm, requests)
    dists = drop_answer_paths(lm, requests, dists, cfg.answer_path_top_k,
                              max_new_tokens=cfg.answer_path_tokens,
                              min_mass=cfg.answer_path_min_mass)
    return [dataclasses.replace(r, target_dist=dists[i]) for i, r in enumerate(requests)]


def sensitive_states(
    lm: LoadedModel, requests: Sequence[EditRequest], templates: Sequence[str], layer: int,
    keys: KeyState, cfg: ZeroUnlearnHParams,
) -> torch.Tensor:
    """M_f (d_model, n): W K_f ("activation"), or the down-projection output at layer l
    optimised towards the TRUE answer ("optimized", the paper)."""
    if cfg.sensitive_state == "activation":
        return keys.wk_f
    res = optimize_deltas(
        lm, requests, templates, [r.answer_ids for r in requests],
        point="down_proj", layer=layer, settings=TargetSettings.from_hparams(cfg),
    )
    return res.target.T.contiguous()  # (n, d_model) -> (d_model, n)


def layer_update(
    w: torch.Tensor, c: torch.Tensor, keys: KeyState, v: torch.Tensor, m_f: torch.Tensor,
    cfg: ZeroUnlearnHParams, k_hist: torch.Tensor | None = None,
    k_carry: torch.Tensor | None = None, reached: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """The new W (d_model, d_ff, W's dtype) of one layer, and the rank of span(M_f).

    k_hist (d_ff, h): forget keys of earlier edits of this layer, kept at their current
    (already edited) outputs with weight cfg.history_weight, beside the protected keys.
    k_carry (d_ff, r): the version's accumulated preservation factor (carry.py, weights
    folded into its columns), kept with the factor cfg.carry_weight.
    reached (n,) bool: records whose neutral target the model already emits. With the
    key-gated additive update they neither add to span(M_f) nor are projected: their
    W K_f is not the answer any more, and removing it (P V*) would undo what already
    silences them (seen on the tiny GPT-2: a record another edit had silenced came back
    when its own edit projected its output away). Records whose projected target falls
    short of their shift are treated alike (projected_records).
    anchor (d_model, d_ff): the base weight, whose corpus outputs the additive solve
    keeps in the share cfg.corpus_anchor; None: w's own only.
    The float64 solve runs where W lives (with a device map, each layer's own device).
    """
    dev = w.device
    c, v, m_f = c.to(dev), v.to(dev), m_f.to(dev)
    a, b, lam = cfg.corpus_weight, cfg.forget_weight, cfg.reg_lambda
    k_f = keys.k_f.to(dev)
    project = projected_records(w, k_f, v, m_f, cfg, reached)
    q = solve.sensitive_basis(m_f if project is None else m_f[:, project],
                              cfg.rank_rtol)  # (d_model, r)
    k_p = kept_keys([(keys.k_p, cfg.preserve_weight), (k_hist, cfg.history_weight),
                     (k_carry, cfg.carry_weight)], dev)
    c_p = 1.0  # the weights are folded into k_p's columns
    if cfg.orthogonality == "none":
        p, rank = None, 0
    else:
        p, rank = solve.projector(q, cfg.eps), q.shape[1]  # (d_model, d_model)
    if cfg.update == "additive":
        w_new = solve.direct_update(w, c, k_f, v, p, a=a, b=b, lam=lam, k_p=k_p, c_p=c_p,
                                    gated=cfg.orthogonality != "global", project=project,
                                    anchor=anchor, anchor_share=cfg.corpus_anchor)
        return solve.checked_cast(w_new, w), rank
    if p is None:
        d = solve.unconstrained_update(w, c, k_f, v, a=a, b=b, lam=lam, k_p=k_p, c_p=c_p)
    else:
        d = solve.multiplicative_update(w, c, k_f, v, p, gated=cfg.orthogonality != "global",
                                        a=a, b=b, lam=lam, k_p=k_p, c_p=c_p)
    return solve.apply_update(d, w), rank


def projected_records(
    w: torch.Tensor, k_f: torch.Tensor, v: torch.Tensor, m_f: torch.Tensor,
    cfg: ZeroUnlearnHParams, reached: torch.Tensor | None,
) -> torch.Tensor | None:
    """(n,) bool: the records whose target is P V* (the rest keep V*), or None: all of
    them (every form but the key-gated additive one, whose targets are per record).

    Not projected: records already silent (reached), and records whose projected target
    would move their output less than cfg.min_projected_progress of the shift they need
    (solve.projected_progress, with P from the other records' M_f). On an edited model
    span(M_f) can hold an earlier edit's push towards the neutral target, and removing
    it undid the edit: on the tiny GPT-2's chained requests the second request's records
    stayed known through every round (their projected targets moved them -1.2x their
    shift) until this rule let them take their plain targets.
    """
    if cfg.update != "additive" or cfg.orthogonality != "key_gated":
        return None
    n = k_f.shape[1]
    project = torch.ones(n, dtype=torch.bool, device=w.device) if reached is None \
        else ~reached.to(w.device)
    if cfg.min_projected_progress <= 0 or not project.any():
        return project
    p = solve.projector(solve.sensitive_basis(m_f[:, project], cfg.rank_rtol), cfg.eps)
    progress = solve.projected_progress(w, k_f, v, p).to(project.device)  # (n,)
    return project & (progress >= cfg.min_projected_progress)


def kept_keys(
    weighted: Sequence[tuple[torch.Tensor | None, float]], dev: torch.device,
) -> torch.Tensor | None:
    """[sqrt(c_1) K_1, sqrt(c_2) K_2, ...] (d_ff, sum of columns), float64 on dev, or None.

    Every preservation term is quadratic in its keys (c k k^T and c W k k^T), so a
    weight can ride on the columns and one K with weight 1 serves both kinds."""
    parts = [
        math.sqrt(weight) * k.to(dev, torch.float64)
        for k, weight in weighted
        if k is not None and weight > 0 and k.shape[1] > 0
    ]
    return torch.cat(parts, dim=1) if parts else None


def still_known(lm: LoadedModel, recs: list[ForgetRecord], cfg: ZeroUnlearnHParams
                ) -> list[bool]:
    """Per record: does the edited model still reproduce its answer, or (with
    cfg.retry_generated) name it in the first sentence of its greedy continuation, or
    (cfg.retry_chat) in its reply through the chat template?"""
    flags = reproduced(lm, recs)
    probes = (("greedy",) if cfg.retry_generated else ()) + (("chat",) if cfg.retry_chat else ())
    if not probes:
        return flags
    found = probe(lm, recs, probes=probes)["records"]
    return [bool(known or any(f["found"][p] for p in probes))
            for known, f in zip(flags, found, strict=True)]


def _history(
    earlier: torch.Tensor | None, record_keys: dict[int, torch.Tensor], settled: list[int]
) -> torch.Tensor | None:
    """Keys to keep for one layer (d_ff, h): the model's earlier edits, then this
    request's records that earlier rounds already made forget (those edited there)."""
    parts = [] if earlier is None else [earlier]
    parts.extend(record_keys[i] for i in settled if i in record_keys)
    return torch.cat(parts, dim=1) if parts else None


def retry_round_templates(lm: LoadedModel, cfg: ZeroUnlearnHParams, templates: Sequence[str]
                          ) -> Sequence[str]:
    """The context templates of rounds 2 on: round 1's, then (cfg.retry_chat_context)
    the chat template's opening, where the model has one."""
    opening = chat_opening(lm.tokenizer) if cfg.retry_chat_context else None
    return templates if opening is None or opening in templates else [*templates, opening]


def anchor_sites(prompts: list[tuple[str, Span]], request: EditRequest
                 ) -> list[tuple[str, Span | None]]:
    """A record's lookalike prompts, edited where the record is: at the substituted
    subject when the record is edited at its subject, else at the last token."""
    return [(text, None if request.span is None else span) for text, span in prompts]


class ZeroUnlearnBase:
    """Shared driver: records -> requests -> templates -> statistics -> layer loop."""

    name = "zerounlearn"

    def __init__(self, templates: TemplateCache | None = None) -> None:
        self.templates = templates if templates is not None else TemplateCache()

    def layer_inputs(
        self, lm: LoadedModel, state: RoundState, i: int, layer: int
    ) -> tuple[KeyState, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Spec steps 1-2 and M_f for layer i of the loop, on the partly edited model:
        (keys, W (d_model, d_ff), V* (d_model, n) float64, M_f (d_model, n))."""
        run, requests = state.run, state.records.requests
        layers, cfg = state.layers, run.cfg
        with timed(run.timings, "keys"):
            if cfg.upper_only and i == 0:  # before any edit: blocks below layers[0] never change
                with Timer() as prefix:
                    state.earlier = self.reusable_prefix(run, layers)
                    state.key_prefix = key_prefix(
                        lm, requests, state.records.templates, layers[0], layers[-1],
                        () if state.earlier is not None else state.protected)
                    if state.earlier is None and state.protected:
                        run.protected_prefix = ProtectedPrefix(
                            state.key_prefix, len(requests) * len(state.records.templates))
                # part of the "keys" time: the passes up to the edited blocks, all rounds
                run.info["keys_prefix_seconds"] = round(
                    run.info.get("keys_prefix_seconds", 0.0) + prefix.seconds, 3)
            keys = compute_keys(lm, requests, state.records.templates, layer, layers[-1],
                                state.protected, state.key_prefix, state.earlier)
            if keys.k_p is not None:
                keys.k_p = drop_overlapping(keys.k_p, keys.k_clean)
                state.round_protected[layer] = keys.k_p.detach().to("cpu", torch.float32)
            # (d_ff, n, 2): per record its template-averaged key (what the edit moved) and
            # its clean-prompt key (what the prompt itself reads); both kept by later edits
            state.round_keys[layer] = torch.stack([keys.k_f, keys.k_clean], dim=2).detach().to(
                "cpu", torch.float32)
        w = lm.adapter.get_weight(lm.model, layer)  # (d_model, d_ff), on its own device
        dev = w.device  # Z_n is on the CPU, H_L on block L's device
        v = keys.wk_f.double().to(dev) + (state.z.to(dev) - keys.h_l.double().to(dev)) \
            / (len(layers) - i)  # V* (d_model, n)
        with timed(run.timings, "m_f"):
            m_f = sensitive_states(lm, requests, state.records.templates, layer, keys, cfg)
        return keys, w, v, m_f

    @staticmethod
    def reusable_prefix(run: EditRun, layers: list[int]) -> ProtectedPrefix | None:
        """The first round's prefix when it still serves this round's layers (no round
        has edited below it), else None (the round builds its own)."""
        kept = run.protected_prefix
        if kept is None or not run.new_weights:
            return None
        return kept if kept.serves(layers[0], layers[-1], min(run.new_weights)) else None

    @staticmethod
    def history(state: RoundState, layer: int, keys: KeyState) -> torch.Tensor | None:
        """Earlier forget keys of `layer` (d_ff, h) to keep where they are: the model's
        earlier edits and this request's records already forgotten in earlier rounds.
        A key that is (almost) one of this round's forget keys is dropped: a record
        forgotten again must be free to move."""
        hist = state.records.history.get(layer)
        if hist is None or hist.shape[1] == 0:
            return None
        return drop_overlapping(hist, keys.k_clean.to(hist.device, hist.dtype))

    @staticmethod
    def carried(state: RoundState, layer: int) -> torch.Tensor | None:
        """The version's carry of `layer` (d_ff, r), or None when there is none or it is
        off. Used whole: see carry.py on why it is not cut along the forget keys."""
        factor = state.run.carry.get(layer)
        return None if factor is None or state.cfg.carry_weight <= 0 else factor

    # one step per layer; the GD variant overrides it
    def edit_layer(self, lm: LoadedModel, state: RoundState, i: int, layer: int
                   ) -> torch.Tensor:
        keys, w, v, m_f = self.layer_inputs(lm, state, i, layer)
        k_hist = self.history(state, layer, keys)
        k_carry = self.carried(state, layer)
        anchor = state.records.corpus_anchor.get(layer)
        w_new, rank = layer_update(w, state.run.stats[layer], keys, v, m_f, state.cfg, k_hist,
                                   k_carry, state.reached, anchor)
        info = state.run.info
        info.setdefault("rank", []).append(rank)
        info.setdefault("history_keys", []).append(0 if k_hist is None else int(k_hist.shape[1]))
        info.setdefault("protected_keys", []).append(
            0 if keys.k_p is None else int(keys.k_p.shape[1]))
        return w_new

    def edit_round(
        self, lm: LoadedModel, run: EditRun, records: RoundRecords
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """One pass of the spec's loop over `records`: neutral targets, then each layer's
        update, left set on the model (later layers and rounds see it; the caller
        restores). Fills run.new_weights; returns each layer's keys (d_ff, n, 2): per
        record its template-averaged key K_f and its clean-prompt key; and each layer's
        protected keys (d_ff, p) as the solve used them."""
        cfg, layers = run.cfg, records.layers
        with timed(run.timings, "targets"):
            protected = list(run.protected_sites)
            z, target_info = neutral_targets(lm, records.requests, records.templates, layers[-1],
                                             cfg, records.progress, records.anchors)
            reached = torch.tensor([steps == 0 and nll < cfg.target_stop_loss for steps, nll in
                                    zip(target_info["target_steps"], target_info["target_nll"],
                                        strict=True)])  # (n,) the target needed no shift
            for name, values in target_info.items():  # per record: the first round's
                run.info.setdefault(name, values)
        state = RoundState(run=run, records=records, protected=protected, z=z.double(),
                           reached=reached)
        # keys and M_f are timed on their own: "solve" is the rest of the layer loop
        with timed(run.timings, "solve", excluding=("keys", "m_f")):
            for i, layer in enumerate(layers):
                _report(records.progress, "solve", i / len(layers))
                w_new = self.edit_layer(lm, state, i, layer)
                lm.adapter.set_weight(lm.model, layer, w_new)  # later layers see this edit
                run.new_weights[layer] = w_new.detach().to("cpu").clone()
            state.key_prefix = None  # cached activations: free them now
        return state.round_keys, state.round_protected

    @staticmethod
    def next_carry(
        cfg: ZeroUnlearnHParams, layers: list[int], carried: dict[int, torch.Tensor],
        forget_keys: dict[int, torch.Tensor], protected: dict[int, torch.Tensor],
    ) -> dict[int, torch.Tensor]:
        """The carry the new version hands on, per layer (d_ff, r) float32: the parent's
        plus this request's protected keys and forget keys, their weights folded in."""
        if cfg.carry_rank <= 0:
            return {}
        out = {}
        for layer in layers:
            k_f = forget_keys[layer].double()  # (d_ff, 1 or 2 per record)
            columns = [math.sqrt(cfg.carry_forget_weight) * k_f] \
                if cfg.carry_forget_weight > 0 else []
            k_p = protected.get(layer)
            if k_p is not None and cfg.carry_protect_weight > 0:
                columns.append(math.sqrt(cfg.carry_protect_weight) * k_p.double())
            factor = carry.merge(carried.get(layer), columns, cfg.carry_rank)
            if factor is not None:
                out[layer] = factor
        return out

    def compute_patch(
        self,
        lm: LoadedModel,
        records: Sequence[ForgetRecord | dict[str, Any]],
        hparams: dict[str, Any] | None,
        *,
        stats: StatsCache,
        progress: Progress | None = None,
        retain: Sequence[RetainFact] | None = None,
    ) -> Patch:
        timings: dict[str, float] = {}
        with timed(timings, "total"):
            recs = validate_records(records)
            cfg = config_for_model(self.name, lm, hparams)
            if not isinstance(cfg, ZeroUnlearnHParams):  # a subclass registered a foreign name
                raise TypeError(f"{self.name!r} does not resolve to ZeroUnlearn hyper-parameters")
            layers = list(cfg.layers or [])
            with timed(timings, "neutral"):  # distribution targets (and answer paths)
                requests = with_generic_targets(
                    lm, prepare_requests(lm, recs, cfg.neutral_target), cfg)
            model, adapter = lm.model, lm.adapter
            originals = {layer: adapter.get_weight(model, layer)
                         for layer in edited_layers(cfg)}
            try:
                run = self.prepare_run(lm, cfg, layers, recs, requests, stats=stats,
                                       timings=timings, progress=progress, retain=retain)
                keys, protected = self.run_rounds(lm, run, recs, requests, progress)
                new_carry = self.next_carry(cfg, sorted(keys), run.carry, keys, protected)
            finally:
                for layer, w in originals.items():
                    adapter.set_weight(model, layer, w)  # the model is unchanged on return
            layers = sorted(run.new_weights)  # the layers some round edited
            run.info["carry_rank"] = [int(new_carry[layer].shape[1]) if layer in new_carry
                                      else 0 for layer in layers]
        logger.info("%s: %d records, layers %s, %.1f s", self.name, len(recs), layers,
                    timings["total"])
        return Patch(
            method=self.name,
            hparams=cfg.to_dict(),
            base_fingerprint=str(lm.fingerprint),
            weights=run.new_weights,
            metadata={"records": len(recs), "layers": layers, "timings": timings, **run.info},
            keys=keys,
            carry=new_carry,
        )

    def prepare_run(
        self, lm: LoadedModel, cfg: ZeroUnlearnHParams, layers: list[int],
        recs: list[ForgetRecord], requests: list[EditRequest], *, stats: StatsCache,
        timings: dict[str, float], progress: Progress | None,
        retain: Sequence[RetainFact] | None,
    ) -> EditRun:
        """What every round shares: templates, statistics, the model's earlier edit keys
        and carry, and the sites to protect (timed into `timings`)."""
        from zerounlearn.stats import CorpusSpec

        with timed(timings, "templates"):
            _report(progress, "templates", 0.0)
            templates = self.templates.get(lm, cfg.template_count, cfg.template_tokens,
                                           cfg.template_seed)
            _report(progress, "templates", 1.0)
        with timed(timings, "statistics"):
            corpus = CorpusSpec(files=tuple(cfg.stats_files or ()), samples=cfg.stats_samples,
                                seq_len=cfg.stats_seq_len)
            c_by_layer = stats.ensure(lm, edited_layers(cfg), corpus, progress)
        earlier = lm.edit_keys  # keys of the model's own edits
        if earlier is None and cfg.history_weight > 0:
            raise InvalidHyperParameters(
                "hyper-parameter 'history_weight' > 0 needs a model that tracks its "
                "edit keys (LoadedModel.track_edit_keys() before its patches are "
                "applied; workers: ZEROUNLEARN_EDIT_HISTORY=1)")
        run = EditRun(cfg=cfg, layers=layers, retry_layers=list(cfg.retry_layers or layers),
                      templates=templates, stats=c_by_layer, earlier=earlier or {},
                      carry=dict(lm.carry or {}), base_weights=dict(lm.base_weights),
                      timings=timings)
        if cfg.preserve_weight > 0:
            run.protected_sites = self.protected(lm, cfg, recs, requests, layers[0], timings,
                                                 run.info, retain)
        return run

    @staticmethod
    def protected(
        lm: LoadedModel, cfg: ZeroUnlearnHParams, recs: Sequence[ForgetRecord],
        requests: list[EditRequest], first_layer: int, timings: dict[str, float],
        info: dict[str, Any], retain: Sequence[RetainFact] | None,
    ) -> list[Site]:
        """Every site whose outputs the request's rounds keep (protect.py): neighbours,
        the forget prompts with the other records' subjects, with lookalike subjects
        (lookalikes.py), and the retain bank's sites at risk (retain.py). Built once from
        the records' subjects, so rounds that edit at the last token keep them too."""
        sites = protected_sites(lm.tokenizer, recs, requests, neighbors=cfg.protect_neighbors,
                                substitutions=cfg.protect_substitutions)
        if cfg.lookalike_count > 0:
            with timed(timings, "lookalikes"):
                found, info["lookalikes"] = lookalike_sites(lm, requests, cfg.lookalike_count,
                                                            seen={s.text for s in sites})
                sites += found
        if retain and cfg.retain_top_k > 0:
            with timed(timings, "retain"):
                candidates = candidate_sites(lm.tokenizer, requests, retain,
                                             cfg.retain_substitutions)
                chosen, info["retain"] = select_at_risk(lm, requests, candidates, first_layer,
                                                        cfg.retain_top_k)
                sites += chosen
        return sites

    def run_rounds(
        self, lm: LoadedModel, run: EditRun, recs: list[ForgetRecord],
        requests: list[EditRequest], progress: Progress | None,
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Edit rounds until every record is forgotten or cfg.max_rounds: per edited layer,
        the forget keys (d_ff, 1 or 2 per record edited there, in record order) and the
        protected keys. Round 1 edits run.layers, later rounds run.retry_layers."""
        cfg, info = run.cfg, run.info
        protected_by_layer: dict[int, torch.Tensor] = {}
        # per layer and record: its forget key (d_ff, 1 or 2) from the last round that
        # edited the record at that layer
        record_keys: dict[int, dict[int, torch.Tensor]] = {}
        pending = list(range(len(recs)))
        edited: set[int] = set()  # records some round has edited
        info["rounds"] = []
        edit_recs, edit_requests = recs, requests  # round 2 on: at the last token
        lookalikes = lookalike_prompts(lm, requests, cfg.lookalike_anchor_count) \
            if cfg.lookalike_anchor_weight > 0 else None
        retry_templates = retry_round_templates(lm, cfg, run.templates)
        for r in range(cfg.max_rounds):
            info["rounds"].append(len(pending))
            layers = run.layers if r == 0 else run.retry_layers
            settled = sorted(edited - set(pending))
            history = {layer: _history(run.earlier.get(layer), record_keys.get(layer, {}),
                                       settled) for layer in layers}
            first_last = r == 0 and cfg.edit_token == "last"
            if r == 1 and cfg.edit_token == "last" and cfg.retry_at_subject:
                # back at the subject for records a last-token round left: an answer the
                # later layers copy from the subject's name ("... of Russia is" ->
                # " Russian") is read from the subject's position, not made at the last
                edit_recs, edit_requests = recs, requests
            elif first_last or (r == 1 and cfg.edit_token == "subject"
                                and cfg.retry_at_last_token):
                # where the answer is read: the prompt's last token. From round 1 by
                # default (edit_token "last"; see config); in round 2 also for records a
                # subject edit did not make forget (seen on models already edited often)
                edit_recs = [dataclasses.replace(x, subject=None) for x in recs]
                edit_requests = [  # the same neutral targets as the first round's
                    dataclasses.replace(x, target_dist=first.target_dist) for x, first in
                    zip(prepare_requests(lm, edit_recs, cfg.neutral_target), requests,
                        strict=True)]
            round_keys, round_protected = self.edit_round(lm, run, RoundRecords(
                recs=[edit_recs[i] for i in pending],
                requests=[edit_requests[i] for i in pending],
                history=history, layers=layers,
                templates=run.templates if r == 0 else retry_templates,
                progress=progress if r == 0 else None,
                anchors=None if lookalikes is None else
                [anchor_sites(lookalikes[i], edit_requests[i]) for i in pending],
                # later rounds keep the current corpus outputs: the records earlier
                # rounds settled are not protected otherwise (history_weight 0)
                corpus_anchor=run.base_weights if r == 0 and cfg.corpus_anchor > 0 else {}))
            protected_by_layer.update(round_protected)  # the last round's win
            edited.update(pending)
            for layer in layers:
                for column, i in enumerate(pending):
                    pair = round_keys[layer][:, column]  # (d_ff, 2)
                    same = torch.equal(pair[:, 0], pair[:, 1])  # no templates: one key
                    record_keys.setdefault(layer, {})[i] = pair[:, :1] if same else pair
            if r + 1 == cfg.max_rounds:
                break
            with timed(run.timings, "verify"):
                flags = still_known(lm, [recs[i] for i in pending], cfg)  # edited model
            pending = [i for i, still in zip(pending, flags, strict=True) if still]
            if not pending:
                break
        _report(progress, "solve", 1.0)
        keys = {layer: torch.cat([by_record[i] for i in sorted(by_record)], 1)
                for layer, by_record in sorted(record_keys.items())}
        return keys, protected_by_layer


@register_method("zerounlearn")
class ZeroUnlearn(ZeroUnlearnBase):
    """Our default variant (hparams/zerounlearn/*.json, chosen by scripts/sweep.py):
    additive key-space update, key-gated orthogonality, protected neighbour and
    substitution keys, M_f = W K_f, target steps in units of ||h||."""


@register_method("zerounlearn-paper")
class ZeroUnlearnPaper(ZeroUnlearnBase):
    """The paper's exact form and settings (hparams/zerounlearn-paper/*.json): global
    projector, M_f optimised per layer, Adam lr 0.1 in absolute units, b = 50."""
