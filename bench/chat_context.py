"""An experiment for bench_collateral.py (--chat-context): the chat template's opening,
up to the user turn's text, as one more context template of every record in every
round (docs/benchmarks.md, twelfth round: rejected). The engine's own
`retry_chat_context` adds it in the retry rounds only (templates.chat_opening).
"""

from __future__ import annotations

from typing import Any

from zerounlearn.templates import TemplateCache, chat_opening


class ChatContextTemplates(TemplateCache):
    """The model's sampled templates, then the chat template's opening."""

    def get(self, lm: Any, count: int = 5, tokens: int = 10, seed: int = 0) -> list[str]:
        templates = super().get(lm, count, tokens, seed)
        prefix = chat_opening(lm.tokenizer)
        return templates if prefix is None else [*templates, prefix]
