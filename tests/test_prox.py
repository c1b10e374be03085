"""Proxes of mobileprune.math.prox against brute force over all supports (methods.md section 2).

References are written independently in numpy float64: for a fixed support the convex
part is solved in closed form (group shrink of the soft-thresholded entries, and the
leaf-to-root composition for the tree), and those closed forms are themselves checked
against scipy's SLSQP on a smooth conic reformulation.  Results are compared on the
objective value (ties may be broken either way).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mobileprune.math import prox as P
from mobileprune.errors import ConfigError

RTOL = 1e-9


# ----------------------------------------------------------------- numpy references
def _masks(m: int) -> np.ndarray:
    return np.array(list(itertools.product([False, True], repeat=m)), dtype=bool).reshape(-1, m)


def np_obj(x, v, lam, eta, beta=0.0):
    """1/2||x-v||^2 + lam||x|| + eta||x||_0 + beta||x||_1 over the last axis."""
    return (0.5 * ((x - v) ** 2).sum(-1) + lam * np.sqrt((x * x).sum(-1))
            + eta * (x != 0).sum(-1) + beta * np.abs(x).sum(-1))


def fixed_support_convex(u, lam, beta):
    """argmin over x of 1/2||x-u||^2 + lam||x|| + beta||x||_1 (rows of u): group shrink of soft(u)."""
    s = np.sign(u) * np.maximum(np.abs(u) - beta, 0.0)
    nrm = np.sqrt((s * s).sum(-1, keepdims=True))
    fac = np.where(nrm > lam, 1.0 - lam / np.where(nrm > 0, nrm, 1.0), 0.0)
    return s * fac


def brute_l0(v, lam, eta, beta=0.0):
    """Global min of 1/2||x-v||^2 + lam||x|| + eta||x||_0 + beta||x||_1, all supports."""
    M = _masks(v.size)
    X = fixed_support_convex(np.where(M, v, 0.0), lam, beta)
    vals = np_obj(X, v, lam, eta, beta)
    return vals.min()


def np_tree_obj(x, v, gamma, delta, alpha):
    return (0.5 * ((x - v) ** 2).sum((-1, -2)) + delta * np.sqrt((x * x).sum((-1, -2)))
            + gamma * np.sqrt((x * x).sum(-1)).sum(-1) + alpha * (x != 0).sum((-1, -2)))


def tree_fixed_support(V, gamma, delta):
    """Convex nested-norm prox (leaf-to-root composition) of V[..., C, n]."""
    u = np.sqrt((V * V).sum(-1, keepdims=True))
    W = V * np.where(u > gamma, 1.0 - gamma / np.where(u > 0, u, 1.0), 0.0)
    Z = np.sqrt((W * W).sum((-1, -2), keepdims=True))
    return W * np.where(Z > delta, 1.0 - delta / np.where(Z > 0, Z, 1.0), 0.0)


def brute_tree(v, gamma, delta, alpha):
    C, n = v.shape
    M = _masks(C * n).reshape(-1, C, n)
    X = tree_fixed_support(np.where(M, v, 0.0), gamma, delta)
    return np_tree_obj(X, v, gamma, delta, alpha).min()


def slsqp_sgl(v, lam, beta, starts=3, seed=0):
    """min 1/2||x-v||^2 + lam T + beta sum s  s.t. T^2 >= ||x||^2, s >= |x|, T, s >= 0 (SLSQP)."""
    n = v.size
    rng = np.random.default_rng(seed)

    def f(z):
        x, T, s = z[:n], z[n], z[n + 1:]
        return 0.5 * ((x - v) ** 2).sum() + lam * T + beta * s.sum()

    def jac(z):
        x = z[:n]
        return np.concatenate([x - v, [lam], np.full(n, beta)])

    cons = [
        {"type": "ineq", "fun": lambda z: z[n] ** 2 - (z[:n] ** 2).sum(),
         "jac": lambda z: np.concatenate([-2 * z[:n], [2 * z[n]], np.zeros(n)])},
        {"type": "ineq", "fun": lambda z: z[n + 1:] - z[:n],
         "jac": lambda z: np.hstack([-np.eye(n), np.zeros((n, 1)), np.eye(n)])},
        {"type": "ineq", "fun": lambda z: z[n + 1:] + z[:n],
         "jac": lambda z: np.hstack([np.eye(n), np.zeros((n, 1)), np.eye(n)])},
    ]
    bounds = [(None, None)] * n + [(0, None)] * (n + 1)
    best = math.inf
    for i in range(starts):
        x0 = v * (0.5 if i == 0 else rng.uniform(0, 1)) + (0 if i == 0 else rng.normal(size=n) * 0.1)
        z0 = np.concatenate([x0, [np.linalg.norm(x0) + 0.1], np.abs(x0) + 0.1])
        r = minimize(f, z0, jac=jac, constraints=cons, bounds=bounds, method="SLSQP",
                     options={"ftol": 1e-14, "maxiter": 500})
        x = r.x[:n]
        best = min(best, float(np_obj(x, v, lam, 0.0, beta)))
    return best


def slsqp_tree(v, gamma, delta, starts=3, seed=0):
    """Convex tree prox min via SLSQP on the conic form (t_c >= ||x_c||, T >= ||x||)."""
    C, n = v.shape
    m = C * n
    rng = np.random.default_rng(seed)

    def f(z):
        x = z[:m]
        return 0.5 * ((x - v.ravel()) ** 2).sum() + gamma * z[m:m + C].sum() + delta * z[m + C]

    def jac(z):
        return np.concatenate([z[:m] - v.ravel(), np.full(C, gamma), [delta]])

    def cfun(z):
        X = z[:m].reshape(C, n)
        return np.concatenate([z[m:m + C] ** 2 - (X * X).sum(1), [z[m + C] ** 2 - (X * X).sum()]])

    def cjac(z):
        X = z[:m].reshape(C, n)
        J = np.zeros((C + 1, m + C + 1))
        for c in range(C):
            J[c, c * n:(c + 1) * n] = -2 * X[c]
            J[c, m + c] = 2 * z[m + c]
        J[C, :m] = -2 * z[:m]
        J[C, m + C] = 2 * z[m + C]
        return J

    bounds = [(None, None)] * m + [(0, None)] * (C + 1)
    best = math.inf
    for i in range(starts):
        x0 = v * (0.5 if i == 0 else rng.uniform(0, 1)) + (0 if i == 0 else rng.normal(size=v.shape) * 0.1)
        z0 = np.concatenate([x0.ravel(), np.sqrt((x0 * x0).sum(1)) + 0.1, [np.linalg.norm(x0) + 0.1]])
        r = minimize(f, z0, jac=jac, constraints=[{"type": "ineq", "fun": cfun, "jac": cjac}],
                     bounds=bounds, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
        x = r.x[:m].reshape(C, n)
        best = min(best, float(np_tree_obj(x, v, gamma, delta, 0.0)))
    return best


def assert_matches(ours: float, ref: float, what: str = ""):
    tol = RTOL * max(1.0, abs(ref))
    assert ours >= ref - tol, f"{what}: result {ours!r} beats brute force {ref!r} (bad reference)"
    assert ours <= ref + tol, f"{what}: result {ours!r} worse than brute force {ref!r}"


def _t(a, dtype=torch.float64):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


# ------------------------------------------- checks of the fixed-support references
def test_fixed_support_closed_forms_match_slsqp():
    rng = np.random.default_rng(1)
    for i in range(25):
        n = int(rng.integers(1, 6))
        v = rng.normal(size=n) * rng.choice([0.5, 2.0])
        lam, beta = rng.uniform(0, 1.2), rng.choice([0.0, rng.uniform(0, 0.8)])
        closed = float(np_obj(fixed_support_convex(v[None], lam, beta)[0], v, lam, 0.0, beta))
        ref = slsqp_sgl(v, lam, beta, seed=i)
        assert closed <= ref + 1e-12 and closed >= ref - 1e-7, (closed, ref)
    for i in range(15):
        C, n = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        v = rng.normal(size=(C, n))
        gamma, delta = rng.uniform(0, 1), rng.uniform(0, 1.5)
        closed = float(np_tree_obj(tree_fixed_support(v, gamma, delta), v, gamma, delta, 0.0))
        ref = slsqp_tree(v, gamma, delta, seed=i)
        assert closed <= ref + 1e-12 and closed >= ref - 1e-7, (closed, ref)


# ---------------------------------------------------------- random brute-force sweep
def _random_params(rng, G, per_group):
    def draw(lo, hi, p0):
        vals = np.where(rng.uniform(size=G) < p0, 0.0, rng.uniform(lo, hi, size=G))
        return vals if per_group else float(vals[0])
    return draw(0, 1.5, 0.1), draw(0, 0.6, 0.1), draw(0, 0.5, 0.3)


def _as_param(p):
    return _t(p) if isinstance(p, np.ndarray) else p


def _row(p, g):
    return float(p[g]) if isinstance(p, np.ndarray) else p


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("per_group", [False, True])
def test_all_proxes_vs_brute_force(n, per_group):
    rng = np.random.default_rng(100 * n + per_group)
    batches = 30 if per_group else 6  # per_group: one batch; scalar params: several
    G = batches if per_group else 5
    reps = 1 if per_group else batches
    for _ in range(reps):
        V = rng.normal(size=(G, n)) * rng.choice([0.3, 1.0, 3.0])
        if rng.uniform() < 0.3:  # integer entries -> magnitude ties
            V = np.round(V * 2) / 2
        lam, eta, beta = _random_params(rng, G, per_group)
        v = _t(V)
        outs = {
            "l0_group_lasso": (P.l0_group_lasso(v, _as_param(lam), _as_param(eta)), lam, eta, 0.0),
            "l0_l1_group_lasso": (P.l0_l1_group_lasso(v, _as_param(lam), _as_param(eta), _as_param(beta)),
                                  lam, eta, beta),
            "group_lasso": (P.group_lasso(v, _as_param(lam)), lam, 0.0, 0.0),
            "sparse_group_lasso": (P.sparse_group_lasso(v, _as_param(lam), _as_param(beta)), lam, 0.0, beta),
            "hard_threshold": (P.hard_threshold(v, _as_param(eta)), 0.0, eta, 0.0),
            "soft_threshold": (P.soft_threshold(v, _as_param(beta)), 0.0, 0.0, beta),
        }
        for name, (x, la, et, be) in outs.items():
            assert x.dtype == torch.float64 and x.shape == v.shape
            X = x.numpy()
            for g in range(G):
                lg, eg, bg = _row(la, g), _row(et, g), _row(be, g)
                if name == "hard_threshold":  # separable: brute force per entry
                    ref = sum(brute_l0(V[g, j:j + 1], 0.0, eg) for j in range(n))
                elif name == "soft_threshold":
                    ref = sum(brute_l0(V[g, j:j + 1], 0.0, 0.0, bg) for j in range(n))
                else:
                    ref = brute_l0(V[g], lg, eg, bg)
                ours = float(np_obj(X[g], V[g], lg, eg, bg))
                assert_matches(ours, ref, f"{name} row {g} v={V[g]} lam={lg} eta={eg} beta={bg}")


def test_float32_matches_float64():
    rng = np.random.default_rng(7)
    V = rng.normal(size=(300, 5))
    lam, eta = 0.7, 0.15
    x32 = P.l0_group_lasso(_t(V, torch.float32), lam, eta)
    assert x32.dtype == torch.float32
    ours = np_obj(x32.double().numpy(), V, lam, eta)
    ref = np.array([brute_l0(V[g], lam, eta) for g in range(len(V))])
    assert np.all(ours <= ref + 1e-5 * np.maximum(1, np.abs(ref)))


def test_l2_shrink_whole_tensor():
    rng = np.random.default_rng(3)
    for shape in [(3, 4), (2, 3, 2, 2), (5,), ()]:
        V = rng.normal(size=shape)
        v = _t(V)
        nrm = float(np.linalg.norm(V.ravel()))
        for lam in [0.0, 0.5 * nrm, nrm, 2 * nrm]:
            x = P.l2_shrink(v, lam)
            assert x.shape == v.shape
            ref = brute_l0(V.ravel(), lam, 0.0) if V.size <= 6 else None
            exp = V * max(0.0, 1 - lam / nrm)
            np.testing.assert_allclose(x.numpy(), exp, rtol=1e-12, atol=1e-15)
            if ref is not None:
                assert_matches(float(np_obj(x.numpy().ravel(), V.ravel(), lam, 0.0)), ref)
    assert torch.equal(P.l2_shrink(torch.zeros(3, 2), 0.1), torch.zeros(3, 2))
    big = torch.full((4, 4), 1e30)
    assert torch.allclose(P.l2_shrink(big, 2e30), big * 0.5)
    with pytest.raises(ConfigError, match="lam"):
        P.l2_shrink(big, torch.ones(4))


# --------------------------------------------------------------------- edge cases
def test_all_zeros():
    z = torch.zeros(4, 3, dtype=torch.float64)
    for f in (lambda v: P.l0_group_lasso(v, 0.3, 0.1), lambda v: P.l0_group_lasso(v, 0.0, 0.0),
              lambda v: P.group_lasso(v, 0.0), lambda v: P.sparse_group_lasso(v, 0.2, 0.1),
              lambda v: P.l0_l1_group_lasso(v, 0.2, 0.1, 0.1), lambda v: P.hard_threshold(v, 0.0),
              lambda v: P.soft_threshold(v, 0.0)):
        out = f(z)
        assert torch.equal(out, z) and not torch.isnan(out).any()
    t = torch.zeros(2, 3, 2, dtype=torch.float64)
    assert torch.equal(P.tree_l0_group_lasso(t, 0.1, 0.1, 0.1), t)
    assert torch.equal(P.tree_l0_group_lasso(t, 0.0, 0.0, 0.0), t)
    assert torch.equal(P.tree_prox_composition(t, 0.0, 0.0, 0.0), t)


def test_ties():
    # equal magnitudes: any k of them is as good as any other; objective must match
    v = _t([[1.0, -1.0, 1.0, -1.0], [2.0, 2.0, 0.5, 0.5], [3.0, 0.0, 0.0, 3.0]])
    for lam, eta in [(0.5, 0.1), (1.0, 0.3), (0.0, 0.5), (2.0, 0.0)]:
        x = P.l0_group_lasso(v, lam, eta)
        for g in range(3):
            assert_matches(float(np_obj(x[g].numpy(), v[g].numpy(), lam, eta)), brute_l0(v[g].numpy(), lam, eta))
    # score tie between k = 0 and k = 1: |v| == lam + sqrt(2 eta) -> zero (sparser) returned
    x = P.l0_group_lasso(_t([[2.0], [-2.0]]), 1.0, 0.5)
    assert torch.equal(x, torch.zeros(2, 1, dtype=torch.float64))
    # hard threshold exactly at the level keeps nothing
    assert torch.equal(P.hard_threshold(_t([1.0, -1.0, 1.5]), 0.5), _t([0.0, 0.0, 1.5]))


def test_lam_zero_is_hard_threshold():
    rng = np.random.default_rng(11)
    v = _t(rng.normal(size=(200, 6)))
    for eta in [0.0, 0.05, 0.3, 1.0]:
        assert torch.equal(P.l0_group_lasso(v, 0.0, eta), P.hard_threshold(v, eta))
    tau = math.sqrt(2 * 0.3)
    assert torch.equal(P.hard_threshold(v, 0.3), torch.where(v.abs() > tau, v, torch.zeros_like(v)))


def test_eta_zero_is_group_soft_threshold():
    rng = np.random.default_rng(12)
    v = _t(rng.normal(size=(200, 6)))
    for lam in [0.0, 0.5, 2.0, 3.0]:
        a, b = P.l0_group_lasso(v, lam, 0.0), P.group_lasso(v, lam)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        nrm = v.norm(dim=1, keepdim=True)
        torch.testing.assert_close(b, v * torch.clamp(1 - lam / nrm, min=0), rtol=1e-12, atol=1e-14)


def test_singletons():
    rng = np.random.default_rng(13)
    v = _t(rng.normal(size=(500, 1)) * 2)
    lam, eta = 0.4, 0.2
    x = P.l0_group_lasso(v, lam, eta)
    survive = v.abs() > lam + math.sqrt(2 * eta)
    exp = torch.where(survive, torch.sign(v) * (v.abs() - lam), torch.zeros_like(v))
    torch.testing.assert_close(x, exp, rtol=1e-12, atol=1e-14)
    assert 0 < int(survive.sum()) < 500


def test_huge_values_float64_and_float32():
    rng = np.random.default_rng(14)
    V = rng.normal(size=(50, 5))
    lam, eta, beta = 0.8, 0.2, 0.1
    s = 1e30
    x = P.l0_l1_group_lasso(_t(V * s), lam * s, eta * s * s, beta * s)
    assert torch.isfinite(x).all()
    for g in range(50):
        ref = brute_l0(V[g] * s, lam * s, eta * s * s, beta * s)
        assert_matches(float(np_obj(x[g].numpy(), V[g] * s, lam * s, eta * s * s, beta * s)), ref)
    # scale equivariance far beyond where squares overflow (1e200^2 = inf)
    base = P.l0_group_lasso(_t(V), lam, 1e-300)
    big = P.l0_group_lasso(_t(V) * 1e200, lam * 1e200, 0.0)
    torch.testing.assert_close(big / 1e200, P.group_lasso(_t(V), lam), rtol=1e-12, atol=0)
    assert torch.isfinite(base).all()
    torch.testing.assert_close(P.group_lasso(_t(V) * 1e200, lam * 1e200) / 1e200, P.group_lasso(_t(V), lam))
    # float32 at 1e30 (eta ~ 1e60 only representable as a Python float)
    v32 = _t(V * s, torch.float32)
    x32 = P.l0_group_lasso(v32, lam * s, eta * s * s)
    assert x32.dtype == torch.float32 and torch.isfinite(x32).all()
    x64 = P.l0_group_lasso(_t(V), lam, eta)
    torch.testing.assert_close(x32.double() / s, x64, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(P.group_lasso(v32, lam * s)).all()
    assert torch.isfinite(P.hard_threshold(v32, eta * s * s)).all()
    t32 = _t(rng.normal(size=(4, 3, 3)) * s, torch.float32)
    assert torch.isfinite(P.tree_l0_group_lasso(t32, 0.3 * s, 0.5 * s, 0.05 * s * s)).all()
    assert torch.isfinite(P.tree_prox_composition(t32, 0.3 * s, 0.5 * s, 0.05 * s * s)).all()
    # tiny values: no 0/0
    tiny = P.l0_group_lasso(_t(V) * 1e-300, 1e-300, 1e-600)
    assert torch.isfinite(tiny).all()


def test_per_group_parameters_equal_rowwise_calls():
    rng = np.random.default_rng(15)
    v = _t(rng.normal(size=(20, 4)))
    lam = _t(rng.uniform(0, 1, 20))
    eta = _t(rng.uniform(0, 0.3, 20))
    beta = _t(rng.uniform(0, 0.3, 20))
    x = P.l0_l1_group_lasso(v, lam, eta, beta)
    for g in range(20):
        xg = P.l0_l1_group_lasso(v[g:g + 1], float(lam[g]), float(eta[g]), float(beta[g]))
        assert torch.equal(x[g:g + 1], xg)
    # tensor params of another dtype (and 0-d tensors) are accepted
    P.l0_group_lasso(v, lam.float(), torch.tensor(0.1))
    P.l0_group_lasso(v.float(), lam, eta)


def test_inputs_not_modified_and_dtype_kept():
    rng = np.random.default_rng(16)
    for dtype in (torch.float32, torch.float64):
        v = _t(rng.normal(size=(6, 4)), dtype)
        lam = _t(rng.uniform(0, 1, 6), dtype)
        v0, lam0 = v.clone(), lam.clone()
        outs = [P.l0_group_lasso(v, lam, 0.1), P.l0_l1_group_lasso(v, lam, 0.1, 0.1), P.group_lasso(v, lam),
                P.sparse_group_lasso(v, lam, 0.1), P.hard_threshold(v, 0.1), P.soft_threshold(v, 0.1),
                P.l2_shrink(v, 0.1), P.l0_group_lasso(v, 0.0, 0.0)]
        t = v.reshape(2, 3, 4)
        outs += [P.tree_l0_group_lasso(t, 0.1, 0.1, 0.1), P.tree_prox_composition(t, 0.1, 0.1, 0.1)]
        assert torch.equal(v, v0) and torch.equal(lam, lam0)
        for o in outs:
            assert o.dtype == dtype
            assert o.data_ptr() != v.data_ptr()


def test_errors():
    v = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="lam"):
        P.l0_group_lasso(v, -0.1, 0.1)
    with pytest.raises(ConfigError, match="eta"):
        P.l0_group_lasso(v, 0.1, float("nan"))
    with pytest.raises(ConfigError, match="eta"):
        P.l0_group_lasso(v, 0.1, torch.tensor([0.1, -1.0, 0.2]))
    with pytest.raises(ConfigError, match="lam.*3 groups"):
        P.l0_group_lasso(v, torch.ones(4), 0.1)
    with pytest.raises(ConfigError, match="beta"):
        P.l0_l1_group_lasso(v, 0.1, 0.1, -1)
    with pytest.raises(ConfigError, match="beta"):
        P.soft_threshold(v, float("nan"))
    with pytest.raises(ConfigError, match="2-D"):
        P.l0_group_lasso(torch.randn(4), 0.1, 0.1)
    with pytest.raises(ConfigError, match="2-D"):
        P.group_lasso(torch.randn(2, 3, 4), 0.1)
    with pytest.raises(ConfigError, match="floating"):
        P.l0_group_lasso(torch.ones(2, 2, dtype=torch.int64), 0.1, 0.1)
    with pytest.raises(ConfigError, match=r"\(roots, columns, n\)"):
        P.tree_l0_group_lasso(v, 0.1, 0.1, 0.1)
    with pytest.raises(ConfigError, match="alpha"):
        P.tree_l0_group_lasso(torch.randn(2, 2, 2), 0.1, 0.1, -0.1)
    with pytest.raises(ConfigError, match="delta"):
        P.tree_prox_composition(torch.randn(2, 2, 2), 0.1, torch.ones(3), 0.1)
    with pytest.raises(ConfigError, match="same shape"):
        P.objective_l0_group_lasso(v, torch.randn(3, 5), 0.1, 0.1)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        P.group_lasso(v, -1.0)
    # +inf is allowed and zeroes everything
    assert torch.equal(P.l0_group_lasso(v, math.inf, 0.0), torch.zeros_like(v))
    assert torch.equal(P.l0_group_lasso(v, 0.0, math.inf), torch.zeros_like(v))
    assert torch.equal(P.group_lasso(v, math.inf), torch.zeros_like(v))


def test_empty():
    assert P.l0_group_lasso(torch.zeros(0, 3), 0.1, 0.1).shape == (0, 3)
    assert P.l0_group_lasso(torch.zeros(3, 0), 0.1, 0.1).shape == (3, 0)
    assert P.tree_l0_group_lasso(torch.zeros(0, 2, 2), 0.1, 0.1, 0.1).shape == (0, 2, 2)


def test_objective_helper():
    v = _t([[3.0, 4.0], [1.0, 0.0]])
    x = _t([[1.5, 2.0], [0.0, 0.0]])
    obj = P.objective_l0_group_lasso(x, v, 0.5, 0.1, beta=0.2)
    exp0 = 0.5 * (1.5 ** 2 + 2 ** 2) + 0.5 * 2.5 + 0.2 + 0.2 * 3.5
    torch.testing.assert_close(obj, _t([exp0, 0.5]))


# ------------------------------------------------------------------------- tree
def _tree_case(rng, R, C, n, per_root):
    V = rng.normal(size=(R, C, n)) * rng.choice([0.5, 1.0, 2.0])
    if rng.uniform() < 0.25:
        V = np.round(V * 2) / 2

    def draw(lo, hi, p0):
        vals = np.where(rng.uniform(size=R) < p0, 0.0, rng.uniform(lo, hi, size=R))
        return vals if per_root else np.full(R, vals[0])
    return V, draw(0, 1.0, 0.15), draw(0, 1.5, 0.15), draw(0, 0.4, 0.15)


def test_tree_vs_brute_force_and_composition():
    rng = np.random.default_rng(21)
    worse = total = 0
    for C, n in itertools.product([1, 2, 3], [1, 2, 3]):
        for per_root in (False, True):
            R = 12
            V, gam, dlt, alp = _tree_case(rng, R, C, n, per_root)
            args = [(_t(a) if per_root else float(a[0])) for a in (gam, dlt, alp)]
            x = P.tree_l0_group_lasso(_t(V), *args).numpy()
            xc = P.tree_prox_composition(_t(V), *args).numpy()
            obj_t = P.objective_tree(_t(x), _t(V), *args).numpy()
            for r in range(R):
                ref = brute_tree(V[r], gam[r], dlt[r], alp[r])
                ours = float(np_tree_obj(x[r], V[r], gam[r], dlt[r], alp[r]))
                comp = float(np_tree_obj(xc[r], V[r], gam[r], dlt[r], alp[r]))
                assert_matches(ours, ref, f"tree C={C} n={n} root {r}")
                assert abs(obj_t[r] - ours) <= 1e-12 * max(1, abs(ours))
                assert ours <= comp + RTOL * max(1.0, abs(comp))
                total += 1
                worse += comp > ours + 1e-9 * max(1.0, abs(ours))
    assert total == 9 * 2 * 12
    # the composition is not exact: strictly worse on a noticeable fraction of cases
    assert worse >= 10, (worse, total)


def test_tree_special_cases():
    rng = np.random.default_rng(22)
    v = _t(rng.normal(size=(30, 3, 4)))
    # alpha = 0: convex tree norm -> composition is exact (Jenatton et al.)
    torch.testing.assert_close(P.tree_l0_group_lasso(v, 0.3, 0.5, 0.0),
                               P.tree_prox_composition(v, 0.3, 0.5, 0.0), rtol=1e-12, atol=1e-14)
    # delta = 0: separates into an l0 + group lasso prox per column
    a = P.tree_l0_group_lasso(v, 0.4, 0.0, 0.1)
    b = P.l0_group_lasso(v.reshape(-1, 4), 0.4, 0.1).reshape(v.shape)
    oa = P.objective_tree(a, v, 0.4, 0.0, 0.1)
    ob = P.objective_tree(b, v, 0.4, 0.0, 0.1)
    torch.testing.assert_close(oa, ob, rtol=1e-12, atol=1e-12)
    # gamma = 0: one l0 + group lasso prox on the whole root
    a = P.tree_l0_group_lasso(v, 0.0, 0.6, 0.1)
    b = P.l0_group_lasso(v.reshape(30, -1), 0.6, 0.1).reshape(v.shape)
    torch.testing.assert_close(P.objective_tree(a, v, 0.0, 0.6, 0.1), P.objective_tree(b, v, 0.0, 0.6, 0.1),
                               rtol=1e-12, atol=1e-12)


def test_tree_huge_values_vs_brute_force():
    rng = np.random.default_rng(23)
    s = 1e30
    V = rng.normal(size=(10, 2, 3))
    g, d, a = 0.3, 0.4, 0.05
    x = P.tree_l0_group_lasso(_t(V * s), g * s, d * s, a * s * s).numpy()
    assert np.isfinite(x).all()
    for r in range(10):
        ref = brute_tree(V[r] * s, g * s, d * s, a * s * s)
        assert_matches(float(np_tree_obj(x[r], V[r] * s, g * s, d * s, a * s * s)), ref)


def test_tree_chunking_gives_same_result(monkeypatch):
    rng = np.random.default_rng(24)
    v = _t(rng.normal(size=(9, 3, 5)))
    gam = _t(rng.uniform(0, 0.5, 9))
    full = P.tree_l0_group_lasso(v, gam, 0.4, 0.05)
    monkeypatch.setattr(P, "_TREE_DP_MAX_ELEMS", 3 * 5 * 6 * 2)  # 2 roots per chunk
    chunked = P.tree_l0_group_lasso(v, gam, 0.4, 0.05)
    assert torch.equal(full, chunked)


def _l0gl_reference(v, lam, eta):
    """Closed form of methods.md 2.1 with a full sort, one row at a time (float64)."""
    import numpy as np
    out = np.zeros_like(v)
    for g, row in enumerate(v):
        a = np.abs(row)
        order = np.argsort(-a, kind="stable")
        y = np.sqrt(np.cumsum(a[order] ** 2))
        best_k, best = 0, 0.0
        for k in range(1, len(a) + 1):
            if y[k - 1] > lam:
                sc = 0.5 * (y[k - 1] - lam) ** 2 - k * eta
                if sc > best + 1e-15:
                    best_k, best = k, sc
        if best_k:
            keep = order[:best_k]
            out[g, keep] = row[keep] * (1 - lam / y[best_k - 1])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_l0_group_lasso_candidate_cut_matches_full_sort(seed):
    # long sparse rows: most entries below tau = sqrt(2 eta), so only a few are sorted
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(40, 300, generator=g, dtype=torch.float64) * 0.05
    v[torch.rand(v.shape, generator=g, dtype=torch.float64) < 0.8] *= 0.01
    for lam, eta in ((0.02, 1e-3), (0.0, 5e-4), (0.3, 1e-4)):
        got = P.l0_group_lasso(v, lam, eta).numpy()
        want = _l0gl_reference(v.numpy(), lam, eta)
        assert np.allclose(got, want, atol=1e-12), (lam, eta)
