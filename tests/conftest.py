"""Session-wide test set-up: one torch thread, caches under <repo>/.cache, shared models.

Expensive fixtures (the tiny GPT-2 trained here, the converted SmolLM2) are built once
and cached on disk, so a second run of the suite reuses them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.setdefault("ZEROUNLEARN_TEST_CACHE", str(REPO / ".cache")))
os.environ.setdefault("ZEROUNLEARN_CACHE_DIR", str(CACHE / "engine"))
os.environ.setdefault("ZEROUNLEARN_TORCH_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


LAYERS = ("engine", "sql", "store", "worker", "api", "e2e", "ui", "bench")
"""Test directories, each also a marker (registered in pyproject.toml) that its tests
carry: `pytest -m "not slow and not e2e and not ui"` is the quick loop."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(tests_dir).parts
        if len(parts) > 1 and parts[0] in LAYERS:
            item.add_marker(parts[0])


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """With another process busy, two threads ran several times slower than one."""
    try:
        import torch
    except ImportError:  # service-only environments
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def tiny_gpt2_dir(cache_dir: Path) -> Path:
    """A 2-layer GPT-2 trained here on synthetic facts; a local HF directory."""
    from tests.support.tiny_model import build_tiny_gpt2

    return build_tiny_gpt2(cache_dir / "tiny-gpt2")


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir: Path) -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the packaged GGUF."""
    from zerounlearn.loading import BUILTIN_SMOLLM2, resolve_source

    return resolve_source(BUILTIN_SMOLLM2, cache_dir=cache_dir / "engine")
