"""Dynamic masks at a constant count (RigL): regrow, live_structure,
RegrowingMaskEnforcer and schedule.final_regrow of proximal_prune."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from conftest import tiny_images
from mobileprune.checkpoint import load_checkpoint
from mobileprune.errors import ConfigError
from mobileprune.sparsity.masks import MaskEnforcer, RegrowingMaskEnforcer, live_structure, regrow
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import proximal_prune


def _brute_regrow(mask, weight, score, allowed, k):
    """The best swap by enumeration: among all sets D of k active entries and G of k
    allowed inactive entries, the one with the smallest sum |w| over D and the largest
    sum of scores over G (no ties in the inputs, so it is unique)."""
    act = [i for i in range(mask.numel()) if mask.flatten()[i]]
    cand = [i for i in range(mask.numel()) if allowed.flatten()[i] and not mask.flatten()[i]]
    k = min(k, len(act), len(cand))
    w, s = weight.abs().flatten(), score.flatten()
    drop = min(itertools.combinations(act, k), key=lambda d: sum(float(w[i]) for i in d))
    grow = max(itertools.combinations(cand, k), key=lambda g: sum(float(s[i]) for i in g))
    new = mask.flatten().clone()
    new[list(drop)] = False
    new[list(grow)] = True
    return new.view_as(mask)


def test_regrow_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        shape = [(3, 4), (2, 2, 3), (7,)][trial % 3]
        mask = torch.rand(shape, generator=g) < 0.5
        allowed = torch.rand(shape, generator=g) < 0.8
        weight = torch.randn(shape, generator=g, dtype=torch.float64) * mask
        score = torch.rand(shape, generator=g, dtype=torch.float64)
        for k in (0, 1, 2, 3, 20):
            got = regrow(mask, weight, score, allowed, k)
            assert torch.equal(got, _brute_regrow(mask, weight, score, allowed, k)), (trial, k)
            assert int(got.sum()) == int(mask.sum())  # the count never changes
            assert not (got & ~mask & ~allowed).any()  # nothing grows outside allowed
    with pytest.raises(ValueError, match="one shape"):
        regrow(torch.ones(3, dtype=torch.bool), torch.ones(3), torch.ones(4), torch.ones(3), 1)


def test_live_structure_by_hand():
    m = torch.zeros(3, 4, 2, 2, dtype=torch.bool)
    m[0, 1, 0, 0] = m[2, 3, 1, 1] = True  # filters 0 and 2, input channels 1 and 3
    expect = torch.zeros_like(m)
    for o, c in itertools.product((0, 2), (1, 3)):
        expect[o, c] = True
    assert torch.equal(live_structure(m), expect)
    lin = torch.tensor([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    assert torch.equal(live_structure(lin), torch.tensor([[1, 0, 1], [0, 0, 0], [1, 0, 1]],
                                                         dtype=torch.bool))


def _toy(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    masks = {"0.weight": torch.rand(8, 6) < 0.5, "2.weight": torch.rand(3, 8) < 0.6}
    masks["0.weight"][5] = False  # a dead hidden unit: it must stay dead
    masks["2.weight"][:, 5] = False
    return net, x, y, masks


def test_enforcer_moves_masks_at_a_constant_count_with_the_dense_gradient():
    net, x, y, masks = _toy()
    counts = {n: int(m.sum()) for n, m in masks.items()}
    allowed = {n: live_structure(m) for n, m in masks.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    params = dict(net.named_parameters())
    snap = {}  # the weights right after each step, before the enforcer's hook (runs first)
    opt.register_step_post_hook(
        lambda o, a, k: snap.update({n: params[n].detach().clone() for n in masks}))
    every, end, alpha = 3, 14, 0.5
    given = {n: m.clone() for n, m in masks.items()}
    enf = RegrowingMaskEnforcer(net, masks, opt, end_step=end, alpha=alpha, every=every)
    changed_at, expect_changed = [], []
    for step in range(1, 19):
        xb, yb = x[(step * 8) % 40:][:8], y[(step * 8) % 40:][:8]
        before = {n: m.clone() for n, m in enf.masks.items()}
        # the dense gradient of this minibatch, computed apart (no hooks)
        ref = copy.deepcopy(net)
        nn.functional.cross_entropy(ref(xb), yb).backward()
        dense_grad = {n: p.grad.abs() for n, p in ref.named_parameters() if n in masks}
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
        if any(not torch.equal(before[n], enf.masks[n]) for n in masks):
            changed_at.append(step)
        for n in masks:
            m = enf.masks[n]
            assert int(m.sum()) == counts[n]
            assert not (m & ~allowed[n]).any()
            assert not (params[n].detach()[~m]).any()  # exactly zero outside the mask
            assert not opt.state[params[n]]["momentum_buffer"][~m].any()
            assert not params[n].detach()[m & ~before[n]].any()  # grown weights start at 0
        if step % every == 0 and step < end:
            # the update by hand: the step's weights, the gradient before masking,
            # k = floor(f n) with f = alpha / 2 (1 + cos(pi t / T))
            ks = {n: int(alpha / 2 * (1 + math.cos(math.pi * step / end)) * counts[n]) for n in masks}
            for n in masks:
                expect = regrow(before[n], snap[n], dense_grad[n], allowed[n], ks[n])
                assert torch.equal(enf.masks[n], expect), (step, n)
            if any(ks.values()):
                expect_changed.append(step)
    assert changed_at == expect_changed and len(changed_at) >= 3
    assert enf.updates == 4 and enf.step == 18  # at steps 3, 6, 9, 12
    assert all(torch.equal(masks[n], given[n]) for n in masks)  # the caller's masks: untouched
    enf.remove()


def test_enforcer_drops_the_smallest_weights():
    torch.manual_seed(1)
    lin = nn.Linear(5, 4)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, 4] = False  # column 4 inactive: the only place to grow
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)  # lr 0: weights do not move
    enf = RegrowingMaskEnforcer(lin, {"weight": mask}, opt, end_step=10, alpha=0.5, every=1,
                                allowed={"weight": torch.ones(4, 5, dtype=torch.bool)})
    w = lin.weight.detach().clone()
    opt.zero_grad()
    lin(torch.randn(3, 5)).sum().backward()
    opt.step()
    k = int(0.25 * (1 + math.cos(math.pi / 10)) * 16)  # 7, clipped to the 4 places to grow
    assert k == 7
    smallest = w[:, :4].abs().flatten().argsort()[:4]
    dropped = (~enf.masks["weight"][:, :4]).flatten().nonzero().flatten()
    assert sorted(dropped.tolist()) == sorted(smallest.tolist())
    assert enf.masks["weight"][:, 4].all() and int(enf.masks["weight"].sum()) == 16


def test_enforcer_validates():
    net, _, _, masks = _toy()
    with pytest.raises(ValueError, match="alpha"):
        RegrowingMaskEnforcer(net, masks, end_step=5, alpha=1.5)
    with pytest.raises(ValueError, match="every"):
        RegrowingMaskEnforcer(net, masks, end_step=5, every=0)
    with pytest.raises(KeyError, match="allowed has no entry"):
        RegrowingMaskEnforcer(net, masks, end_step=5, allowed={"0.weight": masks["0.weight"]})
    with pytest.raises(ValueError, match="allowed"):
        RegrowingMaskEnforcer(net, masks, end_step=5,
                              allowed={"0.weight": torch.ones(2, 2), "2.weight": masks["2.weight"]})


def test_without_updates_it_is_a_mask_enforcer():
    """alpha = 0: the same weights as MaskEnforcer, step by step."""
    net, x, y, masks = _toy(3)
    twin = copy.deepcopy(net)
    runs = []
    for model, make in ((net, lambda o: RegrowingMaskEnforcer(model, masks, o, end_step=100, alpha=0.0,
                                                              every=1)),
                        (twin, lambda o: MaskEnforcer(twin, masks, o))):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        with make(opt):
            for i in range(6):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i * 6:][:6]), y[i * 6:][:6]).backward()
                opt.step()
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.fixture()
def data():
    return tiny_images(16)


def _cfg(**sched):
    return {"method": "l0", "eta": 5e-4,
            "schedule": {"rounds": 1, "prox_epochs": 1, "retrain_epochs": 0, "prox_lr": 1e-2,
                         "retrain_lr": 1e-3, "max_units": {"fc1": 30}, "target_nonzero": 6000,
                         "final_project": True, "final_retrain_epochs": 3,
                         "final_regrow": 0.3, "regrow_every": 2, **sched}}


def _nnz(model):
    return {n: int((p != 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")}


def test_final_regrow_keeps_the_budget_and_the_caps_and_resumes(data, tmp_path):
    torch.manual_seed(0)
    full = LeNet300100()
    lines = []
    a = proximal_prune(copy.deepcopy(full), data, _cfg(), run_dir=tmp_path / "a",
                       log=lines.append).model
    projected = [line for line in lines if line.startswith("projected onto")]
    assert projected, lines
    st = load_checkpoint(tmp_path / "a" / "state.pt")
    moved = st["extra"]["phases"]["final retrain"]["masks"]
    assert sum(int(m.sum()) for m in moved.values()) <= 6000
    # the masks moved, the count per layer did not, and nothing grew outside the
    # 30 hidden units kept by the cap
    start = {n: (p != 0) for n, p in a.named_parameters() if n in moved}
    assert _nnz(a)["fc1.weight"] <= int(moved["fc1.weight"].sum())
    assert int((a.fc1.weight != 0).any(1).sum()) <= 30
    allowed = st["extra"]["phases"]["final retrain"]["allowed"]
    assert int(allowed["fc1.weight"].any(1).sum()) <= 30
    for n, m in moved.items():
        assert not (start[n] & ~m).any()  # the final weights sit inside the saved masks
    # the same run interrupted after the first final epoch resumes to the same weights
    def stop(line):
        if line.startswith("final retrain 1/"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        proximal_prune(copy.deepcopy(full), data, _cfg(), run_dir=tmp_path / "b", log=stop)
    b = proximal_prune(copy.deepcopy(full), data, _cfg(), run_dir=tmp_path / "b",
                       log=lambda s: None).model
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6), k
    # and the masks did move relative to plain masked retraining
    c = proximal_prune(copy.deepcopy(full), data, _cfg(final_regrow=0.0), log=lambda s: None).model
    assert any(not torch.equal(p != 0, dict(c.named_parameters())[n] != 0)
               for n, p in a.named_parameters() if n.endswith("weight"))


def test_final_regrow_validated(data):
    for bad, msg in (({"final_regrow": 1.5}, "fraction in"), ({"final_regrow": -0.1}, "final_regrow"),
                     ({"regrow_every": 0}, "regrow_every"),
                     ({"final_retrain_epochs": 0}, "needs schedule.final_retrain_epochs")):
        with pytest.raises(ConfigError, match=msg):
            proximal_prune(LeNet300100(), data, _cfg(**bad), log=lambda s: None)


def test_admm_retrain_regrow_keeps_exact_targets_and_structure_and_resumes(tmp_path):
    """retrain.regrow in admm_prune: unstructured layers' masks move at their exact
    count, a structured (filter) layer keeps its mask, and an interrupted run resumes
    to the same weights and masks."""
    from mobileprune.pipeline.prune import admm_prune

    cfg = {"stages": [{"layers": {"fc1": {"sparsity": 0.9},
                                  "fc2": {"structure": "filter", "sparsity": 0.5}}}],
           "admm": {"epochs": 1, "lr": 1e-3, "rho": 1e-2},
           "retrain": {"epochs": 3, "lr": 1e-3, "regrow": 0.4, "regrow_every": 1}}
    loader = tiny_images(16)

    def go(run_dir, log=lambda s: None, config=cfg):
        torch.manual_seed(0)
        model = LeNet300100()
        return admm_prune(model, loader, config, run_dir=run_dir, log=log)

    a = go(tmp_path / "a")
    st = load_checkpoint(tmp_path / "a" / "stage1.pt")
    assert int(a.masks["fc1.weight"].sum()) == round(0.1 * 300 * 784)
    rows = a.masks["fc2.weight"].any(1)
    assert int(rows.sum()) == 50 and a.masks["fc2.weight"][rows].all()  # whole filters kept
    assert a.report["totals"]["all_targets_met"] is True
    for n, m in a.masks.items():
        assert not dict(a.model.named_parameters())[n].detach()[~m].any()
        assert torch.equal(st["masks"][n].bool(), m)
    plain = go(None, config={**cfg, "retrain": {**cfg["retrain"], "regrow": 0.0}})
    assert not torch.equal(plain.masks["fc1.weight"], a.masks["fc1.weight"])  # they moved
    assert torch.equal(plain.masks["fc2.weight"], a.masks["fc2.weight"])  # structured: not

    def stop(line):
        if "retrain 1/" in line:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "b", log=stop)
    b = go(tmp_path / "b")
    for n, m in a.masks.items():
        assert torch.equal(b.masks[n], m), n
    for k, v in a.model.state_dict().items():
        assert torch.allclose(v, b.model.state_dict()[k], atol=1e-6), k


def test_admm_retrain_regrow_validated():
    from mobileprune.pipeline.prune import PipelineConfig

    for bad, msg in (({"regrow": 2.0}, "fraction"), ({"regrow_every": 0}, "regrow_every"),
                     ({"regrow": -1}, "regrow")):
        with pytest.raises(ConfigError, match=msg):
            PipelineConfig.from_dict({"stages": [{"default": 0.5}], "retrain": bad})


def test_refill_matches_brute_force():
    from mobileprune.sparsity.masks import refill

    g = torch.Generator().manual_seed(2)
    for trial in range(40):
        shapes = {"a": (3, 4), "b": (2, 3)}
        masks = {n: torch.rand(s, generator=g) < 0.4 for n, s in shapes.items()}
        allowed = {n: torch.rand(s, generator=g) < 0.8 for n, s in shapes.items()}
        scores = {n: torch.rand(s, generator=g) for n, s in shapes.items()}
        free = [(n, i) for n in shapes for i in range(masks[n].numel())
                if allowed[n].flatten()[i] and not masks[n].flatten()[i]]
        for count in (0, 1, 3, 50):
            got = refill(masks, scores, allowed, count)
            k = min(count, len(free))
            best = max(itertools.combinations(free, k),
                       key=lambda c: sum(float(scores[n].flatten()[i]) for n, i in c))
            for n in shapes:
                expect = masks[n].flatten().clone()
                expect[[i for m, i in best if m == n]] = True
                assert torch.equal(got[n].flatten(), expect), (trial, count, n)
    with pytest.raises(ValueError, match="differ in shape"):
        refill({"a": torch.ones(2, dtype=torch.bool)}, {"a": torch.ones(3)}, {"a": torch.ones(2)}, 1)


def test_final_refill_fills_the_budget_after_a_late_cap_and_final_shift(data, tmp_path, monkeypatch):
    """A second run with a late input cap (rounds: 0): the cut leaves the model below
    target_nonzero; final_refill grows it back to exactly the target inside the kept
    units, and final_shift shifts the inputs of the final retraining only."""
    import mobileprune.pipeline.train as train_mod

    torch.manual_seed(0)
    model = LeNet300100()
    proximal_prune(model, data, _cfg(final_regrow=0.0, final_retrain_epochs=1), log=lambda s: None)
    before = sum(_nnz(model).values())
    assert before <= 6000
    shifts = []
    real = train_mod.random_shift
    monkeypatch.setattr(train_mod, "random_shift", lambda x, s, *a, **k: (shifts.append(s), real(x, s))[1])
    lines = []
    late = {"method": "l0", "eta": 0.0,
            "schedule": {"rounds": 0, "max_inputs": {"fc1": 60}, "fold_dead": True,
                         "target_nonzero": 4000, "final_refill": True, "final_retrain_epochs": 2,
                         "final_regrow": 0.3, "regrow_every": 2, "final_shift": 1}}
    proximal_prune(model, data, late, run_dir=tmp_path / "late", log=lines.append)
    cut = [line for line in lines if line.startswith("refilled to")]
    # (the cut leaves about 900 weights; 30 hidden units x 60 inputs + fc2 + fc3 allow 4,200)
    assert cut and cut[0].startswith("refilled to 4,000 weights"), lines
    nnz = _nnz(model)
    assert sum(nnz.values()) <= 4000
    state = load_checkpoint(tmp_path / "late" / "state.pt")
    assert sum(int(m.sum()) for m in state["extra"]["phases"]["final retrain"]["masks"].values()) == 4000
    assert int((model.fc1.weight != 0).any(0).sum()) <= 60  # the cap holds after the refill
    assert shifts and set(shifts) == {1} and len(shifts) == 2 * len(data)  # final epochs only
    with pytest.raises(ConfigError, match="final_refill needs"):
        proximal_prune(LeNet300100(), data, {**late, "schedule": {**late["schedule"], "target_nonzero": None}},
                       log=lambda s: None)
    with pytest.raises(ConfigError, match="final_shift"):
        proximal_prune(LeNet300100(), data, {**late, "schedule": {**late["schedule"], "final_shift": -1}},
                       log=lambda s: None)
