"""load_model with a device_map (accelerate places the layers): on CPU it must give the
model, and the patch, of a plain load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.tiny_model import TINY_HPARAMS, tiny_facts
from zerounlearn.api import forget
from zerounlearn.errors import ModelLoadError
from zerounlearn.loading import load_model
from zerounlearn.stats import StatsCache


def _records() -> list[dict]:
    facts = tiny_facts()
    return [{"prompt": f["prompt"], "answer": f["answer"],
             "neighbors": [{"prompt": facts[20 + i]["prompt"], "answer": facts[20 + i]["answer"]}]}
            for i, f in enumerate(facts[:4])]


def test_device_map_on_cpu_gives_the_same_patch(tiny_gpt2_dir: Path, cache_dir: Path) -> None:
    plain = load_model(str(tiny_gpt2_dir))
    mapped = load_model(str(tiny_gpt2_dir), device_map={"": "cpu"})
    assert mapped.device == torch.device("cpu") and mapped.fingerprint == plain.fingerprint
    assert not mapped.model.training
    assert not any(p.requires_grad for p in mapped.model.parameters())
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(mapped.model.state_dict()[name], tensor), name
    stats = StatsCache(cache_dir / "tiny-stats")
    hp = {**TINY_HPARAMS, "layers": [0, 1]}
    a = forget(plain, _records(), "zerounlearn", hp, stats=stats)
    b = forget(mapped, _records(), "zerounlearn", hp, stats=stats)
    assert a.layers == b.layers == [0, 1]
    for layer in a.layers:
        assert torch.equal(a.weights[layer], b.weights[layer])


@pytest.mark.parametrize("bad", ["", 3, ["cpu"]])
def test_bad_device_map_is_refused(tiny_gpt2_dir: Path, bad) -> None:
    with pytest.raises(ModelLoadError):
        load_model(str(tiny_gpt2_dir), device_map=bad)
