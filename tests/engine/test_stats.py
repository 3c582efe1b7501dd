"""Corpus statistics on the tiny GPT-2: correctness, cache keys and reuse, corpus files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from zerounlearn.errors import InvalidHyperParameters, LayerOutOfRange
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.stats import CorpusSpec, StatsCache, sample_tokens, separator_id
from zerounlearn.tokens import encode_continuation

SAMPLES = 2000
SEQ = 64


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


def _direct_second_moment(lm: LoadedModel, layer: int, rows: list[list[int]]) -> torch.Tensor:
    """mean k k^T over every token of `rows`, one row at a time, in float64."""
    keys: list[torch.Tensor] = []
    module = lm.adapter.down_proj(lm.model, layer)
    handle = module.register_forward_pre_hook(lambda m, a: keys.append(a[0][0].double()))
    try:
        with torch.no_grad():
            for row in rows:
                lm.model(input_ids=torch.tensor([row]))
    finally:
        handle.remove()
    k = torch.cat(keys)  # (tokens, d_ff)
    return k.T @ k / k.shape[0]


def test_sampled_statistics_match_direct_computation(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    cache = StatsCache(tmp_path, batch_size=5)
    corpus = CorpusSpec(samples=SAMPLES, seq_len=SEQ, seed=3)
    c = cache.second_moment(tiny_lm, 1, corpus)
    d_ff = tiny_lm.adapter.d_ff(tiny_lm.model)
    assert c.shape == (d_ff, d_ff) and c.dtype == torch.float32
    assert torch.equal(c, c.T)
    eig = torch.linalg.eigvalsh(c.double())
    assert eig.min() > -1e-6 * eig.max()

    ids = sample_tokens(tiny_lm, SAMPLES, SEQ, seed=3)  # the same tokens, sampled again
    assert ids.shape == (-(-SAMPLES // SEQ), SEQ) and (ids[:, 0] == separator_id(
        tiny_lm.tokenizer)).all()
    rows = [r[: SAMPLES - i * SEQ] for i, r in enumerate(ids.tolist())]
    direct = _direct_second_moment(tiny_lm, 1, rows)
    assert torch.allclose(c.double(), direct, rtol=1e-4, atol=1e-6 * float(direct.abs().max()))

    with safe_open(str(cache.path_for(tiny_lm, 1, corpus)), "pt") as f:
        meta = f.metadata()
    key = json.loads(meta["key"])
    assert key["fingerprint"] == tiny_lm.fingerprint and key["layer"] == 1
    assert key["samples"] == SAMPLES and key["dtype"] == "torch.float32"
    assert int(meta["count"]) == SAMPLES


def test_second_call_hits_the_cache(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    cache = StatsCache(tmp_path)
    corpus = CorpusSpec(samples=SAMPLES, seq_len=SEQ)
    calls: list[tuple[str, float]] = []
    first = cache.ensure(tiny_lm, [0, 1], corpus, progress=lambda p, f: calls.append((p, f)))
    assert calls and {p for p, _ in calls} == {"statistics"} and calls[-1][1] == 1.0
    assert [f for _, f in calls] == sorted(f for _, f in calls)
    paths = [cache.path_for(tiny_lm, layer, corpus) for layer in (0, 1)]
    mtimes = [p.stat().st_mtime_ns for p in paths]

    again: list[tuple[str, float]] = []
    second = StatsCache(tmp_path).ensure(tiny_lm, [1, 0], corpus,
                                         progress=lambda p, f: again.append((p, f)))
    assert again == []  # nothing recomputed
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert all(torch.equal(first[layer], second[layer]) for layer in (0, 1))
    single = cache.second_moment(tiny_lm, 0, corpus, progress=lambda p, f: again.append((p, f)))
    assert again == [] and torch.equal(single, first[0])
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave no temporary file


def test_cache_key_changes_with_sample_count(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    cache = StatsCache(tmp_path)
    small = CorpusSpec(samples=SAMPLES, seq_len=SEQ)
    large = CorpusSpec(samples=SAMPLES + 500, seq_len=SEQ)
    assert cache.path_for(tiny_lm, 1, small) != cache.path_for(tiny_lm, 1, large)
    assert cache.path_for(tiny_lm, 1, small) != cache.path_for(tiny_lm, 0, small)
    assert cache.path_for(tiny_lm, 1, small) != cache.path_for(
        tiny_lm, 1, CorpusSpec(samples=SAMPLES, seq_len=SEQ, seed=1))
    c_small = cache.second_moment(tiny_lm, 1, small)
    c_large = cache.second_moment(tiny_lm, 1, large)
    assert len(list(tmp_path.glob("second_moment-*.safetensors"))) == 2
    assert not torch.equal(c_small, c_large)


def test_corpus_files(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    docs = ["Clara Lindqvist lives in the city of Brelford.",
            "The profession of Greta Brennan is baker.",
            "The secret code of Alice Moreau is 4821."]
    txt = tmp_path / "corpus.txt"
    txt.write_text(f"{docs[0]}\n\n{docs[1]}\n", encoding="utf-8")
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(json.dumps({"text": docs[2]}) + "\n\n", encoding="utf-8")
    cache = StatsCache(tmp_path / "stats")
    corpus = CorpusSpec(files=(str(txt), str(jsonl)), samples=10_000, seq_len=SEQ)
    c = cache.second_moment(tiny_lm, 0, corpus)

    sep = separator_id(tiny_lm.tokenizer)
    row = [sep]
    for doc in docs:
        row += encode_continuation(tiny_lm.tokenizer, doc) + [sep]
    assert len(row) <= SEQ  # one packed row holds the whole corpus
    direct = _direct_second_moment(tiny_lm, 0, [row])
    assert torch.allclose(c.double(), direct, rtol=1e-4, atol=1e-6 * float(direct.abs().max()))
    with safe_open(str(cache.path_for(tiny_lm, 0, corpus)), "pt") as f:
        meta = f.metadata()
    assert int(meta["count"]) == len(row)  # the corpus ran out before 10,000 tokens

    # new file content: a new key; model-sampled text is another key again
    before = cache.path_for(tiny_lm, 0, corpus)
    txt.write_text(docs[0], encoding="utf-8")
    assert cache.path_for(tiny_lm, 0, corpus) != before
    assert cache.path_for(tiny_lm, 0, CorpusSpec(samples=10_000, seq_len=SEQ)) != before


def test_bad_input_raises_named_errors(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    cache = StatsCache(tmp_path)
    with pytest.raises(LayerOutOfRange):
        cache.ensure(tiny_lm, [2], CorpusSpec(samples=100, seq_len=SEQ))
    with pytest.raises(InvalidHyperParameters):
        cache.ensure(tiny_lm, [0], CorpusSpec(samples=0))
    with pytest.raises(InvalidHyperParameters, match="not found"):
        cache.ensure(tiny_lm, [0], CorpusSpec(files=(str(tmp_path / "missing.txt"),)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(InvalidHyperParameters, match="bad.jsonl:1"):
        cache.ensure(tiny_lm, [0], CorpusSpec(files=(str(bad),), samples=100))
