"""Architecture adapters: where each supported model keeps its MLP down projections.

An edit rewrites W, the matrix of a layer's MLP output ("down") projection, always seen
as (d_model, d_ff): its input k is the MLP's hidden activation (d_ff) and its output
W k (+ bias) is what the MLP writes into the residual stream (d_model). Linear layers
store W that way already; GPT-2's Conv1D stores the transpose, (d_ff, d_model), which
the adapter hides. Biases are never touched.

In transformers 5 a decoder layer returns the residual stream as a plain tensor (older
releases returned a tuple whose first element was it): use `block_hidden` and
`replace_block_hidden` in forward hooks rather than indexing the output. Hooks on the
down projection see (batch, seq, d) tensors, except in OPT, whose decoder layer runs its
MLP on flattened (batch * seq, d) rows: `token_grid` gives every family's the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from zerounlearn.errors import LayerOutOfRange, PatchMismatch, UnsupportedArchitecture

logger = logging.getLogger(__name__)


def _get_path(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Module paths of one architecture family.

    name: the family name used for hyper-parameter files ("llama", "gpt2", ...).
    model_types: the `config.model_type` values this adapter serves.
    layers_path: dotted path from the CausalLM to its list of decoder layers.
    down_proj_path: dotted path from a decoder layer to its MLP down projection.
    transposed: True when the module stores its weight as (d_ff, d_model) (Conv1D).
    """

    name: str
    model_types: tuple[str, ...]
    layers_path: str
    down_proj_path: str
    transposed: bool = False

    def layers(self, model: nn.Module) -> Sequence[nn.Module]:
        return _get_path(model, self.layers_path)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def check_layer(self, model: nn.Module, layer: int) -> int:
        """Return `layer` if it exists in the model, else raise LayerOutOfRange."""
        n = self.num_layers(model)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise LayerOutOfRange(f"layer {layer!r} is out of range: the model has {n} layers")
        return layer

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        """The decoder layer; its output is the residual stream h (see `block_hidden`)."""
        return self.layers(model)[self.check_layer(model, layer)]

    def down_proj(self, model: nn.Module, layer: int) -> nn.Module:
        """The module whose input is k (d_ff) and whose output is W k (+ bias) (d_model)."""
        return _get_path(self.block(model, layer), self.down_proj_path)

    def _parameter(self, model: nn.Module, layer: int) -> torch.Tensor:
        weight = getattr(self.down_proj(model, layer), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise UnsupportedArchitecture(
                f"layer {layer}: {self.down_proj_path} has no 2-D weight ({self.name} adapter)"
            )
        return weight

    def weight_shape(self, model: nn.Module, layer: int) -> tuple[int, int]:
        """(d_model, d_ff) of the layer's down projection."""
        rows, cols = self._parameter(model, layer).shape
        return (cols, rows) if self.transposed else (rows, cols)

    def get_weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """A copy of W as (d_model, d_ff), same dtype and device as the parameter."""
        w = self._parameter(model, layer).detach()
        if self.transposed:
            w = w.t()  # Conv1D stores (d_ff, d_model) -> (d_model, d_ff)
        return w.clone().contiguous()

    def set_weight(self, model: nn.Module, layer: int, weight: torch.Tensor) -> None:
        """Copy W, given as (d_model, d_ff), into the existing parameter, in place.

        The copy is exact when `weight` has the parameter's dtype; other dtypes are cast.
        """
        param = self._parameter(model, layer)
        expected = self.weight_shape(model, layer)
        if tuple(weight.shape) != expected:
            raise PatchMismatch(
                f"layer {layer}: weight of shape {tuple(weight.shape)} given, the model's "
                f"down projection is {expected} (d_model, d_ff)"
            )
        src = weight.detach()
        if self.transposed:
            src = src.t()  # (d_model, d_ff) -> Conv1D storage (d_ff, d_model)
        with torch.no_grad():
            param.copy_(src)

    def parameter_name(self, model: nn.Module, layer: int) -> str:
        """Qualified name of the down projection's weight (for torch.func.functional_call)."""
        self.check_layer(model, layer)
        return f"{self.layers_path}.{layer}.{self.down_proj_path}.weight"

    def as_parameter(self, weight: torch.Tensor) -> torch.Tensor:
        """W (d_model, d_ff) in the parameter's storage layout; differentiable, no copy."""
        return weight.t() if self.transposed else weight  # Conv1D: (d_ff, d_model)

    def final_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules between the last decoder layer and the output head, in order:
        the final norm (and OPT's project_out); absent ones (None) are skipped."""
        paths = _FINAL_PATHS.get(self.name, ("model.norm",))
        found = []
        for path in paths:
            try:
                module = _get_path(model, path)
            except AttributeError:
                module = None
            if module is not None:
                found.append(module)
        return found

    def d_model(self, model: nn.Module) -> int:
        return self.weight_shape(model, 0)[0]

    def d_ff(self, model: nn.Module) -> int:
        return self.weight_shape(model, 0)[1]


def block_hidden(output: Any) -> torch.Tensor:
    """The residual stream h (batch, seq, d_model) from a decoder layer's forward output."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


def token_grid(x: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """An MLP input or output as (batch, seq, d): OPT's decoder layer flattens the
    residual stream to (batch * seq, d) rows before its MLP (fc1, fc2), the others keep
    (batch, seq, d). A view: writes into it reach `x`."""
    if x.dim() == 2:
        return x.view(batch, seq, x.shape[-1])  # (B*T, d) -> (B, T, d)
    return x


def replace_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """A decoder layer's output with h replaced, in the same form (tensor or tuple)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *tuple(output[1:]))


_DECODER = "model.layers"
# final norm (then any projection) after the decoder layers; default "model.norm"
_FINAL_PATHS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "gpt2": ("transformer.ln_f",),
    "gpt_neox": ("gpt_neox.final_layer_norm",),
    "opt": ("model.decoder.final_layer_norm", "model.decoder.project_out"),
    "phi": ("model.final_layernorm",),
})
_ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter("llama", ("llama",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("mistral", ("mistral",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("qwen2", ("qwen2",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("qwen3", ("qwen3",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("gemma", ("gemma",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("gemma2", ("gemma2",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("gemma3", ("gemma3_text",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("smollm3", ("smollm3",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("phi3", ("phi3",), _DECODER, "mlp.down_proj"),
    ArchitectureAdapter("gpt2", ("gpt2",), "transformer.h", "mlp.c_proj", transposed=True),
    ArchitectureAdapter("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "mlp.dense_4h_to_h"),
    ArchitectureAdapter("opt", ("opt",), "model.decoder.layers", "fc2"),
    ArchitectureAdapter("phi", ("phi",), _DECODER, "mlp.fc2"),
)
_BY_MODEL_TYPE: dict[str, ArchitectureAdapter] = {mt: a for a in _ADAPTERS for mt in a.model_types}

SUPPORTED_ARCHITECTURES: list[str] = sorted(_BY_MODEL_TYPE)
"""`config.model_type` values with an adapter (SmolLM 1/2 are "llama", Pythia "gpt_neox")."""


def adapter_for_model_type(model_type: str) -> ArchitectureAdapter:
    """The adapter of a `config.model_type`; UnsupportedArchitecture lists the known ones."""
    adapter = _BY_MODEL_TYPE.get(model_type)
    if adapter is None:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} is not supported; supported: "
            + ", ".join(SUPPORTED_ARCHITECTURES)
        )
    return adapter


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of a transformers causal LM, checked against its module tree."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = adapter_for_model_type(str(model_type))
    try:
        adapter.down_proj(model, 0)
    except (AttributeError, IndexError, LayerOutOfRange) as exc:
        raise UnsupportedArchitecture(
            f"model of type {model_type!r} ({type(model).__name__}) lacks the expected "
            f"module {adapter.layers_path}[i].{adapter.down_proj_path}; is it a causal LM? "
            "supported: " + ", ".join(SUPPORTED_ARCHITECTURES)
        ) from exc
    return adapter


def default_edit_layers(num_layers: int, relative_depth: float = 0.7, count: int = 3) -> list[int]:
    """`count` consecutive layers centred near `relative_depth` of the model's depth,
    never the first layer when there is another.

    The paper used 55-60%; on SmolLM2 layers around 70% kept far more neighbours (spec).
    Layer 0 is left out (measured on the 3-layer models of every family trained by
    tests/support/tiny_families.py): its MLP reads the token embedding with little or no
    context. In the parallel-residual families (GPT-NeoX, Phi) its input is LN(embedding)
    alone (the keys of " is" in different prompts and relations: cosine 1.000), so an
    edit there rewrites the token wherever it occurs. Forgetting 3 facts with layers 0-2,
    Phi kept 26% of its 57 other facts, GPT-NeoX 72%, OPT 74%, GPT-2 81%; with layers 1-2
    93%, 100%, 89% and 88% (tests/engine/test_trained_families.py, default kernels).
    A model with `count` layers or fewer gets all but the first.
    """
    if num_layers < 1:
        raise LayerOutOfRange("the model has no layers")
    first = 1 if num_layers > 1 else 0
    count = max(1, min(count, num_layers - first))
    centre = round(relative_depth * num_layers)
    start = min(max(first, centre - count // 2), num_layers - count)
    return list(range(start, start + count))
