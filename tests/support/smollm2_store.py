"""A data directory for a service test on the built-in SmolLM2, seeded from the session
cache so the test does not redo what the engine tests already did.

Two things are seeded, both as an operator who copies caches between machines would:
- the converted model (the store's `cache/` is the session cache, a symlink);
- the statistics the engine tests computed for SmolLM2 with SMOLLM2_STATS_SAMPLES tokens
  (copied into the store's `stats/`). Their file names hash everything that identifies
  them (model fingerprint, layer, corpus), so the worker uses them only where they are the
  statistics it would compute; otherwise, or when the engine tests did not run first, the
  prepare job computes them (about 105 s on one CPU thread: 87 s of it sampling text).
"""

from __future__ import annotations

import shutil
from pathlib import Path

SMOLLM2_STATS_SAMPLES = 10_000
"""Statistics tokens of the SmolLM2 tests, engine and service alike (CI time): the
service tests pass it as ZEROUNLEARN_STATS_SAMPLES so the seeded files match."""


def seed_smollm2_data_dir(root: Path, smollm2_dir: Path, cache_dir: Path) -> Path:
    """`root/data` with the session's converted SmolLM2 and its statistics; returns it."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    # smollm2_dir is <cache>/engine/<converted>/<model>: the engine cache's root
    (data / "cache").symlink_to(smollm2_dir.parent.parent, target_is_directory=True)
    stats = data / "stats"
    stats.mkdir(exist_ok=True)
    for path in (cache_dir / "stats").glob("*.safetensors"):
        shutil.copy2(path, stats / path.name)
    return data
