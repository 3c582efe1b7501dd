"""Lookalike subjects (zerounlearn/lookalikes.py) read off SmolLM2's own embeddings.

The words nearest a subject must be of its kind (other countries for a country), never
the subject itself, a word containing it, another record's subject or a word of the
other capitalisation; a subject of several tokens gets none. The sites put each word in
the forget prompt's subject position and keep the tokens from there on. And the edit
they exist for: other facts of the forgotten facts' relation survive (slow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zerounlearn.api import forget
from zerounlearn.datasets import split_facts
from zerounlearn.evaluate import reproduced
from zerounlearn.keys import prepare_requests
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.lookalikes import LookalikeIndex, lookalike_sites
from zerounlearn.patch import apply_patch
from zerounlearn.records import validate_records
from zerounlearn.stats import StatsCache

STATS_SAMPLES = 10_000  # as test_zerounlearn_smollm2.py: one cached statistics file
AFRICAN = {"Kenya", "Tanzania", "Somalia", "Uganda", "Sudan", "Eritrea", "Nigeria",
           "Ghana", "Rwanda", "Malawi", "Zambia", "Botswana", "Morocco", "Egypt"}


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> LoadedModel:
    return load_model(str(smollm2_dir))


@pytest.fixture(scope="module")
def index(smollm2: LoadedModel) -> LookalikeIndex:
    return LookalikeIndex(smollm2)


def test_nearest_words_share_the_subjects_kind(index: LookalikeIndex) -> None:
    near = index.nearest("Ethiopia", 8, exclude=set())
    assert len(near) == 8
    assert len(AFRICAN & set(near)) >= 4, near
    assert "Ethiopia" not in near and "Ethiopian" not in near  # never the subject itself
    metals = index.nearest("gold", 5, exclude=set())
    assert {"silver", "copper", "bronze", "platinum"} & set(metals), metals
    assert all(w[0].islower() for w in metals)  # the subject's capitalisation


def test_excluded_words_and_subjects_of_several_tokens(index: LookalikeIndex) -> None:
    free = index.nearest("Ethiopia", 8, exclude=set())
    held = index.nearest("Ethiopia", 8, exclude={free[0]})
    assert free[0] not in held and len(held) == 8
    assert index.nearest("The Great Gatsby", 8, exclude=set()) == []
    assert index.nearest("Ethiopia", 0, exclude=set()) == []


def test_sites_substitute_the_subject_and_skip_forget_prompts(smollm2: LoadedModel,
                                                              index: LookalikeIndex) -> None:
    near = index.nearest("Ethiopia", 8, exclude=set())
    records = validate_records([
        {"prompt": "The capital of Ethiopia is", "answer": " Addis Ababa",
         "subject": "Ethiopia"},
        # another record of the request: its prompt must never be protected
        {"prompt": f"The capital of {near[0]} is", "answer": " x", "subject": near[0]},
    ])
    requests = prepare_requests(smollm2, records, "endoftext")
    sites, info = lookalike_sites(smollm2, requests, 8, index=index)
    texts = [s.text for s in sites]
    assert info["lookalikes"] == len(sites)
    assert f"The capital of {near[0]} is" not in texts  # another record's subject
    assert "The capital of Ethiopia is" not in texts
    assert all(t.startswith("The capital of ") and t.endswith(" is") for t in texts)
    words = {t[len("The capital of "):-len(" is")] for t in texts}
    assert set(near[1:]) <= words  # Ethiopia's words but the one another record names
    assert len(texts) == len(set(texts))  # each text once, though both records share words
    for site in sites:
        n_tokens = len(smollm2.tokenizer(site.text)["input_ids"])
        assert site.indices == (n_tokens - 2, n_tokens - 1)  # the word and " is"


@pytest.mark.slow
def test_lookalikes_protect_the_relation_an_unprotected_edit_kills(
    smollm2: LoadedModel, cache_dir: Path,
) -> None:
    """Forget two capitals with SmolLM2's defaults (edits at the prompt's last token), no
    bank, no neighbours: without lookalikes almost every other capital the model knows
    goes with them (measured: 1 of 30 kept); with them most stay (22 of 30)."""
    facts = [f for f in split_facts("tune") + split_facts("test") if f["relation"] == "capital"]
    forget_facts = [f for f in facts if f["subject"] in ("Ethiopia", "Thailand")]
    records = [{"prompt": f["prompt"], "answer": f["answer"], "subject": f["subject"]}
               for f in forget_facts]
    others = [{"prompt": f["prompt"], "answer": f["answer"]} for f in facts
              if f not in forget_facts]
    others = [r for r, ok in zip(others, reproduced(smollm2, others), strict=True) if ok]
    assert len(records) == 2 and len(others) >= 20
    base = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    stats = StatsCache(cache_dir / "stats")
    kept, protected = {}, {}
    for count in (0, 32):
        patch = forget(smollm2, records, "zerounlearn",
                       {"stats_samples": STATS_SAMPLES, "lookalike_count": count}, stats=stats)
        try:
            apply_patch(smollm2, patch)
            assert not any(reproduced(smollm2, records))
            kept[count] = sum(reproduced(smollm2, others)) / len(others)
            protected[count] = patch.metadata["protected_keys"][0]  # first edited layer
        finally:
            smollm2.model.load_state_dict(base)
            smollm2.carry.clear()
    # the round edits at the last token, yet the lookalike prompts are kept (a word and
    # " is": 2 keys each; built once from the subjects). Without them nothing is: each
    # record's prompt with the other's subject is the other's forget prompt
    assert protected[0] == 0 and protected[32] >= 2 * 32, protected
    assert kept[0] <= 0.3, kept  # the harm the lookalikes are for is there
    assert kept[32] >= 0.6, kept
    assert kept[32] >= kept[0] + 0.4, kept
