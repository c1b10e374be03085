"""Tests of mobileprune.sparsity.admm against hand-worked ADMM iterations (seed 003, Eqs. 5-7).

All numbers below are worked out by hand for W in R^{2x3}, keep = 2:
Z = top-2 magnitudes of (W + U), U <- U + W - Z, then rho <- min(rho * 2, rho_max) and
U <- U * rho_old / rho_new (scaled dual: y = rho * U stays the same).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.errors import ConfigError

f64 = torch.float64


def T(rows):
    return torch.tensor(rows, dtype=f64)


def tiny_model(w):
    model = nn.Sequential(nn.Linear(3, 2, dtype=f64))
    with torch.no_grad():
        model[0].weight.copy_(T(w))
        model[0].bias.copy_(T([0.7, -0.7]))
    return model


W0 = [[0.5, -2.0, 0.1], [1.5, -0.3, 0.8]]
W1 = [[0.9, -1.0, 0.2], [0.4, -1.2, 0.05]]
W2 = [[1.0, -0.2, 0.3], [-0.6, 0.1, 0.7]]


def set_w(model, w):
    with torch.no_grad():
        model[0].weight.copy_(T(w))


def make_pruner(model, **kw):
    args = dict(rho=0.5, rho_multiplier=2.0, rho_max=10.0)
    args.update(kw)
    return ADMMPruner(model, {"layers": {"0": {"keep": 2}}}, **args)


def close(a, b):
    return torch.allclose(a, T(b) if not isinstance(b, torch.Tensor) else b, rtol=0, atol=1e-12)


def test_initial_state_is_projection_and_zero_dual():
    model = tiny_model(W0)
    p = make_pruner(model)
    assert [t.param_name for t in p.targets] == ["0.weight"]
    assert p.targets[0].keep == 2
    # top-2 magnitudes of W0: |-2.0| (0,1) and |1.5| (1,0)
    assert close(p.Z["0.weight"], [[0.0, -2.0, 0.0], [1.5, 0.0, 0.0]])
    assert torch.equal(p.U["0.weight"], torch.zeros(2, 3, dtype=f64))
    assert p.rho == 0.5
    # constructing the pruner does not touch the weights nor prune the bias
    assert close(model[0].weight.detach(), W0)
    assert close(model[0].bias.detach(), T([0.7, -0.7]))


def test_penalty_by_hand():
    model = tiny_model(W0)
    p = make_pruner(model)
    # W - Z + U = [[0.5, 0, 0.1], [0, -0.3, 0.8]] -> squared norm 0.25 + 0.01 + 0.09 + 0.64 = 0.99
    assert float(p.penalty().detach()) == pytest.approx(0.5 / 2 * 0.99, rel=1e-12)


def test_two_updates_by_hand():
    model = tiny_model(W0)
    p = make_pruner(model)

    # ---- update 1: W = W1, U = 0 -> W + U = W1; top-2 magnitudes: -1.2 (1,1), -1.0 (0,1)
    set_w(model, W1)
    z_old = p.Z["0.weight"].clone()
    info = p.update()
    z1 = [[0.0, -1.0, 0.0], [0.0, -1.2, 0.0]]
    assert close(p.Z["0.weight"], z1)
    # U = 0 + W1 - Z = [[0.9, 0, 0.2], [0.4, 0, 0.05]]; rho 0.5 -> 1.0, U halved
    assert p.rho == 1.0
    assert close(p.U["0.weight"], [[0.45, 0.0, 0.1], [0.2, 0.0, 0.025]])
    assert p.updates == 1
    # residuals: ||W1 - Z1|| and ||Z1 - Z0||
    primal = math.sqrt(0.81 + 0.04 + 0.16 + 0.0025)
    dual = float((T(z1) - z_old).pow(2).sum().sqrt())
    # Z1 - Z0 = [[0, 1, 0], [-1.5, -1.2, 0]]
    assert dual == pytest.approx(math.sqrt(1.0 + 2.25 + 1.44), rel=1e-12)
    assert info["primal_residual"] == pytest.approx(primal, rel=1e-12)
    assert info["dual_residual"] == pytest.approx(dual, rel=1e-12)
    assert info["rho"] == 1.0
    # penalty now uses rho = 1: W1 - Z1 + U = [[1.35, 0, 0.3], [0.6, 0, 0.075]]
    assert float(p.penalty().detach()) == pytest.approx(0.5 * (1.35**2 + 0.3**2 + 0.6**2 + 0.075**2),
                                               rel=1e-12)

    # ---- update 2: W = W2; W + U = [[1.45, -0.2, 0.4], [-0.4, 0.1, 0.725]]
    set_w(model, W2)
    p.update()
    assert close(p.Z["0.weight"], [[1.45, 0.0, 0.0], [0.0, 0.0, 0.725]])
    # U = U + W2 - Z = [[0, -0.2, 0.4], [-0.4, 0.1, 0]]; rho 1 -> 2, U halved
    assert p.rho == 2.0
    assert close(p.U["0.weight"], [[0.0, -0.1, 0.2], [-0.2, 0.05, 0.0]])
    assert p.updates == 2
    # update() never modifies the weights themselves
    assert close(model[0].weight.detach(), W2)


def test_rho_is_capped_and_dual_rescaled_only_when_rho_changes():
    model = tiny_model(W0)
    p = make_pruner(model, rho=4.0, rho_max=10.0)
    set_w(model, W1)
    p.update()  # rho 4 -> 8, U = (W1 - Z1) / 2
    assert p.rho == 8.0
    assert close(p.U["0.weight"], [[0.45, 0.0, 0.1], [0.2, 0.0, 0.025]])
    p.update()
    # W1 + U = [[1.35, -1, 0.3], [0.6, -1.2, 0.075]] -> top-2: 1.35 (0,0), -1.2 (1,1)
    assert close(p.Z["0.weight"], [[1.35, 0.0, 0.0], [0.0, -1.2, 0.0]])
    # U + W1 - Z = [[0, -1, 0.3], [0.6, 0, 0.075]]; then rho 8 -> 10 (capped), U *= 8/10
    assert p.rho == 10.0
    assert close(p.U["0.weight"], [[0.0, -0.8, 0.24], [0.48, 0.0, 0.06]])
    u_before = p.U["0.weight"].clone()
    p.update()  # rho stays at 10: no rescaling; U += W1 - Z with Z = top-2 of (W1 + U)
    assert p.rho == 10.0
    wu = T(W1) + u_before
    z = torch.zeros_like(wu)
    idx = wu.abs().flatten().argsort(descending=True, stable=True)[:2]
    z.view(-1)[idx] = wu.view(-1)[idx]
    assert close(p.Z["0.weight"], z)
    assert close(p.U["0.weight"], u_before + T(W1) - z)


def test_rho_multiplier_one_keeps_rho_and_dual_unscaled():
    model = tiny_model(W0)
    p = make_pruner(model, rho_multiplier=1.0)
    set_w(model, W1)
    p.update()
    assert p.rho == 0.5
    assert close(p.U["0.weight"], [[0.9, 0.0, 0.2], [0.4, 0.0, 0.05]])


def test_step_updates_every_n_calls():
    model = tiny_model(W0)
    p = make_pruner(model, update_every=3)
    performed = []
    for i in range(1, 8):
        set_w(model, W1 if i < 3 else W2)
        performed.append(p.step())
    assert performed == [False, False, True, False, False, True, False]
    assert p.updates == 2
    assert p.steps == 7
    assert p.rho == 2.0  # doubled twice


def test_step_without_update_every_never_updates():
    model = tiny_model(W0)
    p = make_pruner(model)
    assert not any(p.step() for _ in range(10))
    assert p.updates == 0 and p.rho == 0.5


def test_penalty_gradient_is_rho_times_residual():
    model = tiny_model(W1)
    p = make_pruner(model)
    set_w(model, W2)
    p.update()  # nonzero U, rho = 1
    set_w(model, W0)
    model.zero_grad()
    p.penalty().backward()
    w = model[0].weight
    expected = p.rho * (w.detach() - p.Z["0.weight"] + p.U["0.weight"])
    assert torch.allclose(w.grad, expected, rtol=0, atol=1e-12)
    # Z and U are constants: the bias gets no gradient from the penalty
    assert model[0].bias.grad is None or torch.all(model[0].bias.grad == 0)


def _multi_layer_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
                         nn.ReLU(), nn.Linear(10, 3))


def test_finalize_projects_weights_in_place():
    model = _multi_layer_model()
    cfg = {"default": 0.75, "layers": {"5": {"keep": 4}}}
    p = ADMMPruner(model, cfg, rho=1e-2)
    before = {n: v.detach().clone() for n, v in model.named_parameters()}
    params = dict(model.named_parameters())
    masks = p.finalize()
    keeps = {t.param_name: t.keep for t in p.targets}
    n0 = 4 * 2 * 3 * 3
    assert keeps == {"0.weight": math.floor(n0 * 0.25), "3.weight": 160, "5.weight": 4}
    assert set(masks) == set(keeps)
    for name, keep in keeps.items():
        w = params[name].detach()
        assert int(torch.count_nonzero(w)) <= keep
        assert masks[name].dtype == torch.bool and int(masks[name].sum()) == keep
        # the in-place weights are the hard projection of the previous weights
        b = before[name]
        thresh = b.abs().flatten().sort(descending=True).values[keep - 1]
        assert torch.all(b.abs()[masks[name]] >= thresh)
        assert torch.equal(w, b * masks[name])
    # biases untouched
    for name in ("0.bias", "3.bias", "5.bias"):
        assert torch.equal(params[name].detach(), before[name])


def test_finalize_respects_allowed():
    model = _multi_layer_model()
    w = model[5].weight.detach()
    allowed = torch.zeros_like(w, dtype=torch.bool)
    allowed[0, :3] = True  # only 3 positions allowed while keep is 4
    p = ADMMPruner(model, {"layers": {"5": {"keep": 4}}}, allowed={"5.weight": allowed})
    assert torch.all(p.Z["5.weight"][~allowed] == 0)
    masks = p.finalize()
    assert torch.equal(masks["5.weight"], allowed)
    assert torch.all(model[5].weight[~allowed] == 0)


def test_state_dict_round_trip_gives_identical_updates():
    model_a = _multi_layer_model()
    model_b = copy.deepcopy(model_a)
    cfg = {"default": 0.8}
    pa = ADMMPruner(model_a, cfg, rho=0.01, rho_multiplier=1.5, rho_max=1.0, update_every=2)
    g = torch.Generator().manual_seed(5)
    noise = [{n: torch.randn(p.shape, generator=g) * 0.1 for n, p in model_a.named_parameters()}
             for _ in range(6)]

    def perturb(model, d):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(d[n])

    for d in noise[:3]:
        perturb(model_a, d)
        pa.step()
    state = pa.state_dict()
    # the state is a copy: later updates of pa must not alter it
    z_saved = {k: v.clone() for k, v in state["Z"].items()}
    model_b.load_state_dict(model_a.state_dict())
    pb = ADMMPruner(model_b, cfg, rho=0.5, rho_multiplier=1.5, rho_max=1.0, update_every=2)
    pb.load_state_dict(state)
    assert pb.rho == pa.rho and pb.steps == pa.steps == 3 and pb.updates == pa.updates == 1
    for d in noise[3:]:
        perturb(model_a, d)
        perturb(model_b, d)
        assert pa.step() == pb.step()
    assert pa.updates == pb.updates == 3
    assert pa.rho == pb.rho
    for k in pa.Z:
        assert torch.equal(pa.Z[k], pb.Z[k])
        assert torch.equal(pa.U[k], pb.U[k])
    assert torch.equal(pa.penalty(), pb.penalty())
    assert any(not torch.equal(z_saved[k], pa.Z[k]) for k in z_saved)
    for k in z_saved:
        assert torch.equal(state["Z"][k], z_saved[k])


def test_load_state_dict_rejects_mismatch():
    model = _multi_layer_model()
    p = ADMMPruner(model, {"default": 0.8})
    state = p.state_dict()
    bad = copy.deepcopy(state)
    bad["Z"]["5.weight"] = torch.zeros(2, 2)
    with pytest.raises(ConfigError, match="shape"):
        p.load_state_dict(bad)
    bad = copy.deepcopy(state)
    del bad["U"]["0.weight"]
    with pytest.raises(ConfigError, match="names"):
        p.load_state_dict(bad)


@pytest.mark.parametrize("kw", [dict(rho=0.0), dict(rho=-1.0), dict(rho=float("nan")),
                                dict(rho_multiplier=0.5), dict(rho=1.0, rho_max=0.5),
                                dict(update_every=0), dict(update_every=2.0)])
def test_invalid_hyperparameters_raise(kw):
    with pytest.raises(ConfigError):
        ADMMPruner(tiny_model(W0), {"default": 0.5}, **kw)
