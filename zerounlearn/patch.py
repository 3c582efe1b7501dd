"""Weight patches: what an unlearning method returns instead of mutating the model.

A patch holds, for each edited layer, the NEW down-projection matrix W as
(d_model, d_ff) in the model's dtype, on CPU. Applying it copies those tensors into the
model (exact, so applying the same patch twice gives bit-identical weights). A version
chain v1..vN is materialised by applying its patches in order onto the base.

A patch may also carry, per edited layer, the forget keys it was computed for ((d_ff, k)
float32, one or two columns per record: its template-averaged key K_f and its clean
prompt's key; down-projection inputs, numbers only, never text or token ids).
apply_patch adds them to a LoadedModel's `edit_keys` when the model tracks them
(`track_edit_keys()`), so a later edit of the same layers can keep these keys at their
edited outputs (see zerounlearn.methods.zerounlearn, history_weight).

A patch also carries, per edited layer, the version's accumulated preservation factor
L (d_ff, r) (zerounlearn.carry; float32 in memory, bfloat16 on disk): what later
edits of this version must honour. It is the whole version's, not a delta: apply_patch
REPLACES a LoadedModel's carry for those layers, so materialising a chain leaves the
newest version's factors.

The first patch applied to a layer of a LoadedModel also leaves that layer's weight from
before it in `base_weights` (one copy of each edited layer, on the CPU): the base a
chain's later edits can keep the corpus outputs of (hparam corpus_anchor).

On disk a patch is one safetensors file: tensors "layers.{i}.down_proj.weight" (and
"layers.{i}.edit_keys" / "layers.{i}.carry" when it has them) and, in the header
metadata, one JSON document with the method, hyper-parameters, base fingerprint and
free metadata (never record text: callers must not put any there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from zerounlearn.adapters import ArchitectureAdapter, adapter_for
from zerounlearn.errors import InvalidHyperParameters, NonFiniteResult, PatchMismatch

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

PATCH_FORMAT = "zerounlearn-patch/1"
_META_KEY = "zerounlearn"


def _tensor_key(layer: int) -> str:
    return f"layers.{layer}.down_proj.weight"


def _keys_key(layer: int) -> str:
    return f"layers.{layer}.edit_keys"


def _carry_key(layer: int) -> str:
    return f"layers.{layer}.carry"


@dataclass
class Patch:
    """New down-projection weights for some layers, plus how they were computed."""

    method: str
    hparams: dict
    base_fingerprint: str
    weights: dict[int, torch.Tensor]  # layer -> new W (d_model, d_ff), model dtype, CPU
    metadata: dict = field(default_factory=dict)  # json-able; never record text
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> keys (d_ff, k)
    carry: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> L (d_ff, r)

    @property
    def layers(self) -> list[int]:
        return sorted(self.weights)


def _target(
    model_or_loaded: LoadedModel | nn.Module,
) -> tuple[nn.Module, ArchitectureAdapter, str | None]:
    """(model, adapter, fingerprint or None) from a LoadedModel or a bare causal LM."""
    model = getattr(model_or_loaded, "model", None)
    adapter = getattr(model_or_loaded, "adapter", None)  # a LoadedModel, or one alike
    if isinstance(model, nn.Module) and adapter is not None:
        return model, adapter, getattr(model_or_loaded, "fingerprint", None)
    if isinstance(model_or_loaded, nn.Module):
        return model_or_loaded, adapter_for(model_or_loaded), None
    raise TypeError("apply_patch expects a LoadedModel or a torch causal LM")


def check_patch(
    model_or_loaded: LoadedModel | nn.Module, patch: Patch, *, check_fingerprint: bool = True
) -> None:
    """Raise PatchMismatch / NonFiniteResult unless `patch` fits the model."""
    model, adapter, fingerprint = _target(model_or_loaded)
    if (
        check_fingerprint
        and fingerprint
        and patch.base_fingerprint
        and fingerprint != patch.base_fingerprint
    ):
        raise PatchMismatch(
            f"patch was computed for base {patch.base_fingerprint[:12]}, the model is "
            f"{fingerprint[:12]}"
        )
    if not patch.weights:
        raise PatchMismatch("patch holds no layer")
    n = adapter.num_layers(model)
    for layer, weight in patch.weights.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise PatchMismatch(f"patch edits layer {layer!r}; the model has {n} layers")
        expected = adapter.weight_shape(model, layer)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != expected:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight)
            raise PatchMismatch(
                f"layer {layer}: patch weight is {shape}, the model expects {expected} "
                "(d_model, d_ff)"
            )
        if not bool(torch.isfinite(weight).all()):
            raise NonFiniteResult(f"layer {layer}: patch weight holds NaN or inf")


def apply_patch(
    model_or_loaded: LoadedModel | nn.Module, patch: Patch, *, check_fingerprint: bool = True
) -> None:
    """Copy the patch's weights into the model, in place and exactly.

    Everything is checked before anything is written, so a refused patch leaves the model
    as it was. `check_fingerprint` compares the patch's base with a LoadedModel's.
    """
    check_patch(model_or_loaded, patch, check_fingerprint=check_fingerprint)
    model, adapter, _ = _target(model_or_loaded)
    based = getattr(model_or_loaded, "base_weights", None)
    for layer in patch.layers:
        if isinstance(based, dict) and layer not in based:  # the first patch of this layer
            based[layer] = adapter.get_weight(model, layer).detach().to("cpu").clone()
        adapter.set_weight(model, layer, patch.weights[layer])
    carried = getattr(model_or_loaded, "carry", None)
    if isinstance(carried, dict):  # the version's accumulated preservation, per layer
        for layer, factor in patch.carry.items():
            carried[layer] = factor.detach().to("cpu", torch.float32)
    history = getattr(model_or_loaded, "edit_keys", None)
    if isinstance(history, dict):  # a LoadedModel remembers the keys of its edits
        for layer, k in patch.keys.items():
            old = history.get(layer)
            k = k.detach().to("cpu", torch.float32)
            history[layer] = k if old is None else torch.cat([old, k], dim=1)
    logger.debug("applied %s patch to layers %s", patch.method, patch.layers)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def save_patch(patch: Patch, path: str | Path) -> dict:
    """Write the patch as safetensors (atomic replace); returns {"bytes","sha256","layers"}."""
    path = Path(path)
    for layer, weight in patch.weights.items():
        if not bool(torch.isfinite(weight).all()):
            raise NonFiniteResult(f"layer {layer}: patch weight holds NaN or inf")
    for layer, k in patch.keys.items():
        if layer not in patch.weights or k.dim() != 2:
            raise PatchMismatch(f"layer {layer}: edit keys must be (d_ff, n) of an edited layer")
    for layer, factor in patch.carry.items():
        if layer not in patch.weights or factor.dim() != 2:
            raise PatchMismatch(f"layer {layer}: a carry must be (d_ff, r) of an edited layer")
        if not bool(torch.isfinite(factor).all()):
            raise NonFiniteResult(f"layer {layer}: the carry holds NaN or inf")
    header = {
        "format": PATCH_FORMAT,
        "method": patch.method,
        "hparams": patch.hparams,
        "base_fingerprint": patch.base_fingerprint,
        "metadata": patch.metadata,
        "layers": patch.layers,
    }
    if patch.keys:
        header["key_layers"] = sorted(patch.keys)
    if patch.carry:
        header["carry_layers"] = sorted(patch.carry)
    try:
        encoded = json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidHyperParameters(
            f"patch hparams and metadata must be JSON-serialisable: {exc}"
        ) from exc
    # safetensors wants contiguous CPU tensors that share no storage
    tensors = {
        _tensor_key(layer): patch.weights[layer].detach().to("cpu").contiguous().clone()
        for layer in patch.layers
    }
    for layer, k in patch.keys.items():
        tensors[_keys_key(layer)] = k.detach().to("cpu", torch.float32).contiguous().clone()
    for layer, factor in patch.carry.items():
        # bfloat16 on disk: carry.merge rounds to it, so nothing is lost
        tensors[_carry_key(layer)] = factor.detach().to("cpu", torch.bfloat16).contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        # one metadata key only: safetensors orders several keys arbitrarily, one keeps
        # the file byte-identical for the same patch
        save_file(tensors, str(tmp), metadata={_META_KEY: encoded})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"bytes": path.stat().st_size, "sha256": _file_sha256(path), "layers": patch.layers}


def load_patch(path: str | Path) -> Patch:
    """Read a patch written by save_patch; PatchMismatch if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise PatchMismatch(f"patch file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            if raw is None:
                raise PatchMismatch(f"{path} is not a zerounlearn patch (no metadata)")
            header = json.loads(raw)
            if header.get("format") != PATCH_FORMAT:
                raise PatchMismatch(f"{path}: unknown patch format {header.get('format')!r}")
            weights = {
                int(layer): f.get_tensor(_tensor_key(int(layer))) for layer in header["layers"]
            }
            keys = {  # absent in patches written before edit keys existed
                int(layer): f.get_tensor(_keys_key(int(layer)))
                for layer in header.get("key_layers", [])
            }
            carry = {  # absent in patches written before the carry existed
                int(layer): f.get_tensor(_carry_key(int(layer))).to(torch.float32)
                for layer in header.get("carry_layers", [])
            }
    except (SafetensorError, json.JSONDecodeError, KeyError, OSError) as exc:
        raise PatchMismatch(f"{path} is not a readable patch: {exc}") from exc
    return Patch(
        method=header["method"],
        hparams=header["hparams"],
        base_fingerprint=header["base_fingerprint"],
        weights=weights,
        metadata=header.get("metadata", {}),
        keys=keys,
        carry=carry,
    )
