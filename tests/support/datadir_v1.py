"""tests/fixtures/datadir-v1, copied for a test, with its one patch written at copy time.

The directory is committed as the document store wrote it (tests/fixtures/
make_datadir_v1.py), except its patch: weight files are not committed, and this one
(a 2x2 float32 identity) is rebuilt here byte for byte. The version's manifest names
its sha256, so a rebuilt file that differed would be caught before any test runs.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datadir-v1"
MODEL = "m-00000000f1a0"
PATCH = Path("models") / MODEL / "versions" / "v1" / "patch.safetensors"
PATCH_SHA256 = "ab6ea5f86d60169535cb842188f34286613752dcb552f39bd3bac8b9289bcb5e"


def copy_datadir_v1(target: Path) -> Path:
    """The old data directory at `target` (which must not exist), patch included."""
    shutil.copytree(FIXTURE, target)
    patch = target / PATCH
    save_file({"layer.0.weight": np.eye(2, dtype=np.float32)}, str(patch))
    digest = hashlib.sha256(patch.read_bytes()).hexdigest()
    assert digest == PATCH_SHA256, f"rebuilt fixture patch differs: {digest}"
    assert PATCH_SHA256 in (patch.parent / "manifest.json").read_text()
    return target
