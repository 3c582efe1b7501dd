"""ZeroUnlearn end to end on the tiny GPT-2 trained in the session (real model, no mocks).

The 2-layer model looks its facts up at the prompt's LAST token (its layer-1 attention
reads the name tokens directly; an edit at the subject's last token barely moves its
answers), so these records carry no subject and the edit sits in the last layer. Its
context templates are noise (sampled from a model that only knows facts): none here.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.tiny_model import TINY_HPARAMS, known_facts
from zerounlearn.api import forget
from zerounlearn.errors import (
    DuplicateMethod,
    InvalidHyperParameters,
    InvalidRecord,
    LayerOutOfRange,
    NonFiniteResult,
    UnknownMethod,
)
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.methods.registry import (
    get_method,
    list_methods,
    register_method,
)
from zerounlearn.patch import apply_patch
from zerounlearn.stats import CorpusSpec, StatsCache
from zerounlearn.tokens import answer_batch, score_answers

N_FORGET, N_NEIGHBORS = 10, 95


def _restore(lm, state) -> None:
    """Back to the unedited model: its weights and its (empty) accumulated carry."""
    lm.model.load_state_dict(state)
    lm.carry.clear()


@pytest.fixture(scope="module")
def facts(tiny_lm: LoadedModel) -> list[dict[str, str]]:
    """The training facts the unedited model reproduces (all of them, or nearly: the
    model is trained on this machine, tiny_model.MIN_RECALL)."""
    return known_facts(tiny_lm)


def _records(facts: list[dict[str, str]]) -> list[dict]:
    """Forget facts[:10]; half of the other facts ride along as the request's neighbours."""
    neighbors = facts[N_FORGET : N_FORGET + N_NEIGHBORS]
    records = []
    for i, f in enumerate(facts[:N_FORGET]):
        mine = neighbors[i::N_FORGET]
        records.append({"prompt": f["prompt"], "answer": f["answer"],
                        "neighbors": [{"prompt": n["prompt"], "answer": n["answer"]}
                                      for n in mine]})
    return records


def _recall(lm: LoadedModel, facts: list[dict[str, str]]) -> float:
    batch = answer_batch(lm.tokenizer, [f["prompt"] for f in facts],
                         [f["answer"] for f in facts])
    return sum(ok for _, ok in score_answers(lm.model, batch)) / len(facts)


def _probability(lm: LoadedModel, facts: list[dict[str, str]]) -> float:
    """The mean probability of the whole answer after its prompt (teacher forcing)."""
    batch = answer_batch(lm.tokenizer, [f["prompt"] for f in facts],
                         [f["answer"] for f in facts])
    return sum(float(lp.sum().exp()) for lp, _ in score_answers(lm.model, batch)) / len(facts)


def _snapshot(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def patch(tiny_lm: LoadedModel, stats: StatsCache, facts):
    before = _snapshot(tiny_lm)
    result = forget(tiny_lm, _records(facts), "zerounlearn", TINY_HPARAMS, stats=stats)
    assert _same(before, _snapshot(tiny_lm)), "forget() changed the model"
    return result


def test_forgets_the_facts_and_keeps_the_others(tiny_lm, patch, facts) -> None:
    forget_set, others = facts[:N_FORGET], facts[N_FORGET:]
    assert _recall(tiny_lm, forget_set) == 1.0
    base = _snapshot(tiny_lm)
    try:
        apply_patch(tiny_lm, patch)
        assert _recall(tiny_lm, forget_set) <= 0.10
        assert _recall(tiny_lm, others) >= 0.90
        # also the facts that were NOT given as neighbours
        assert _recall(tiny_lm, facts[N_FORGET + N_NEIGHBORS :]) >= 0.90
    finally:
        _restore(tiny_lm, base)


def test_patch_describes_itself(tiny_lm, patch) -> None:
    assert patch.method == "zerounlearn"
    assert patch.layers == [1]
    assert patch.base_fingerprint == tiny_lm.fingerprint
    assert patch.hparams["layers"] == [1] and patch.hparams["update"] in ("additive",
                                                                         "multiplicative")
    w = patch.weights[1]
    assert w.dtype == tiny_lm.dtype and w.device.type == "cpu"
    assert w.shape == tiny_lm.adapter.weight_shape(tiny_lm.model, 1)
    assert patch.metadata["records"] == N_FORGET
    assert patch.metadata["protected_keys"][0] > 0


def test_same_patch_twice_is_bit_identical(tiny_lm, patch) -> None:
    base = _snapshot(tiny_lm)
    try:
        apply_patch(tiny_lm, patch)
        once = _snapshot(tiny_lm)
        apply_patch(tiny_lm, patch)
        assert _same(once, _snapshot(tiny_lm))
        _restore(tiny_lm, base)
        apply_patch(tiny_lm, patch)
        assert _same(once, _snapshot(tiny_lm))
    finally:
        _restore(tiny_lm, base)


def test_same_request_gives_the_same_patch(tiny_lm, stats, facts, patch) -> None:
    again = forget(tiny_lm, _records(facts), "zerounlearn", TINY_HPARAMS, stats=stats)
    assert all(torch.equal(again.weights[k], patch.weights[k]) for k in patch.weights)


def test_gd_variant_also_forgets(tiny_lm, stats, facts) -> None:
    before = _snapshot(tiny_lm)
    gd = forget(tiny_lm, _records(facts), "zerounlearn-gd",
                {**TINY_HPARAMS, "gd_steps": 200, "gd_lr": 0.01, "max_rounds": 3}, stats=stats)
    assert _same(before, _snapshot(tiny_lm))
    assert gd.method == "zerounlearn-gd"
    forget_set, untouched = facts[:N_FORGET], facts[N_FORGET + N_NEIGHBORS :]
    try:
        apply_patch(tiny_lm, gd)
        # It forgets, less cleanly than the closed form on this model (the null space of
        # its model-sampled statistics is a poor map of its facts), and how many of 10
        # it forgets depends on the weights this CPU trained: with 3 rounds, 5 of 10 on
        # one machine, all 10 with this project's AVX2 and scalar kernels. What must
        # hold on any weights is that the edit hits its own records, not the model at
        # large: measured in this test against the facts the request did not name,
        # the forget set keeps less of its answers' probability (0.06-0.07 of it vs
        # 0.46-0.50 on the two kernels: the bound leaves 4x room) and fewer of its
        # facts reproduced (0 of 10 vs 56-61%).
        p_forget, p_untouched = _probability(tiny_lm, forget_set), _probability(tiny_lm,
                                                                                 untouched)
        assert p_forget < 0.5 * p_untouched, (p_forget, p_untouched)
        assert _recall(tiny_lm, forget_set) < _recall(tiny_lm, untouched)
    finally:
        _restore(tiny_lm, before)
    assert all(r >= 16 for r in gd.metadata["null_rank"])  # never empty


def test_non_finite_result_is_refused_and_model_restored(
    tiny_gpt2_dir, tiny_lm, stats, facts
) -> None:
    # Statistics come from the healthy model (same files, same fingerprint, same cache).
    stats.ensure(tiny_lm, [1], CorpusSpec(samples=TINY_HPARAMS["stats_samples"],
                                          seq_len=TINY_HPARAMS["stats_seq_len"]))
    lm = load_model(str(tiny_gpt2_dir))
    with torch.no_grad():  # a broken model: layer 0's MLP input weights are NaN
        lm.model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    before = _snapshot(lm)
    with pytest.raises(NonFiniteResult):
        forget(lm, _records(facts)[:2], "zerounlearn", TINY_HPARAMS, stats=stats)
    after = _snapshot(lm)
    assert all(torch.equal(before[k].nan_to_num(7.0), after[k].nan_to_num(7.0))
               for k in before)


@pytest.mark.parametrize(
    ("records", "error", "field"),
    [
        ([], InvalidRecord, "records is empty"),
        ([{"prompt": "The secret code of Alice Moreau is", "answer": "  "}], InvalidRecord,
         "records[0].answer"),
        ([{"prompt": "The secret code of Alice Moreau is", "answer": " 1",
           "subject": "Bob"}], InvalidRecord, "records[0].subject"),
        ([{"prompt": "Alice " * 80 + "is", "answer": " 1"}], InvalidRecord, "records[0]"),
        ([{"prompt": "The code is", "answer": " 1"}, {"answer": " 2"}], InvalidRecord,
         "records[1].prompt"),
    ],
    ids=["empty", "empty-answer", "subject-missing", "too-long", "no-prompt"],
)
def test_bad_records_raise_named_errors(tiny_lm, stats, records, error, field) -> None:
    with pytest.raises(error) as info:
        forget(tiny_lm, records, "zerounlearn", TINY_HPARAMS, stats=stats)
    assert field in str(info.value)
    assert "Alice" not in str(info.value)  # never echo record text


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        ({"layers": [0, 2]}, LayerOutOfRange, "layers"),
        ({"layers": [-1]}, LayerOutOfRange, "layers"),
        ({"eps": -0.5}, InvalidHyperParameters, "eps"),
        ({"target_lr": "fast"}, InvalidHyperParameters, "target_lr"),
        ({"no_such_knob": 1}, InvalidHyperParameters, "no_such_knob"),
        ({"orthogonality": "sideways"}, InvalidHyperParameters, "orthogonality"),
    ],
)
def test_bad_hparams_raise_named_errors(tiny_lm, stats, facts, overrides, error, field) -> None:
    with pytest.raises(error, match=field):
        forget(tiny_lm, _records(facts)[:1], "zerounlearn", {**TINY_HPARAMS, **overrides},
               stats=stats)


def test_method_registry_names() -> None:
    names = list_methods()
    for name in ("zerounlearn", "zerounlearn-paper", "zerounlearn-gd"):
        assert name in names
    with pytest.raises(UnknownMethod) as info:
        get_method("zero-unlearn")
    assert "zerounlearn" in str(info.value)  # lists the registered names
    with pytest.raises(KeyError):  # also a KeyError
        get_method("nope")
    with pytest.raises(DuplicateMethod):
        @register_method("zerounlearn")
        class Again:
            def compute_patch(self, *args, **kwargs):
                raise AssertionError

    # a name must be in zerounlearn.config.HPARAMS_CLASSES first (one registration;
    # tests/api/test_method_registry.py)
    with pytest.raises(UnknownMethod):
        @register_method("test-only-method")
        class TestOnly:
            def compute_patch(self, *args, **kwargs):
                raise AssertionError
    assert "test-only-method" not in list_methods()
