"""Edit requests (records at token level) and the keys/values read off the model.

K_f at layer l: the input of layer l's down projection at the edit token (the subject's
last token, else the prompt's last), averaged over context templates as MEMIT does:
1/2 (clean key) + 1/2 mean(prefixed keys). H_L: the residual output of block L at the
edit token on the clean prompts. Everything comes from one forward pass over all
records x templates (plus any protected sites), run in chunks of texts of similar
length (site_chunks.py), right-padded so positions match the unpadded sequences.

With a KeyPrefix (ours, upper_only): the blocks below the first edited layer never
change during an edit, so one forward of the unedited model, stopped at the last edited
block, records the input of the first edited block and the arguments of the edited
blocks (upper.py); each layer's keys then run only blocks first..last (with the edits
made so far) instead of the whole model and its output head.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from zerounlearn.adapters import block_hidden, token_grid
from zerounlearn.errors import InvalidRecord
from zerounlearn.records import ForgetRecord
from zerounlearn.site_chunks import SiteChunk, in_site_order, site_chunks
from zerounlearn.tokens import encode_continuation, encode_prompt, max_positions
from zerounlearn.upper import UpperStack, capture_stack

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # [start, end) character span
TEMPLATE_MARGIN = 32  # tokens kept free for a context-template prefix


@dataclass(frozen=True)
class EditRequest:
    """One record at token level. Text stays in memory only; it is never logged."""

    prompt: str
    span: Span | None  # the subject's character span in the prompt; None = last token
    answer_ids: list[int]  # the true continuation (sensitive state, verification)
    target_ids: list[int]  # the neutral continuation (neutral target state)
    kl_text: str  # "{subject} is a": the KL anchor of the target optimisation
    kl_span: Span
    # neutral_target "generic": the next-token distribution to reach instead of
    # target_ids (V,), float32 (zerounlearn.neutral); None: the target tokens
    target_dist: torch.Tensor | None = None


@dataclass(frozen=True)
class Site:
    """A text and the token indices whose activations are read (one column each)."""

    text: str
    indices: tuple[int, ...]


def edit_index(tokenizer: Any, text: str, span: Span | None) -> int:
    """Token index of the last token overlapping the char span; the last token if None."""
    enc = tokenizer(text, return_offsets_mapping=True)
    if span is None:
        return len(enc["input_ids"]) - 1
    start, end = span
    last = None
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and a < end and b > start:  # the token overlaps the span
            last = i
    if last is None:
        raise InvalidRecord("subject covers no token of the prompt")
    return last


def neutral_target_ids(tokenizer: Any, neutral_target: str) -> list[int]:
    """"endoftext": the pre-training document separator when the vocabulary has one
    (SmolLM2's chat EOS is near-impossible after a raw prompt), else EOS; "eos": EOS;
    anything else: that literal text."""
    if neutral_target in ("endoftext", "eos", "generic", "own"):
        # "generic" and "own" aim at a distribution (zerounlearn.neutral); their token ids
        # are the end-of-text token's, which only size the batch and check the length
        if neutral_target in ("endoftext", "generic", "own"):
            tid = tokenizer.convert_tokens_to_ids("<|endoftext|>")
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                return [tid]
        if tokenizer.eos_token_id is None:
            raise InvalidRecord("the tokenizer has no end-of-text token: give a target text")
        return [int(tokenizer.eos_token_id)]
    return encode_continuation(tokenizer, neutral_target)


def prepare_requests(
    lm: LoadedModel, records: Sequence[ForgetRecord], neutral_target: str | None = "endoftext"
) -> list[EditRequest]:
    """Token-level checks (errors name records[i], never their text) and encoding.

    neutral_target None: records without their own target get no target ids (enough for
    checking records before any method runs).
    """
    tok = lm.tokenizer
    limit = max_positions(lm.model)
    default_target = [] if neutral_target is None else neutral_target_ids(tok, neutral_target)
    out: list[EditRequest] = []
    for i, r in enumerate(records):
        span = None
        if r.subject is not None:
            start = r.prompt.find(r.subject)
            if start < 0:
                raise InvalidRecord(f"records[{i}].subject does not occur in records[{i}].prompt")
            span = (start, start + len(r.subject))
        try:
            first = edit_index(tok, r.prompt, span)
        except InvalidRecord as exc:
            raise InvalidRecord(f"records[{i}].subject covers no token of the prompt") from exc
        if span is not None and first == 0:
            # The subject is the prompt's FIRST token (a tokenizer without BOS, e.g.
            # SmolLM2: "France is a country on ..."). Position 0 is the attention sink:
            # its key is shared by every sequence's first token and has outlier norms, so
            # editing it wrecks the whole model (measured: perplexity 19 -> 586k in one
            # request). Edit at the prompt's last token instead, as for records without
            # a subject.
            logger.debug("records[%d]: subject at position 0, editing the last token", i)
            span = None
        p_ids = encode_prompt(tok, r.prompt)
        answer = encode_continuation(tok, r.answer)
        target = encode_continuation(tok, r.target) if r.target else default_target
        if not p_ids:
            raise InvalidRecord(f"records[{i}].prompt encodes to no token")
        if not answer:
            raise InvalidRecord(f"records[{i}].answer encodes to no token")
        if r.target and not target:
            raise InvalidRecord(f"records[{i}].target encodes to no token")
        # context templates add a prefix of about template_tokens tokens: keep a margin
        longest = len(p_ids) + max(len(answer), len(target)) + TEMPLATE_MARGIN
        if longest > limit:
            raise InvalidRecord(
                f"records[{i}] is too long: {len(p_ids)} prompt tokens plus its answer "
                f"exceed the model's {limit} positions (with room for a context template)"
            )
        subject = r.prompt[span[0] : span[1]] if span else r.prompt
        out.append(EditRequest(r.prompt, span, answer, target, subject + " is a",
                               (0, len(subject))))
    return out


def templated(req: EditRequest, prefix: str) -> tuple[str, Span | None]:
    """The request's prompt under a template prefix, and its subject span there."""
    if req.span is None:
        return prefix + req.prompt, None
    return prefix + req.prompt, (req.span[0] + len(prefix), req.span[1] + len(prefix))


def record_sites(
    tokenizer: Any, requests: Sequence[EditRequest], templates: Sequence[str]
) -> list[Site]:
    """Sites record-major: row b * T + t is record b under template t (t = 0: clean)."""
    sites = []
    for req in requests:
        for prefix in templates:
            text, span = templated(req, prefix)
            sites.append(Site(text, (edit_index(tokenizer, text, span),)))
    return sites


@dataclass
class KeyPrefix:
    """Blocks first..last ready to run on all sites of a request (record sites, then
    protected ones), recorded on the model before any of them is edited: one stack per
    chunk of sites of similar length (site_chunks.py)."""

    chunks: list[SiteChunk]
    stacks: list[UpperStack]  # one per chunk
    sites: list[Site]  # the sites it was built for, in order

    @property
    def start(self) -> int:
        return self.stacks[0].start

    @property
    def stop(self) -> int:
        return self.stacks[0].stop


@torch.no_grad()
def key_prefix(
    lm: LoadedModel, requests: Sequence[EditRequest], templates: Sequence[str], first_layer: int,
    last_layer: int, protected: Sequence[Site] = (),
) -> KeyPrefix:
    """One forward per chunk of the (still unedited) model over compute_keys' sites,
    stopped as block last_layer is entered. Valid while no block below first_layer
    changes."""
    sites = record_sites(lm.tokenizer, requests, templates) + list(protected)
    chunks = site_chunks(lm, sites)
    stacks = []
    for c in chunks:
        stack, _ = capture_stack(
            lm, lambda c=c: lm.model(input_ids=c.ids, attention_mask=c.mask, use_cache=False),
            first_layer, last_layer, halt=True)
        stacks.append(stack)
    return KeyPrefix(chunks, stacks, sites)


@dataclass
class ProtectedPrefix:
    """A request's first key prefix, kept for its later rounds: the pass through the
    blocks below the edited ones is the same in every round (no round edits them), and
    for hundreds of protected sites it is most of what their keys cost. `sites` are the
    prefix's record sites, then its protected ones from `first` on."""

    prefix: KeyPrefix
    first: int

    def serves(self, first_layer: int, last_layer: int, lowest_edit: int) -> bool:
        """Valid for a round editing first..last_layer once every edit so far (the
        lowest at `lowest_edit`) lies at or above the prefix's first block."""
        return (self.prefix.start == first_layer and self.prefix.stop == last_layer
                and lowest_edit >= self.prefix.start)

    def protected_keys(self, lm: LoadedModel, layer: int) -> torch.Tensor:
        """(d_ff, p) the protected sites' keys at `layer` on the model as it is now."""
        k_all, _ = capture(lm, self.prefix.sites, layer, self.prefix.stop, self.prefix)
        return k_all[:, self.first :]


@torch.no_grad()
def capture(
    lm: LoadedModel, sites: Sequence[Site], layer: int, block_layer: int,
    prefix: KeyPrefix | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys at layer `layer` and block outputs of `block_layer` at each site, one
    forward per chunk of sites of similar length.

    With a prefix (built for these sites, block_layer its last block): only its blocks
    run. Returns K (d_ff, S) and H (d_model, S), in the model's dtype, S = all sites'
    indices in order.
    """
    if prefix is not None and (len(prefix.sites) != len(sites) or prefix.stop != block_layer
                               or not prefix.start <= layer <= block_layer):
        raise ValueError("the key prefix was built for other sites or layers")
    chunks = prefix.chunks if prefix is not None else site_chunks(lm, sites)
    keys, hiddens = [], []
    for i, chunk in enumerate(chunks):
        stack = prefix.stacks[i] if prefix is not None else None
        k, h = _capture_chunk(lm, chunk, layer, block_layer, stack)
        keys.append(k)
        hiddens.append(h)
    k_all = in_site_order(sites, chunks, keys).T.contiguous()  # (S, d_ff) -> (d_ff, S)
    h_all = in_site_order(sites, chunks, hiddens).T.contiguous()  # (d_model, S)
    return k_all, h_all


def _capture_chunk(
    lm: LoadedModel, chunk: SiteChunk, layer: int, block_layer: int,
    stack: UpperStack | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over a chunk (the whole model, or the stack's blocks): its keys
    (S_c, d_ff) and block outputs (S_c, d_model)."""
    model, adapter = lm.model, lm.adapter
    row_idx, pos_idx = chunk.row_idx, chunk.pos_idx
    got: dict[str, torch.Tensor] = {}

    def grab_key(_module, args):
        k = token_grid(args[0], *chunk.shape)  # (B, T, d_ff), also from OPT's (B*T, d_ff)
        dev = k.device  # the layer's own device under a device map
        got["k"] = k[row_idx.to(dev), pos_idx.to(dev)].detach()  # (B, T, d_ff) -> (S_c, d_ff)

    def grab_hidden(_module, _args, output):
        h = block_hidden(output)
        got["h"] = h[row_idx.to(h.device), pos_idx.to(h.device)].detach()  # (S_c, d_model)

    handles = [
        adapter.down_proj(model, layer).register_forward_pre_hook(grab_key),
        adapter.block(model, block_layer).register_forward_hook(grab_hidden),
    ]
    try:
        if stack is None:
            model(input_ids=chunk.ids, attention_mask=chunk.mask, use_cache=False)
        else:
            if stack.hidden is None:
                raise ValueError("the key prefix holds no hidden state")
            stack.run(stack.hidden)  # (B, T, d_model) entering block first
    finally:
        for handle in handles:
            handle.remove()
    return got["k"], got["h"]


def template_mean(k_sites: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """MEMIT's average: 1/2 clean + 1/2 mean(prefixed). (d, n * t) -> (d, n)."""
    k = k_sites.reshape(k_sites.shape[0], n, t)  # (d, n * t) -> (d, n, t), record-major
    if t == 1:
        return k[:, :, 0]
    return 0.5 * k[:, :, 0] + 0.5 * k[:, :, 1:].mean(dim=-1)


@dataclass
class KeyState:
    """Per-layer readings for the solve (model dtype)."""

    k_f: torch.Tensor  # (d_ff, n) template-averaged forget keys
    k_clean: torch.Tensor  # (d_ff, n) forget keys on the clean prompts
    wk_f: torch.Tensor  # (d_model, n) W K_f with the current W
    h_l: torch.Tensor  # (d_model, n) block-L output at the edit token, clean prompts
    k_p: torch.Tensor | None  # (d_ff, p) keys of protected sites, or None


def compute_keys(
    lm: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    layer: int,
    last_layer: int,
    protected: Sequence[Site] = (),
    prefix: KeyPrefix | None = None,
    earlier: ProtectedPrefix | None = None,
) -> KeyState:
    """K_f, W K_f, H_L (and protected keys K_p) in one forward over all sites (with a
    prefix from key_prefix on the same arguments: blocks first..last_layer only). With
    `earlier` (a first round's prefix holding these protected sites), the protected keys
    come from it and `prefix` holds the record sites only."""
    n, t = len(requests), len(templates)
    sites = record_sites(lm.tokenizer, requests, templates)
    if earlier is None:
        sites += list(protected)
    k_all, h_all = capture(lm, sites, layer, last_layer, prefix)
    if earlier is not None and protected:
        k_all = torch.cat([k_all, earlier.protected_keys(lm, layer)], dim=1)
    k_f = template_mean(k_all[:, : n * t], n, t)  # (d_ff, n)
    k_clean = k_all[:, : n * t].reshape(k_all.shape[0], n, t)[:, :, 0]  # (d_ff, n)
    h_l = h_all[:, : n * t].reshape(h_all.shape[0], n, t)[:, :, 0]  # clean rows -> (d_model, n)
    w = lm.adapter.get_weight(lm.model, layer)  # (d_model, d_ff)
    wk_f = w @ k_f  # (d_model, d_ff) @ (d_ff, n)
    k_p = k_all[:, n * t :] if protected else None  # (d_ff, p)
    return KeyState(k_f=k_f, k_clean=k_clean, wk_f=wk_f, h_l=h_l, k_p=k_p)
