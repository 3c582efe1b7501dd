"""Tokenisation shared by every method and metric.

Conventions (they matter, see the spec's "Tokenisation" notes):
- A prompt is encoded with the tokenizer's own special-token rule (SmolLM2 adds no BOS,
  Llama-3 adds one); an answer or target is encoded WITHOUT special tokens and keeps its
  leading space (" Paris" and "Paris" are different tokens).
- Batches are right-padded, so position i of a row is the same token as in the unpadded
  sequence (causal models ignore what comes after), and absolute position embeddings
  (GPT-2) see the same positions as in generation.
- Logits at position p predict token p + 1: answer token j, stored at position s + j,
  is scored by the logits at position s + j - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from zerounlearn.errors import InvalidRecord


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def encode_continuation(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of an answer/target, leading space kept, no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_rows(
    rows: Sequence[list[int]], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids (B, T), attention_mask (B, T))."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, : len(row)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def max_positions(model: torch.nn.Module) -> int:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def subject_last_index(
    tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str | None
) -> int:
    """Index (in the prompt's ids) of the subject's last token; the prompt's last if None.

    Uses the fast tokenizer's character offsets, so it does not depend on how the
    subject would tokenize on its own (a leading space changes BPE tokens).
    """
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if subject is None:
        return len(ids) - 1
    start = prompt.find(subject)
    if start < 0:
        raise InvalidRecord("subject does not occur in prompt")
    end = start + len(subject)  # exclusive char index
    last = None
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and a < end and b > start:  # token overlaps the subject span
            last = i
    if last is None:
        raise InvalidRecord("subject covers no token of the prompt")
    return last


@dataclass
class AnswerBatch:
    """Prompts followed by continuations, right-padded.

    input_ids, attention_mask: (B, T) long.
    prompt_lengths[b]: number of prompt tokens of row b (answer starts there).
    answer_ids[b]: the continuation's token ids of row b.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: list[int]
    answer_ids: list[list[int]]

    def scoring_positions(self, b: int) -> torch.Tensor:
        """Positions whose logits predict row b's answer tokens, shape (len(answer),)."""
        s = self.prompt_lengths[b]
        return torch.arange(s - 1, s - 1 + len(self.answer_ids[b]))

    def labels(self) -> torch.Tensor:
        """(B, T) labels for a shifted LM loss: answer tokens, -100 elsewhere."""
        labels = torch.full_like(self.input_ids, -100)
        for b, ans in enumerate(self.answer_ids):
            s = self.prompt_lengths[b]
            labels[b, s : s + len(ans)] = torch.tensor(ans, dtype=labels.dtype)
        return labels


def answer_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    continuations: Sequence[str | list[int]],
    *,
    device: torch.device | str = "cpu",
    limit: int | None = None,
) -> AnswerBatch:
    """Encode prompt + continuation pairs; continuations may be given as token ids."""
    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations differ in length")
    rows: list[list[int]] = []
    prompt_lengths: list[int] = []
    answer_ids: list[list[int]] = []
    for i, (prompt, cont) in enumerate(zip(prompts, continuations, strict=True)):
        p_ids = encode_prompt(tokenizer, prompt)
        a_ids = list(cont) if isinstance(cont, list) else encode_continuation(tokenizer, cont)
        if not p_ids:
            raise InvalidRecord(f"records[{i}].prompt encodes to no token")
        if not a_ids:
            raise InvalidRecord(f"records[{i}].answer encodes to no token")
        if limit is not None and len(p_ids) + len(a_ids) > limit:
            raise InvalidRecord(
                f"records[{i}] is {len(p_ids) + len(a_ids)} tokens long; the model takes "
                f"at most {limit}"
            )
        rows.append(p_ids + a_ids)
        prompt_lengths.append(len(p_ids))
        answer_ids.append(a_ids)
    input_ids, attention_mask = pad_rows(rows, pad_id(tokenizer), device)
    return AnswerBatch(input_ids, attention_mask, prompt_lengths, answer_ids)


def prompt_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded prompts: (input_ids (B, T), attention_mask (B, T), lengths)."""
    rows = [encode_prompt(tokenizer, p) for p in prompts]
    input_ids, mask = pad_rows(rows, pad_id(tokenizer), device)
    return input_ids, mask, [len(r) for r in rows]


@torch.no_grad()
def score_answers(
    model: torch.nn.Module, batch: AnswerBatch
) -> list[tuple[torch.Tensor, bool]]:
    """Per row: (log-probabilities of the answer tokens (len,), fully reproduced?).

    "Fully reproduced" is the paper's efficacy criterion: under teacher forcing, the
    argmax at every answer position is the answer token.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, vocab)
    out = []
    for b, ans in enumerate(batch.answer_ids):
        pos = batch.scoring_positions(b).to(logprobs.device)
        target = torch.tensor(ans, device=logprobs.device)
        lp = logprobs[b, pos].gather(-1, target[:, None]).squeeze(-1)  # (len,)
        reproduced = bool((logprobs[b, pos].argmax(-1) == target).all())
        out.append((lp.cpu(), reproduced))
    return out

