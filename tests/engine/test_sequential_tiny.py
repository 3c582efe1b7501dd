"""Sequential forget requests on the tiny GPT-2 through bench/bench_sequential.py's main:
3 requests x 2 records, each built on the model the previous one left, with the
neighbour pool as the model's retain bank (--bank) and the carry handed from version
to version. Earlier requests' records must stay forgotten, held-out facts must stay
known, and the results (JSON, markdown, plot) must hold one row per step.

The tiny model trains to different weights on different CPUs: the bounds below hold on
this project's Xeon with the default (AVX-512) kernels and with ATEN_CPU_CAPABILITY=avx2
(scripts/test.sh runs the quality tests of the tiny models under both). Measured
held-out specificity per step, default / avx2: 100, 100, 80 / 100, 100, 85 (without
the bank: 100, 95, 80 / 100, 90, 90; before the bank and the carry the second step
fell to 70 on this CPU)."""

from __future__ import annotations

import json
from pathlib import Path

STEPS, PER_STEP = 3, 2


def test_three_sequential_requests_stay_forgotten(tiny_gpt2_dir: Path, cache_dir: Path,
                                                  tmp_path: Path) -> None:
    from bench.bench_sequential import main

    doc = main(["--facts", "tiny", "--model", str(tiny_gpt2_dir),
                "--stats-dir", str(cache_dir / "tiny-stats"), "--steps", str(STEPS),
                "--per-step", str(PER_STEP), "--heldout", "20", "--pool", "20",
                "--out-dir", str(tmp_path), "--out-name", "seq", "--bank"])
    written = json.loads((tmp_path / "seq.json").read_text())
    assert written["rows"] == json.loads(json.dumps(doc["rows"]))
    rows = written["rows"]
    assert [r["step"] for r in rows] == list(range(STEPS + 1))  # step 0 = unedited
    assert [r["records_forgotten"] for r in rows] == [k * PER_STEP for k in range(STEPS + 1)]
    assert written["finished"] is True
    assert rows[0]["efficacy"] is None and rows[0]["efficacy_pending"] == 100.0
    assert rows[0]["specificity_heldout"] == 100.0
    for row in rows[1:]:
        assert row["forget_seconds"] > 0
    # the first two requests keep every held-out fact (margin: 2 of 20 facts); the
    # third edits a weight grown to ~13x its trained norm by the first two (this toy's
    # targets lie far outside what its MLP writes) and costs 3-4 of 20
    assert rows[1]["specificity_heldout"] >= 90.0 and rows[2]["specificity_heldout"] >= 90.0
    assert rows[3]["specificity_heldout"] >= 70.0, rows[3]
    # requests 1 and 2 forget all their records, and request 1's stay forgotten
    assert rows[1]["efficacy"] == 0.0 and rows[2]["efficacy"] == 0.0, rows[1:3]
    assert rows[2]["efficacy_earlier"] == 0.0 and rows[2]["earlier_reproduced"] == 0
    # after request 3, requests 1 and 2 are still forgotten (edits do not undo earlier
    # ones). Request 3's own records are NOT asserted: on this toy model, whose edited
    # weight grows ~6x in norm in the first request, the third request's edit does not
    # take even in 3 rounds (both its records stay known; forgotten when it is the first
    # request) - a finding reported with the sequential benchmark, not a property to pin.
    assert rows[3]["rounds"][0] == PER_STEP  # rounds are reported per step
    assert rows[3]["efficacy_earlier"] == 0.0 and rows[3]["earlier_reproduced"] == 0
    assert all(i >= 2 * PER_STEP for i in rows[3]["forgotten_reproduced_indices"])
    assert rows[-1]["perplexity"] is not None
    md = (tmp_path / "seq.md").read_text()
    assert md.count("\n| ") == 1 + STEPS + 1  # header + one line per step
    assert (tmp_path / "seq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_more_facts_extend_the_world_facts() -> None:
    """The benchmark's extra facts: well formed, none already in world_facts()."""
    from zerounlearn.datasets import more_facts, world_facts

    more, world = more_facts(), world_facts()
    assert len(more) >= 40
    assert not {f["prompt"] for f in more} & {f["prompt"] for f in world}
    assert len({f["prompt"] for f in more}) == len(more)
    for f in more:
        assert f["answer"].startswith(" ") and f["answer"].strip()
        assert f["subject"] in f["prompt"]
        assert 1 <= len(f["paraphrases"]) == len(f["paraphrases_known"]) <= 2
