"""ZeroUnlearn-GD: the null-space gradient variant ("zerounlearn-gd"), for many records.

Per edited layer, with the same K_f, V* and Q as the closed form:
  P_null = U U^T, U (d_ff, r): eigenvectors of C with eigenvalue < null_rtol * max, and
           at least null_min_rank of the smallest, so the null space is never empty
           (the reference's absolute threshold can leave it empty and crash);
  Dh (d_model, d_ff), zero-initialised, float64, Adam, trained on
      orth  || Q^T (W + Dh P) K_f ||^2 + value || (W + Dh P) K_f - V* ||^2
      + update || Dh P ||^2
  W <- W + Dh P_null: additive, confined to directions the corpus keys do not use.
Ours: with protected prompts (preserve_weight > 0: the request's neighbours and subject
substitutions, see protect.py) the null space also excludes their keys, so their
outputs stay exactly as they were (AlphaEdit's "preserved knowledge").
(W + Dh P) K_f is computed as W K_f + Dh (P K_f) and ||Dh P|| as ||Dh U|| (P = U U^T
with orthonormal U), which avoids (d_ff, d_ff) products in the loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from zerounlearn import solve
from zerounlearn.config import ZeroUnlearnGDHParams
from zerounlearn.errors import NonFiniteResult
from zerounlearn.methods.registry import register_method
from zerounlearn.methods.zerounlearn import ZeroUnlearnBase

if TYPE_CHECKING:
    from zerounlearn.loading import LoadedModel
    from zerounlearn.methods.edit_state import RoundState

logger = logging.getLogger(__name__)


def null_space_basis(c: torch.Tensor, rtol: float, min_rank: int) -> torch.Tensor:
    """U (d_ff, r): eigenvectors of C (d_ff, d_ff) below rtol * the largest eigenvalue,
    r >= min_rank (the smallest ones), in float64."""
    c64 = c.detach().double()
    evals, evecs = torch.linalg.eigh(c64)  # ascending (d_ff,), (d_ff, d_ff)
    below = int((evals < rtol * evals.max()).sum())
    r = min(c64.shape[0], max(below, min_rank))
    u: torch.Tensor = evecs[:, :r].contiguous()  # (d_ff, r)
    return u


def exclude_keys(u_null: torch.Tensor, k_p: torch.Tensor | None, min_rank: int,
                 rtol: float = 1e-3) -> torch.Tensor:
    """The part of span(U) orthogonal to the protected keys K_p (d_ff, p): an update
    Dh P then leaves W k_p exactly unchanged. Keeps at least min_rank columns."""
    if k_p is None or k_p.shape[1] == 0:
        return u_null
    m = u_null.T @ k_p.double()  # (r, p): protected keys in null-space coordinates
    left, s, _ = torch.linalg.svd(m, full_matrices=True)  # left (r, r), s (min(r, p),)
    used = int((s > rtol * s.max()).sum()) if s.numel() else 0
    used = min(used, max(0, u_null.shape[1] - min_rank))
    kept: torch.Tensor = (u_null @ left[:, used:]).contiguous()  # (d_ff, r - used)
    return kept


def train_null_update(
    w: torch.Tensor, k_f: torch.Tensor, v: torch.Tensor, q: torch.Tensor, u_null: torch.Tensor,
    cfg: ZeroUnlearnGDHParams,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dh P_null (d_model, d_ff) float64, by Adam on the objective above."""
    w, k_f, v, q = (x.detach().double() for x in (w, k_f, v, q))
    wk = w @ k_f  # (d_model, n)
    pk = u_null @ (u_null.T @ k_f)  # P_null K_f: (d_ff, r) @ (r, n) -> (d_ff, n)
    dh = torch.zeros_like(w, requires_grad=True)  # (d_model, d_ff)
    opt = torch.optim.Adam([dh], lr=cfg.gd_lr)
    loss_value = float("nan")
    steps = 0
    with torch.enable_grad():
        while steps < cfg.gd_steps:
            steps += 1
            out = wk + dh @ pk  # (W + Dh P) K_f: (d_model, n)
            loss = (cfg.orth_weight * (q.T @ out).pow(2).sum()
                    + cfg.value_weight * (out - v).pow(2).sum()
                    + cfg.update_weight * (dh @ u_null).pow(2).sum())  # ||Dh P|| = ||Dh U||
            loss_value = float(loss.detach())
            if loss_value < cfg.gd_stop_loss:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    if not torch.isfinite(dh).all():
        raise NonFiniteResult("the gradient update is not finite")
    update = (dh.detach() @ u_null) @ u_null.T  # Dh P_null: (d_model, r) @ (r, d_ff)
    return update, {"loss": loss_value, "steps": steps}


@register_method("zerounlearn-gd")
class ZeroUnlearnGD(ZeroUnlearnBase):
    """Same templates, targets and keys; an additive null-space update per layer."""

    def edit_layer(self, lm: LoadedModel, state: RoundState, i: int, layer: int
                   ) -> torch.Tensor:
        cfg = state.cfg
        if not isinstance(cfg, ZeroUnlearnGDHParams):  # a subclass registered a foreign name
            raise TypeError(f"{self.name!r} does not resolve to ZeroUnlearn-GD hyper-parameters")
        keys, w, v, m_f = self.layer_inputs(lm, state, i, layer)
        dev = w.device  # everything below runs where the weight lives
        q = solve.sensitive_basis(m_f.to(dev), cfg.rank_rtol)  # (d_model, r)
        u_null = null_space_basis(state.run.stats[layer].to(dev), cfg.null_rtol,
                                  cfg.null_min_rank)
        # protected prompts and the keys of earlier edits: the update must not touch them
        kept = [k.to(dev, w.dtype) for k in (keys.k_p, self.history(state, layer, keys),
                                              self.carried(state, layer))
                if k is not None]
        k_p = torch.cat(kept, dim=1) if kept else None
        u_null = exclude_keys(u_null, k_p, cfg.null_min_rank)
        update, info = train_null_update(w, keys.k_f.to(dev), v.to(dev), q, u_null, cfg)
        state.run.info.setdefault("null_rank", []).append(int(u_null.shape[1]))
        state.run.info.setdefault("gd_steps", []).append(info["steps"])
        w_new = w.double() + update  # (d_model, d_ff)
        if not torch.isfinite(w_new).all():
            raise NonFiniteResult("the edited weight is not finite")
        return w_new.to(dtype=w.dtype)
