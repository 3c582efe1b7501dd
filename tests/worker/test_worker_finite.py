"""The worker's finiteness check is the engine's (zerounlearn.api.check_patch_finite),
with the worker's word that nothing was published; the job error keeps its code.
(tests/worker/test_worker_guards.py runs it inside a real forget job.)"""

from __future__ import annotations

import pytest
import torch

from worker.errors import error_document
from worker.tasks import check_finite
from zerounlearn import Patch
from zerounlearn.errors import NonFiniteResult


def _patch(value: float) -> Patch:
    weight = torch.zeros(2, 3)
    weight[1, 2] = value
    return Patch(method="zerounlearn", hparams={}, base_fingerprint="f",
                 weights={0: torch.zeros(2, 3), 4: weight})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_patch_is_refused_by_the_engine_check(value: float) -> None:
    with pytest.raises(NonFiniteResult) as info:
        check_finite(_patch(value))
    error = error_document(info.value)
    assert error["code"] == "non_finite_result"
    assert "layer 4" in error["message"] and "non-finite" in error["message"]
    assert error["message"].endswith("nothing was published")


def test_a_finite_patch_passes() -> None:
    check_finite(_patch(1e30))
