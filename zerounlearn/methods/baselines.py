"""Gradient baselines on the same edit points: gradient ascent (GA) and NPO.

Definitions follow MUSE / TOFU:
- GA maximises the NLL of the answer given the prompt (minimises -NLL, token mean).
- NPO (Zhang et al. 2024) minimises (2 / beta) * log(1 + (pi_theta / pi_ref)^beta)
  = -(2 / beta) * logsigmoid(-beta * log(pi_theta / pi_ref)), where log pi is the answer
  sequence's summed log-likelihood and pi_ref the unedited model; averaged over records.

Only the edit layers' down-projection matrices are trained, as float32 copies passed to
the model through `torch.func.functional_call`: the model's own parameters are never
written, so it is unchanged on return (and during the run). The result is a Patch with
the new W of each edited layer. Hyper-parameters (typed, validated, with a "why" per
field) come from zerounlearn.config (GradientAscentHParams, NPOHParams).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch.func import functional_call

from zerounlearn.config import GradientAscentHParams, config_for_model
from zerounlearn.errors import NonFiniteResult
from zerounlearn.methods.registry import register_method
from zerounlearn.patch import Patch
from zerounlearn.records import ForgetRecord, validate_records
from zerounlearn.tokens import AnswerBatch, answer_batch, max_positions

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


def answer_logprobs(logits: torch.Tensor, batch: AnswerBatch) -> torch.Tensor:
    """Summed log-probability of each row's answer, shape (B,), differentiable.

    logits (B, T, vocab): position p predicts token p + 1, so the labels are shifted left.
    """
    labels = batch.labels().to(logits.device)  # (B, T), -100 outside the answers
    shifted = labels[:, 1:]  # (B, T-1): the token each position predicts
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, vocab)
    mask = shifted != -100
    picked = logprobs.gather(-1, shifted.clamp(min=0)[..., None]).squeeze(-1)  # (B, T-1)
    return (picked * mask).sum(dim=1)


def _all_forgotten(logits: torch.Tensor, batch: AnswerBatch) -> bool:
    """True when no row's answer is still the argmax at every answer position."""
    labels = batch.labels().to(logits.device)[:, 1:]  # (B, T-1)
    mask = labels != -100
    hits = (logits[:, :-1].argmax(-1) == labels) | ~mask  # (B, T-1)
    return not bool(hits.all(dim=1).any())


class _GradientBaseline:
    """Shared loop: trains float32 copies of the edited W with Adam, full batch."""

    name = ""

    def loss(self, logp: torch.Tensor, ref_logp: torch.Tensor, n_tokens: int, cfg: Any) -> Any:
        raise NotImplementedError

    def compute_patch(
        self,
        lm: LoadedModel,
        records: Sequence[ForgetRecord | dict],
        hparams: dict | None,
        *,
        stats: Any = None,  # unused: baselines need no corpus statistics
        progress: Progress | None = None,
        retain: Any = None,  # unused: the baselines protect nothing
    ) -> Patch:
        started = time.perf_counter()
        recs = validate_records(records)
        # typed and validated; layers filled in from the family default and checked
        cfg = cast(GradientAscentHParams, config_for_model(self.name, lm, hparams))
        layers: list[int] = list(cfg.layers or [])
        model, adapter = lm.model, lm.adapter
        batch = answer_batch(
            lm.tokenizer,
            [r.prompt for r in recs],
            [r.answer for r in recs],
            device=lm.device,
            limit=max_positions(model),
        )
        n_tokens = sum(len(a) for a in batch.answer_ids)
        originals = {layer: adapter.get_weight(model, layer) for layer in layers}
        # trainable copies, (d_model, d_ff) float32, on the model's device
        trained = {
            layer: w.detach().to(torch.float32).clone().requires_grad_(True)
            for layer, w in originals.items()
        }
        names = {layer: adapter.parameter_name(model, layer) for layer in layers}

        def forward() -> torch.Tensor:
            swapped = {
                names[layer]: adapter.as_parameter(w.to(originals[layer].dtype))
                for layer, w in trained.items()
            }
            out = functional_call(
                model,
                swapped,
                (),
                {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
            )
            return out.logits  # (B, T, vocab)

        with torch.no_grad():
            ref_logits = forward()
            ref_logp = answer_logprobs(ref_logits, batch)  # (B,)
        initial_nll = float(-ref_logp.sum()) / n_tokens
        optimizer = torch.optim.Adam(list(trained.values()), lr=cfg.lr)
        steps_run, last_loss = 0, math.nan
        for step in range(cfg.steps):
            logits = forward()
            if step > 0 and cfg.stop_when_forgotten and _all_forgotten(logits.detach(), batch):
                break
            logp = answer_logprobs(logits, batch)
            loss = self.loss(logp, ref_logp, n_tokens, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(trained.values()), cfg.max_grad_norm)
            optimizer.step()
            steps_run, last_loss = step + 1, float(loss.detach())
            if progress is not None:
                progress("solve", (step + 1) / cfg.steps)
        with torch.no_grad():
            final_nll = float(-answer_logprobs(forward(), batch).sum()) / n_tokens
        weights = {}
        for layer, w in trained.items():
            new = w.detach().to(originals[layer].dtype).cpu()  # (d_model, d_ff)
            if not bool(torch.isfinite(new).all()):
                raise NonFiniteResult(f"{self.name}: layer {layer} became non-finite")
            weights[layer] = new
        if progress is not None:
            progress("solve", 1.0)
        seconds = time.perf_counter() - started
        logger.info(
            "%s: %d records, layers %s, %d steps, answer NLL %.3f -> %.3f in %.1f s",
            self.name,
            len(recs),
            layers,
            steps_run,
            initial_nll,
            final_nll,
            seconds,
        )
        return Patch(
            method=self.name,
            hparams=cfg.to_dict(),
            base_fingerprint=getattr(lm, "fingerprint", ""),
            weights=weights,
            metadata={
                "records": len(recs),
                "layers": layers,
                "steps_run": steps_run,
                "final_loss": last_loss if math.isfinite(last_loss) else None,
                "answer_nll_before": initial_nll,
                "answer_nll_after": final_nll,
                "seconds": round(seconds, 3),
            },
        )


@register_method("gradient-ascent")
class GradientAscent(_GradientBaseline):
    """Maximise the answers' token-mean NLL (MUSE/TOFU "GA")."""

    name = "gradient-ascent"

    def loss(self, logp: torch.Tensor, ref_logp: torch.Tensor, n_tokens: int, cfg: Any) -> Any:
        return logp.sum() / n_tokens  # = -NLL: minimising it raises the NLL


@register_method("npo")
class NPO(_GradientBaseline):
    """Negative preference optimisation against the unedited model (MUSE/TOFU "NPO")."""

    name = "npo"

    def loss(self, logp: torch.Tensor, ref_logp: torch.Tensor, n_tokens: int, cfg: Any) -> Any:
        log_ratio = logp - ref_logp  # (B,) log pi_theta / pi_ref of each answer
        return (-2.0 / cfg.beta) * F.logsigmoid(-cfg.beta * log_ratio).mean()
