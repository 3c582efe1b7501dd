"""Run the blocks of an UpperStack on the last positions of its rows only.

The neutral-target optimisation (targets.py) adds each record's delta at block L's
output at one position of each row, its edit token, and reads the logits at that
position or later. Causal attention means every position before the chunk's first edit
token, p0, is the same in every pass: its hidden states, and so its keys and values in
every block above L, are those of the clean pass. A `SuffixStack` holds those keys and
values once, per block, and each pass runs the blocks on positions p0.. only, joining
the new positions' keys and values to the held ones inside each attention
(`_HeldKeys`, which plays the part of transformers' cache object). With the edit at
the prompt's last token and chunks of rows edited at the same position, that is one or
a few positions a row instead of all of them: the upper blocks dominate the
optimisation's cost, and their cost falls by about the rows' length over the suffix's.

The recorded block arguments are cut to the suffix by name: the attention mask (rows of
the suffix's queries, every key), position ids and rotary tables (the suffix's
positions). A tensor argument this module does not know, or a family whose attention
does not call the cache it is given, makes `suffix_stack` refuse (SuffixUnsupported).
Keys laid out other than (batch, heads, positions, head dim) would make the results
differ from the whole stack's: targets.py compares the first pass with the clean
pass's logits and runs whole rows where they differ.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from zerounlearn.adapters import block_hidden
from zerounlearn.upper import BlockCall, RowTaker, UpperStack


class SuffixUnsupported(Exception):
    """The recorded block arguments cannot be cut to a suffix."""


class _HeldKeys:
    """Per block, the prefix's keys and values (R, heads, p0, head_dim). In recording
    mode update() stores what it is given (a full clean pass); else it returns the held
    prefix joined with the suffix's own keys and values along the positions."""

    def __init__(self, held: dict[int, tuple[torch.Tensor, torch.Tensor]], record: bool) -> None:
        self.held, self.record = held, record

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record:
            self.held[layer_idx] = (key.detach(), value.detach())
            return key, value
        k0, v0 = self.held[layer_idx]
        return torch.cat([k0, key], dim=-2), torch.cat([v0, value], dim=-2)


def _causal_mask(lm: Any, start: int, width: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """(1, 1, width - start, width): query i (at position start + i) sees keys <= its
    position; boolean for SDPA, additive (0 / most negative) for eager attention."""
    q = torch.arange(start, width, device=device)[:, None]
    k = torch.arange(width, device=device)[None, :]
    allowed = (k <= q)[None, None]  # (1, 1, S, T)
    if getattr(lm.model.config, "_attn_implementation", "eager") == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def _by_name(block: torch.nn.Module, call: BlockCall) -> dict[str, Any]:
    """A block's recorded arguments after its hidden state, all by name (GPT-2's
    model passes its cache and mask positionally)."""
    if not call.args:
        return dict(call.kwargs)
    params = list(inspect.signature(block.forward).parameters.values())
    named = [p.name for p in params[1:len(call.args) + 1]
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(named) != len(call.args):
        raise SuffixUnsupported("positional arguments without names")
    return {**dict(zip(named, call.args, strict=True)), **call.kwargs}


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return any(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)


_CACHE_NAMES = ("cache", "layer_past", "past_key_values")  # as decoder blocks name it


def _cache_name(block: torch.nn.Module) -> str:
    """The name under which `block` takes its key-value cache (GPT-NeoX: layer_past)."""
    params = inspect.signature(block.forward).parameters
    return next((name for name in _CACHE_NAMES if name in params), "cache")


def _cut_call(lm: Any, kwargs_in: dict[str, Any], start: int, width: int,
              dtype: torch.dtype, device: torch.device) -> BlockCall:
    """A block's recorded arguments (by name) for the positions start.. of rows
    `width` long."""
    kwargs: dict[str, Any] = {}
    for name, value in kwargs_in.items():
        if name in (*_CACHE_NAMES, "use_cache"):
            continue
        if name == "attention_mask":
            if value is None:
                value = _causal_mask(lm, start, width, dtype, device)
            elif value.dim() == 4 and value.shape[-1] == width:
                value = value[..., start:, :]
            else:
                raise SuffixUnsupported(f"attention mask of shape {tuple(value.shape)}")
        elif name == "position_ids" and isinstance(value, torch.Tensor):
            value = value[..., start:]
        elif name == "cache_position" and isinstance(value, torch.Tensor):
            value = value[start:]
        elif name == "position_embeddings" and isinstance(value, tuple):
            value = tuple(t[:, start:] for t in value)  # (cos, sin) (B or 1, T, head_dim)
        elif _holds_tensor(value):  # an argument along the positions this module cannot cut
            raise SuffixUnsupported(f"block argument {name!r}")
        kwargs[name] = value
    return BlockCall((), kwargs)


@dataclass
class SuffixStack:
    """The stack's blocks on positions start.. only; held: each block's prefix keys and
    values (R, heads, start, head_dim), from the clean pass."""

    stack: UpperStack
    start: int  # p0: the first position run
    calls: list[BlockCall]  # the recorded arguments, cut to the suffix
    held: dict[int, tuple[torch.Tensor, torch.Tensor]]  # block -> keys, values
    cache_names: list[str]  # per block, the name it takes its cache under

    def run(self, hidden: torch.Tensor) -> torch.Tensor:
        """Blocks on `hidden` (R, T - start, d_model), the suffix's input: (R, T - start,
        d_model), the last block's output at the suffix's positions."""
        blocks = self.stack.lm.adapter.layers(self.stack.lm.model)
        cache = _HeldKeys(self.held, record=False)
        for offset, (call, name) in enumerate(zip(self.calls, self.cache_names, strict=True)):
            block = blocks[self.stack.start + offset]
            hidden = block_hidden(block(hidden, **{name: cache}, **call.kwargs))
        return hidden

    def subset(self, keep_rows: torch.Tensor) -> SuffixStack:
        """The same suffix for the batch rows keep_rows (R',) only."""
        rows = self.stack.rows
        take = RowTaker(keep_rows, rows)
        calls = [BlockCall((), take(c.kwargs)) for c in self.calls]
        held = {i: (k[keep_rows], v[keep_rows]) for i, (k, v) in self.held.items()}
        return SuffixStack(self.stack.subset(keep_rows), self.start, calls, held,
                           self.cache_names)


@torch.no_grad()
def suffix_stack(stack: UpperStack, start: int) -> SuffixStack:
    """The stack's suffix from position `start`: one clean pass of its blocks records
    every block's keys and values, of which the first `start` positions are kept.
    Raises SuffixUnsupported when the arguments cannot be cut."""
    hidden = stack.hidden
    if hidden is None or not stack.calls:
        raise SuffixUnsupported("no recorded input")
    width = int(hidden.shape[1])
    if not 0 < start < width:
        raise SuffixUnsupported(f"suffix start {start} of {width} positions")
    blocks = [stack.lm.adapter.layers(stack.lm.model)[stack.start + i]
              for i in range(len(stack.calls))]
    named = [_by_name(block, c) for block, c in zip(blocks, stack.calls, strict=True)]
    calls = [_cut_call(stack.lm, kw, start, width, hidden.dtype, hidden.device)
             for kw in named]
    cache_names = [_cache_name(block) for block in blocks]
    held: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    recorder = _HeldKeys(held, record=True)
    x = hidden
    for block, kw, name in zip(blocks, named, cache_names, strict=True):
        args = {k: v for k, v in kw.items() if k not in _CACHE_NAMES}
        x = block_hidden(block(x, **{name: recorder}, **args))
    if len(held) != len(stack.calls):
        raise SuffixUnsupported("the blocks' attention did not use the cache argument")
    prefix = {i: (k[..., :start, :].contiguous(), v[..., :start, :].contiguous())
              for i, (k, v) in held.items()}
    return SuffixStack(stack, start, calls, prefix, cache_names)
