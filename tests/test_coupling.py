"""Coupled structured pruning: channels tied by residual adds / concat / flatten are
pruned together, so compaction can really remove them (issue 4, item 2)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.surgery.compact import channel_ids, compact, dead_units
from mobileprune.math.groups import count_nonzero_groups
from mobileprune.models import build_model
from mobileprune.math.projection import top_coupled_groups


# --------------------------------------------------------------- the pure projection

def _brute(sq, ids, keeps, n):
    """Best feasible set of channel ids by enumeration (value of the kept norm)."""
    best = -1.0
    for r in range(n + 1):
        for sub in itertools.combinations(range(n), r):
            s = set(sub)
            ok = all(sum(int(i) in s for i in g.tolist()) <= k for g, k in zip(ids, keeps))
            if ok:
                best = max(best, sum(float(x[torch.tensor([int(i) in s for i in g.tolist()],
                                                          dtype=torch.bool)].sum())
                                     for x, g in zip(sq, ids)))
    return best


def _value(kept, sq, ids):
    return sum(float(x[kept[g]].sum()) for x, g in zip(sq, ids))


def _check_feasible(kept, ids, keeps):
    for g, k in zip(ids, keeps):
        assert int(kept[g].sum()) <= k


@pytest.mark.parametrize("seed", range(40))
def test_coupled_projection_matches_brute_force_on_laminar_sets(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 8, (1,), generator=g))
    kind = seed % 4
    perm = torch.randperm(n, generator=g)
    if kind == 0:    # residual add: every member sees all channels once
        sets = [perm, perm.flip(0), torch.arange(n)]
    elif kind == 1:  # concat: two producers (disjoint halves), one consumer (all)
        h = n // 2
        sets = [perm[:h], perm[h:], torch.arange(n)]
    elif kind == 2:  # flatten: consumer sees each channel 3 times
        sets = [torch.arange(n), torch.arange(n).repeat_interleave(3)]
    else:            # nested: a member touching a subset
        sets = [torch.arange(n), perm[: max(1, n // 2)]]
    sq = [torch.rand(s.numel(), generator=g, dtype=torch.float64) for s in sets]
    keeps = [int(torch.randint(0, s.numel() + 1, (1,), generator=g)) for s in sets]
    kept = top_coupled_groups(sq, sets, keeps, n)
    _check_feasible(kept, sets, keeps)
    assert _value(kept, sq, sets) == pytest.approx(_brute(sq, sets, keeps, n), abs=1e-12)


def test_coupled_projection_by_hand_and_allowed():
    # two members share ids 0..2; member norms 1,4,9 and 9,1,1 -> totals 10, 5, 10
    sq = [torch.tensor([1.0, 4.0, 9.0]), torch.tensor([9.0, 1.0, 1.0])]
    ids = [torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])]
    assert top_coupled_groups(sq, ids, [2, 3], 3).tolist() == [True, False, True]  # tie -> lower id
    assert top_coupled_groups(sq, ids, [1, 3], 3).tolist() == [True, False, False]
    allowed = torch.tensor([False, True, True])
    assert top_coupled_groups(sq, ids, [2, 2], 3, allowed).tolist() == [False, True, True]
    assert top_coupled_groups(sq, ids, [0, 3], 3).tolist() == [False, False, False]


def test_coupled_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        top_coupled_groups([torch.ones(2)], [], [1], 2)
    with pytest.raises(ValueError, match="outside"):
        top_coupled_groups([torch.ones(2)], [torch.tensor([0, 5])], [1], 2)
    with pytest.raises(ValueError, match="non-finite"):
        top_coupled_groups([torch.tensor([1.0, float("nan")])], [torch.tensor([0, 1])], [1], 2)


# --------------------------------------------------------------- graph coupling

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        self.d = nn.Conv2d(8, 5, 1)
        self.head = nn.Linear(9 * 4 * 4, 3)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        s = s + self.b(torch.relu(self.a(s)))            # residual: stem ~ b
        y = torch.cat([self.c(s), self.d(s)], dim=1)    # concat: c | d
        return self.head(torch.flatten(y, 1))


def test_channel_ids_see_residual_concat_and_flatten():
    m = Residual()
    ids = channel_ids(m, torch.randn(1, 3, 4, 4))
    assert torch.equal(ids["stem"]["filter"], ids["b"]["filter"])
    assert torch.equal(ids["a"]["channel"], ids["stem"]["filter"])
    assert torch.equal(ids["b"]["channel"], ids["a"]["filter"])
    head_in = ids["head"]["channel"]
    want = torch.cat([ids["c"]["filter"], ids["d"]["filter"]]).repeat_interleave(16)
    assert torch.equal(head_in, want)
    assert len(set(ids["a"]["filter"].tolist()) & set(ids["stem"]["filter"].tolist())) == 0


def _filter_cfg(sparsity=0.5):
    return {"types": ["Conv2d"], "default": {"sparsity": sparsity, "structure": "filter"}}


def test_admm_couples_residual_filters_and_compaction_removes_them():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    m = Residual().eval()
    p = ADMMPruner(m, _filter_cfg(), example_input=x)
    assert sorted(map(sorted, p.coupled)) == [["b.weight:filter", "stem.weight:filter"]]
    ref = m(x)
    masks = p.finalize()
    zs = (m.stem.weight.reshape(8, -1) == 0).all(1)
    zb = (m.b.weight.reshape(8, -1) == 0).all(1)
    assert torch.equal(zs, zb) and int(zs.sum()) == 4
    # the kept channels maximise the combined norm (brute force over all 4-subsets)
    for t in p.targets:
        assert count_nonzero_groups(dict(m.named_parameters())[t.param_name], "filter") <= t.keep
    names = ("stem", "a", "b", "c", "d")
    assert set(masks) == {f"{n}.{k}" for n in names for k in ("weight", "bias")}
    for n in names:  # a pruned filter goes with its bias
        mod = getattr(m, n)
        dead = (mod.weight.reshape(mod.out_channels, -1) == 0).all(1)
        assert torch.equal(masks[f"{n}.bias"], ~dead) and bool((mod.bias[dead] == 0).all())
    removable = dead_units(m, x)
    assert len(removable["stem"]["removable"]) == 4 and len(removable["b"]["removable"]) == 4
    assert (ref - m(x)).abs().max() > 0  # pruning changed the model (sanity)


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.copy_(0.5 + torch.rand(mod.num_features, generator=g))
                mod.bias.copy_(torch.randn(mod.num_features, generator=g))
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))


def test_trained_batchnorm_of_pruned_channels_is_zeroed_so_compaction_removes_them():
    # With trained BatchNorm a zero filter still outputs beta - gamma * mean / std; the
    # mapping must remove the BN entries too, or zero-padded consumers block compaction.
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    m = build_model("resnet20").eval()
    _randomize_bn(m)
    p = ADMMPruner(m, _filter_cfg(0.5), example_input=x)
    masks = p.finalize()
    assert any(k.endswith("bn1.bias") for k in masks)
    c = compact(m, x)
    with torch.no_grad():
        assert (m(x) - c(x)).abs().max() <= 1e-5
    n_full = sum(q.numel() for q in build_model("resnet20").parameters())
    assert sum(q.numel() for q in c.parameters()) < 0.35 * n_full


def test_coupled_choice_is_the_best_joint_choice():
    torch.manual_seed(1)
    m = Residual().eval()
    w_s = m.stem.weight.detach().reshape(8, -1).pow(2).sum(1)
    w_b = m.b.weight.detach().reshape(8, -1).pow(2).sum(1)
    best = max(itertools.combinations(range(8), 4), key=lambda c: float((w_s + w_b)[list(c)].sum()))
    p = ADMMPruner(m, _filter_cfg(), example_input=torch.randn(1, 3, 4, 4))
    p.finalize()
    kept = (m.stem.weight.reshape(8, -1) != 0).any(1).nonzero().flatten().tolist()
    assert kept == sorted(best)


def test_uncoupled_residual_filters_cannot_be_removed_coupled_can():
    x = torch.randn(2, 3, 32, 32)
    out = {}
    for coupled in (False, True):
        torch.manual_seed(0)
        m = build_model("resnet20").eval()
        p = ADMMPruner(m, _filter_cfg(0.5), example_input=x if coupled else None)
        p.finalize()
        c = compact(m, x)
        with torch.no_grad():
            assert (m(x) - c(x)).abs().max() <= 1e-5
        out[coupled] = sum(q.numel() for q in c.parameters())
        for t in p.targets:
            assert count_nonzero_groups(dict(m.named_parameters())[t.param_name], "filter") <= t.keep
    full = sum(q.numel() for q in build_model("resnet20").parameters())
    assert out[True] < 0.6 * out[False] < 0.6 * full


def test_coupled_update_keeps_z_consistent_and_respects_allowed():
    torch.manual_seed(2)
    x = torch.randn(1, 3, 4, 4)
    m = Residual()
    allowed = {"stem.weight": torch.ones_like(m.stem.weight, dtype=torch.bool)}
    allowed["stem.weight"][0] = False  # channel 0 was pruned by an earlier stage
    p = ADMMPruner(m, _filter_cfg(), example_input=x, allowed=allowed, rho=1.0)
    for _ in range(3):
        with torch.no_grad():
            for q in m.parameters():
                q.add_(0.1 * torch.randn_like(q))
        p.update()
        zs = (p.Z["stem.weight:filter"].reshape(8, -1) == 0).all(1)
        zb = (p.Z["b.weight:filter"].reshape(8, -1) == 0).all(1)
        assert torch.equal(zs, zb) and bool(zs[0])


# --------------------------------------------------------------- dead weights

def test_dead_weights_by_hand_and_compaction_agrees():
    from mobileprune.surgery.compact import dead_weights

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        m[2].weight[:, [2, 5]] = 0      # hidden units 2, 5 of layer 0 feed nothing
        m[2].weight[1] = 0              # unit 1 of layer 2: a constant (its bias) ...
    x = torch.randn(1, 6)
    d = dead_weights(m, x)
    want0 = torch.zeros(8, 6, dtype=torch.bool)
    want0[[2, 5]] = True
    assert torch.equal(d["0.weight"], want0)
    want4 = torch.zeros(3, 5, dtype=torch.bool)
    want4[:, 1] = True                  # ... folded into layer 4's bias: its column is dead
    assert torch.equal(d["4.weight"], want4)
    # zeroing every dead weight (and folding nothing else) keeps the outputs of compact
    live = sum(int((p != 0).sum()) for n, p in compact(m, x).named_parameters() if n.endswith("weight"))
    total = sum(int((p != 0).sum()) for n, p in m.named_parameters() if n.endswith("weight"))
    assert live == total - sum(int(v.sum()) for v in d.values())


def test_reallocation_leaves_no_dead_weight_and_keeps_counts():
    from mobileprune.surgery.compact import dead_weights

    torch.manual_seed(3)
    m = build_model("lenet300100").eval()
    x = torch.randn(1, 1, 28, 28)
    cfg = {"layers": {"fc1": {"keep": 400}, "fc2": {"keep": 60}, "fc3": {"keep": 40}}}
    plain = ADMMPruner(m, cfg, example_input=x)
    import copy
    m2 = copy.deepcopy(m)
    plain.finalize()
    assert sum(int(v.sum()) for v in dead_weights(m, x).values()) > 0  # the plain mapping wastes some
    p = ADMMPruner(m2, cfg, example_input=x)
    masks = p.finalize(reallocate_dead=True)
    assert p.reallocation_rounds >= 1
    assert sum(int(v.sum()) for v in dead_weights(m2, x).values()) == 0
    for t in p.targets:
        assert int((dict(m2.named_parameters())[t.param_name] != 0).sum()) == t.keep
        assert int(masks[t.param_name].sum()) == t.keep
    with pytest.raises(Exception, match="example_input"):
        ADMMPruner(build_model("lenet300100"), cfg).finalize(reallocate_dead=True)


@pytest.mark.parametrize("structure", ["block", "shape"])
def test_reallocation_converges_for_structured_targets(structure):
    """A dead unit inside a kept group (a 4x1 tile or a GEMM column shared with live
    filters) is zeroed within the group, so reallocation ends with no dead weight kept
    (it used to run out of rounds: a group counted as allowed if any element was)."""
    from mobileprune.surgery.compact import dead_weights

    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 6)
    cfg = {"layers": {"0": {"structure": structure, "keep": 4 if structure == "block" else 3},
                      "2": {"keep": 6}}}
    p = ADMMPruner(m, cfg, example_input=x)
    masks = p.finalize(reallocate_dead=True, max_rounds=8)
    assert p.reallocation_rounds < 8
    assert sum(int(v.sum()) for v in dead_weights(m, x).values()) == 0
    assert not bool((masks["0.weight"] & dead_weights(m, x, nonzero_only=False).get(
        "0.weight", torch.zeros_like(masks["0.weight"]))).any())
