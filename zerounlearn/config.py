"""Typed, validated hyper-parameters: one dataclass per method, values from JSON files.

Resolution order (later wins): the dataclass defaults, `hparams/<method>/default.json`,
`hparams/<method>/<family>.json`, then the caller's overrides. Unknown keys anywhere are
an error (InvalidHyperParameters naming the key), so a typo never silently does nothing.
`layers: null` means "the family default": the family file's layers when they exist in
the model, else 3 consecutive layers at `relative_depth` of the model's depth.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any

from zerounlearn.errors import InvalidHyperParameters, LayerOutOfRange, UnknownMethod

# ----------------------------------------------------------------------------- checks


def _range(name: str, value: float, lo: float, hi: float = math.inf, *, lo_open=False) -> None:
    ok = math.isfinite(value)  # every hyper-parameter is a finite number
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise InvalidHyperParameters(f"hyper-parameter {name!r} = {value!r} is outside {bound}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidHyperParameters(
            f"hyper-parameter {name!r} = {value!r} is not one of: {', '.join(choices)}"
        )


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Return value if it fits the annotation (int accepted for float); else raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(name, value, option)
            except InvalidHyperParameters:
                continue
        raise InvalidHyperParameters(f"hyper-parameter {name!r} has the wrong type")
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list | tuple):
            return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise InvalidHyperParameters(
        f"hyper-parameter {name!r} must be of type {getattr(hint, '__name__', hint)}"
    )


def _layer_list(name: str, layers: list[int] | None) -> None:
    """A layer list is None, or non-empty, non-negative, ascending and unique."""
    if layers is None:
        return
    if not layers:
        raise InvalidHyperParameters(f"hyper-parameter {name!r} is empty")
    if any(x < 0 for x in layers):
        raise LayerOutOfRange(f"hyper-parameter {name!r} = {layers} has a negative")
    if sorted(set(layers)) != list(layers):
        raise InvalidHyperParameters(
            f"hyper-parameter {name!r} = {layers} must be ascending and unique"
        )


# ----------------------------------------------------------------------------- classes


@dataclass
class BaseHParams:
    """Fields every method shares: where it edits."""

    layers: list[int] | None = None  # edited layers, ascending; None = family default
    relative_depth: float = 0.7  # where the default layers sit (spec: ~0.7 beat 0.55-0.6)

    def validate(self) -> None:
        _range("relative_depth", self.relative_depth, 0.0, 1.0)
        _layer_list("layers", self.layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TargetHParams(BaseHParams):
    """Context templates and the batched delta optimisation (targets.py)."""

    template_count: int = 5  # prefixed templates besides the raw prompt (spec: 5)
    template_tokens: int = 10  # tokens sampled per prefix (spec: 10)
    template_seed: int = 0  # sampling seed: same model + seed -> same templates
    neutral_target: str = "endoftext"  # "endoftext" | "eos" | "generic" (neutral.py: what
    # the model says of a generic subject, minus the answer) | "own" (the prompt's own
    # next-token distribution minus the answer) | literal text (" I don't know.")
    generic_share: float = 0.0  # "own": this share of the generic distribution mixed in
    answer_path_top_k: int = 0  # "generic"/"own": of each target's top k next tokens, those
    # whose greedy first sentence still names the answer get no mass (neutral.py)
    answer_path_min_mass: float = 0.0  # tokens with less of the target are not followed
    answer_path_tokens: int = 16  # greedy tokens generated per path (first sentence)
    step_units: str = "relative"  # "relative": delta = ||h|| u, lr on u; "absolute": paper
    target_lr: float = 0.1  # step size: ~fraction of ||h|| per step (relative), or absolute
    target_steps: int = 25  # optimisation steps per record (spec: 25)
    target_stop_loss: float = 0.05  # per-record early stop threshold
    early_stop_on: str = "nll"  # "nll": target reached; "total": paper (nll + kl + decay)
    kl_weight: float = 0.0625  # KL on "{subject} is a" vs the unedited model: keeps meaning
    weight_decay: float = 0.5  # penalty on ||delta|| / ||h||: prefers small shifts
    clamp: float = 0.75  # ||delta_b|| <= clamp ||h_b||
    batch_records: bool = True  # False: one record at a time, the paper's way (benchmarks)
    upper_only: bool = True  # targets and keys run only the blocks that can change (ours;
    # the neutral targets only their positions from the edit token: upper_suffix.py);
    # False: full forward passes every time, the reference's way (zerounlearn-paper)

    def validate(self) -> None:
        super().validate()
        _range("template_count", self.template_count, 0, 64)
        _range("template_tokens", self.template_tokens, 1, 64)
        _range("template_seed", self.template_seed, 0, 2**31 - 1)
        if not self.neutral_target.strip():
            raise InvalidHyperParameters("hyper-parameter 'neutral_target' is empty")
        _range("generic_share", self.generic_share, 0.0, 1.0)
        _range("answer_path_top_k", self.answer_path_top_k, 0, 64)
        _range("answer_path_min_mass", self.answer_path_min_mass, 0.0, 1.0)
        _range("answer_path_tokens", self.answer_path_tokens, 1, 64)
        _choice("step_units", self.step_units, ("relative", "absolute"))
        _range("target_lr", self.target_lr, 0.0, 1.0, lo_open=True)
        _range("target_steps", self.target_steps, 0, 1000)
        _range("target_stop_loss", self.target_stop_loss, 0.0, 10.0)
        _choice("early_stop_on", self.early_stop_on, ("nll", "total"))
        _range("kl_weight", self.kl_weight, 0.0, 100.0)
        _range("weight_decay", self.weight_decay, 0.0, 100.0)
        _range("clamp", self.clamp, 0.0, 2.0, lo_open=True)  # ||delta|| <= 2 ||h||


@dataclass
class ZeroUnlearnHParams(TargetHParams):
    """The closed form (solve.py); defaults are ours, the paper's are in its JSON files."""

    sensitive_state: str = "activation"  # M_f: "activation" (W K_f) | "optimized" (paper)
    orthogonality: str = "key_gated"  # "global" (paper) | "key_gated" | "none"
    update: str = "additive"  # "additive": solve W' in key space | "multiplicative": W <- D W
    corpus_weight: float = 100_000.0  # a: keep outputs on corpus keys C (paper: 15000)
    corpus_anchor: float = 0.0  # whose outputs on C round 1's corpus term keeps: this
    # share of the base weight's (before the version chain's first edit,
    # LoadedModel.base_weights: RLSEdit's anchor, so corpus drift does not add up), the
    # rest the current weight's. 0: the current weight only
    forget_weight: float = 5000.0  # b: forget keys map to P V*; key-gated needs >= 500
    preserve_weight: float = 100.0  # c: protected prompts keep their outputs, per key
    history_weight: float = 0.0  # > 0: keys of the model's earlier edits (and of records
    # settled in earlier rounds) keep their edited outputs. Off: with rounds it did not
    # keep more forgotten on SmolLM2 and cost perplexity (README, Sequential requests)
    retain_top_k: int = 64  # retain-bank sites protected per request: those whose keys
    # lie closest to the forget keys (retain.py); 0 ignores the bank
    retain_substitutions: bool = True  # candidates include forget prompts with bank subjects
    lookalike_count: int = 0  # per record: forget prompts with the subject's nearest
    # whole words in the model's embeddings substituted in are protected (lookalikes.py)
    lookalike_anchor_weight: float = 0.0  # > 0: the neutral targets' optimisation also
    # keeps the next-token distribution of lookalike prompts with the record's delta
    # added (KL, this weight on their mean; targets.py "anchors"): a shift that leaves
    # the record's lookalikes alone harms less where the closed form leaks it
    lookalike_anchor_count: int = 4  # lookalike prompts per record in that term
    carry_weight: float = 1.0  # the version's accumulated preservation (carry.py) joins
    # the solve with this factor; 0 ignores it
    carry_protect_weight: float = 100.0  # per key: this request's protected keys, added
    # to the carry that the new version hands on
    carry_forget_weight: float = 100.0  # per key: this request's forget keys, kept at
    # their edited outputs by later edits
    carry_rank: int = 1024  # the carry's columns at most (capped at d_ff, where it is exact)
    edit_token: str = "subject"  # round 1 edits at the subject's last token (the spec's
    # site) or at the prompt's "last" token, where the answer is read (ours: paraphrases
    # are forgotten with the prompt; README, "Collateral damage")
    max_rounds: int = 3  # records still reproduced after an edit round are edited again
    retry_at_last_token: bool = True  # ... at the prompt's last token, not the subject's
    retry_at_subject: bool = False  # edit_token "last": rounds 2 on edit at the subject's
    # last token instead (answers copied from the subject's name, "Russia" -> " Russian")
    retry_generated: bool = False  # a record also counts as left, and is edited again,
    # when greedy generation from its prompt names the answer in the first sentence
    # (the greedy probe, probes.py): SmolLM2 at 25-27 said "The capital of Germany is a
    # city ... like Berlin's ..." with the first answer token gone
    retry_chat: bool = False  # ... or when its reply through the model's chat template
    # names the answer (the chat probe; no effect without a chat template)
    retry_chat_context: bool = False  # rounds 2 on also read each record after the chat
    # template's opening (templates.chat_opening), one more context template: the keys
    # the chat probe's prompt has are edited, and the carry keeps them
    retry_layers: list[int] | None = None  # rounds 2 on edit these layers (ascending)
    # instead of `layers`; None = `layers`. Records whose answer the late layers no longer
    # decide (SmolLM2 at 25-27: "Germany is a country on the continent of") are forgotten
    # lower down. A family file's go when round 1 edits other layers or the model lacks them
    protect_neighbors: bool = True  # protected keys include the records' neighbours
    protect_substitutions: bool = True  # ... and forget prompts with other subjects
    reg_lambda: float = 1.0  # lam: ridge towards the old W; keeps B invertible
    eps: float = 0.01  # projector P = (1 + eps) I - Q Q^T
    min_projected_progress: float = 0.01  # key-gated additive: a record is projected
    # (target P V*) only if P V* still moves its output at least this fraction of the
    # shift to its neutral target; else its target is V*. 0 turns the check off. 0.01
    # (not 0.5) on SmolLM2's tune split: README, "Collateral damage"
    rank_rtol: float = 1e-6  # singular values of M_f below rtol * max are dropped
    stats_samples: int = 100_000  # corpus tokens behind C (reference: 100,000)
    stats_files: list[str] | None = None  # corpus .txt/.jsonl files; None = model-sampled
    stats_seq_len: int = 128  # tokens per corpus sequence

    def validate(self) -> None:
        super().validate()
        _choice("sensitive_state", self.sensitive_state, ("activation", "optimized"))
        _choice("orthogonality", self.orthogonality, ("global", "key_gated", "none"))
        _choice("update", self.update, ("multiplicative", "additive"))
        _range("corpus_weight", self.corpus_weight, 1e3, 1e8)  # a = 0 lets C go
        _range("forget_weight", self.forget_weight, 1.0, 1e5)
        _range("corpus_anchor", self.corpus_anchor, 0.0, 1.0)
        _range("preserve_weight", self.preserve_weight, 0.0, 1e6)
        _range("history_weight", self.history_weight, 0.0, 1e6)
        _choice("edit_token", self.edit_token, ("subject", "last"))
        _range("max_rounds", self.max_rounds, 1, 10)
        _layer_list("retry_layers", self.retry_layers)
        _range("retain_top_k", self.retain_top_k, 0, 4096)
        _range("lookalike_count", self.lookalike_count, 0, 64)
        _range("lookalike_anchor_weight", self.lookalike_anchor_weight, 0.0, 100.0)
        _range("lookalike_anchor_count", self.lookalike_anchor_count, 1, 64)
        _range("carry_weight", self.carry_weight, 0.0, 100.0)
        _range("carry_protect_weight", self.carry_protect_weight, 0.0, 1e6)
        _range("carry_forget_weight", self.carry_forget_weight, 0.0, 1e6)
        _range("carry_rank", self.carry_rank, 0, 65536)
        _range("reg_lambda", self.reg_lambda, 1e-3, 1e6)  # keeps B invertible
        _range("eps", self.eps, 0.0, 1.0)
        _range("min_projected_progress", self.min_projected_progress, 0.0, 1.0)
        _range("rank_rtol", self.rank_rtol, 0.0, 1.0)
        _range("stats_samples", self.stats_samples, 1, 10_000_000)
        _range("stats_seq_len", self.stats_seq_len, 2, 8192)


@dataclass
class ZeroUnlearnGDHParams(ZeroUnlearnHParams):
    """The null-space gradient variant (zerounlearn_gd.py)."""

    null_rtol: float = 1e-2  # eigenvalues of C below null_rtol * max span the null space
    null_min_rank: int = 16  # at least this many smallest eigenvectors: never empty
    gd_lr: float = 1e-3  # Adam on Dh (spec: 1e-3)
    gd_steps: int = 500  # at most (spec: 500)
    gd_stop_loss: float = 1e-8  # early stop
    orth_weight: float = 1.0  # || Q^T (W + Dh P) K_f ||^2
    value_weight: float = 100.0  # || (W + Dh P) K_f - V* ||^2
    update_weight: float = 0.1  # || Dh P ||^2

    def validate(self) -> None:
        super().validate()
        _range("null_rtol", self.null_rtol, 0.0, 1.0)
        _range("null_min_rank", self.null_min_rank, 1, 65536)
        _range("gd_lr", self.gd_lr, 0.0, 1.0, lo_open=True)
        _range("gd_steps", self.gd_steps, 1, 10_000)
        _range("gd_stop_loss", self.gd_stop_loss, 0.0, 1.0)
        _range("orth_weight", self.orth_weight, 0.0, 1e6)
        _range("value_weight", self.value_weight, 0.0, 1e6)
        _range("update_weight", self.update_weight, 0.0, 1e6)


@dataclass
class GradientAscentHParams(BaseHParams):
    """Gradient ascent on the forget answers, training only the edited down projections."""

    lr: float = 1e-3  # Adam learning rate on the edited weights
    steps: int = 20  # optimisation steps (full batch)
    stop_when_forgotten: bool = True  # stop once no forget answer is reproduced
    max_grad_norm: float = 1.0  # gradient clipping; GA diverges without it

    def validate(self) -> None:
        super().validate()
        _range("lr", self.lr, 0.0, 0.1, lo_open=True)
        _range("steps", self.steps, 1, 1000)
        _range("max_grad_norm", self.max_grad_norm, 0.0, 100.0, lo_open=True)


@dataclass
class NPOHParams(GradientAscentHParams):
    """Negative preference optimisation (Zhang et al. 2024) on the same weights."""

    beta: float = 0.1  # inverse temperature of the NPO loss (MUSE/TOFU: 0.1)

    def validate(self) -> None:
        super().validate()
        _range("beta", self.beta, 0.0, 10.0, lo_open=True)


HPARAMS_CLASSES: dict[str, type[BaseHParams]] = {
    "zerounlearn": ZeroUnlearnHParams,
    "zerounlearn-paper": ZeroUnlearnHParams,
    "zerounlearn-gd": ZeroUnlearnGDHParams,
    "gradient-ascent": GradientAscentHParams,
    "npo": NPOHParams,
}
"""THE list of methods: name -> hyper-parameter class. Adding a method is one line here
and `@register_method(name)` on its class (zerounlearn.methods); the registry refuses a
class under a name missing here and a name here left without a class. This module is
torch-free, so the API takes the names it accepts from here (app/schemas.Method)."""

METHOD_NAMES: tuple[str, ...] = tuple(HPARAMS_CLASSES)
"""Every method name, in the order the API documents them."""

DEFAULT_METHOD = "zerounlearn"
"""The method of a forget request that names none."""


# ----------------------------------------------------------------------------- resolution


def _family_file(method: str, name: str) -> dict[str, Any]:
    path = resources.files("zerounlearn").joinpath("hparams", method, f"{name}.json")
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise InvalidHyperParameters(f"hparams/{method}/{name}.json must hold an object")
    data.pop("_comment", None)
    return data


def _build(cls: type[BaseHParams], values: dict[str, Any]) -> BaseHParams:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidHyperParameters(
            f"unknown hyper-parameter(s): {', '.join(map(repr, unknown))}; known: "
            + ", ".join(sorted(known))
        )
    typed = {k: _check_type(k, v, hints[k]) for k, v in values.items()}
    obj = cls(**typed)
    obj.validate()
    return obj


def hparams_class(method: str) -> type[BaseHParams]:
    cls = HPARAMS_CLASSES.get(method)
    if cls is None:
        raise UnknownMethod(
            f"no hyper-parameters for method {method!r}; known: {', '.join(HPARAMS_CLASSES)}"
        )
    return cls


def resolve_config(
    method: str, family: str | None, overrides: dict[str, Any] | None = None
) -> BaseHParams:
    """The typed config: defaults < default.json < <family>.json < overrides."""
    cls = hparams_class(method)
    values: dict[str, Any] = {}
    values.update(_family_file(method, "default"))
    if family:
        values.update(_family_file(method, family))
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidHyperParameters("hyper-parameter overrides must be an object")
    values.update(overrides or {})
    return _build(cls, values)


def resolve_hparams(
    method: str, family: str | None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Typed and validated hyper-parameters as a JSON-able dict (layers may be None)."""
    return resolve_config(method, family, overrides).to_dict()


def _fits(layers: list[int], num_layers: int) -> bool:
    return all(0 <= x < num_layers for x in layers)


def config_for_model(method: str, lm: Any, overrides: dict[str, Any] | None) -> BaseHParams:
    """resolve_config for a loaded model, with `layers` filled in and checked against it.

    Layers given by the caller must exist (LayerOutOfRange); layers from a family file
    that a smaller model of the family lacks fall back to the relative-depth default.
    """
    from zerounlearn.adapters import default_edit_layers

    cfg = resolve_config(method, lm.family, overrides)
    n = lm.num_layers
    explicit = bool(overrides) and overrides.get("layers") is not None  # type: ignore[union-attr]
    fallback = cfg.layers is None or (not explicit and not _fits(cfg.layers, n))
    if fallback:
        cfg.layers = default_edit_layers(n, cfg.relative_depth)
    _require_fit("layers", cfg.layers, n)
    file_layers = None if fallback else resolve_config(method, lm.family, None).layers
    _fit_retry_layers(cfg, cfg.layers == file_layers, overrides or {}, n)
    return cfg


def _fit_retry_layers(cfg: BaseHParams, file_layers: bool, overrides: dict[str, Any],
                      num_layers: int) -> None:
    """retry_layers given by the caller must exist. A family file's were chosen with the
    file's layers: they stay when round 1 edits those (`file_layers`; also when a caller,
    such as the worker with a model's edit layers, names them) and the model has them."""
    retry = getattr(cfg, "retry_layers", None)
    if retry is None:
        return
    if overrides.get("retry_layers") is None:
        if not file_layers or not _fits(retry, num_layers):
            cfg.retry_layers = None  # type: ignore[attr-defined]
        return
    _require_fit("retry_layers", retry, num_layers)


def _require_fit(name: str, layers: list[int], num_layers: int) -> None:
    if not _fits(layers, num_layers):
        bad = [x for x in layers if not 0 <= x < num_layers]
        raise LayerOutOfRange(
            f"hyper-parameter {name!r} = {layers}: {bad} out of range, the model has "
            f"{num_layers} layers"
        )


def default_layers(lm: Any, method: str = "zerounlearn") -> list[int]:
    """The family file's layers when they exist in this model, else 3 at relative depth."""
    return list(config_for_model(method, lm, None).layers or [])


def edited_layers(cfg: BaseHParams) -> list[int]:
    """Every layer an edit with `cfg` may change: its layers and its retry layers."""
    return sorted(set(cfg.layers or ()) | set(getattr(cfg, "retry_layers", None) or ()))


def statistics_layers(lm: Any, layers: list[int], method: str = "zerounlearn") -> list[int]:
    """The layers an edit of `layers` may need statistics for: those and the retry
    layers the family file pairs with them (what a prepare job computes ahead)."""
    return edited_layers(config_for_model(method, lm, {"layers": list(layers)}))
