"""The typed state ZeroUnlearn's layer loop passes between its steps (zerounlearn.py).

EditRun: one request's fixed inputs and the outputs its rounds fill in.
RoundRecords: the records one round edits.
RoundState: what the layer steps of one round share, built by edit_round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zerounlearn.config import ZeroUnlearnHParams
from zerounlearn.keys import EditRequest, KeyPrefix, ProtectedPrefix, Site, Span
from zerounlearn.records import ForgetRecord
from zerounlearn.targets import Progress


@dataclass
class EditRun:
    """One request: the same for each of its rounds."""

    cfg: ZeroUnlearnHParams  # the resolved hyper-parameters (a subclass for the GD variant)
    layers: list[int]  # round 1's edited layers, ascending; the last one is L (targets')
    retry_layers: list[int]  # rounds 2 on: cfg.retry_layers, or `layers` when None
    templates: Sequence[str]  # round 1's context prefixes (templates.py)
    stats: dict[int, torch.Tensor]  # C per layer of both lists (d_ff, d_ff): corpus keys'
    # second moment
    earlier: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer (d_ff, h):
    # forget keys of the model's own earlier edits (LoadedModel.edit_keys)
    protected_sites: Sequence[Site] = ()  # kept by every round: neighbours, substitutions,
    # lookalikes and the retain bank's sites at risk (ZeroUnlearnBase.protected)
    base_weights: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer
    # (d_model, d_ff): the weight before the chain's first edit (LoadedModel's)
    carry: dict[int, torch.Tensor] = field(default_factory=dict)  # the version's (d_ff, r)
    # outputs, filled in round by round
    info: dict[str, Any] = field(default_factory=dict)  # the Patch metadata but timings
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    new_weights: dict[int, torch.Tensor] = field(default_factory=dict)  # W' per layer, CPU
    protected_prefix: ProtectedPrefix | None = None  # upper_only: the first round's key
    # prefix, whose protected sites later rounds read again (keys.ProtectedPrefix)


@dataclass
class RoundRecords:
    """The records one round edits (those earlier rounds left reproduced)."""

    recs: list[ForgetRecord]
    requests: list[EditRequest]  # one per record, same order
    history: dict[int, torch.Tensor | None]  # keys to keep per layer (d_ff, h), or None
    layers: list[int]  # the layers this round edits, ascending; targets at the last
    templates: Sequence[str]  # context prefixes: round 1's, and from round 2 on the chat
    # opening too with cfg.retry_chat_context (retry_round_templates)
    progress: Progress | None = None  # reported in the first round only
    anchors: list[list[tuple[str, Span | None]]] | None = None  # per record: prompts its
    # neutral target's delta should not move (lookalike_anchor_weight; targets.py)
    corpus_anchor: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer
    # (d_model, d_ff): the weight whose corpus outputs this round keeps; empty: the
    # current weight's (round 1 with cfg.corpus_anchor > 0: EditRun.base_weights)


@dataclass
class RoundState:
    """What the layer steps of one round share."""

    run: EditRun
    records: RoundRecords
    protected: list[Site]  # neighbour / substitution / retain sites whose outputs stay
    z: torch.Tensor  # (d_model, n) float64: Z_n, block L's target outputs
    reached: torch.Tensor  # (n,) bool: the neutral target needed no shift
    key_prefix: KeyPrefix | None = None  # upper_only: activations below the edited blocks
    earlier: ProtectedPrefix | None = None  # the first round's, read for protected keys
    # outputs per layer: (d_ff, n, 2) each record's template-averaged and clean key, and
    # (d_ff, p) the protected keys as the solve used them (float32, CPU)
    round_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    round_protected: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def cfg(self) -> ZeroUnlearnHParams:
        return self.run.cfg

    @property
    def layers(self) -> list[int]:
        return self.records.layers
