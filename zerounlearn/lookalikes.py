"""Lookalike subjects: the model's own nearest words to a forget subject, substituted in.

Same-relation facts die with a forgotten one because subjects of one kind share keys
at the edited layers (the spec). The retain bank and the request's other subjects name
some such keys, but a bank is small and often of another kind ("The capital of nickel
is"). The model's input embeddings name the subject's kind without any list: the
whole-word tokens nearest to " Ethiopia" are other countries, to " Tolkien" other
authors. Each forget prompt with such a word in its subject's place ("The capital of
Kenya is") is a protected site (protect.substituted): the same relation, a subject the
request did not name.

Text stays in memory: the words are read from the tokenizer and never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.keys import EditRequest, Site, Span
from zerounlearn.protect import forget_heads, substituted

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

MIN_WORD_CHARS = 3  # shorter whole words are mostly function words and abbreviations


class LookalikeIndex:
    """The model's whole-word tokens (a space, then letters) and their unit embeddings."""

    def __init__(self, lm: LoadedModel) -> None:
        self.tokenizer = lm.tokenizer
        emb = lm.model.get_input_embeddings().weight.detach()  # (V, d_model)
        words: list[str] = []
        ids: list[int] = []
        for i in range(min(len(self.tokenizer), emb.shape[0])):
            text = self.tokenizer.decode([i])
            word = text[1:]
            if text.startswith(" ") and len(word) >= MIN_WORD_CHARS and word.isalpha():
                words.append(word)
                ids.append(i)
        self.words = words
        self.unit = torch.nn.functional.normalize(
            emb[torch.tensor(ids, dtype=torch.long)].float(), dim=1)  # (W, d_model)
        self.embedding = emb

    def nearest(self, subject: str, k: int, exclude: set[str]) -> list[str]:
        """Up to k whole words nearest to `subject` (its embedding, as it follows a
        space), of the same capitalisation, not part of it nor in exclude. A subject of
        several tokens gets none: the mean of their embeddings named no kind (" The
        Hobbit" -> "Fract", "Bitcoin", "Vitamins")."""
        ids = self.tokenizer(" " + subject, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or k <= 0:
            return []
        query = torch.nn.functional.normalize(self.embedding[ids[0]].float(), dim=0)
        scores = self.unit @ query  # (W,)
        capital = subject[:1].isupper()
        low = subject.lower()
        out: list[str] = []
        for j in torch.argsort(scores, descending=True).tolist():
            word = self.words[j]
            wl = word.lower()
            if word[0].isupper() != capital or wl in low or low in wl or word in exclude:
                continue
            out.append(word)
            exclude = exclude | {word}
            if len(out) == k:
                break
        return out


def lookalike_sites(
    lm: LoadedModel, requests: Sequence[EditRequest], per_record: int,
    index: LookalikeIndex | None = None, seen: set[str] | None = None,
) -> tuple[list[Site], dict[str, Any]]:
    """Each forget prompt with its subject's `per_record` nearest words substituted in
    (none for records without a subject), and a text-free count."""
    if per_record <= 0 or not any(r.span for r in requests):
        return [], {"lookalikes": 0}
    index = index if index is not None else LookalikeIndex(lm)
    own = {r.prompt[r.span[0] : r.span[1]] for r in requests if r.span}
    heads = forget_heads(requests)
    seen = set() if seen is None else seen
    sites: list[Site] = []
    for req in requests:
        if req.span is None:
            continue
        subject = req.prompt[req.span[0] : req.span[1]]
        words = index.nearest(subject, per_record, exclude=own)
        sites += substituted(lm.tokenizer, req, words, heads, seen)
    return sites, {"lookalikes": len(sites)}


def lookalike_prompts(
    lm: LoadedModel, requests: Sequence[EditRequest], per_record: int,
    index: LookalikeIndex | None = None,
) -> list[list[tuple[str, Span]]]:
    """Per record: its prompt with each of its subject's `per_record` nearest words in
    the subject's place, and that word's span (none for records without a subject or
    with a subject of several tokens)."""
    if per_record <= 0 or not any(r.span for r in requests):
        return [[] for _ in requests]
    index = index if index is not None else LookalikeIndex(lm)
    own = {r.prompt[r.span[0] : r.span[1]] for r in requests if r.span}
    out: list[list[tuple[str, Span]]] = []
    for req in requests:
        if req.span is None:
            out.append([])
            continue
        start, end = req.span
        words = index.nearest(req.prompt[start:end], per_record, exclude=own)
        out.append([(req.prompt[:start] + w + req.prompt[end:], (start, start + len(w)))
                    for w in words])
    return out
