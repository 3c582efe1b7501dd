"""Model sources: what POST /v1/models accepts, read with json only (no torch).

A source is the built-in SmolLM2, a local Hugging Face directory (with config.json),
or a .gguf file. For a directory the API reads config.json itself to fill
"architecture" and "num_layers"; for the others the worker's prepare job fills them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from app.errors import InvalidInput
from app.schemas import BUILTIN_SMOLLM2

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
"""config.json keys that hold the number of decoder layers, by model family."""

MAX_SOURCE_ENTRIES = 10_000
"""Most files and directories a model directory may hold (each one's links are checked)."""
BUILTIN_SMOLLM2_LAYERS = 30
"""Decoder layers of the built-in SmolLM2-135M (its config; prepare writes the same)."""


@dataclass(frozen=True)
class SourceInfo:
    """A validated source: the string to store and what config.json told us."""

    source: str
    architecture: str | None = None
    num_layers: int | None = None


def inspect_source(source: str, roots: tuple[Path, ...] = ()) -> SourceInfo:
    """Validate a model source; InvalidInput naming "source" when it is not usable.

    A local path must lie, once every symlink is resolved, inside one of `roots`
    (ZEROUNLEARN_MODEL_ROOTS): no traversal ("..") or symlink leads out of them. The
    resolved path is what gets stored and loaded.
    """
    if source == BUILTIN_SMOLLM2:
        return SourceInfo(source=source, num_layers=BUILTIN_SMOLLM2_LAYERS)
    if source.startswith("builtin:"):
        raise InvalidInput(f"source: the only built-in model is {BUILTIN_SMOLLM2!r}")
    if "\x00" in source or not Path(source).is_absolute():
        raise InvalidInput("source: a local model must be given as an absolute path")
    if not roots:
        raise InvalidInput(
            "source: local model paths are disabled (ZEROUNLEARN_MODEL_ROOTS is empty); "
            f"use {BUILTIN_SMOLLM2!r}"
        )
    path = Path(source).resolve()
    if not _inside(path, roots):
        raise InvalidInput("source: the path is outside the allowed model roots")
    if path.is_file() and path.suffix.lower() == ".gguf":
        return SourceInfo(source=str(path))
    if path.is_dir():
        _check_links_stay_inside(path, roots)
        return _inspect_directory(path)
    raise InvalidInput(
        f"source: must be {BUILTIN_SMOLLM2!r}, an existing directory with config.json, "
        "or an existing .gguf file"
    )


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _check_links_stay_inside(directory: Path, roots: tuple[Path, ...]) -> None:
    """422 when any entry of the model directory (config.json, weights, tokenizer, at any
    depth) is a symlink that resolves outside the model roots: the API reads config.json
    and the worker every other file, so none may lead out."""
    seen = 0
    for top, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            seen += 1
            if seen > MAX_SOURCE_ENTRIES:
                raise InvalidInput(f"source: the directory holds more than "
                                   f"{MAX_SOURCE_ENTRIES} entries")
            entry = Path(top) / name
            if entry.is_symlink() and not _inside(entry.resolve(), roots):
                relative = entry.relative_to(directory)
                raise InvalidInput(f"source: {relative} is a link to a file outside the "
                                   "allowed model roots")


def _inspect_directory(path: Path) -> SourceInfo:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InvalidInput("source: the directory has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("source: config.json is not readable JSON") from None
    if not isinstance(config, dict):
        raise InvalidInput("source: config.json does not hold a JSON object")
    architectures = config.get("architectures")
    architecture = None
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        architecture = architectures[0]
    elif isinstance(config.get("model_type"), str):
        architecture = config["model_type"]
    num_layers = next(
        (config[k] for k in LAYER_KEYS if isinstance(config.get(k), int) and config[k] > 0), None
    )
    return SourceInfo(source=str(path), architecture=architecture, num_layers=num_layers)


def check_edit_layers(
    edit_layers: list[int] | None, num_layers: int | None, field: str = "edit_layers"
) -> None:
    """422 `layer_out_of_range` naming the field when a layer is not in the model.
    Unknown layer count (a .gguf before its prepare job): the prepare job checks."""
    if edit_layers is None or num_layers is None:
        return
    for i, layer in enumerate(edit_layers):
        if not 0 <= layer < num_layers:
            raise InvalidInput(
                f"{field}[{i}]: layer {layer} is out of range (the model has "
                f"{num_layers} layers: 0..{num_layers - 1})", code="layer_out_of_range",
            )
