"""The target optimisation's rows in chunks of similar length (target_chunks.py): the
chunks cover every row once within their budget, the sites come back in the caller's
order, and the optimised targets do not depend on the chunking (one row per chunk, a
few rows per chunk, one chunk), with records leaving the batch, with and without the
recorded upper stacks, at both hook points, with token and soft targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engine.random_models import VOCAB, as_loaded
from tests.engine.test_upper_stack import EXTRA, random_model, tiny_llama
from tests.support.tiny_model import tiny_facts
from zerounlearn.keys import prepare_requests
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.records import ForgetRecord
from zerounlearn.target_batch import build_batch
from zerounlearn.target_chunks import in_caller_order, plan_sites, row_chunks
from zerounlearn.targets import TargetSettings, optimize_deltas

TEMPLATES = ["", "Note: ", "A b c d e f. "]
ONE_CHUNK = 10**9


def _padded(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (len(lengths), max(lengths)), generator=gen)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def test_row_chunks_cover_every_row_once_within_budget() -> None:
    lengths = [9, 3, 12, 4, 4, 7, 12, 2, 5, 3]
    ids, mask = _padded(lengths)
    chunks = row_chunks(ids, mask, pad=0, max_tokens=16, widen=True)
    rows = torch.cat([c.rows for c in chunks])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in rows.tolist()] == sorted(lengths)  # shortest first
    assert len(chunks) > 2
    for c in chunks:
        width = max(lengths[i] for i in c.rows.tolist())
        assert len(c.rows) == 1 or len(c.rows) * width <= 16
        assert torch.equal(c.ids[:, :width], ids[c.rows, :width])
        assert torch.equal(c.mask[:, :width], mask[c.rows, :width])
        assert c.ids.shape[1] != len(c.rows)  # widened where they were equal
        assert int(c.mask[:, width:].sum()) == 0


def test_sites_come_back_in_the_callers_order() -> None:
    lengths = [9, 3, 12, 4, 4, 7, 12, 2]
    ids, mask = _padded(lengths)
    chunks = row_chunks(ids, mask, pad=0, max_tokens=12, widen=False)
    site_rows = torch.tensor([5, 0, 2, 2, 7, 3, 1, 6, 4, 0])
    site_pos = torch.arange(len(site_rows))
    kept_rows = torch.tensor([0, 2, 3, 5, 6, 7])  # rows 1 and 4 have left
    keep = torch.isin(site_rows, kept_rows)
    plans = plan_sites(chunks, kept_rows, site_rows[keep], site_pos[keep], len(lengths))
    parts = []
    for plan in plans:
        chunk = chunks[plan.chunk]
        # each site's full-batch row and position, read through the plan's local indices
        parts.append(torch.stack([chunk.rows[plan.kept][plan.rows], plan.pos], dim=1))
    back = in_caller_order(plans, parts)
    assert torch.equal(back, torch.stack([site_rows[keep], site_pos[keep]], dim=1))


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


def _requests(lm: LoadedModel) -> list:
    return prepare_requests(lm, [ForgetRecord(f["prompt"], f["answer"], f["subject"])
                                 for f in tiny_facts()[:4]])


def _run(lm: LoadedModel, requests: list, *, point: str, budget: int, upper_only: bool,
         soft: torch.Tensor | None, steps: int = 6, stop_loss: float = 0.0):
    targets = [r.target_ids[:1] if soft is not None else r.target_ids for r in requests]
    return optimize_deltas(lm, requests, TEMPLATES, targets, point=point, layer=0,
                           settings=TargetSettings(steps=steps, lr=0.5, stop_loss=stop_loss,
                                                   upper_only=upper_only),
                           soft=soft, max_tokens=budget)


def _split_loss(clean_nll: torch.Tensor) -> float:
    """The middle of the widest gap between the records' clean losses: with it as the
    stop loss some records leave at once and the others step, and no rounding
    can move a record across it."""
    nll = sorted(clean_nll.tolist())
    gap, cut = max((b - a, (a + b) / 2) for a, b in zip(nll, nll[1:], strict=False))
    assert gap > 1e-3, nll  # far wider than the ~1e-5 the chunkings differ by
    return cut


@pytest.mark.parametrize("point", ["block", "down_proj"])
@pytest.mark.parametrize("upper_only", [True, False])
@pytest.mark.parametrize("soft", [False, True], ids=["tokens", "soft"])
def test_chunked_targets_equal_one_batch(tiny_gpt2, point, upper_only, soft) -> None:
    """6 steps with every record stepping, and 2 steps where some records stop at the
    first pass (their rows then leave each chunk and its recorded stack)."""
    models = [tiny_gpt2, as_loaded(tiny_llama(), "llama"),
              as_loaded(random_model("opt", EXTRA["opt"]), "opt")]  # OPT: 2-D MLP rows
    for lm in models:
        requests = _requests(lm)
        q = None
        if soft:
            gen = torch.Generator().manual_seed(0)
            vocab = lm.model.get_output_embeddings().weight.shape[0]
            q = torch.softmax(3 * torch.randn(len(requests), vocab, generator=gen), dim=-1)
        full = build_batch(lm, requests, TEMPLATES, [r.target_ids for r in requests])
        assert len(row_chunks(full.ids, full.mask, 0, 40, widen=True)) > 2
        common = dict(point=point, upper_only=upper_only, soft=q)
        clean = _run(lm, requests, budget=ONE_CHUNK, steps=1, **common)
        cut = _split_loss(clean.nll)
        for steps, stop_loss in ((6, 0.0), (2, cut)):
            ref = _run(lm, requests, budget=ONE_CHUNK, steps=steps, stop_loss=stop_loss,
                       **common)
            assert ref.delta.abs().sum() > 0, lm.adapter.name
            if stop_loss == cut:
                assert set(ref.steps.tolist()) == {0, 1}, ref.steps
            for budget in (1, 40):
                got = _run(lm, requests, budget=budget, steps=steps, stop_loss=stop_loss,
                           **common)
                scale = float(ref.h.norm(dim=1).max())
                torch.testing.assert_close(got.h, ref.h, rtol=1e-5, atol=1e-6 * scale)
                torch.testing.assert_close(got.delta, ref.delta, rtol=1e-4,
                                           atol=1e-5 * scale)
                torch.testing.assert_close(got.nll, ref.nll, rtol=1e-4, atol=1e-5)
                assert torch.equal(got.steps, ref.steps), (lm.adapter.name, budget)
