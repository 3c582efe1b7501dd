"""The engine's one-call entry point: forget(lm, records, method, hparams, stats=...)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.errors import NonFiniteResult
from zerounlearn.keys import prepare_requests
from zerounlearn.methods.registry import UnlearningMethod, get_method
from zerounlearn.patch import Patch
from zerounlearn.records import ForgetRecord, RetainFact, validate_records, validate_retain

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


def check_records(
    lm: LoadedModel, records: Iterable[ForgetRecord | Mapping[str, Any]]
) -> list[ForgetRecord]:
    """validate_records plus the token-level rules (InvalidRecord naming records[i]):
    the subject maps to a token, prompt + answer (+ target) fit the model's positions."""
    recs = validate_records(records)
    prepare_requests(lm, recs, neutral_target=None)
    return recs


def check_patch_finite(patch: Patch) -> None:
    for layer, w in patch.weights.items():
        if not torch.isfinite(w).all():
            raise NonFiniteResult(f"the edit of layer {layer} produced non-finite weights")


def forget(
    lm: LoadedModel,
    records: Iterable[ForgetRecord | Mapping[str, Any]],
    method: str | UnlearningMethod = "zerounlearn",
    hparams: dict[str, Any] | None = None,
    *,
    stats: Any,
    progress: Progress | None = None,
    retain: Iterable[RetainFact | Mapping[str, Any]] | None = None,
) -> Patch:
    """Compute a patch that makes `lm` forget `records` with `method`.

    `method` is a registered name, or an instance from `get_method` that the caller
    keeps between calls so its caches (context templates) are reused.

    `retain`: the model's retain bank, facts it must keep ({"prompt", "answer",
    "subject"?}); the method protects those most at risk. Give only facts the model
    reproduces (a fact it does not know needs no protection and costs solve capacity).

    Validates the records (InvalidRecord), resolves and checks hyper-parameters
    (InvalidHyperParameters, LayerOutOfRange), refuses non-finite results
    (NonFiniteResult). lm.model is unchanged on return: apply the patch to use it.
    """
    impl = get_method(method) if isinstance(method, str) else method  # UnknownMethod early
    recs = check_records(lm, records)
    bank = validate_retain(retain)
    patch = impl.compute_patch(lm, recs, hparams, stats=stats, progress=progress,
                               retain=bank or None)
    check_patch_finite(patch)
    return patch
