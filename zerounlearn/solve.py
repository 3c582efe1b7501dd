"""The closed-form update of one layer, as pure tensor functions in float64.

Notation (spec, per edited layer; W is (d_model, d_ff)):
  C    (d_ff, d_ff)      uncentred second moment E[k k^T] of corpus keys
  K_f  (d_ff, n)         keys of the forget records at the edit token
  V    (d_model, n)      V*, the values the forget keys should now produce
  Q    (d_model, r)      orthonormal basis of span(M_f), the sensitive directions
  P    (d_model, d_model) projector (1 + eps) I - Q Q^T
  K_p  (d_ff, p)         keys of protected prompts (optional preservation term)

Every form minimises a weighted least-squares objective over D (d_model, d_model),
  sum_i w_i || D X_i - Y_i ||^2   with X_i = W K_i,
whose minimiser solves the normal equations D B = A with
  B = sum_i w_i X_i X_i^T   and   A = sum_i w_i Y_i X_i^T.
The solution is D = A B^-1, computed as solve(B^T, A^T)^T. The edited weight is D W.

Forms:
  global (the paper): every target is projected,
      a ||D W K0 - P W K0||^2 + b ||D W K_f - P V||^2 + lam ||D W - P W||^2
      (+ c ||D W K_p - P W K_p||^2),  so D = P D0 and, for EVERY key k,
      Q^T (D W k) = eps Q^T (D0 W k).
  key-gated (ours): the projector acts only on the forget term,
      a ||D W K0 - W K0||^2 + b ||D W K_f - P V||^2 + lam ||D W - W||^2
      + c ||D W K_p - W K_p||^2.
"""

from __future__ import annotations

import torch

from zerounlearn.errors import NonFiniteResult

DTYPE = torch.float64


def _f64(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """x (detached) in float64, on `device` when given (the solve runs where W lives)."""
    return x.detach().to(device=device if device is not None else x.device, dtype=DTYPE)


def sensitive_basis(m_f: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis Q (d_model, r) of span(M_f); r <= n drops tiny singular values.

    m_f: (d_model, n). A singular value is kept when above rtol * the largest.
    """
    m = _f64(m_f)
    if not torch.isfinite(m).all():
        raise NonFiniteResult("the sensitive states are not finite")
    u, s, _ = torch.linalg.svd(m, full_matrices=False)  # u (d_model, n), s (n,)
    if s.numel() == 0 or s.max() == 0:
        return m.new_zeros((m.shape[0], 0))
    keep = s > rtol * s.max()
    q: torch.Tensor = u[:, keep].contiguous()  # (d_model, r)
    return q


def projector(q: torch.Tensor, eps: float) -> torch.Tensor:
    """P = (1 + eps) I - Q Q^T, (d_model, d_model): removes span(Q) up to a factor eps."""
    q = _f64(q)
    d = q.shape[0]
    return (1.0 + eps) * torch.eye(d, dtype=DTYPE, device=q.device) - q @ q.T


def _normal_b(
    w: torch.Tensor,
    c: torch.Tensor,
    k_f: torch.Tensor,
    a: float,
    b: float,
    lam: float,
    k_p: torch.Tensor | None,
    c_p: float,
) -> torch.Tensor:
    """B = W (a C + b K_f K_f^T + c K_p K_p^T + lam I) W^T, (d_model, d_model)."""
    s_kk = a * c + b * (k_f @ k_f.T)  # (d_ff, d_ff)
    if k_p is not None and c_p > 0:
        s_kk = s_kk + c_p * (k_p @ k_p.T)
    s_kk = s_kk + lam * torch.eye(s_kk.shape[0], dtype=DTYPE, device=s_kk.device)
    return w @ s_kk @ w.T  # (d_model, d_ff) @ (d_ff, d_ff) @ (d_ff, d_model)


def _preserve_vk(w: torch.Tensor, k_p: torch.Tensor | None, c_p: float) -> torch.Tensor | None:
    """c W K_p K_p^T, (d_model, d_ff), or None without protected keys."""
    if k_p is None or c_p <= 0 or k_p.shape[1] == 0:
        return None
    return c_p * (w @ k_p) @ k_p.T  # (d_model, p) @ (p, d_ff)


def solve_normal(a_mat: torch.Tensor, b_mat: torch.Tensor) -> torch.Tensor:
    """D = A B^-1 via solve(B^T, A^T)^T; raises NonFiniteResult on NaN/inf or singular B."""
    if not (torch.isfinite(a_mat).all() and torch.isfinite(b_mat).all()):
        raise NonFiniteResult("the normal equations of the edit are not finite")
    try:
        d: torch.Tensor = torch.linalg.solve(b_mat.T, a_mat.T).T  # (d_model, d_model)
    except RuntimeError as exc:  # torch.linalg.LinAlgError derives from RuntimeError
        raise NonFiniteResult("the normal equations of the edit are singular") from exc
    if not torch.isfinite(d).all():
        raise NonFiniteResult("the edit matrix D is not finite")
    return d


def multiplicative_update(
    w: torch.Tensor,
    c: torch.Tensor,
    k_f: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor,
    *,
    gated: bool,
    a: float,
    b: float,
    lam: float,
    k_p: torch.Tensor | None = None,
    c_p: float = 0.0,
) -> torch.Tensor:
    """D (d_model, d_model) float64 for W <- D W, with S_VK = a W C + b V' K_f^T
    (+ c W K_p K_p^T) and the same B for both forms; `gated` says where P applies:
      global (the paper, gated=False):  V' = V,    A = P (S_VK + lam W) W^T
      key-gated (ours, gated=True):     V' = P V,  A = (S_VK + lam W) W^T
    """
    dev = w.device
    w, c, k_f, v, p = (_f64(x, dev) for x in (w, c, k_f, v, p))
    k_p = None if k_p is None else _f64(k_p, dev)
    target = p @ v if gated else v  # (d_model, n)
    s_vk = a * (w @ c) + b * (target @ k_f.T)  # (d_model, d_ff)
    extra = _preserve_vk(w, k_p, c_p)
    if extra is not None:
        s_vk = s_vk + extra
    kept = s_vk + lam * w  # (d_model, d_ff)
    a_mat = (kept if gated else p @ kept) @ w.T  # (d_model, d_model)
    b_mat = _normal_b(w, c, k_f, a, b, lam, k_p, c_p)
    return solve_normal(a_mat, b_mat)


def unconstrained_update(
    w: torch.Tensor,
    c: torch.Tensor,
    k_f: torch.Tensor,
    v: torch.Tensor,
    *,
    a: float,
    b: float,
    lam: float,
    k_p: torch.Tensor | None = None,
    c_p: float = 0.0,
) -> torch.Tensor:
    """D0, the plain least-squares map (no projector): the global form with P = I."""
    eye = torch.eye(w.shape[0], dtype=DTYPE, device=w.device)
    return multiplicative_update(w, c, k_f, v, eye, gated=False, a=a, b=b, lam=lam, k_p=k_p,
                                 c_p=c_p)


def direct_update(
    w: torch.Tensor,
    c: torch.Tensor,
    k_f: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor | None,
    *,
    a: float,
    b: float,
    lam: float,
    k_p: torch.Tensor | None = None,
    c_p: float = 0.0,
    gated: bool = True,
    project: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
    anchor_share: float = 1.0,
) -> torch.Tensor:
    """Ours, "additive": solve for the new weight W' (d_model, d_ff) itself, not W' = D W.

    Minimises the same objective with D W replaced by a free W':
      a ||W' K0 - T W K0||^2 + b ||W' K_f - P V||^2 + c ||W' K_p - T W K_p||^2
      + lam ||W' - T W||^2,   T = I (key-gated, gated=True) or P (global; P = None: I).
    Normal equations: W' S_KK = S_VK with S_KK = a C + b K_f K_f^T + c K_p K_p^T + lam I
    (d_ff, d_ff). W' = D W can only change outputs through W k (d_model numbers), so
    keys with similar outputs cannot be told apart; W' works in key space (d_ff), MEMIT's
    setting, where the keys of different facts are far more separable.
    project (n,) bool: which forget columns get P V; the others keep V (a record whose
    neutral target is already reached needs no sensitive direction removed).
    anchor (d_model, d_ff): the corpus term keeps a blend of anchor's outputs and W's,
    a ||W' K0 - T (s A + (1 - s) W) K0||^2 with s = anchor_share (A: the base weight of
    an edited chain, cfg.corpus_anchor).
    """
    dev = w.device
    w, c, k_f, v = (_f64(x, dev) for x in (w, c, k_f, v))
    k_p = None if k_p is None else _f64(k_p, dev)
    eye_d = torch.eye(w.shape[0], dtype=DTYPE, device=w.device)
    p = eye_d if p is None else _f64(p, dev)
    t = eye_d if gated else p  # where the kept outputs are sent
    tw = t @ w  # (d_model, d_ff)
    pv = p @ v  # (d_model, n)
    if project is not None:
        pv = torch.where(project.to(pv.device)[None, :], pv, v)
    keep = tw if anchor is None else (  # the weight whose corpus outputs are kept
        t @ (anchor_share * _f64(anchor, dev) + (1.0 - anchor_share) * w))
    s_vk = a * (keep @ c) + b * (pv @ k_f.T) + lam * tw  # (d_model, d_ff)
    s_kk = a * c + b * (k_f @ k_f.T) + lam * torch.eye(c.shape[0], dtype=DTYPE, device=c.device)
    if k_p is not None and c_p > 0 and k_p.shape[1] > 0:
        s_vk = s_vk + c_p * (tw @ k_p) @ k_p.T  # (d_model, p) @ (p, d_ff)
        s_kk = s_kk + c_p * (k_p @ k_p.T)
    return solve_normal(s_vk, s_kk)  # W' = S_VK S_KK^-1, (d_model, d_ff)


def projected_progress(
    w: torch.Tensor, k_f: torch.Tensor, v: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """Per record (n,): how far the projected target P V* moves the output W K_f along
    the shift V* - W K_f it needs, in units of that shift (1: all of it; < 0: backwards).

    On a model edited before, W K_f can hold an earlier edit's push towards the neutral
    target; span(M_f) then contains that push, and removing it (P V*) undoes what the
    record needs (seen on the tiny GPT-2: -1.2, the edit made the answer more likely).
    """
    dev = w.device
    w, k_f, v, p = (_f64(x, dev) for x in (w, k_f, v, p))
    out = w @ k_f  # (d_model, n)
    need = v - out  # (d_model, n)
    moved = p @ v - out  # (d_model, n)
    return (moved * need).sum(0) / (need * need).sum(0).clamp_min(1e-30)


def checked_cast(w_new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """w_new cast to like's dtype and device; NonFiniteResult on NaN/inf."""
    if not torch.isfinite(w_new).all():
        raise NonFiniteResult("the edited weight is not finite")
    return w_new.to(dtype=like.dtype, device=like.device)


def apply_update(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W_new = D W (d_model, d_ff), cast back to W's dtype and device."""
    return checked_cast(_f64(d, w.device) @ _f64(w), w)  # (d_model, d_model) @ (d_model, d_ff)
