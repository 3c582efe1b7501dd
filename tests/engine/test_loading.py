"""Loading from local sources: HF directories, the GGUF conversion and the builtin alias."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.engine.random_models import save_model_dir, tiny_gpt2, tiny_llama
from zerounlearn.errors import ModelLoadError, UnsupportedArchitecture
from zerounlearn.loading import (
    BUILTIN_SMOLLM2,
    inspect_model_source,
    load_model,
    resolve_source,
)
from zerounlearn.tokens import encode_continuation, encode_prompt


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tiny_gpt2(), tmp_path_factory.mktemp("gpt2"))


def test_load_local_dir(gpt2_dir: Path) -> None:
    lm = load_model(str(gpt2_dir))
    assert lm.family == "gpt2" and lm.adapter.name == "gpt2"
    assert lm.num_layers == 3
    assert lm.source == str(gpt2_dir) and lm.path == gpt2_dir
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    reference = tiny_gpt2()  # same seed: the weights on disk
    for name, tensor in reference.state_dict().items():
        assert torch.equal(lm.model.state_dict()[name], tensor), name


def test_fingerprint_identifies_the_weights(gpt2_dir: Path, tmp_path: Path) -> None:
    first = load_model(str(gpt2_dir)).fingerprint
    assert len(first) == 64
    assert load_model(str(gpt2_dir)).fingerprint == first
    other = save_model_dir(tiny_gpt2(seed=1), tmp_path / "other")
    assert load_model(str(other)).fingerprint != first


def test_dtype_option(gpt2_dir: Path) -> None:
    lm = load_model(str(gpt2_dir), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    assert lm.adapter.get_weight(lm.model, 0).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(str(gpt2_dir), dtype="float7")


def test_inspect_reads_config_only(gpt2_dir: Path) -> None:
    info = inspect_model_source(str(gpt2_dir))
    assert info["architecture"] == "gpt2"
    assert info["num_layers"] == 3
    assert info["family"] == "gpt2"


def test_smollm2_shaped_llama_gets_its_family(tmp_path: Path) -> None:
    """A local directory holding SmolLM2's shape (config only matters) is "smollm2"."""
    path = save_model_dir(tiny_llama(), tmp_path / "llama")
    assert inspect_model_source(str(path))["family"] == "llama"
    config = json.loads((path / "config.json").read_text())
    config.update(num_hidden_layers=30, hidden_size=576, vocab_size=49152)
    (path / "config.json").write_text(json.dumps(config))
    assert inspect_model_source(str(path))["family"] == "smollm2"


@pytest.mark.parametrize(
    "source",
    ["/nonexistent/model", "", "builtin:nothing-such"],
)
def test_bad_source(source: str) -> None:
    with pytest.raises(ModelLoadError):
        load_model(source)
    with pytest.raises(ModelLoadError):
        inspect_model_source(source)


def test_directory_without_model(tmp_path: Path, gpt2_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(gpt2_dir / "config.json", no_weights / "config.json")
    with pytest.raises(ModelLoadError, match="weight"):
        load_model(str(no_weights))


def test_non_gguf_file_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="gguf"):
        resolve_source(str(tmp_path / "weights.bin"), cache_dir=tmp_path / "cache")


def test_corrupt_gguf_refused(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(ModelLoadError):
        resolve_source(str(tmp_path / "model.gguf"), cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").glob("models/*") if p.is_dir()]  # no half dir


def test_unsupported_architecture(tmp_path: Path, gpt2_dir: Path) -> None:
    path = tmp_path / "bloomish"
    shutil.copytree(gpt2_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "bloom"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="gpt2"):
        load_model(str(path))


@pytest.mark.slow
def test_builtin_smollm2_answers_paris(smollm2_dir: Path) -> None:
    """The packaged GGUF, converted once, loads fast and knows the capital of France."""
    cache = smollm2_dir.parent.parent  # <cache>/models/<name>
    assert resolve_source(BUILTIN_SMOLLM2, cache_dir=cache) == smollm2_dir
    info = inspect_model_source(BUILTIN_SMOLLM2, cache_dir=cache)
    assert info == {
        "architecture": "llama",
        "num_layers": 30,
        "family": "smollm2",
        "hidden_size": 576,
        "vocab_size": 49152,
    }
    lm = load_model(BUILTIN_SMOLLM2, cache_dir=cache)
    assert lm.family == "smollm2" and lm.num_layers == 30
    assert lm.adapter.weight_shape(lm.model, 0) == (576, 1536)
    prompt = encode_prompt(lm.tokenizer, "The capital of France is")
    paris = encode_continuation(lm.tokenizer, " Paris")
    with torch.no_grad():
        out = lm.model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=len(paris),
            do_sample=False,
        )
    assert out[0, len(prompt) :].tolist() == paris  # compare tokens, not text
    # a local directory load of the converted copy is also "smollm2"
    assert load_model(str(smollm2_dir)).fingerprint == lm.fingerprint
