"""An experiment for bench_collateral.py (--chat-context): the chat template's opening,
up to the user turn's text, as one more context template of every record.

The keys of an edit are averaged over its context templates, and the carry keeps the
forgotten records' keys so read. The chat probe reads the prompt inside the chat
template, where the keys at the prompt's tokens differ; records it finds in a sequence
come partly back after later requests (docs/benchmarks.md, twelfth round). With this
template the edit reads, and the carry keeps, the key there too. Bench only: the
engine's templates are unchanged.
"""

from __future__ import annotations

from typing import Any

from zerounlearn.templates import TemplateCache

_MARK = "\x00USER-TEXT\x00"


def chat_prefix(tokenizer: Any) -> str | None:
    """The chat template's text before the user turn's content, or None (no template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}],
                                         add_generation_prompt=True, tokenize=False)
    head, found, _ = str(text).partition(_MARK)
    return head if found else None


class ChatContextTemplates(TemplateCache):
    """The model's sampled templates, then the chat template's opening."""

    def get(self, lm: Any, count: int = 5, tokens: int = 10, seed: int = 0) -> list[str]:
        templates = super().get(lm, count, tokens, seed)
        prefix = chat_prefix(lm.tokenizer)
        return templates if prefix is None else [*templates, prefix]
