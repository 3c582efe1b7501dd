"""Forget hyper-parameters checked at the door, with the engine's own ranges.

`zerounlearn.config` holds the typed hyper-parameters, their JSON defaults and their
ranges, and imports no torch (tests/api/test_api_contract.py keeps it so), so the API
applies the very rules the worker applies again before an edit. The statistics settings
never get here: the request schema refuses them (app.schemas.SERVER_ONLY_HPARAMS).
"""

from __future__ import annotations

from typing import Any

from app.errors import InvalidInput
from app.sources import check_edit_layers
from zerounlearn.config import resolve_config
from zerounlearn.errors import InvalidHyperParameters, LayerOutOfRange

LAYER_CODE = "layer_out_of_range"
"""Error code of a layer the model lacks (the worker's code for the same fault)."""


def check_hparams(model: dict[str, Any], method: str, hparams: dict[str, Any]) -> None:
    """422 naming every bad hyper-parameter of `method` for this (ready) model."""
    family = model.get("family")  # written by the prepare job; None: default files
    problems: list[str] = []
    code = "invalid_input"
    for name, value in hparams.items():  # one by one, so that every bad name is reported
        try:
            resolve_config(method, family, {name: value})
        except InvalidHyperParameters as exc:
            problems.append(f"hparams.{name}: {exc}")
            if isinstance(exc, LayerOutOfRange):
                code = LAYER_CODE
    if not problems:
        try:
            resolve_config(method, family, hparams)
        except InvalidHyperParameters as exc:
            problems.append(f"hparams: {exc}")
    if problems:
        raise InvalidInput("; ".join(problems), code=code)
    check_edit_layers(hparams.get("layers"), model.get("num_layers"), "hparams.layers")
    check_edit_layers(hparams.get("retry_layers"), model.get("num_layers"),
                      "hparams.retry_layers")
