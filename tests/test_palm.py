"""Tests of mobileprune.sparsity.regularizers, mobileprune.sparsity.proximal and mobileprune.pipeline.palm (methods.md section 2, seed 000).

* Regularizer values against hand computation on tiny weights, and its prox against the
  functions of mobileprune.math.prox applied to hand-built groups;
* PALM (methods.md 2.3) on a small full-batch float64 problem: the objective
  F = loss + sum r never increases, groups get zeroed for a large lam, and the accepted
  Lipschitz constant satisfies the backtracking inequality (checked by recomputation);
* ProximalPruner in a user loop, config errors, NaN handling, state_dict, run_rounds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.math import prox as P
from mobileprune.errors import ConfigError
from mobileprune.math.groups import count_nonzero_groups
from mobileprune.pipeline.palm import palm_epoch, palm_step, proximal_epoch, run_rounds
from mobileprune.sparsity.proximal import ProximalPruner
from mobileprune.sparsity.regularizers import METHODS, Regularizer, default_grouping

f64 = torch.float64
CE = nn.functional.cross_entropy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: OpenMP wake-ups of a second thread cost more than the work itself."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def T(rows):
    return torch.tensor(rows, dtype=f64)


def data(n=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=f64)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.8).long()
    return X, y


def mlp(seed=0, dtype=f64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8, dtype=dtype), nn.Tanh(), nn.Linear(8, 3, dtype=dtype))


def objective(model, pruner, X, y):
    with torch.no_grad():
        return float(CE(model(X), y)) + float(pruner.penalty_value())


SPECS = {
    "l0": dict(eta=2e-3),
    "l1": dict(beta=5e-3),
    "l2": dict(lam=2e-2),
    "group_lasso": dict(lam=2e-2),
    "sparse_group_lasso": dict(lam=2e-2, beta=2e-3),
    "l0_group_lasso": dict(lam=2e-2, eta=1e-3),
    "l0_l1_group_lasso": dict(lam=2e-2, eta=1e-3, beta=1e-3),
    "tree_l0_group_lasso": dict(lam=1e-2, eta=1e-3, lam_root=1e-2),
}


# --------------------------------------------------------------------- values
# Linear weight (out=2, in=2): columns (3, 4) and (0, -1) -> norms 5 and 1;
# rows (3, 0) and (4, -1) -> norms 3 and sqrt(17); 3 nonzeros, l1 = 8, ||W|| = sqrt(26).
W_LIN = [[3.0, 0.0], [4.0, -1.0]]
# Conv weight (F=2, C=1, 1x2): filters (1, 2), (3, 0) -> norms sqrt(5), 3; GEMM columns
# (1, 3), (2, 0) -> norms sqrt(10), 2; one root (the input channel) of norm sqrt(14).
W_CONV = [[[[1.0, 2.0]]], [[[3.0, 0.0]]]]

VALUE_CASES = [
    ("l0", dict(eta=0.5), None, W_LIN, 0.5 * 3),
    ("l1", dict(beta=0.5), None, W_LIN, 0.5 * 8),
    ("l2", dict(lam=2.0), None, W_LIN, 2 * math.sqrt(26)),
    ("group_lasso", dict(lam=2.0), None, W_LIN, 2 * (5 + 1)),
    ("group_lasso", dict(lam=1.0), "linear_out", W_LIN, 3 + math.sqrt(17)),
    ("group_lasso", dict(lam=1.0), "weight", W_LIN, 8.0),
    ("sparse_group_lasso", dict(lam=2.0, beta=0.5), None, W_LIN, 12 + 4),
    ("l0_group_lasso", dict(lam=2.0, eta=0.5), None, W_LIN, 12 + 1.5),
    ("l0_l1_group_lasso", dict(lam=2.0, eta=0.5, beta=0.25), None, W_LIN, 12 + 1.5 + 2),
    # Linear tree: one root per input neuron with a single child column
    ("tree_l0_group_lasso", dict(lam=2.0, eta=0.5, lam_root=3.0), None, W_LIN, 2 * 6 + 3 * 6 + 1.5),
    ("l0_group_lasso", dict(lam=1.0, eta=0.5), None, W_CONV, math.sqrt(5) + 3 + 0.5 * 3),
    ("group_lasso", dict(lam=1.0), "shape", W_CONV, math.sqrt(10) + 2),
    ("tree_l0_group_lasso", dict(lam=1.0, eta=0.5, lam_root=2.0), None, W_CONV,
     math.sqrt(10) + 2 + 2 * math.sqrt(14) + 1.5),
    ("tree_l0_group_lasso", dict(lam=1.0), "tree", W_CONV, math.sqrt(10) + 2 + math.sqrt(14)),
]


@pytest.mark.parametrize("method,params,grouping,w,expected", VALUE_CASES)
def test_value_by_hand(method, params, grouping, w, expected):
    reg = Regularizer(method, grouping=grouping, **params)
    v = reg.value(T(w))
    assert v.dtype == f64 and v.dim() == 0
    assert float(v) == pytest.approx(expected, rel=1e-12)


def test_default_grouping():
    assert default_grouping(nn.Linear(3, 2)) == "linear_in"
    assert default_grouping(nn.Conv2d(1, 2, 3)) == "filter"
    assert default_grouping(nn.Conv1d(1, 2, 3)) == "filter"
    assert Regularizer("group_lasso", lam=1.0).resolve_grouping(torch.zeros(2, 3)) == "linear_in"
    assert Regularizer("group_lasso", lam=1.0).resolve_grouping(torch.zeros(2, 3, 4)) == "filter"
    with pytest.raises(ConfigError):
        default_grouping(torch.zeros(3))


# ----------------------------------------------------------------------- prox
def test_prox_equals_direct_prox_on_hand_built_groups():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(4, 6, generator=g, dtype=f64)  # Linear (out=4, in=6)
    C = torch.randn(3, 2, 2, 2, generator=g, dtype=f64)  # Conv2d (F=3, C=2, 2x2)
    s = 0.7
    lam, eta, beta = 0.4, 0.05, 0.1
    cols = W.t()  # linear_in: one row per input neuron = column of W
    cases = [
        (Regularizer("l0", eta=eta), W, P.hard_threshold(W, eta * s)),
        (Regularizer("l1", beta=beta), W, P.soft_threshold(W, beta * s)),
        (Regularizer("l2", lam=lam), W, P.l2_shrink(W, lam * s)),
        (Regularizer("group_lasso", lam=lam), W, P.group_lasso(cols, lam * s).t()),
        (Regularizer("sparse_group_lasso", lam=lam, beta=beta), W,
         P.sparse_group_lasso(cols, lam * s, beta * s).t()),
        (Regularizer("l0_group_lasso", lam=lam, eta=eta), W, P.l0_group_lasso(cols, lam * s, eta * s).t()),
        (Regularizer("l0_l1_group_lasso", lam=lam, eta=eta, beta=beta), W,
         P.l0_l1_group_lasso(cols, lam * s, eta * s, beta * s).t()),
        (Regularizer("l0_group_lasso", lam=lam, eta=eta, grouping="linear_out"), W,
         P.l0_group_lasso(W, lam * s, eta * s)),
        # conv, default "filter": one row per filter
        (Regularizer("l0_group_lasso", lam=lam, eta=eta), C,
         P.l0_group_lasso(C.reshape(3, -1), lam * s, eta * s).reshape(C.shape)),
    ]
    # conv tree by hand: t[c, p, f] = C[f, c].reshape(-1)[p]
    t = torch.stack([torch.stack([C[:, c].reshape(3, -1)[:, p] for p in range(4)]) for c in range(2)])
    out = P.tree_l0_group_lasso(t, lam * s, 2 * lam * s, eta * s)
    back = torch.zeros_like(C)
    for f in range(3):
        for c in range(2):
            back[f, c] = out[c, :, f].reshape(2, 2)
    cases.append((Regularizer("tree_l0_group_lasso", lam=lam, eta=eta, lam_root=2 * lam), C, back))
    for reg, w, expected in cases:
        got = reg.prox(w, s)
        assert got.shape == w.shape and got.dtype == w.dtype, reg
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-14, msg=repr(reg))
        assert not torch.equal(got, w), reg  # the prox did something
    # pure: input untouched, no graph recorded
    wg = W.clone().requires_grad_(True)
    out = Regularizer("l0_group_lasso", lam=lam, eta=eta).prox(wg, s)
    assert not out.requires_grad
    # step 0 is the identity
    torch.testing.assert_close(Regularizer("l0_group_lasso", lam=lam, eta=eta).prox(W, 0.0), W)


def test_regularizer_errors():
    with pytest.raises(ConfigError, match="lam"):
        Regularizer("l0_group_lasso", lam=-1.0)
    with pytest.raises(ConfigError, match="eta"):
        Regularizer("l0_group_lasso", eta=-1e-3)
    with pytest.raises(ConfigError, match="beta"):
        Regularizer("sparse_group_lasso", beta=float("nan"))
    with pytest.raises(ConfigError, match="lam_root"):
        Regularizer("tree_l0_group_lasso", lam_root=-1.0)
    with pytest.raises(ConfigError, match="unknown regulariser method"):
        Regularizer("l3")
    with pytest.raises(ConfigError, match="does not use 'lam'"):
        Regularizer("l1", lam=1e-4)
    with pytest.raises(ConfigError, match="unknown grouping"):
        Regularizer("group_lasso", lam=1.0, grouping="rows")
    with pytest.raises(ConfigError, match="tree"):
        Regularizer("group_lasso", lam=1.0, grouping="tree")
    with pytest.raises(ConfigError, match="tree"):
        Regularizer("tree_l0_group_lasso", lam=1.0, grouping="filter")
    conv_w = torch.zeros(2, 3, 3, 3)
    with pytest.raises(ConfigError, match="channel"):
        Regularizer("group_lasso", lam=1.0, grouping="linear_in").prox(conv_w, 0.1)
    with pytest.raises(ConfigError, match="step"):
        Regularizer("group_lasso", lam=1.0).prox(torch.zeros(2, 3), -0.1)
    assert set(METHODS) == set(SPECS)


def test_scaled_and_dict_round_trip():
    reg = Regularizer("tree_l0_group_lasso", lam=1.0, eta=2.0, lam_root=3.0)
    up = reg.scaled(2.0, 10.0)
    assert (up.lam, up.eta, up.lam_root) == (2.0, 20.0, 6.0)
    assert Regularizer.from_dict(up.to_dict()) == up
    sgl = Regularizer("sparse_group_lasso", lam=1.0, beta=0.5).scaled(3.0, 5.0)
    assert (sgl.lam, sgl.beta) == (3.0, 1.5)  # beta follows lam_factor by default


# ----------------------------------------------------------------------- PALM
def conv_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 2, dtype=f64), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3, dtype=f64))


@pytest.mark.parametrize("method", list(SPECS))
def test_palm_full_batch_is_monotone(method):
    X, y = data()
    model = mlp()
    pruner = ProximalPruner(model, {"method": method, **SPECS[method]})
    F0 = prev = objective(model, pruner, X, y)
    for _ in range(25):
        st = palm_step(model, CE, (X, y), pruner)
        cur = objective(model, pruner, X, y)
        assert cur <= prev + 1e-12, (method, prev, cur)
        assert st["loss_after"] == pytest.approx(float(CE(model(X), y).detach()), rel=1e-12, abs=1e-14)
        prev = cur
    assert prev < F0 - 1e-3
    assert set(pruner.lipschitz) == {"0", "2"}


@pytest.mark.parametrize("method", ["l0_group_lasso", "tree_l0_group_lasso"])
def test_palm_full_batch_monotone_on_conv(method):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(32, 1, 3, 3, generator=g, dtype=f64)
    y = (X[:, 0, 0, 0] > 0).long() + (X[:, 0, 2, 2] > 0.5).long()
    model = conv_model()
    pruner = ProximalPruner(model, {"method": method, "lam": 1e-2, "eta": 1e-3})
    prev = objective(model, pruner, X, y)
    for _ in range(15):
        palm_step(model, CE, (X, y), pruner)
        cur = objective(model, pruner, X, y)
        assert cur <= prev + 1e-12
        prev = cur


def test_palm_zeroes_groups_for_large_lam():
    X, y = data()
    model = mlp()
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 0.1, "eta": 1e-3})
    for _ in range(40):
        palm_step(model, CE, (X, y), pruner)
    w1 = model[0].weight.detach()
    alive = count_nonzero_groups(w1, "linear_in")
    assert alive < 5  # some input neurons are cut
    # the pruned columns are exactly zero
    assert int((w1 == 0).all(dim=0).sum()) == 5 - alive
    # a huge lam zeroes every group of every selected layer in one step
    pruner2 = ProximalPruner(model, {"method": "group_lasso", "lam": 1e6})
    palm_step(model, CE, (X, y), pruner2)
    assert all(n == 0 for n in pruner2.nonzero().values())
    assert torch.isfinite(model[0].bias).all()


def _loss_at(model, X, y, weight, bias):
    with torch.no_grad():
        old_w, old_b = model.weight.clone(), model.bias.clone()
        model.weight.copy_(weight)
        model.bias.copy_(bias)
        val = float(CE(model(X), y))
        model.weight.copy_(old_w)
        model.bias.copy_(old_b)
    return val


def test_backtracking_condition_holds_for_accepted_L():
    X, y = data(seed=2)
    torch.manual_seed(4)
    model = nn.Linear(5, 3, dtype=f64)  # logistic regression: one block (weight, bias)
    reg = Regularizer("l0_group_lasso", lam=0.05, eta=1e-3)
    pruner = ProximalPruner(model, reg)
    gamma, eta_L = 1.1, 1.1
    for it in range(3):
        w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
        loss = CE(model(X), y)
        gw, gb = torch.autograd.grad(loss, [model.weight, model.bias])
        f0 = float(loss.detach())
        st = palm_step(model, CE, (X, y), pruner, gamma=gamma, L0=0.02 if it == 0 else 1.0, eta_L=eta_L)
        (block,) = st["L"]
        L = st["L"][block]
        s = st["step"][block]
        assert s == pytest.approx(1.0 / (gamma * L), rel=1e-15)
        assert pruner.lipschitz[block] == L
        # the new point is prox_{s r}(x - s g) for the weight, x - s g for the bias
        w1 = reg.prox(w0 - s * gw, s)
        b1 = b0 - s * gb
        torch.testing.assert_close(model.weight.detach(), w1, rtol=0, atol=1e-15)
        torch.testing.assert_close(model.bias.detach(), b1, rtol=0, atol=1e-15)

        def bound(Lc):
            sc = 1.0 / (gamma * Lc)
            wc, bc = reg.prox(w0 - sc * gw, sc), b0 - sc * gb
            dw, db = wc - w0, bc - b0
            lin = float((gw * dw).sum() + (gb * db).sum())
            quad = float((dw * dw).sum() + (db * db).sum())
            return _loss_at(model, X, y, wc, bc), f0 + lin + 0.5 * Lc * quad

        lhs, rhs = bound(L)
        assert lhs <= rhs + 1e-12
        if it == 0:
            assert st["backtracks"] > 0 and not st["failed"]  # L0 = 0.02 is too small
            lhs_prev, rhs_prev = bound(L / eta_L)  # the last rejected trial
            assert lhs_prev > rhs_prev
    # the next call starts from the stored L divided by eta_L
    Lstored = pruner.lipschitz[block]
    st = palm_step(model, CE, (X, y), pruner, max_backtracks=0)
    assert st["L"][block] == pytest.approx(Lstored / eta_L, rel=1e-15)


def test_palm_failed_backtracking_leaves_block_unchanged():
    X, y = data()
    model = nn.Linear(5, 3, dtype=f64)
    pruner = ProximalPruner(model, {"method": "l0", "eta": 1e-4})
    w0 = model.weight.detach().clone()
    st = palm_step(model, CE, (X, y), pruner, L0=1e-9, max_backtracks=2)
    assert st["failed"] == [""] and st["backtracks"] == 2
    assert torch.equal(model.weight.detach(), w0)
    assert pruner.lipschitz[""] == pytest.approx(1e-9 * 1.1 ** 2)


def test_palm_batchnorm_updated_once_and_dropout_fixed():
    X, y = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8, dtype=f64), nn.BatchNorm1d(8, dtype=f64), nn.Dropout(0.3),
                          nn.ReLU(), nn.Linear(8, 3, dtype=f64))
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 1e-2, "eta": 1e-4})
    model.train()
    with torch.no_grad():
        h = model[0](X)
    st = palm_step(model, CE, (X, y), pruner)
    # one BatchNorm update, from the first forward at the starting point
    assert int(model[1].num_batches_tracked) == 1
    torch.testing.assert_close(model[1].running_mean, 0.1 * h.mean(0))
    torch.testing.assert_close(model[1].running_var, 0.9 + 0.1 * h.var(0, unbiased=True))
    assert set(st["L"]) == {"0", "1", "4"}  # BatchNorm affine params form their own block
    assert not st["failed"]


def test_palm_epoch_and_proximal_epoch_run():
    X, y = data()
    loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=False)
    model = mlp()
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 1e-2, "eta": 1e-4})
    st = palm_epoch(model, loader, pruner, progress=False)
    assert st["steps"] == 2 and math.isfinite(st["objective"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    st2 = proximal_epoch(model, loader, opt, pruner, progress=False)
    assert math.isfinite(st2["objective"]) and "train_accuracy" in st2


# ------------------------------------------------------------- ProximalPruner
def test_pruner_in_user_loop_huge_lam_and_masks():
    X, y = data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 1e4, "eta": 1e-3, "exclude": ["2"]})
    assert list(pruner.regularizers) == ["0.weight"]
    for _ in range(3):
        loss = CE(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.prox_step(optimizer=opt)
    assert torch.count_nonzero(model[0].weight) == 0
    assert torch.count_nonzero(model[2].weight) > 0  # excluded layer untouched by the prox
    masks = pruner.masks()
    assert set(masks) == {"0.weight"} and masks["0.weight"].dtype == torch.bool
    assert not masks["0.weight"].any()


def test_pruner_masks_mark_exactly_the_nonzeros_and_step_is_lr():
    X, y = data()
    model = mlp()
    opt = torch.optim.SGD([{"params": [model[0].weight], "lr": 0.5},
                           {"params": [model[0].bias, model[2].weight, model[2].bias], "lr": 0.05}])
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 0.3, "eta": 1e-3})
    loss = CE(model(X), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    w0, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    pruner.prox_step(optimizer=opt)
    reg = pruner.regularizers["0.weight"]
    torch.testing.assert_close(model[0].weight.detach(), reg.prox(w0, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(model[2].weight.detach(), reg.prox(w2, 0.05), rtol=0, atol=0)
    masks = pruner.masks()
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(masks[name], p.detach() != 0)
    m0 = masks["0.weight"]
    assert m0.any() and not m0.all()
    # explicit step overrides the optimizer
    w = model[0].weight.detach().clone()
    pruner.prox_step(0.01)
    torch.testing.assert_close(model[0].weight.detach(), reg.prox(w, 0.01), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="step"):
        ProximalPruner(model, {"method": "l0", "eta": 1e-3}).prox_step()


def test_pruner_config_overrides_and_patterns():
    model = conv_model()
    cfg = {
        "method": "l0_group_lasso", "lam": 1e-3, "eta": 1e-5,
        "layers": {
            "3": {"lam": 5e-3},                                            # inherits method / eta
            "re:0": {"method": "tree_l0_group_lasso", "lam": 2e-3},        # complete spec
        },
    }
    pruner = ProximalPruner(model, cfg)
    assert pruner.regularizers["3.weight"] == Regularizer("l0_group_lasso", lam=5e-3, eta=1e-5)
    assert pruner.regularizers["0.weight"] == Regularizer("tree_l0_group_lasso", lam=2e-3)
    only = ProximalPruner(model, {"layers": {"type:Linear": {"method": "l0", "eta": 1e-3}}})
    assert list(only.regularizers) == ["3.weight"]
    types = ProximalPruner(model, {"method": "l1", "beta": 1e-3, "types": ["Conv2d"]})
    assert list(types.regularizers) == ["0.weight"]


@pytest.mark.parametrize("cfg,match", [
    ({"method": "l0_group_lasso", "lam": -1e-4}, "lam"),
    ({"method": "l0_group_lasso", "eta": -1e-4}, "eta"),
    ({"method": "l0_group_lasso", "layers": {"0": {"lam": -2.0}}}, "lam"),
    ({"method": "magnitude", "lam": 1e-4}, "unknown regulariser method"),
    ({"method": "l0", "eta": 1e-4, "layers": {"fc9": {"eta": 1e-3}}}, "unknown layer 'fc9'"),
    ({"method": "l0", "eta": 1e-4, "exclude": ["fc9"]}, "unknown layer 'fc9'"),
    ({"method": "l0", "eta": 1e-4, "layers": {"re:conv.*": {"eta": 1e-3}}}, "matches no prunable layer"),
    ({"method": "l0", "eta": 1e-4, "layers": {"1": {"eta": 1e-3}}}, "unknown layer '1'"),
    ({"method": "l0", "eta": 1e-4, "rho": 1.0}, "unknown key"),
    ({"layers": {"0": {"lam": 1e-3}}}, "no regulariser 'method'"),
    ({"method": "group_lasso", "lam": 1e-3, "grouping": "linear_in"}, "layer '0'"),
    ({"method": "l0", "eta": 1e-4, "exclude": ["re:.*"]}, "selects no layer"),
    ({"method": "l0", "eta": 1e-4, "types": ["Conv3d"]}, "no prunable layer"),
])
def test_pruner_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        ProximalPruner(conv_model(), cfg)


def test_pruner_yaml_config(tmp_path):
    path = tmp_path / "prox.yaml"
    path.write_text("method: l0_group_lasso\nlam: 1.0e-4\neta: 1.0e-6\nexclude: ['3']\n")
    pruner = ProximalPruner(conv_model(), path)
    assert list(pruner.regularizers) == ["0.weight"]


def test_nan_weight_raises_floating_point_error():
    X, y = data()
    model = mlp()
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 1e-2, "eta": 1e-4})
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="0.weight"):
        pruner.prox_step(0.1)
    with pytest.raises(FloatingPointError):
        palm_step(model, CE, (X, y), pruner)
    loader = DataLoader(TensorDataset(X, y), batch_size=32)
    with pytest.raises(FloatingPointError):
        run_rounds(model, loader, pruner, rounds=1, prox_epochs=1, retrain_epochs=0, log=None)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
        model[2].bias[0] = float("inf")  # an unregularised parameter
    with pytest.raises(FloatingPointError, match="2.bias"):
        palm_step(model, CE, (X, y), pruner)


def test_state_dict_round_trip():
    X, y = data()
    model = mlp()
    pruner = ProximalPruner(model, {"method": "tree_l0_group_lasso", "lam": 1e-2, "eta": 1e-4, "lam_root": 2e-2})
    for _ in range(2):
        palm_step(model, CE, (X, y), pruner)
    pruner.increase(2.0, 3.0)
    state = pruner.state_dict()
    other = ProximalPruner(model, {"method": "l0", "eta": 1.0})
    other.load_state_dict(state)
    assert other.regularizers == pruner.regularizers
    assert other.regularizers["0.weight"].lam_root == pytest.approx(4e-2)
    assert other.regularizers["0.weight"].eta == pytest.approx(3e-4)
    assert other.lipschitz == pruner.lipschitz and other.increases == 1
    assert other.state_dict() == state
    partial = ProximalPruner(model, {"method": "l0", "eta": 1.0, "exclude": ["2"]})
    with pytest.raises(ConfigError):
        partial.load_state_dict(state)


# ---------------------------------------------------------------------- rounds
@pytest.mark.parametrize("mode", ["palm", "proximal"])
def test_run_rounds_schedule(mode):
    X, y = data()
    loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=False)
    model = mlp()
    pruner = ProximalPruner(model, {"method": "l0_group_lasso", "lam": 0.05, "eta": 1e-3})
    lines: list[str] = []
    hist = run_rounds(model, loader, pruner, rounds=2, prox_epochs=2, retrain_epochs=1,
                      lam_factor=2.0, eta_factor=3.0, increase_every=1, mode=mode,
                      eval_loader=loader, log=lines.append, prox_lr=0.05)
    assert len(hist) == 2 and len(lines) == 2
    assert hist[0]["regularizers"]["0.weight"]["lam"] == pytest.approx(0.05)
    assert hist[1]["regularizers"]["0.weight"]["lam"] == pytest.approx(0.1)
    assert pruner.regularizers["0.weight"].lam == pytest.approx(0.2)
    assert pruner.regularizers["0.weight"].eta == pytest.approx(9e-3)
    for rec in hist:
        # masked retraining never revives a pruned weight
        assert rec["nonzero_total"] <= rec["nonzero_after_prox"]
        assert 0.0 <= rec["accuracy"] <= 1.0
    with pytest.raises(ConfigError, match="mode"):
        run_rounds(model, loader, pruner, 1, 0, 0, mode="admm", log=None)


def test_run_rounds_numbers_rounds_from_first_round():
    """A caller running the schedule one round at a time (the proximal pipeline) numbers
    the rounds itself: records and log lines say round 3 and 4 of 4, not 1 and 2."""
    X, y = data()
    loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=False)
    model = mlp()
    pruner = ProximalPruner(model, {"method": "l0", "eta": 1e-3})
    lines: list[str] = []
    hist = run_rounds(model, loader, pruner, 2, 1, 0, mode="proximal", log=lines.append,
                      first_round=3)
    assert [rec["round"] for rec in hist] == [3, 4]
    assert [ln.split(":")[0] for ln in lines] == ["round 3/4", "round 4/4"]
    with pytest.raises(ConfigError, match="first_round must be an integer >= 1"):
        run_rounds(model, loader, pruner, 1, 0, 0, mode="proximal", log=None, first_round=0)


def test_the_old_home_of_the_training_loops_still_answers():
    """palm_step & co. moved from sparsity.proximal to pipeline.palm; the old names resolve
    to the same functions, with a DeprecationWarning that names the new home."""
    import mobileprune.pipeline.palm as palm
    import mobileprune.sparsity.proximal as old

    for name in ("palm_step", "palm_epoch", "proximal_epoch", "run_rounds"):
        with pytest.warns(DeprecationWarning, match=f"pipeline.palm.{name}"):
            assert getattr(old, name) is getattr(palm, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        old.no_such_name  # noqa: B018
