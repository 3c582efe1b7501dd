"""Run only the decoder blocks above a point, from inputs cached off one forward pass.

The target optimisation changes the residual stream at one block; the key readings of
an edit only need the blocks from the first edited layer up. Nothing below such a
block changes, so one ordinary forward can record, with forward pre-hooks, the hidden
state entering block `start` and the arguments the model passes to each block from
`start` on (attention mask, position ids, rotary embeddings, ... whatever the family
uses: nothing is rebuilt here, so every family is served the same way). `UpperStack`
then calls those blocks itself; `logits_at` adds the final norm(s) and the output head
at chosen positions only.

Batch rows can be dropped (`subset`): every captured tensor whose first dimension is
the batch size is indexed, anything else (position ids, rotary tables of shape
(1, T, ...), flags) is shared. Callers keep the batch size different from the sequence
length so the two cannot be confused (see targets.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.adapters import block_hidden

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel


class _Halt(Exception):
    """Raised from a pre-hook to end a forward pass once everything needed is recorded."""


@dataclass
class BlockCall:
    """The arguments one decoder block received, after its hidden state."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class UpperStack:
    """Blocks start .. start + len(calls) - 1 with their recorded arguments.

    hidden: (R, T, d_model) the clean hidden state entering block `start` (detached), or
    None when the caller supplies its own input (no block recorded: start = n_layers).
    """

    lm: LoadedModel
    start: int
    calls: list[BlockCall]
    hidden: torch.Tensor | None
    rows: int  # R, the batch size the arguments were recorded with

    @property
    def stop(self) -> int:
        """The last block run (start - 1 when there is none)."""
        return self.start + len(self.calls) - 1

    def run(self, hidden: torch.Tensor) -> torch.Tensor:
        """Blocks start..stop on `hidden` (R, T, d_model); forward hooks on them fire."""
        blocks = self.lm.adapter.layers(self.lm.model)
        for offset, call in enumerate(self.calls):
            hidden = block_hidden(blocks[self.start + offset](hidden, *call.args, **call.kwargs))
        return hidden

    def logits_at(self, hidden: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor
                  ) -> torch.Tensor:
        """Logits (k, V) float32 at (rows, pos) of the LAST block's output (R, T, d_model):
        final norm(s) and head on k positions only (the norms act per position)."""
        model = self.lm.model
        x = hidden[rows.to(hidden.device), pos.to(hidden.device)]  # (k, d_model)
        for module in self.lm.adapter.final_modules(model):
            x = module(x)
        logits = model.get_output_embeddings()(x).float()  # (k, V)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def subset(self, keep_rows: torch.Tensor) -> UpperStack:
        """The same stack for the batch rows keep_rows (R',) only."""
        take = RowTaker(keep_rows, self.rows)
        calls = [BlockCall(take(c.args), take(c.kwargs)) for c in self.calls]
        hidden = None if self.hidden is None else self.hidden[keep_rows]
        return UpperStack(self.lm, self.start, calls, hidden, len(keep_rows))


@dataclass
class RowTaker:
    """Recorded block arguments for some batch rows: every tensor of two or more
    dimensions whose first is the batch size R is indexed, inside tuples, lists and
    dicts too; anything else is shared."""

    keep: torch.Tensor  # (R',) row indices
    rows: int  # R

    def __call__(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x[self.keep] if x.dim() >= 2 and x.shape[0] == self.rows else x
        if isinstance(x, tuple):
            return tuple(self(v) for v in x)
        if isinstance(x, list):
            return [self(v) for v in x]
        if isinstance(x, dict):
            return {k: self(v) for k, v in x.items()}
        return x


def capture_stack(
    lm: LoadedModel, forward: Callable[[], Any], start: int, stop: int | None = None, *,
    halt: bool = False,
) -> tuple[UpperStack, Any]:
    """Run forward() recording blocks start..stop (default: the last block).

    halt: end the pass in block stop's pre-hook (its arguments recorded, nothing above
    it computed); forward's result is then None. Returns (stack, forward's result).
    """
    blocks = lm.adapter.layers(lm.model)
    stop = len(blocks) - 1 if stop is None else stop
    calls: dict[int, BlockCall] = {}
    first: dict[str, torch.Tensor] = {}

    def recorder(layer: int) -> Callable[..., None]:
        def pre_hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:  # hidden state given by keyword
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            if layer == start:
                first["h"] = hidden.detach()  # (R, T, d_model)
            calls[layer] = BlockCall(rest, dict(kwargs))
            if halt and layer == stop:
                raise _Halt
        return pre_hook

    handles = [blocks[i].register_forward_pre_hook(recorder(i), with_kwargs=True)
               for i in range(start, stop + 1)]
    result = None
    try:
        result = forward()
    except _Halt:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in range(start, stop + 1) if i not in calls]
    if missing:
        raise RuntimeError(f"blocks {missing} were not called by the forward pass")
    hidden = first.get("h")
    rows = hidden.shape[0] if hidden is not None else 0
    stack = UpperStack(lm, start, [calls[i] for i in range(start, stop + 1)], hidden, rows)
    return stack, result
