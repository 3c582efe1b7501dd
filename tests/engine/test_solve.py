"""The closed form on random small matrices: normal equations and orthogonality."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from zerounlearn import solve
from zerounlearn.errors import NonFiniteResult

D_MODEL, D_FF, N, N0, NP = 6, 10, 3, 40, 4
A, B, LAM, C_P, EPS = 3.0, 5.0, 0.5, 2.0, 0.01


def _problem(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    k0 = r(D_FF, N0)  # corpus keys
    return {
        "w": r(D_MODEL, D_FF),
        "k0": k0,
        "c": k0 @ k0.T / N0,  # (d_ff, d_ff) = E[k k^T]
        "k_f": r(D_FF, N),
        "v": r(D_MODEL, N),
        "m_f": r(D_MODEL, N),
        "k_p": r(D_FF, NP),
    }


def _objective(d: torch.Tensor, x: dict[str, torch.Tensor], p: torch.Tensor, gated: bool):
    """The objective each form minimises, written term by term (C = K0 K0^T / N0)."""
    w, k0, k_f, v, k_p = x["w"], x["k0"], x["k_f"], x["v"], x["k_p"]
    keep = torch.eye(D_MODEL, dtype=torch.float64) if gated else p  # target map of W
    corpus = A * ((d @ w @ k0 - keep @ w @ k0) ** 2).sum() / N0
    forget = B * ((d @ w @ k_f - p @ v) ** 2).sum()
    reg = LAM * ((d @ w - keep @ w) ** 2).sum()
    preserve = C_P * ((d @ w @ k_p - keep @ w @ k_p) ** 2).sum()
    return corpus + forget + reg + preserve


@pytest.mark.parametrize("gated", [False, True], ids=["global", "key-gated"])
def test_solution_satisfies_normal_equations(gated: bool) -> None:
    x = _problem()
    p = solve.projector(solve.sensitive_basis(x["m_f"]), EPS)
    d = solve.multiplicative_update(x["w"], x["c"], x["k_f"], x["v"], p, gated=gated, a=A, b=B,
                                    lam=LAM, k_p=x["k_p"], c_p=C_P)
    d = d.clone().requires_grad_(True)
    loss = _objective(d, x, p, gated)
    (grad,) = torch.autograd.grad(loss, d)
    # Scale: the gradient's size at D = 0.
    d0 = torch.zeros_like(d, requires_grad=True)
    (grad_at_zero,) = torch.autograd.grad(_objective(d0, x, p, gated), d0)
    assert grad.norm() < 1e-9 * grad_at_zero.norm()
    # And it is a minimum: any small move increases the objective.
    step = 1e-3 * torch.randn(D_MODEL, D_MODEL, dtype=torch.float64)
    assert _objective(d.detach() + step, x, p, gated) > loss.detach()


def assert_minimises(objective: Callable[[torch.Tensor], torch.Tensor],
                     w_new: torch.Tensor) -> None:
    """The objective's gradient at w_new vanishes (relative to its size at 0)."""
    wp = w_new.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(wp), wp)
    zero = torch.zeros_like(wp, requires_grad=True)
    (grad0,) = torch.autograd.grad(objective(zero), zero)
    assert grad.norm() < 1e-9 * grad0.norm()


@pytest.mark.parametrize("gated", [False, True], ids=["global", "key-gated"])
def test_additive_form_satisfies_its_normal_equations(gated: bool) -> None:
    """W' free (d_model, d_ff): the same objective with D W replaced by W'."""
    x = _problem(3)
    p = solve.projector(solve.sensitive_basis(x["m_f"]), EPS)
    w_new = solve.direct_update(x["w"], x["c"], x["k_f"], x["v"], p, a=A, b=B, lam=LAM,
                                k_p=x["k_p"], c_p=C_P, gated=gated)
    keep = torch.eye(D_MODEL, dtype=torch.float64) if gated else p

    def objective(wp: torch.Tensor) -> torch.Tensor:
        w, k0, k_f, v, k_p = x["w"], x["k0"], x["k_f"], x["v"], x["k_p"]
        return (A * ((wp @ k0 - keep @ w @ k0) ** 2).sum() / N0
                + B * ((wp @ k_f - p @ v) ** 2).sum()
                + LAM * ((wp - keep @ w) ** 2).sum()
                + C_P * ((wp @ k_p - keep @ w @ k_p) ** 2).sum())

    assert_minimises(objective, w_new)
    # Its optimum is at least as good as the multiplicative one (W' = D W is a subset).
    d = solve.multiplicative_update(x["w"], x["c"], x["k_f"], x["v"], p, gated=gated, a=A, b=B,
                                    lam=LAM, k_p=x["k_p"], c_p=C_P)
    assert objective(w_new) <= objective(d @ x["w"]) + 1e-9


def test_additive_form_with_an_anchor_keeps_the_anchor_corpus_outputs() -> None:
    """corpus_anchor: the corpus term keeps (s A + (1 - s) W) K0 (A the weight before a
    chain's first edit), the ridge and the protected keys still keep W's outputs."""
    x = _problem(4)
    g = torch.Generator().manual_seed(9)
    anchor = x["w"] + 0.3 * torch.randn(D_MODEL, D_FF, generator=g, dtype=torch.float64)
    share = 0.75
    w_new = solve.direct_update(x["w"], x["c"], x["k_f"], x["v"], None, a=A, b=B, lam=LAM,
                                k_p=x["k_p"], c_p=C_P, anchor=anchor, anchor_share=share)
    kept = share * anchor + (1 - share) * x["w"]

    def objective(wp: torch.Tensor) -> torch.Tensor:
        w, k0, k_f, v, k_p = x["w"], x["k0"], x["k_f"], x["v"], x["k_p"]
        return (A * ((wp @ k0 - kept @ k0) ** 2).sum() / N0
                + B * ((wp @ k_f - v) ** 2).sum()
                + LAM * ((wp - w) ** 2).sum()
                + C_P * ((wp @ k_p - w @ k_p) ** 2).sum())

    assert_minimises(objective, w_new)
    # the anchor's corpus outputs are closer than without it
    plain = solve.direct_update(x["w"], x["c"], x["k_f"], x["v"], None, a=A, b=B, lam=LAM,
                                k_p=x["k_p"], c_p=C_P)
    drift = ((w_new - anchor) @ x["k0"]).norm()
    assert drift < ((plain - anchor) @ x["k0"]).norm()
    # an anchor equal to W is the plain solve
    same = solve.direct_update(x["w"], x["c"], x["k_f"], x["v"], None, a=A, b=B, lam=LAM,
                               k_p=x["k_p"], c_p=C_P, anchor=x["w"])
    assert torch.allclose(same, plain, atol=1e-12)


def test_global_form_removes_sensitive_directions_for_every_key() -> None:
    x = _problem(1)
    q = solve.sensitive_basis(x["m_f"])
    p = solve.projector(q, EPS)
    kw = {"a": A, "b": B, "lam": LAM}
    d = solve.multiplicative_update(x["w"], x["c"], x["k_f"], x["v"], p, gated=False, **kw)
    d0 = solve.unconstrained_update(x["w"], x["c"], x["k_f"], x["v"], **kw)
    k = torch.randn(D_FF, 7, dtype=torch.float64)  # random inputs
    lhs = q.T @ (d @ x["w"] @ k)  # (r, 7)
    rhs = EPS * (q.T @ (d0 @ x["w"] @ k))
    torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=1e-10)
    # Outside span(Q) the global form is D0 scaled by (1 + eps).
    out = torch.eye(D_MODEL, dtype=torch.float64) - q @ q.T
    torch.testing.assert_close(out @ d, (1 + EPS) * out @ d0, rtol=1e-8, atol=1e-10)


def test_sensitive_basis_is_orthonormal_and_drops_dependent_columns() -> None:
    m = torch.randn(D_MODEL, 2, dtype=torch.float64)
    m = torch.cat([m, m[:, :1] * 3.0], dim=1)  # rank 2, three columns
    q = solve.sensitive_basis(m, rtol=1e-8)
    assert q.shape == (D_MODEL, 2)
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    # span(Q) = span(M): projecting M onto Q leaves it unchanged.
    torch.testing.assert_close(q @ (q.T @ m), m)


def test_key_gated_form_keeps_corpus_outputs_better_than_global() -> None:
    x = _problem(2)
    p = solve.projector(solve.sensitive_basis(x["m_f"]), EPS)
    kw = {"a": A, "b": B, "lam": LAM}
    w, k0 = x["w"], x["k0"]
    d_g = solve.multiplicative_update(w, x["c"], x["k_f"], x["v"], p, gated=False, **kw)
    d_k = solve.multiplicative_update(w, x["c"], x["k_f"], x["v"], p, gated=True, **kw)
    err_g = (d_g @ w @ k0 - w @ k0).norm()
    err_k = (d_k @ w @ k0 - w @ k0).norm()
    assert err_k < err_g


def test_apply_update_casts_back_and_refuses_non_finite() -> None:
    w = torch.randn(D_MODEL, D_FF)
    d = torch.eye(D_MODEL, dtype=torch.float64) * 2
    out = solve.apply_update(d, w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, 2 * w)
    with pytest.raises(NonFiniteResult):
        solve.apply_update(d * float("nan"), w)
    nan_c = torch.full((D_FF, D_FF), float("nan"), dtype=torch.float64)
    x = _problem()
    with pytest.raises(NonFiniteResult):
        solve.multiplicative_update(
            x["w"], nan_c, x["k_f"], x["v"], torch.eye(D_MODEL, dtype=torch.float64),
            gated=False, a=A, b=B, lam=LAM,
        )
