"""Hyper-parameter files, typing and validation (no model needed except for layers)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from zerounlearn.config import (
    HPARAMS_CLASSES,
    _fit_retry_layers,
    config_for_model,
    default_layers,
    resolve_config,
    resolve_hparams,
    statistics_layers,
)
from zerounlearn.errors import InvalidHyperParameters, LayerOutOfRange, UnknownMethod
from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.methods.registry import list_methods

FAMILIES = ["smollm2", "gpt2", "llama", None]


@pytest.mark.parametrize("method", sorted(HPARAMS_CLASSES))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_file_resolves_to_json(method: str, family: str | None) -> None:
    hp = resolve_hparams(method, family, None)
    assert json.loads(json.dumps(hp)) == hp


def test_every_registered_method_has_hyper_parameters() -> None:
    assert set(list_methods()) <= set(HPARAMS_CLASSES)


def test_paper_settings_are_the_papers() -> None:
    hp = resolve_hparams("zerounlearn-paper", "smollm2", None)
    assert hp["orthogonality"] == "global" and hp["update"] == "multiplicative"
    assert hp["sensitive_state"] == "optimized" and hp["step_units"] == "absolute"
    assert hp["target_lr"] == 0.1 and hp["forget_weight"] == 50
    assert hp["corpus_weight"] == 15000 and hp["eps"] == 0.01 and hp["reg_lambda"] == 1
    assert hp["layers"] == [16, 17, 18]


def test_smollm2_edits_at_the_last_token_and_the_paper_at_the_subject() -> None:
    ours = resolve_hparams("zerounlearn", "smollm2", None)
    assert ours["edit_token"] == "last" and ours["lookalike_count"] == 32
    assert ours["neutral_target"] == "own" and ours["retry_at_subject"] is True
    assert ours["generic_share"] == 0.5 and ours["answer_path_top_k"] == 8
    assert ours["retry_chat"] is True
    assert resolve_hparams("zerounlearn", None, None)["edit_token"] == "subject"
    paper = resolve_hparams("zerounlearn-paper", "smollm2", None)
    assert paper["edit_token"] == "subject" and paper["lookalike_count"] == 0
    assert paper["retry_at_subject"] is False
    assert paper["generic_share"] == 0.0 and paper["answer_path_top_k"] == 0


def test_overrides_win_and_are_typed() -> None:
    hp = resolve_hparams("zerounlearn", "smollm2", {"eps": 0, "layers": [3, 4]})
    assert hp["eps"] == 0.0 and isinstance(hp["eps"], float)
    assert hp["layers"] == [3, 4]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"eps": 2.0}, "eps"),
        ({"clamp": 0}, "clamp"),
        ({"target_steps": 1.5}, "target_steps"),
        ({"batch_records": 1}, "batch_records"),
        ({"layers": [3, 3]}, "layers"),
        ({"layers": []}, "layers"),
        ({"sensitive_state": "both"}, "sensitive_state"),
        ({"update": "sideways"}, "update"),
        ({"edit_token": "middle"}, "edit_token"),
        ({"lookalike_count": 65}, "lookalike_count"),
        ({"retry_at_subject": "yes"}, "retry_at_subject"),
        ({"retry_layers": [2, 1]}, "retry_layers"),
        ({"retry_layers": []}, "retry_layers"),
        ({"epsilon": 0.1}, "epsilon"),
        ({"reg_lambda": float("nan")}, "reg_lambda"),
    ],
)
def test_bad_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(InvalidHyperParameters, match=field):
        resolve_config("zerounlearn", None, overrides)


def test_unknown_method() -> None:
    with pytest.raises(UnknownMethod):
        resolve_hparams("memit", None, None)


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir))


def test_layers_against_the_model(tiny_lm: LoadedModel) -> None:
    assert tiny_lm.num_layers == 2
    assert default_layers(tiny_lm) == [1]  # 3 at 80% depth, cut to the model's 2, not 0
    assert config_for_model("zerounlearn", tiny_lm, {"layers": [1]}).layers == [1]
    with pytest.raises(LayerOutOfRange, match="layers"):
        config_for_model("zerounlearn", tiny_lm, {"layers": [1, 2]})


def test_retry_layers_against_the_model_and_the_callers_layers(tiny_lm: LoadedModel) -> None:
    """A caller's retry_layers must exist; a family file's stay paired with the file's
    layers: they go when round 1 edits other layers and when the model lacks them."""
    chosen = config_for_model("zerounlearn", tiny_lm, {"retry_layers": [0]})
    assert chosen.retry_layers == [0]  # type: ignore[attr-defined]
    with pytest.raises(LayerOutOfRange, match="retry_layers"):
        config_for_model("zerounlearn", tiny_lm, {"retry_layers": [0, 2]})
    with pytest.raises(LayerOutOfRange, match="retry_layers"):
        resolve_config("zerounlearn", None, {"retry_layers": [-1]})
    # what config_for_model reads of a model: its family and depth
    smol = SimpleNamespace(family="smollm2", num_layers=30)
    assert config_for_model("zerounlearn", smol, None).retry_layers is None  # type: ignore[attr-defined]
    both = config_for_model("zerounlearn", smol, {"layers": [10], "retry_layers": [8, 9]})
    assert both.retry_layers == [8, 9]  # type: ignore[attr-defined]
    assert statistics_layers(smol, [23, 24, 25]) == [23, 24, 25]


@pytest.mark.parametrize(("file_layers", "depth", "kept"),
                         [(True, 30, True), (False, 30, False), (True, 24, False)])
def test_a_family_files_retry_layers_stay_with_its_layers(
        file_layers: bool, depth: int, kept: bool) -> None:
    """No family file sets retry_layers today (SmolLM2's candidate, 25-27 with retries at
    22-24, lost on the test split: docs/benchmarks.md, sixth round), so the rule is
    checked on a config as a file would give it: kept while round 1 edits the file's
    layers in a model that has them, else dropped; a caller's are always kept."""
    cfg = resolve_config("zerounlearn", "smollm2", {"retry_layers": [22, 23, 24]})
    _fit_retry_layers(cfg, file_layers, {}, depth)
    assert (cfg.retry_layers is not None) == kept  # type: ignore[attr-defined]
    _fit_retry_layers(cfg := resolve_config("zerounlearn", "smollm2", {"retry_layers": [22]}),
                      file_layers, {"retry_layers": [22]}, 30)
    assert cfg.retry_layers == [22]  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["zerounlearn", "zerounlearn-paper", "zerounlearn-gd"])
@pytest.mark.parametrize(
    "overrides",
    [{"reg_lambda": 1e-300}, {"corpus_weight": 0}, {"forget_weight": 1e9}, {"clamp": 1e9},
     {"target_lr": float("inf")}, {"stats_samples": 10**9}],
)
def test_the_engine_refuses_what_once_wrecked_a_model(method: str, overrides: dict) -> None:
    """reg_lambda 1e-300, corpus_weight 0, forget_weight 1e9 and clamp 1e9 together
    published a version with perplexity 3.7e10; each is now out of range."""
    (name,) = overrides
    with pytest.raises(InvalidHyperParameters, match=name):
        resolve_config(method, "smollm2", overrides)
