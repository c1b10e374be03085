"""Groupings of weight tensors, the conv tree view and the overlapping-group prox."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mobileprune.math import groups as Gr
from mobileprune.math import prox as P
from mobileprune.errors import ConfigError
from mobileprune.math.groups import Grouping

LINEAR = (3, 4)
CONV1D = (5, 3, 2)
CONV2D = (4, 3, 2, 3)
ALL_SHAPES = [LINEAR, CONV1D, CONV2D]


def _w(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


def _valid(shape):
    names = ["filter", "channel", "shape", "block", "weight"]
    return names + (["linear_in", "linear_out"] if len(shape) == 2 else [])


# --------------------------------------------------------------------- groupings
@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_groups_match_hand_indexing(shape):
    w = _w(shape)
    F, C = shape[:2]
    K = int(np.prod(shape[2:]))
    flt = Gr.to_groups(w, "filter")
    assert flt.shape == (F, C * K)
    for f in range(F):
        assert torch.equal(flt[f], w[f].reshape(-1))
    ch = Gr.to_groups(w, "channel")
    assert ch.shape == (C, F * K)
    for c in range(C):
        assert torch.equal(ch[c], w[:, c].reshape(-1))
    sh = Gr.to_groups(w, Grouping.SHAPE)
    assert sh.shape == (C * K, F)
    for c in range(C):
        for p, pos in enumerate(itertools.product(*[range(k) for k in shape[2:]])):
            assert torch.equal(sh[c * K + p], w[(slice(None), c) + pos])
    assert torch.equal(Gr.to_groups(w, "weight"), w.reshape(-1, 1))
    if len(shape) == 2:
        lin_in = Gr.to_groups(w, "linear_in")
        assert lin_in.shape == (shape[1], shape[0])
        for j in range(shape[1]):
            assert torch.equal(lin_in[j], w[:, j])
        lin_out = Gr.to_groups(w, "linear_out")
        for i in range(shape[0]):
            assert torch.equal(lin_out[i], w[i])
        # documented equivalences on Linear weights
        assert torch.equal(flt, lin_out)
        assert torch.equal(ch, lin_in) and torch.equal(sh, lin_in)


@pytest.mark.parametrize("shape", ALL_SHAPES + [(8, 2, 3), (6, 2, 1, 2), (1, 3)])
def test_block_groups_match_hand_indexing(shape):
    """Row b*C*K + c*K + p of the block grouping is w[4b:4b+4, c, *pos], zero-padded."""
    w = _w(shape)
    F, C = shape[:2]
    K = int(np.prod(shape[2:]))
    B = (F + 3) // 4
    blk = Gr.to_groups(w, "block")
    assert blk.shape == (B * C * K, 4) == Gr.group_shape(shape, "block")
    for b in range(B):
        for c in range(C):
            for p, pos in enumerate(itertools.product(*[range(k) for k in shape[2:]])):
                row = blk[b * C * K + c * K + p]
                for i in range(4):
                    f = 4 * b + i
                    expect = w[(f, c) + pos] if f < F else 0.0
                    assert float(row[i]) == float(expect)
    assert torch.equal(Gr.from_groups(blk, "block", shape), w)
    # every weight sits in exactly one tile: the tiles' squared norms sum to the whole
    assert float(Gr.group_norms(w, "block").pow(2).sum()) == pytest.approx(float(w.pow(2).sum()))


def test_conv2d_shape_group_by_kernel_position():
    w = _w(CONV2D)
    sh = Gr.to_groups(w, "shape")
    kh, kw = CONV2D[2:]
    for c, i, j in itertools.product(range(CONV2D[1]), range(kh), range(kw)):
        assert torch.equal(sh[c * kh * kw + i * kw + j], w[:, c, i, j])


@pytest.mark.parametrize("shape", ALL_SHAPES + [(2, 2, 2, 2, 2)])
def test_round_trip_exact(shape):
    w = _w(shape, seed=1)
    w0 = w.clone()
    for name in _valid(shape):
        g = Gr.to_groups(w, name)
        assert g.shape == Gr.group_shape(shape, name)
        back = Gr.from_groups(g, name, shape)
        assert back.shape == w.shape and torch.equal(back, w), name
        # a prox applied in group space maps back to the right entries
        pruned = Gr.from_groups(P.group_lasso(g, 0.5 * float(g.norm(dim=1).median())), name, shape)
        zero_groups = (Gr.to_groups(pruned, name) == 0).all(dim=1)
        assert torch.equal(zero_groups, Gr.group_norms(w, name) <= 0.5 * float(g.norm(dim=1).median()))
    assert torch.equal(w, w0)


def test_group_norms_and_count():
    w = _w(CONV2D, seed=2)
    for name in _valid(CONV2D):
        torch.testing.assert_close(Gr.group_norms(w, name), Gr.to_groups(w, name).norm(dim=1))
    w2 = w.clone()
    w2[:, 1] = 0  # kill input channel 1
    assert Gr.count_nonzero_groups(w2, "channel") == CONV2D[1] - 1
    assert Gr.count_nonzero_groups(w2, "filter") == CONV2D[0]
    assert Gr.count_nonzero_groups(w2, "shape") == (CONV2D[1] - 1) * 6
    assert Gr.count_nonzero_groups(w2, "weight") == int((w2 != 0).sum())
    w2[2] = 0
    assert Gr.count_nonzero_groups(w2, "filter") == CONV2D[0] - 1
    big = torch.full((3, 4), 1e30, dtype=torch.float32)
    torch.testing.assert_close(Gr.group_norms(big, "linear_in"), torch.full((4,), 1e30 * 3 ** 0.5))


def test_grouping_errors():
    w4 = _w(CONV2D)
    with pytest.raises(ConfigError, match="unknown grouping 'rows'.*'linear_in'"):
        Gr.to_groups(w4, "rows")
    with pytest.raises(ConfigError, match="'linear_in'.*use 'channel'"):
        Gr.to_groups(w4, "linear_in")
    with pytest.raises(ConfigError, match="'linear_out'.*use 'filter'"):
        Gr.to_groups(w4, Grouping.LINEAR_OUT)
    with pytest.raises(ConfigError, match="at least 2 dims"):
        Gr.to_groups(torch.zeros(5), "filter")
    assert Gr.to_groups(torch.zeros(5), "weight").shape == (5, 1)
    with pytest.raises(ConfigError, match=r"expected \(3, 24\)"):
        Gr.from_groups(torch.zeros(3, 23), "channel", CONV2D)
    with pytest.raises(ConfigError, match="torch.Tensor"):
        Gr.to_groups(np.zeros((2, 2)), "filter")
    assert Gr.to_groups(w4, "FILTER").shape == (4, 18)  # names are case-insensitive


# ------------------------------------------------------------------------- tree
@pytest.mark.parametrize("shape", [CONV1D, CONV2D, LINEAR])
def test_tree_view(shape):
    w = _w(shape, seed=3)
    t = Gr.tree_view(w)
    F, C = shape[:2]
    K = int(np.prod(shape[2:]))
    assert t.shape == (C, K, F)
    for c in range(C):
        for p, pos in enumerate(itertools.product(*[range(k) for k in shape[2:]])):
            assert torch.equal(t[c, p], w[(slice(None), c) + pos])
        # root c holds exactly the 'channel' group c; child column p is a 'shape' group
        assert torch.equal(t[c].reshape(-1).sort().values, Gr.to_groups(w, "channel")[c].sort().values)
    assert torch.equal(t.reshape(C * K, F), Gr.to_groups(w, "shape"))
    assert torch.equal(Gr.from_tree_view(t, shape), w)
    x = Gr.from_tree_view(P.tree_l0_group_lasso(t, 0.3, 1.0, 0.05), shape)
    assert x.shape == w.shape
    with pytest.raises(ConfigError, match="must have shape"):
        Gr.from_tree_view(t[:, :1], shape if K > 1 else (F, C + 1))
    with pytest.raises(ConfigError):
        Gr.tree_view(torch.zeros(3))


# ------------------------------------------------------------ overlapping groups
def latent_objective(z, groups, v, lam, eta):
    """F(z) = 1/2||v - sum z_g||^2 (on covered coords) + sum lam||z_g|| + eta nnz(z_g)."""
    v = np.asarray(v, dtype=float).ravel()
    x = np.zeros_like(v)
    pen = 0.0
    for g, idx in enumerate(groups):
        zg = z[g, :len(idx)]
        x[np.asarray(idx)] += zg
        pen += lam * np.linalg.norm(zg) + eta * np.count_nonzero(zg)
    covered = np.zeros(v.size, bool)
    for idx in groups:
        covered[np.asarray(idx)] = True
    return 0.5 * ((v - x)[covered] ** 2).sum() + pen


def latent_envelope(v, supports, lam):
    """min_x 1/2||x - v||^2 + Omega_S(x), Omega_S the latent group norm with groups S_g
    (coordinates in no S_g forced to 0), via Moreau: 1/2||v||^2 - 1/2 dist(v, B)^2 with
    B = {u: ||u_S_g|| <= lam for all g}, the projection solved by SLSQP.  Returns the
    value and the minimiser x = v - P_B(v)."""
    v = np.asarray(v, float)
    sup = [np.asarray(s, int) for s in supports if len(s)]
    if not sup:
        return 0.5 * float(v @ v), np.zeros_like(v)
    cons = [{"type": "ineq", "fun": (lambda u, s=s: lam ** 2 - (u[s] ** 2).sum()),
             "jac": (lambda u, s=s: -2 * np.where(np.isin(np.arange(v.size), s), u, 0.0))} for s in sup]
    r = minimize(lambda u: 0.5 * ((u - v) ** 2).sum(), np.zeros_like(v), jac=lambda u: u - v,
                 constraints=cons, method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
    # SLSQP may end a hair outside B (constraints met to ~1e-9), which would overstate the
    # value; scaling each violated group back onto its sphere keeps the others feasible
    # (norms only shrink), so the returned value never exceeds the true minimum by more
    # than rounding
    u = r.x.copy()
    for s in sup:
        n = float(np.sqrt((u[s] ** 2).sum()))
        if n > lam:
            u[s] *= lam / n
    d = u - v
    return 0.5 * float(v @ v) - 0.5 * float(d @ d), v - u


def test_overlapping_disjoint_groups_equal_exact_prox():
    rng = np.random.default_rng(4)
    v = torch.as_tensor(rng.normal(size=12))
    perm = torch.as_tensor(rng.permutation(12))
    groups = [perm[:3], perm[3:8], perm[8:9], perm[9:]]
    lam = torch.tensor([0.3, 0.6, 0.1, 0.4], dtype=torch.float64)
    x = Gr.overlapping_group_prox(v, groups, lam, 0.1, n_iter=1)
    for g, idx in enumerate(groups):
        exp = P.l0_group_lasso(v[idx].unsqueeze(0), float(lam[g]), 0.1)[0]
        assert torch.equal(x[idx], exp)
    # more iterations do not move away from the exact prox
    assert torch.equal(Gr.overlapping_group_prox(v, groups, lam, 0.1, n_iter=20), x)


def test_overlapping_convex_case_matches_dual_projection():
    """eta = 0: latent group lasso prox x = v - P_B(v) (Moreau decomposition)."""
    rng = np.random.default_rng(5)
    for case in range(6):
        N = int(rng.integers(3, 6))
        groups = [np.sort(rng.choice(N, size=int(rng.integers(1, N)), replace=False)) for _ in range(3)]
        groups.append(np.arange(N)[:2])  # guarantee overlap
        missing = np.setdiff1d(np.arange(N), np.concatenate(groups))
        if missing.size:
            groups.append(missing)
        v = rng.normal(size=N)
        lam = float(rng.uniform(0.1, 0.8))
        x, z = Gr.overlapping_group_prox(torch.as_tensor(v), [torch.as_tensor(g) for g in groups], lam, 0.0,
                                         n_iter=20000, tol=1e-13, return_copies=True)
        env, x_ref = latent_envelope(v, groups, lam)
        F = latent_objective(z.numpy(), groups, v, lam, 0.0)
        assert F >= env - 1e-8 and F <= env + 1e-8 * max(1, env), (case, F, env)
        np.testing.assert_allclose(x.numpy(), x_ref, atol=2e-5)


def test_overlapping_l0_case_vs_brute_force():
    """eta > 0 (nonconvex): never below the global minimum (brute force over the copies'
    supports, each restricted convex problem solved through its dual), a fixed point,
    and non-increasing objective along the iterations."""
    rng = np.random.default_rng(6)
    groups = [np.array([0, 1]), np.array([1, 2]), np.array([2, 0])]
    tgroups = [torch.as_tensor(g) for g in groups]
    hits = 0
    cases = 6
    for case in range(cases):
        v = rng.normal(size=3) * 1.5
        lam, eta = float(rng.uniform(0.05, 0.6)), float(rng.uniform(0.02, 0.3))
        best = np.inf
        subsets = [[list(s) for r in range(len(g) + 1) for s in itertools.combinations(g, r)] for g in groups]
        for combo in itertools.product(*subsets):
            env = latent_envelope(v, combo, lam)[0]
            best = min(best, env + eta * sum(len(s) for s in combo))
        prev = np.inf
        for k in (1, 2, 5, 20, 100, 5000):
            _, z = Gr.overlapping_group_prox(torch.as_tensor(v), tgroups, lam, eta, n_iter=k, tol=1e-13,
                                             return_copies=True)
            F = latent_objective(z.numpy(), groups, v, lam, eta)
            assert F <= prev + 1e-12  # monotone descent
            prev = F
        assert F >= best - 1e-8, (case, F, best)
        hits += F <= best + 1e-6
        # fixed point of the prox-gradient map (step 1/L, L = 2 here), checked in numpy
        Z = z.numpy()
        resid = v.copy()
        for g, idx in enumerate(groups):
            resid[idx] -= Z[g]
        for g, idx in enumerate(groups):
            w = Z[g] + 0.5 * resid[idx]
            step = P.l0_group_lasso(torch.as_tensor(w)[None], 0.5 * lam, 0.5 * eta)[0].numpy()
            np.testing.assert_allclose(step, Z[g], atol=1e-9)
    assert hits >= cases // 2, hits


def test_overlapping_uncovered_and_shape():
    rng = np.random.default_rng(7)
    v = torch.as_tensor(rng.normal(size=(3, 4)))
    v0 = v.clone()
    x = Gr.overlapping_group_prox(v, [[0, 1, 2], [2, 3, 4]], 0.5, 0.05)
    assert x.shape == v.shape and torch.equal(v, v0)
    assert torch.equal(x.reshape(-1)[5:], v.reshape(-1)[5:])  # not covered -> unchanged
    x32 = Gr.overlapping_group_prox(v.float(), [[0, 1, 2], [2, 3, 4]], 0.5, 0.05)
    assert x32.dtype == torch.float32


def test_overlapping_errors():
    v = torch.randn(5, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"\[0, 5\)"):
        Gr.overlapping_group_prox(v, [[0, 5]], 0.1, 0.1)
    with pytest.raises(ConfigError, match="group 1 contains a repeated index"):
        Gr.overlapping_group_prox(v, [[0, 1], [2, 2]], 0.1, 0.1)
    with pytest.raises(ConfigError, match="n_iter"):
        Gr.overlapping_group_prox(v, [[0, 1]], 0.1, 0.1, n_iter=0)
    with pytest.raises(ConfigError, match="lam"):
        Gr.overlapping_group_prox(v, [[0, 1], [1, 2]], torch.ones(3), 0.1)
    with pytest.raises(ConfigError, match="eta"):
        Gr.overlapping_group_prox(v, [[0, 1]], 0.1, -1.0)


def test_overlapping_empty_group_allowed():
    v = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    x = Gr.overlapping_group_prox(v, [[], [0, 1, 2]], 0.5, 0.1)
    exp = P.l0_group_lasso(v[None], 0.5, 0.1)[0]
    assert torch.equal(x, exp)


# ------------------------------------------------------------------ unit groups
@pytest.mark.parametrize("rows,cols,blocks,unit", [(24, 5, 4, 1), (18, 3, 3, 2), (12, 4, 1, 3), (6, 2, 3, 1)])
def test_unit_groups_are_the_blocked_row_sets_by_brute_force(rows, cols, blocks, unit):
    """Every entry lands in exactly one group, and group ``u`` holds exactly the rows
    ``b * G * unit + u * unit + j`` (b < blocks, j < unit): an LSTM hidden unit
    (blocks=4), a GRU one (3), an attention head of q / k / v rows (3, head_dim)."""
    w = torch.arange(rows * cols, dtype=torch.float64).reshape(rows, cols)
    g = Gr.to_unit_groups(w, "filter", blocks, unit)
    G = rows // (blocks * unit)
    assert g.shape == Gr.unit_group_shape(w.shape, "filter", blocks, unit) == (G, blocks * unit * cols)
    assert sorted(g.reshape(-1).tolist()) == w.reshape(-1).tolist()  # a partition
    for u in range(G):
        want = {r for b in range(blocks) for j in range(unit) for r in [b * G * unit + u * unit + j]}
        got = {int(x) // cols for x in g[u].tolist()}
        assert got == want
    assert torch.equal(Gr.from_unit_groups(g, "filter", w.shape, blocks, unit), w)
    norms = Gr.group_norms(w, "filter", blocks, unit)
    assert torch.allclose(norms, torch.stack([w[sorted(want_rows)].norm() for want_rows in (
        {b * G * unit + u * unit + j for b in range(blocks) for j in range(unit)} for u in range(G))]))
    c = Gr.to_unit_groups(w.t(), "channel", 1, unit)  # columns in units: the heads of out_proj
    assert torch.equal(Gr.from_unit_groups(c, "channel", (cols, rows), 1, unit), w.t())
