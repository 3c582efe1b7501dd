"""Engine test fixtures shared by the tiny-GPT-2 modules (one instance per module: a
module that edits the model in place restores it before its next test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zerounlearn.loading import LoadedModel, load_model
from zerounlearn.stats import StatsCache


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir: Path) -> LoadedModel:
    """The tiny GPT-2 trained in the session, loaded for this module."""
    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def stats(cache_dir: Path) -> StatsCache:
    """The tiny model's statistics cache (shared by the session's modules)."""
    return StatsCache(cache_dir / "tiny-stats")
