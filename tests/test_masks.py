"""Tests of mobileprune.sparsity.masks: pruned weights stay exactly 0.0 under every optimizer."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from mobileprune.sparsity.masks import MaskEnforcer, apply_masks, masks_from_weights

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
}
PRUNED = ("0.weight", "2.weight")


def make_model(seed=0):
    torch.manual_seed(seed)
    # tanh: no dead units, so every weight gets a nonzero gradient
    return nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 4))


def make_masks(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    masks = {}
    for n in PRUNED:
        m = torch.rand(params[n].shape, generator=g) < 0.5
        m.view(-1)[0] = False  # make sure both kinds of entries exist
        m.view(-1)[1] = True
        masks[n] = m
    return masks


def batches(n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g))
            for _ in range(n)]


def train_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def state_tensors(opt, p):
    return {k: v for k, v in opt.state[p].items()
            if isinstance(v, torch.Tensor) and v.shape == p.shape}


def pretrain(model, opt, steps=3):
    for x, y in batches(steps, seed=3):
        train_step(model, opt, x, y)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_masks_survive_optimizer(opt_name):
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    pretrain(model, opt)
    params = dict(model.named_parameters())
    masks = make_masks(model)
    # precondition: optimizer state is nonzero at (almost) every pruned position
    for n in PRUNED:
        st = state_tensors(opt, params[n])
        assert st, f"{opt_name} has no per-weight state"
        for v in st.values():
            assert torch.count_nonzero(v[~masks[n]]) == (~masks[n]).sum()
    keys_before = {k: v.shape for k, v in model.state_dict().items()}

    enforcer = MaskEnforcer(model, masks, opt)
    # attaching applies the masks and clears the state right away
    for n in PRUNED:
        assert torch.all(params[n].detach()[~masks[n]] == 0.0)
        for v in state_tensors(opt, params[n]).values():
            assert torch.all(v[~masks[n]] == 0.0)
    start = {n: params[n].detach().clone() for n in PRUNED}

    for x, y in batches(20):
        train_step(model, opt, x, y)
        for n in PRUNED:
            p, m = params[n], masks[n]
            assert torch.all(p.detach()[~m] == 0.0), f"{n} revived after {opt_name}.step()"
            assert torch.all(p.grad[~m] == 0.0), "gradient reached a pruned weight"
            for k, v in state_tensors(opt, p).items():
                assert torch.all(v[~m] == 0.0), f"{opt_name} state {k!r} nonzero at pruned weight"
    for n in PRUNED:
        kept = masks[n]
        # the unpruned weights did train
        changed = params[n].detach()[kept] != start[n][kept]
        assert changed.float().mean() > 0.9
    # biases are not masked and keep training
    assert {k: v.shape for k, v in model.state_dict().items()} == keys_before
    enforcer.remove()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_zeroing_once_does_not_survive_optimizer(opt_name):
    """Sensitivity check: without the enforcer the pruned weights come back."""
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    pretrain(model, opt)
    masks = make_masks(model)
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    assert all(torch.all(params[n].detach()[~masks[n]] == 0) for n in PRUNED)
    for x, y in batches(3):
        train_step(model, opt, x, y)
    for n in PRUNED:
        assert torch.count_nonzero(params[n].detach()[~masks[n]]) > 0


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_gradient_masking_alone_does_not_survive_optimizer(opt_name):
    """Even with masked gradients, stale momentum / Adam moments revive pruned weights;
    this is what the enforcer's step post-hook guards against."""
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    pretrain(model, opt)
    masks = make_masks(model)
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    handles = [params[n].register_hook(lambda g, m=masks[n]: g * m) for n in PRUNED]
    for x, y in batches(3):
        train_step(model, opt, x, y)
        for n in PRUNED:
            assert torch.all(params[n].grad[~masks[n]] == 0)
    for h in handles:
        h.remove()
    for n in PRUNED:
        assert torch.count_nonzero(params[n].detach()[~masks[n]]) > 0


def test_deepcopy_and_pickle_with_enforcer_attached():
    model = make_model()
    opt = OPTIMIZERS["adam"](model.parameters())
    masks = make_masks(model)
    enforcer = MaskEnforcer(model, masks, opt)
    clone = copy.deepcopy(model)
    assert clone.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(clone.state_dict()[k], v)
        assert clone.state_dict()[k].data_ptr() != v.data_ptr()
    # the copy is independent: changing it leaves the original alone
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    assert torch.all(dict(model.named_parameters())["0.weight"].detach()[~masks["0.weight"]] == 0)
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(restored[0].weight, model[0].weight)
    enforcer.remove()


def test_remove_detaches_hooks():
    model = make_model()
    opt = OPTIMIZERS["adam"](model.parameters())
    masks = make_masks(model)
    params = dict(model.named_parameters())
    with MaskEnforcer(model, masks, opt):
        for x, y in batches(3):
            train_step(model, opt, x, y)
        assert all(torch.all(params[n].detach()[~masks[n]] == 0) for n in PRUNED)
    # after the context exits (remove()), nothing keeps the weights at zero
    for x, y in batches(3, seed=7):
        train_step(model, opt, x, y)
    for n in PRUNED:
        assert torch.count_nonzero(params[n].detach()[~masks[n]]) > 0
        assert torch.count_nonzero(params[n].grad[~masks[n]]) > 0


def test_explicit_remove_and_attach_later_optimizer():
    model = make_model()
    masks = make_masks(model)
    params = dict(model.named_parameters())
    enforcer = MaskEnforcer(model, masks)  # no optimizer yet
    opt = OPTIMIZERS["sgd"](model.parameters())
    enforcer.attach(opt)
    for x, y in batches(5):
        train_step(model, opt, x, y)
        assert all(torch.all(params[n].detach()[~masks[n]] == 0) for n in PRUNED)
    enforcer.remove()
    for x, y in batches(3, seed=9):
        train_step(model, opt, x, y)
    assert any(torch.count_nonzero(params[n].detach()[~masks[n]]) > 0 for n in PRUNED)


def test_float_masks_are_accepted_as_bool():
    model = make_model()
    masks = {n: m.float() for n, m in make_masks(model).items()}
    enforcer = MaskEnforcer(model, masks)
    for n in PRUNED:
        assert enforcer.masks[n].dtype == torch.bool
        assert torch.all(dict(model.named_parameters())[n].detach()[masks[n] == 0] == 0)
    enforcer.remove()


def test_mismatched_shape_raises():
    model = make_model()
    with pytest.raises(ValueError, match="shape"):
        MaskEnforcer(model, {"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"2.weight": torch.ones(12, 4, dtype=torch.bool)})


def test_unknown_parameter_raises():
    model = make_model()
    with pytest.raises(KeyError, match="fc9.weight"):
        MaskEnforcer(model, {"fc9.weight": torch.ones(3, dtype=torch.bool)})


def test_masks_from_weights():
    model = make_model()
    masks = make_masks(model)
    apply_masks(model, masks)
    got = masks_from_weights(model, PRUNED)
    params = dict(model.named_parameters())
    for n in PRUNED:
        assert torch.equal(got[n], params[n].detach() != 0)
        assert not torch.any(got[n] & ~masks[n])
