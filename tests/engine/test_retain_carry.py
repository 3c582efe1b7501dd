"""The retain bank and the accumulated preservation (carry), on the tiny GPT-2 trained in
the session and on small random tensors (no mocks).

The tiny model's facts of one relation share the prompt's last token, where its edits
sit, so forgetting a few secret codes takes many other secret codes with it: the case
the bank exists for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.tiny_model import TINY_HPARAMS, tiny_facts
from zerounlearn import carry
from zerounlearn.api import forget
from zerounlearn.errors import InvalidRecord
from zerounlearn.evaluate import reproduced
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.patch import apply_patch, load_patch, save_patch
from zerounlearn.stats import CorpusSpec, StatsCache

N_FORGET = 4


def _rec(fact: dict[str, str]) -> dict[str, str]:
    return {"prompt": fact["prompt"], "answer": fact["answer"]}


@pytest.fixture()
def fresh(tiny_lm: LoadedModel):
    """The tiny model, back to its unedited weights and empty carry after the test."""
    base = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    yield tiny_lm
    tiny_lm.model.load_state_dict(base)
    tiny_lm.carry.clear()


def _split() -> tuple[list[dict], list[dict]]:
    """N_FORGET secret codes to forget, and every other fact."""
    facts = tiny_facts()
    forget_facts = [f for f in facts if f["relation"] == "secret_code"][:N_FORGET]
    return forget_facts, [f for f in facts if f not in forget_facts]


def _edit(lm: LoadedModel, stats: StatsCache, records: list[dict], bank: list[dict] | None,
          **hparams) -> dict:
    base = {k: v.clone() for k, v in lm.model.state_dict().items()}
    patch = forget(lm, records, "zerounlearn", {**TINY_HPARAMS, **hparams}, stats=stats,
                   retain=bank)
    apply_patch(lm, patch)
    return {"patch": patch, "base": base}


def _undo(lm: LoadedModel, done: dict) -> None:
    lm.model.load_state_dict(done["base"])
    lm.carry.clear()


def test_the_bank_keeps_same_relation_facts_that_an_unprotected_edit_kills(
    fresh: LoadedModel, stats: StatsCache
) -> None:
    forget_facts, others = _split()
    records = [_rec(f) for f in forget_facts]
    done = _edit(fresh, stats, records, None)
    assert not any(reproduced(fresh, records))
    killed = [f for f, ok in zip(others, reproduced(fresh, [_rec(f) for f in others]),
                                 strict=True) if not ok]
    _undo(fresh, done)
    # the damage this test is about: same-relation facts die with the forgotten ones
    assert len(killed) >= 10 and all(f["relation"] == "secret_code" for f in killed)

    # a bank of every other fact but the killed ones' second half: the engine protects
    # the facts at risk, and what it learns from them carries over to facts not in it
    bank_facts = [f for f in others if f not in killed[1::2]]
    done = _edit(fresh, stats, records, [_rec(f) for f in bank_facts])
    assert not any(reproduced(fresh, records)), "the request still wins"
    kept = reproduced(fresh, [_rec(f) for f in killed])
    info = done["patch"].metadata["retain"]
    assert info["protected_facts"] > 0 and info["protected"] <= TINY_HPARAMS.get(
        "retain_top_k", 64)
    in_bank = [ok for f, ok in zip(killed, kept, strict=True) if f in bank_facts]
    not_in_bank = [ok for f, ok in zip(killed, kept, strict=True) if f not in bank_facts]
    assert sum(in_bank) >= 0.6 * len(in_bank), (sum(in_bank), len(in_bank))
    assert sum(not_in_bank) >= 0.3 * len(not_in_bank), (sum(not_in_bank), len(not_in_bank))


def test_a_record_in_the_bank_is_forgotten_all_the_same(
    fresh: LoadedModel, stats: StatsCache
) -> None:
    forget_facts, others = _split()
    records = [_rec(f) for f in forget_facts]
    done = _edit(fresh, stats, records, records + [_rec(f) for f in others[:20]])
    assert not any(reproduced(fresh, records))
    assert done["patch"].metadata["retain"]["candidates"] == 20  # the records were left out


def test_bad_bank_facts_are_refused_by_index(fresh: LoadedModel, stats: StatsCache) -> None:
    records = [_rec(_split()[0][0])]
    with pytest.raises(InvalidRecord, match=r"retain\[1\]") as err:
        forget(fresh, records, "zerounlearn", TINY_HPARAMS, stats=stats,
               retain=[{"prompt": "a", "answer": " b"}, {"prompt": "secret text"}])
    assert "secret text" not in str(err.value)


def test_the_carry_accumulates_survives_a_reload_and_stays_bounded(
    fresh: LoadedModel, stats: StatsCache, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """A chain of three versions: each patch carries the whole version's factor; a model
    materialised from the patch files (a worker after a restart) has the same carry;
    with a small cap the factor stops growing at the cap."""
    forget_facts, others = _split()
    bank = [_rec(f) for f in others[:40]]
    extra = [f for f in tiny_facts() if f["relation"] == "city"][:4]
    requests = [[_rec(f)] for f in forget_facts[:2]] + [[_rec(f) for f in extra]]
    cap = 24
    files, ranks = [], []
    for k, records in enumerate(requests):
        patch = forget(fresh, records, "zerounlearn", {**TINY_HPARAMS, "carry_rank": cap},
                       stats=stats, retain=bank)
        apply_patch(fresh, patch)
        path = tmp_path / f"v{k + 1}.safetensors"
        save_patch(patch, path)
        files.append(path)
        ranks.append({layer: f.shape[1] for layer, f in patch.carry.items()})
    assert ranks[0] == {1: ranks[0][1]} and 0 < ranks[0][1] <= cap
    assert ranks[-1][1] == cap  # reached the cap and held there
    d_ff = fresh.adapter.weight_shape(fresh.model, 1)[1]
    assert fresh.carry[1].shape == (d_ff, cap)

    restarted = load_model(str(tiny_gpt2_dir))
    for path in files:
        apply_patch(restarted, load_patch(path))
    assert set(restarted.carry) == {1}
    assert torch.equal(restarted.carry[1], fresh.carry[1])
    # and the next edit on either gives the same patch: the carry is all the state
    nxt = [_rec(others[-1])]
    a = forget(fresh, nxt, "zerounlearn", {**TINY_HPARAMS, "carry_rank": cap}, stats=stats)
    b = forget(restarted, nxt, "zerounlearn", {**TINY_HPARAMS, "carry_rank": cap}, stats=stats)
    assert torch.equal(a.weights[1], b.weights[1])


def test_the_carry_holds_earlier_keys_in_the_solve(fresh: LoadedModel, stats: StatsCache
                                                   ) -> None:
    """The same second request on the same edited weights, with and without the carry
    the first request left: with it, the first request's protected facts move less."""
    forget_facts, others = _split()
    bank = [_rec(f) for f in others if f["relation"] == "secret_code"]
    first = _edit(fresh, stats, [_rec(forget_facts[0])], bank)
    probe = [_rec(f) for f in others if f["relation"] == "secret_code"]
    held = carry_used = None
    second = [_rec(f) for f in forget_facts[1:]]
    for weight in (0.0, 1.0):
        patch = forget(fresh, second, "zerounlearn", {**TINY_HPARAMS, "carry_weight": weight},
                       stats=stats)  # no bank this time: only the carry protects
        saved = fresh.adapter.get_weight(fresh.model, 1).clone()
        fresh.adapter.set_weight(fresh.model, 1, patch.weights[1])
        kept = sum(reproduced(fresh, probe))
        fresh.adapter.set_weight(fresh.model, 1, saved)
        if weight == 0.0:
            held = kept
        else:
            carry_used = kept
    _undo(fresh, first)
    assert carry_used is not None and held is not None
    assert carry_used > held, (carry_used, held)


def test_the_corpus_anchor_pulls_a_chain_back_towards_the_base_weight(
    fresh: LoadedModel, stats: StatsCache
) -> None:
    """corpus_anchor: round 1 of a later request keeps a share of the corpus outputs of
    the weight before the chain's first edit (LoadedModel.base_weights, recorded by
    apply_patch), so the chain's drift from it does not add up request by request."""
    forget_facts, _ = _split()
    fresh.base_weights.clear()  # the session's model: recorded again from here
    edited = TINY_HPARAMS["layers"]
    base = {layer: fresh.adapter.get_weight(fresh.model, layer).clone() for layer in edited}
    first = _edit(fresh, stats, [_rec(forget_facts[0])], None)
    assert sorted(fresh.base_weights) == sorted(edited)
    assert all(torch.equal(fresh.base_weights[layer], base[layer]) for layer in edited)
    second = [_rec(f) for f in forget_facts[1:]]
    corpus = CorpusSpec(samples=TINY_HPARAMS["stats_samples"],
                        seq_len=TINY_HPARAMS["stats_seq_len"])
    c = stats.ensure(fresh, edited, corpus)  # the corpus keys' second moment per layer
    drift = {}
    for share in (0.0, 1.0):
        patch = forget(fresh, second, "zerounlearn", {**TINY_HPARAMS, "corpus_anchor": share},
                       stats=stats)
        # how far the corpus outputs moved from the base's: trace(D C D^T), D = W' - W0
        drift[share] = sum(float(torch.trace(d @ c[layer].to(d) @ d.T)) for layer in edited
                           for d in [(patch.weights[layer] - base[layer]).double()])
    _undo(fresh, first)
    fresh.base_weights.clear()
    assert drift[1.0] < 0.95 * drift[0.0], drift  # 0.86 on the tiny GPT-2


def test_merge_keeps_the_moment_under_the_cap_and_its_strongest_directions_at_it() -> None:
    """Exact up to the bfloat16 rounding (~3 digits) the carry is stored with."""
    g = torch.Generator().manual_seed(0)
    d_ff = 12
    old = torch.randn(d_ff, 5, generator=g, dtype=torch.float64)
    new = torch.randn(d_ff, 3, generator=g, dtype=torch.float64)
    merged = carry.merge(old, [new], max_rank=d_ff)
    assert merged is not None and merged.dtype == torch.float32 and merged.shape == (d_ff, 8)
    expected = old @ old.T + new @ new.T  # (d_ff, d_ff)
    assert torch.allclose(merged.double() @ merged.double().T, expected, rtol=2e-2, atol=5e-2)
    capped = carry.merge(old, [new, new], max_rank=4)
    assert capped is not None and capped.shape == (d_ff, 4)
    full = old @ old.T + 2 * new @ new.T
    top = torch.linalg.eigvalsh(full)[-4:]  # the best rank-4 approximation keeps these
    got = torch.linalg.eigvalsh(capped.double() @ capped.double().T)[-4:]
    assert torch.allclose(got, top, rtol=2e-2)
    assert carry.merge(None, [], max_rank=4) is None


def test_strongest_directions_are_the_svds_from_either_gram_matrix() -> None:
    """carry.strongest: the same rank-r moment as U_r S_r of an SVD, with more columns
    than rows (M's own eigenpairs) and with fewer (the columns' Gram matrix)."""
    g = torch.Generator().manual_seed(1)
    for rows, cols in ((16, 40), (16, 10)):
        full = torch.randn(rows, cols, generator=g, dtype=torch.float64) \
            * torch.linspace(0.05, 3.0, cols, dtype=torch.float64)  # distinct strengths
        u, s, _ = torch.linalg.svd(full, full_matrices=False)
        want = u[:, :6] * s[:6]  # (rows, 6)
        got = carry.strongest(full, 6)
        assert got.shape == (rows, 6)
        assert torch.allclose(got @ got.T, want @ want.T, rtol=1e-9, atol=1e-9)
        assert torch.allclose(got.abs(), want.abs(), rtol=1e-6, atol=1e-9)  # column signs
