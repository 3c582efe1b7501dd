"""Corpus statistics C = E[k k^T] of down-projection inputs, streamed and cached on disk.

C (d_ff, d_ff) is the uncentred second moment of the keys k (the inputs of a layer's MLP
down projection) over general text. ZeroUnlearn keeps the edited layer's outputs on that
text (the "preservation" term a W C); the GD variant takes its null space.

One pass serves every missing layer: forward hooks on `adapter.down_proj(model, layer)`
add k k^T of each batch into a float64 running sum (the per-batch product is formed in
float32, which is exact enough for a sum over a few thousand rows and twice as fast);
the forward stops after the deepest layer asked for. Memory stays bounded: token
batches are built lazily and no key is kept.

Where the text comes from (`CorpusSpec.files`):
- Caller files (.txt, split into paragraphs at blank lines, or .jsonl with a "text"
  field), packed into sequences of `seq_len` tokens with a document separator between
  documents. Representative text is the best choice when you have enough of it: C then
  describes the inputs the model must keep serving. A small or narrow corpus is worse
  than none: in our feasibility run a 400-token hand-written corpus gave clearly worse
  specificity than model-sampled text, because C then covers too few directions.
- Nothing (the default): text sampled from the model itself (temperature 1, seeded),
  each sequence starting from the document separator (the BOS the tokenizer adds, else
  `<|endoftext|>`, else EOS; for SmolLM2 `<|endoftext|>`, id 0, not its chat marker).
  This needs no data and follows the model's own distribution, but costs time: on
  SmolLM2 on CPU, sampling 300 x 64 tokens took 113 s, so the sampled tokens are cached
  too (keyed by model fingerprint, seed, length and count).

Cache files live under `root`, named `second_moment-L{layer}-{hash}.safetensors`, where
the hash covers the whole key (fingerprint, layer, corpus files' sha256 or
"model-sampled" + seed, sample count, sequence length, dtype); the key is also stored in
the file's metadata. Files are written to a temporary name and renamed (atomic), and a
lock file per (model, corpus) keeps two processes from computing the same statistics.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from zerounlearn.errors import InvalidHyperParameters
from zerounlearn.tokens import encode_continuation, encode_prompt, max_positions

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
PHASE = "statistics"
KEY_VERSION = 1  # bump when the computation changes: old files are no longer matched
SAMPLE_BATCH = 32  # sequences sampled together; part of the sampled text's identity
_SEPARATOR_TOKENS = ("<|endoftext|>", "</s>", "<|end_of_text|>")


@dataclass(frozen=True)
class CorpusSpec:
    """Where the statistics' text comes from and how much of it.

    files: .txt or .jsonl ("text" field) paths; () = text sampled from the model.
    samples: number of tokens whose keys are averaged (reference: 100,000).
    seq_len: tokens per sequence (cut to the model's context length).
    seed: seed of the model-sampled text (unused with files).
    """

    files: tuple[str, ...] = ()
    samples: int = 100_000
    seq_len: int = 128
    seed: int = 0

    def validate(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise InvalidHyperParameters("corpus samples must be a positive number of tokens")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise InvalidHyperParameters("corpus seq_len must be at least 2 tokens")
        for f in self.files:
            p = Path(f)
            if not p.is_file():
                raise InvalidHyperParameters(f"corpus file not found: {f}")
            if p.suffix not in (".txt", ".jsonl"):
                raise InvalidHyperParameters(f"corpus file must be .txt or .jsonl: {f}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def separator_id(tokenizer: Any) -> int:
    """The document separator sequences start with (see the module docstring)."""
    prefix = encode_prompt(tokenizer, "")
    if prefix:  # the tokenizer adds a BOS to every text (Llama-3): start from it
        return prefix[0]
    vocab = tokenizer.get_vocab()
    for token in _SEPARATOR_TOKENS:
        if token in vocab:
            return int(vocab[token])
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _rows_per_count(samples: int, seq_len: int) -> list[int]:
    """Row lengths: full rows of seq_len, the last one cut so they sum to `samples`."""
    full, rest = divmod(samples, seq_len)
    return [seq_len] * full + ([rest] if rest else [])


def _documents(files: Sequence[str]) -> Iterator[str]:
    for name in files:
        path = Path(name)
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise InvalidHyperParameters(
                            f"{name}:{lineno} is not a JSON object with a 'text' field"
                        ) from exc
                    if isinstance(text, str) and text.strip():
                        yield text
        else:
            paragraphs = path.read_text(encoding="utf-8").split("\n\n")
            yield from (p.strip() for p in paragraphs if p.strip())


def _corpus_rows(lm: LoadedModel, corpus: CorpusSpec, seq_len: int) -> Iterator[list[int]]:
    """Token rows from the caller's files, packed, `corpus.samples` tokens at most.

    Documents are joined by the separator; every row starts with it, so no row begins
    in the middle of nowhere.
    """
    sep = separator_id(lm.tokenizer)
    left = corpus.samples
    row = [sep]
    for doc in _documents(corpus.files):
        for tid in [*encode_continuation(lm.tokenizer, doc), sep]:
            if len(row) >= min(seq_len, left):
                yield row
                left -= len(row)
                if left == 0:
                    return
                row = [sep]
            row.append(tid)
    if len(row) > 1:
        yield row


@torch.no_grad()
def sample_tokens(
    lm: LoadedModel, samples: int, seq_len: int, seed: int, progress: Progress | None = None
) -> torch.Tensor:
    """Model-sampled token rows (N, seq_len), long, N = ceil(samples / seq_len).

    Temperature 1 with a seeded CPU generator, SAMPLE_BATCH rows at a time, KV cache.
    """
    rows = math.ceil(samples / seq_len)
    sep = separator_id(lm.tokenizer)
    device = next(lm.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    # transformers 5.2x renamed past_key_values to cache (argument and output)
    cache_arg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else (
        "past_key_values")
    chunks: list[torch.Tensor] = []
    for start in range(0, rows, SAMPLE_BATCH):
        ids = torch.full((SAMPLE_BATCH, 1), sep, dtype=torch.long)  # (B, 1)
        out = lm.model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                       use_cache=True, logits_to_keep=1)
        for step in range(seq_len - 1):
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1).cpu()  # (B, vocab)
            nxt = torch.multinomial(probs, 1, generator=gen)  # (B, 1)
            ids = torch.cat([ids, nxt], dim=1)
            if step < seq_len - 2:
                past = getattr(out, cache_arg)
                mask = torch.ones_like(ids).to(device)  # (B, length so far)
                out = lm.model(input_ids=nxt.to(device), attention_mask=mask, use_cache=True,
                               logits_to_keep=1, **{cache_arg: past})
        chunks.append(ids)
        if progress is not None:
            progress(PHASE, min(1.0, (start + SAMPLE_BATCH) / rows))
    return torch.cat(chunks)[:rows]  # (N, seq_len)


class _StopForward(Exception):
    """Raised by the deepest hook: nothing above it is needed."""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StatsCache:
    """Second moments per (model, layer, corpus), on disk under `root`.

    batch_size: sequences per forward pass (memory; does not change the result beyond
    float rounding).
    """

    def __init__(self, root: str | Path, *, batch_size: int = 16) -> None:
        self.root = Path(root)
        self.batch_size = batch_size

    # ------------------------------------------------------------------ keys
    def _seq_len(self, lm: LoadedModel, corpus: CorpusSpec) -> int:
        return min(corpus.seq_len, max_positions(lm.model))

    def _source_key(self, lm: LoadedModel, corpus: CorpusSpec) -> dict[str, Any]:
        """Everything that identifies the tokens and the model, without the layer."""
        if corpus.files:
            source: Any = [_sha256_file(Path(f)) for f in corpus.files]
        else:
            source = {"model-sampled": corpus.seed, "batch": SAMPLE_BATCH}
        return {
            "version": KEY_VERSION,
            "fingerprint": lm.fingerprint,
            "corpus": source,
            "samples": corpus.samples,
            "seq_len": self._seq_len(lm, corpus),
            "dtype": str(getattr(lm, "dtype", next(lm.model.parameters()).dtype)),
        }

    def path_for(self, lm: LoadedModel, layer: int, corpus: CorpusSpec) -> Path:
        """Where the statistics of `layer` are (or will be) cached."""
        return self._path(self._source_key(lm, corpus), layer)

    def _path(self, source_key: dict[str, Any], layer: int) -> Path:
        digest = _digest({**source_key, "layer": layer})[:32]
        return self.root / f"second_moment-L{layer:03d}-{digest}.safetensors"

    # ------------------------------------------------------------------ public
    def second_moment(
        self, lm: LoadedModel, layer: int, corpus: CorpusSpec, *, progress: Progress | None = None
    ) -> torch.Tensor:
        """C = E[k k^T] (d_ff, d_ff) float32 on CPU, from the cache or computed once."""
        return self.ensure(lm, [layer], corpus, progress)[layer]

    def ensure(
        self,
        lm: LoadedModel,
        layers: Iterable[int],
        corpus: CorpusSpec,
        progress: Progress | None = None,
    ) -> dict[int, torch.Tensor]:
        """C for every layer in `layers`; the missing ones computed in one pass."""
        corpus.validate()
        wanted = sorted({lm.adapter.check_layer(lm.model, layer) for layer in layers})
        source_key = self._source_key(lm, corpus)
        self.root.mkdir(parents=True, exist_ok=True)
        out = self._load_cached(source_key, wanted)
        missing = [layer for layer in wanted if layer not in out]
        if missing:
            lock = self.root / f".lock-{_digest(source_key)[:32]}"
            with _locked(lock):
                out.update(self._load_cached(source_key, missing))  # another process?
                missing = [layer for layer in wanted if layer not in out]
                if missing:
                    out.update(self._compute(lm, missing, corpus, source_key, progress))
        return {layer: out[layer] for layer in wanted}

    # ------------------------------------------------------------------ internals
    def _load_cached(self, source_key: dict[str, Any], layers: Sequence[int]) -> dict[int, Any]:
        found: dict[int, torch.Tensor] = {}
        for layer in layers:
            path = self._path(source_key, layer)
            if path.is_file():
                found[layer] = load_file(str(path))["second_moment"]
                logger.debug("statistics cache hit: %s", path.name)
        return found

    def _sampled_ids(
        self, lm: LoadedModel, corpus: CorpusSpec, seq_len: int, progress: Progress | None
    ) -> torch.Tensor:
        """Model-sampled rows (N, seq_len), from the cache or sampled (and cached) now."""
        key = {"fingerprint": lm.fingerprint, "seed": corpus.seed, "seq_len": seq_len,
               "rows": math.ceil(corpus.samples / seq_len), "batch": SAMPLE_BATCH,
               "version": KEY_VERSION}
        path = self.root / f"sampled-{_digest(key)[:32]}.safetensors"
        if path.is_file():
            return load_file(str(path))["input_ids"]
        started = time.perf_counter()
        half = (lambda p, f: progress(p, 0.5 * f)) if progress else None
        ids = sample_tokens(lm, corpus.samples, seq_len, corpus.seed, half)
        _atomic_save({"input_ids": ids}, {"key": json.dumps(key, sort_keys=True)}, path)
        logger.info("sampled %d x %d tokens from the model in %.1f s",
                    ids.shape[0], ids.shape[1], time.perf_counter() - started)
        return ids

    def _token_rows(
        self, lm: LoadedModel, corpus: CorpusSpec, progress: Progress | None
    ) -> Iterator[list[int]]:
        """The rows whose keys are counted; model sampling (if any) happens right here."""
        seq_len = self._seq_len(lm, corpus)
        if corpus.files:
            return _corpus_rows(lm, corpus, seq_len)
        ids = self._sampled_ids(lm, corpus, seq_len, progress)
        lengths = _rows_per_count(corpus.samples, seq_len)
        return (row[:n] for row, n in zip(ids.tolist(), lengths, strict=True))

    @torch.no_grad()
    def _compute(
        self,
        lm: LoadedModel,
        layers: list[int],
        corpus: CorpusSpec,
        source_key: dict[str, Any],
        progress: Progress | None,
    ) -> dict[int, torch.Tensor]:
        model = lm.model
        device = next(model.parameters()).device
        d_ff = lm.adapter.d_ff(model)
        sums = {layer: torch.zeros((d_ff, d_ff), dtype=torch.float64, device=device)
                for layer in layers}
        mask_box: dict[str, torch.Tensor] = {}
        deepest = max(layers)

        def hook_for(layer: int) -> Callable[..., None]:
            def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                keys = args[0].reshape(-1, d_ff)[mask_box["valid"]].float()  # (tokens, d_ff)
                sums[layer] += (keys.T @ keys).double()
                if layer == deepest:
                    raise _StopForward
            return hook

        sampled = not corpus.files
        rows = self._token_rows(lm, corpus, progress)  # before the hooks: sampling runs here
        handles = [lm.adapter.down_proj(model, layer).register_forward_pre_hook(hook_for(layer))
                   for layer in layers]
        base, span = (0.5, 0.5) if sampled else (0.0, 1.0)
        count = 0
        started = time.perf_counter()
        try:
            batch: list[list[int]] = []
            for row in rows:
                batch.append(row)
                if len(batch) == self.batch_size:
                    count += self._forward(model, batch, mask_box, device)
                    batch = []
                    if progress is not None:
                        progress(PHASE, base + span * min(1.0, count / corpus.samples))
            if batch:
                count += self._forward(model, batch, mask_box, device)
        finally:
            for handle in handles:
                handle.remove()
        if count == 0:
            raise InvalidHyperParameters("the statistics corpus holds no token")
        if count < corpus.samples:
            logger.warning("statistics corpus ran out: %d of %d tokens", count, corpus.samples)
        out: dict[int, torch.Tensor] = {}
        for layer in layers:
            c = (sums[layer] / count).float().cpu().contiguous()  # (d_ff, d_ff)
            meta = {"key": json.dumps({**source_key, "layer": layer}, sort_keys=True),
                    "count": str(count)}
            _atomic_save({"second_moment": c}, meta, self._path(source_key, layer))
            out[layer] = c
        logger.info("statistics for layers %s over %d tokens in %.1f s",
                    layers, count, time.perf_counter() - started)
        if progress is not None:
            progress(PHASE, 1.0)
        return out

    @staticmethod
    def _forward(
        model: torch.nn.Module,
        rows: list[list[int]],
        mask_box: dict[str, torch.Tensor],
        device: torch.device,
    ) -> int:
        """Run one right-padded batch through the hooks; return its token count."""
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        mask_box["valid"] = mask.reshape(-1).bool().to(device)  # (B*T,)
        try:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except _StopForward:
            pass
        return int(mask.sum())
