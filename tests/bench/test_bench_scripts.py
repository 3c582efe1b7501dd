"""The benchmark scripts run end to end on tiny settings and write sane JSON.

Smoke tests of the scripts themselves, not of the figures: bench_gpu.py on a tiny Llama
on CPU, bench_storage.py on the tiny GPT-2. Timings are checked only for being
positive; sizes are checked against each other (a patch is smaller than the model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def run_script(script: str, *args: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").read_text().startswith("Machine: ")
    return json.loads(out.with_suffix(".json").read_text())


def test_bench_gpu_tiny_on_cpu(tmp_path: Path) -> None:
    data = run_script(
        "bench_gpu.py", "--device", "cpu", "--tiny", "--records", "4",
        "--stats-samples", "256", "--hparams", '{"template_count": 0, "target_steps": 3}',
        out=tmp_path / "gpu",
    )
    assert data["records"] == 4 and data["machine"]["shape"] == "tiny"
    assert set(data["runs"]) == {"batched", "one_at_a_time"}
    for run in data["runs"].values():
        assert run["seconds"] > 0 and run["layers"]
        assert {"targets", "solve"} <= set(run["phases"])
    assert data["speedup"] > 0 and isinstance(data["meets_target"], bool)


def test_bench_gpu_refuses_the_full_shape_on_cpu() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"),
                           "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "--tiny" in proc.stderr


def test_bench_storage_tiny_model(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    data = run_script(
        "bench_storage.py", "--model", str(tiny_gpt2_dir), "--facts", "tiny",
        "--records", "2", "--chain", "1,2", "--repeats", "1",
        "--stats-dir", str(tmp_path / "stats"),
        "--hparams", '{"layers": [1], "template_count": 0, "stats_samples": 1000, '
                     '"stats_seq_len": 16}',
        out=tmp_path / "storage",
    )
    patch, full = data["patch"]["bytes"], data["checkpoint"]["weights_bytes"]
    assert 0 < patch < full and data["patch_fraction"] == pytest.approx(patch / full, rel=1e-3)
    assert data["patch"]["layers"] == [1]
    mat = data["materialise_s"]
    assert set(mat["base_plus_chain"]) == {"1", "2"}
    assert all(v > 0 for v in mat["base_plus_chain"].values())
    assert mat["load_full_checkpoint"] > 0 and mat["load_base"] > 0
    # the worker's own path over a real store, unless the store refused (then say why)
    assert (mat["model_cache"] and set(mat["model_cache"]) == {"1", "2"}) \
        or mat["model_cache_error"]


def test_collateral_benchmark_splits_and_cases() -> None:
    """The fact parts are disjoint, cover every packaged fact and hold every relation of
    3+ facts; cases parse; a pick is round-robin over relations."""
    from bench.bench_collateral import parse_case, pick
    from zerounlearn.datasets import builtin_retain_bank, more_facts, split_facts, world_facts

    parts = {name: split_facts(name) for name in ("bank", "tune", "test")}
    prompts = [f["prompt"] for part in parts.values() for f in part]
    assert len(prompts) == len(set(prompts)) == len(world_facts()) + len(more_facts())
    assert split_facts("test") == parts["test"]  # deterministic
    assert [f["prompt"] for f in builtin_retain_bank()] == [f["prompt"] for f in parts["bank"]]
    relations: dict[str, int] = {}
    for f in world_facts() + more_facts():
        relations[f["relation"]] = relations.get(f["relation"], 0) + 1
    for relation, count in relations.items():
        if count >= 3:
            assert all(any(f["relation"] == relation for f in part) for part in parts.values())
    assert parse_case("one:20") == ("one", 1, 20) and parse_case("seq:10x5") == ("seq", 10, 5)
    chosen = pick(parts["test"], 8)
    assert len({f["relation"] for f in chosen}) == 8  # the test part has >= 8 relations
    with pytest.raises(SystemExit):
        pick(parts["test"], 1000)


def test_collateral_benchmark_pools_the_unseen_half_for_twenty_requests() -> None:
    """--with-unseen: the test split and its unseen half in one pool, enough for twenty
    requests of five (the test split alone is not), leaving held-out facts of both."""
    from bench.bench_collateral import case_facts, pick
    from zerounlearn.datasets import split_facts, unseen_facts

    facts, unseen = case_facts("test", False)
    assert facts == split_facts("test") and unseen == unseen_facts("test")
    with pytest.raises(SystemExit):
        pick(facts, 100)
    pool, apart = case_facts("test", True)
    assert apart == [] and len(pool) == len(facts) + len(unseen)
    chosen = {f["prompt"] for f in pick(pool, 100)}
    left = [f for f in pool if f["prompt"] not in chosen]
    assert len(chosen) == 100 and len(left) >= 30
    assert any(f in facts for f in left) and any(f in unseen for f in left)


def test_unseen_facts_are_apart_from_the_parts_and_halved() -> None:
    """The unseen facts (extra held-out facts) share no prompt with the packaged parts,
    their tune and test halves are disjoint and cover them, and every relation of 2+
    unseen facts is in both halves."""
    from zerounlearn.datasets import more_facts, unseen_facts, world_facts

    tune, test = unseen_facts("tune"), unseen_facts("test")
    tune_prompts, test_prompts = {f["prompt"] for f in tune}, {f["prompt"] for f in test}
    assert len(tune) >= 60 and len(test) >= 60
    assert not tune_prompts & test_prompts
    assert not (tune_prompts | test_prompts) & {f["prompt"] for f in world_facts() + more_facts()}
    relations: dict[str, int] = {}
    for f in tune + test:
        relations[f["relation"]] = relations.get(f["relation"], 0) + 1
        assert f["answer"].startswith(" ") and f["subject"] in f["prompt"]
    for relation, count in relations.items():
        if count >= 2:
            assert any(f["relation"] == relation for f in tune)
            assert any(f["relation"] == relation for f in test)
    with pytest.raises(ValueError, match="tune and a test half"):
        unseen_facts("bank")


def test_collateral_margins_scores_every_answer_token(tiny_gpt2_dir: Path) -> None:
    """One:N splits the part into what is forgotten and the rest; the margin script's
    per-token scores match the answer, with ranks and probabilities that can be read."""
    from bench.collateral_margins import answer_tokens
    from bench.collateral_variants import one_case
    from zerounlearn.datasets import split_facts
    from zerounlearn.loading import load_model

    forgotten, heldout = one_case("tune", 8)
    assert len(forgotten) == 8 and len(forgotten) + len(heldout) == len(split_facts("tune"))
    assert not {f["prompt"] for f in forgotten} & {f["prompt"] for f in heldout}
    lm = load_model(str(tiny_gpt2_dir))
    rows = answer_tokens(lm, "Alice lives in the city of", " Paris is big")
    assert "".join(r["token"] for r in rows) == " Paris is big"
    assert all(r["rank"] >= 0 and 0.0 <= r["p"] <= 1.0 for r in rows)
    assert all(r["rank"] > 0 or r["first"] == r["token"] for r in rows)  # rank 0 = first


def test_collateral_kept_counts_and_names_lost_facts(tiny_gpt2_dir: Path) -> None:
    """`kept` (the held-out and unseen columns): % reproduced, per relation, and the
    prompts lost, on the tiny GPT-2's known facts and the same facts given wrong answers."""
    from bench.bench_collateral import kept
    from tests.support.tiny_model import known_facts
    from zerounlearn.loading import load_model

    lm = load_model(str(tiny_gpt2_dir))
    known = [f for f in known_facts(lm) if f["relation"] in ("city", "profession")][:4]
    wrong = [dict(f, answer=" zzzz qqqq") for f in known[:2]]
    result = kept(lm, known + wrong)
    assert result["pct"] == round(100.0 * 4 / 6, 1) and result["n"] == 6
    assert result["lost"] == [f["prompt"] for f in wrong]
    assert set(result["per_relation"]) == {f["relation"] for f in known}
    assert kept(lm, []) == {"pct": None, "n": 0, "per_relation": {}, "lost": []}


def test_chat_context_template_is_the_chat_probes_opening(smollm2_dir: Path,
                                                          tiny_gpt2_dir: Path) -> None:
    """templates.chat_opening (bench/chat_context.py, retry_chat_context): the chat
    template's opening plus a prompt tokenizes as the start of the chat probe's input; a
    tokenizer without a chat template gets none."""
    from transformers import AutoTokenizer

    from zerounlearn.probes import chat_ids
    from zerounlearn.templates import chat_opening
    from zerounlearn.tokens import encode_prompt

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prefix = chat_opening(tok)
    assert prefix is not None and "The capital" not in prefix
    prompt = "The capital of France is"
    row = encode_prompt(tok, prefix + prompt)
    assert chat_ids(tok, prompt)[:len(row)] == row
    assert chat_opening(AutoTokenizer.from_pretrained(tiny_gpt2_dir)) is None
