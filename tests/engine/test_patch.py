"""Patches: exact safetensors round trip, exact and idempotent application, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.engine.random_models import as_loaded, tiny_gpt2, tiny_llama
from zerounlearn.errors import NonFiniteResult, PatchMismatch
from zerounlearn.patch import Patch, apply_patch, check_patch, load_patch, save_patch


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _random_patch(model: torch.nn.Module, layers: list[int], seed: int = 1) -> Patch:
    """New W per layer: the old one plus noise, computed on a copy of the model."""
    lm = as_loaded(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in layers:
        w = lm.adapter.get_weight(lm.model, layer)  # (d_model, d_ff)
        weights[layer] = w + 0.1 * torch.randn(w.shape, generator=gen)
    return Patch(
        method="test",
        hparams={"layers": layers, "lr": 0.5},
        base_fingerprint="0" * 64,
        weights=weights,
        metadata={"records": 3, "seconds": 0.25},
    )


def patch_layers(model: torch.nn.Module) -> list[int]:
    return list(range(as_loaded(model).num_layers))


@pytest.fixture(params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_gpt2() if request.param == "gpt2" else tiny_llama()


def test_save_load_round_trip_is_exact(model: torch.nn.Module, tmp_path: Path) -> None:
    patch = _random_patch(model, [0, 1])
    info = save_patch(patch, tmp_path / "patch.safetensors")
    assert info["layers"] == [0, 1]
    assert info["bytes"] == (tmp_path / "patch.safetensors").stat().st_size
    assert len(info["sha256"]) == 64
    loaded = load_patch(tmp_path / "patch.safetensors")
    assert loaded.weights.keys() == patch.weights.keys()
    for layer in patch.weights:
        assert torch.equal(loaded.weights[layer], patch.weights[layer])
        assert loaded.weights[layer].dtype == patch.weights[layer].dtype
    assert (loaded.method, loaded.hparams, loaded.base_fingerprint, loaded.metadata) == (
        patch.method,
        patch.hparams,
        patch.base_fingerprint,
        patch.metadata,
    )
    with safe_open(str(tmp_path / "patch.safetensors"), framework="pt") as f:
        header = json.loads(f.metadata()["zerounlearn"])
    assert header["method"] == "test" and header["layers"] == [0, 1]


def test_save_is_deterministic(model: torch.nn.Module, tmp_path: Path) -> None:
    patch = _random_patch(model, patch_layers(model))  # several tensors: order must be stable
    digests = {save_patch(patch, tmp_path / f"{i}.safetensors")["sha256"] for i in range(5)}
    assert len(digests) == 1


def test_apply_is_exact_and_idempotent(model: torch.nn.Module, tmp_path: Path) -> None:
    patch = _random_patch(model, [1])
    save_patch(patch, tmp_path / "p.safetensors")
    lm = as_loaded(model)
    before = _state(model)
    apply_patch(lm, load_patch(tmp_path / "p.safetensors"))
    once = _state(model)
    assert torch.equal(lm.adapter.get_weight(model, 1), patch.weights[1])
    apply_patch(lm, load_patch(tmp_path / "p.safetensors"))
    assert _same_state(once, _state(model))
    changed = {k for k in before if not torch.equal(before[k], once[k])}
    assert changed == {lm.adapter.parameter_name(model, 1)}


def test_apply_to_bare_model(model: torch.nn.Module) -> None:
    patch = _random_patch(model, [0])
    apply_patch(model, patch)
    assert torch.equal(as_loaded(model).adapter.get_weight(model, 0), patch.weights[0])


def test_input_model_unchanged_when_patch_computed_elsewhere(model: torch.nn.Module) -> None:
    before = _state(model)
    patch = _random_patch(model, [0, 1])
    assert _same_state(before, _state(model))
    other = copy.deepcopy(model)
    apply_patch(other, patch)
    assert _same_state(before, _state(model))
    assert not _same_state(before, _state(other))


def test_version_chain_materialises_exactly(model: torch.nn.Module) -> None:
    v1 = _random_patch(model, [0], seed=1)
    a = copy.deepcopy(model)
    apply_patch(a, v1)
    v2 = _random_patch(a, [0, 1], seed=2)  # computed on v1
    apply_patch(a, v2)
    b = copy.deepcopy(model)
    for p in (v1, v2):
        apply_patch(b, p)
    assert _same_state(_state(a), _state(b))


def test_loaded_model_keeps_each_layer_weight_before_its_first_patch(
    model: torch.nn.Module,
) -> None:
    """LoadedModel.base_weights: what corpus_anchor "base" keeps, recorded once per layer."""
    lm = as_loaded(copy.deepcopy(model))
    base = {layer: lm.adapter.get_weight(lm.model, layer).clone() for layer in (0, 1)}
    v1 = _random_patch(model, [0], seed=1)
    apply_patch(lm, v1)
    v2 = _random_patch(lm.model, [0, 1], seed=2)  # computed on v1
    apply_patch(lm, v2)
    assert sorted(lm.base_weights) == [0, 1]
    for layer in (0, 1):
        assert torch.equal(lm.base_weights[layer], base[layer])
    assert not torch.equal(lm.adapter.get_weight(lm.model, 0), base[0])


def test_shape_mismatch_refused_and_model_untouched(model: torch.nn.Module) -> None:
    patch = _random_patch(model, [0, 1])
    patch.weights[1] = patch.weights[1].t().contiguous()
    before = _state(model)
    with pytest.raises(PatchMismatch, match="layer 1"):
        apply_patch(model, patch)
    assert _same_state(before, _state(model))  # layer 0 was not written either


def test_layer_out_of_range_refused(model: torch.nn.Module) -> None:
    patch = _random_patch(model, [0])
    patch.weights[7] = patch.weights.pop(0)
    with pytest.raises(PatchMismatch, match="layer 7"):
        apply_patch(model, patch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_refused(model: torch.nn.Module, tmp_path: Path, bad: float) -> None:
    patch = _random_patch(model, [0])
    patch.weights[0][3, 5] = bad
    before = _state(model)
    with pytest.raises(NonFiniteResult):
        apply_patch(model, patch)
    with pytest.raises(NonFiniteResult):
        save_patch(patch, tmp_path / "bad.safetensors")
    assert _same_state(before, _state(model))


def test_fingerprint_mismatch_refused(model: torch.nn.Module) -> None:
    patch = _random_patch(model, [0])
    patch.base_fingerprint = "f" * 64
    with pytest.raises(PatchMismatch, match="base"):
        check_patch(as_loaded(model), patch)
    check_patch(as_loaded(model), patch, check_fingerprint=False)


def test_load_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(PatchMismatch):
        load_patch(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PatchMismatch):
        load_patch(tmp_path / "junk.safetensors")
