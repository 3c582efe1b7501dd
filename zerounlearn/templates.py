"""Context templates: the raw prompt plus short model-sampled prefixes (MEMIT's trick).

A template is a prefix string: "" (the raw prompt) or "<sampled text>. " followed by
the prompt. Keys and target losses are averaged over templates so the edit fires on
the fact, not only on the exact prompt string. Prefixes are sampled from the model
itself (top-k, seeded), so they are in-distribution text; they depend only on the model
and the seed, and are cached per model fingerprint in a `TemplateCache` the caller owns.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from zerounlearn.tokens import encode_prompt

logger = logging.getLogger(__name__)

STARTS: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
"""Words the prefixes start from (spec)."""

TOP_K = 5  # sample among the 5 likeliest tokens: varied but fluent prefixes

_USER_TEXT = "\x00USER-TEXT\x00"  # a stand-in for the user turn's content


def chat_opening(tokenizer: Any) -> str | None:
    """The chat template's text before the user turn's content (system turn and user
    header), as a template: the prompt then reads as the start of a chat message. None
    for a tokenizer without a chat template, or one that does not place the content."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _USER_TEXT}],
                                             add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render has no opening
        logger.warning("the chat template failed to render; no chat opening")
        return None
    head, found, _ = str(text).partition(_USER_TEXT)
    return head if found else None


@torch.no_grad()
def sample_prefix(
    model: torch.nn.Module,
    tokenizer: Any,
    start: str,
    length: int,
    generator: torch.Generator,
) -> str:
    """`start` continued by `length` tokens sampled top-k from the model, as text."""
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, start)
    n_special = len(ids) - len(tokenizer(start, add_special_tokens=False)["input_ids"])
    input_ids = torch.tensor([ids], device=device)  # (1, T)
    for _ in range(length):
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       use_cache=False).logits[0, -1].float()  # (V,)
        top = torch.topk(logits, TOP_K)
        probs = torch.softmax(top.values, dim=-1).cpu()  # (k,)
        choice = int(torch.multinomial(probs, 1, generator=generator).item())
        nxt = top.indices[choice].view(1, 1)  # (1, 1)
        input_ids = torch.cat([input_ids, nxt], dim=1)  # (1, T + 1)
    text = tokenizer.decode(input_ids[0, n_special:].tolist(), skip_special_tokens=True)
    text = " ".join(text.replace("{", " ").replace("}", " ").split())
    return text or start


def generate_templates(lm: Any, count: int = 5, tokens: int = 10, seed: int = 0) -> list[str]:
    """["", prefix_1 + ". ", ..., prefix_count + ". "]: the raw prompt comes first."""
    generator = torch.Generator().manual_seed(seed)
    prefixes = [
        sample_prefix(lm.model, lm.tokenizer, STARTS[i % len(STARTS)], tokens, generator)
        for i in range(count)
    ]
    return [""] + [p + ". " for p in prefixes]


class TemplateCache:
    """Templates per (model fingerprint, count, tokens, seed); owned by its caller.

    There is deliberately no module-level cache: a worker keeps one of these next to the
    models it keeps resident, tests make their own.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, int, int, int], list[str]] = {}

    def get(self, lm: Any, count: int = 5, tokens: int = 10, seed: int = 0) -> list[str]:
        key = (str(getattr(lm, "fingerprint", id(lm.model))), count, tokens, seed)
        if key not in self._store:
            logger.debug("sampling %d context templates", count)
            self._store[key] = generate_templates(lm, count, tokens, seed)
        return list(self._store[key])

    def __len__(self) -> int:
        return len(self._store)
