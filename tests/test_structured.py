"""Structured ADMM sets (seed 003, section 2.4): group projections and pruner."""

import itertools

import pytest
import torch
from torch import nn

from mobileprune.sparsity.admm import ADMMPruner, project_layer
from mobileprune.errors import ConfigError
from mobileprune.sparsity.report import layer_report
from mobileprune.sparsity.targets import resolve_targets


def _brute_groups(groups: torch.Tensor, k: int) -> float:
    """Smallest ||G - P||^2 over every choice of k kept rows (P = G on the kept rows, 0
    elsewhere, so ||G - P||^2 is the sum of the dropped rows' squared norms: computed once
    per row, summed per choice, instead of building each P)."""
    sq = groups.pow(2).sum(1).tolist()
    return min(sum(v for i, v in enumerate(sq) if i not in keep)
               for keep in itertools.combinations(range(len(sq)), k))


def _tiles(w: torch.Tensor) -> torch.Tensor:
    """The 4x1 tiles of an (F, C, kh, kw) weight by explicit indexing (F a multiple of 4):
    one row per (filter quad b, GEMM column (c, i, j)), holding filters 4b..4b+3 there."""
    F, C, kh, kw = w.shape
    assert F % 4 == 0
    return torch.stack([w[4 * b:4 * b + 4, c, i, j] for b in range(F // 4)
                        for c in range(C) for i in range(kh) for j in range(kw)])


@pytest.mark.parametrize("structure, view, shape", [
    ("filter", lambda w: w.reshape(w.shape[0], -1), (4, 3, 2, 2)),
    ("channel", lambda w: w.transpose(0, 1).reshape(w.shape[1], -1), (4, 3, 2, 2)),
    ("shape", lambda w: w.reshape(w.shape[0], -1).t(), (4, 3, 2, 2)),
    ("block", _tiles, (8, 3, 1, 2)),  # 8 filters: a tile is half a GEMM column
])
def test_group_projection_matches_brute_force(structure, view, shape):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        w = torch.randn(*shape, generator=g, dtype=torch.float64)
        net = nn.Sequential(nn.Conv2d(shape[1], shape[0], shape[2:], bias=False))
        net[0].weight.data = w.clone()
        n_groups = view(w).shape[0]
        for k in range(0, n_groups + 1):
            if k == 0:
                continue  # configs require keep >= 1; k=0 is covered by test_projection
            (t,) = resolve_targets(net, {"layers": {"0": {"structure": structure, "keep": k}}})
            proj, mask = project_layer(t, w)
            rows = view(proj)
            assert int((rows.abs().sum(1) > 0).sum()) <= k
            assert float((w - proj).pow(2).sum()) == pytest.approx(_brute_groups(view(w), k), rel=1e-12)
            # The mask covers whole groups and the projection is w on the mask.
            assert torch.equal(proj, torch.where(mask, w, torch.zeros_like(w)))
            assert set(view(mask.double()).sum(1).tolist()) <= {0.0, float(view(w).shape[1])}


def test_linear_rows_and_columns():
    net = nn.Sequential(nn.Linear(5, 4))
    (t,) = resolve_targets(net, {"layers": {"0": {"structure": "column", "keep": 2}}})
    assert t.structure == "channel" and t.units == 5
    w = torch.arange(20.0).reshape(4, 5)
    proj, _ = project_layer(t, w)
    assert torch.equal(proj[:, :3], torch.zeros(4, 3)) and torch.equal(proj[:, 3:], w[:, 3:])
    (t,) = resolve_targets(net, {"layers": {"0": {"structure": "row", "sparsity": 0.5}}})
    assert t.structure == "filter" and t.keep == 2
    proj, _ = project_layer(t, w)
    assert torch.equal(proj[:2], torch.zeros(2, 5)) and torch.equal(proj[2:], w[2:])


def test_combined_sets_pruner_meets_every_target():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    cfg = {"layers": {"0": {"structure": "filter", "keep": 5},
                      "2": [{"structure": "filter", "keep": 4}, {"structure": "channel", "keep": 3},
                            {"sparsity": 0.8}],
                      "4": {"structure": "column", "sparsity": 0.5}}}
    pruner = ADMMPruner(net, cfg, rho=0.1, rho_multiplier=1.5, update_every=5)
    assert sorted(pruner.Z) == ["0.weight:filter", "2.weight", "2.weight:channel", "2.weight:filter",
                                "4.weight:channel"]
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(16, 3, 8, 8)
    for _ in range(20):
        loss = net(x).pow(2).mean() + pruner.penalty()
        opt.zero_grad(); loss.backward(); opt.step(); pruner.step()
    masks = pruner.finalize()
    w0, w2, w4 = net[0].weight, net[2].weight, net[4].weight
    assert int((w0.abs().sum((1, 2, 3)) > 0).sum()) <= 5
    assert int((w2.abs().sum((1, 2, 3)) > 0).sum()) <= 4
    assert int((w2.abs().sum((0, 2, 3)) > 0).sum()) <= 3
    assert int((w2 != 0).sum()) <= int(6 * 8 * 9 * 0.2)
    assert int((w4.abs().sum(0) > 0).sum()) <= 48
    for name, p in net.named_parameters():
        if name in masks:
            assert not bool((p[~masks[name]] != 0).any())
    rep = layer_report(net, pruner.targets)
    assert rep["totals"]["all_targets_met"]
    row = {r["layer"]: r for r in rep["layers"]}["2"]
    assert row["structured_targets"]["channel"]["keep"] == 3


def test_structured_config_errors():
    net = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ConfigError, match="8 filter groups but the config keeps 9"):
        resolve_targets(net, {"layers": {"0": {"structure": "filter", "keep": 9}}})
    with pytest.raises(ConfigError, match="unknown structure 'diagonal'"):
        resolve_targets(net, {"layers": {"0": {"structure": "diagonal", "keep": 1}}})
    with pytest.raises(ConfigError, match="repeats a structure"):
        resolve_targets(net, {"layers": {"0": [{"structure": "filter", "keep": 1},
                                               {"structure": "row", "keep": 2}]}})


def test_block_projection_ragged_filters_by_brute_force():
    """6 filters: tiles of filters 0-3 and of filters 4-5 (padded), 2 x 4 columns = 8
    tiles; the projection keeps the k tiles of largest norm and nothing else."""
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 6, (1, 2), bias=False))
    for trial in range(10):
        w = torch.randn(6, 2, 1, 2, generator=g, dtype=torch.float64)
        cols = [(c, j) for c in range(2) for j in range(2)]
        tiles = [w[f0:f0 + 4, c, 0, j] for f0 in (0, 4) for c, j in cols]
        padded = torch.stack([torch.cat([t, t.new_zeros(4 - len(t))]) for t in tiles])
        for k in range(1, 9):
            (t,) = resolve_targets(net, {"layers": {"0": {"structure": "block", "keep": k}}})
            assert t.units == 8
            proj, mask = project_layer(t, w)
            assert float((w - proj).pow(2).sum()) == pytest.approx(_brute_groups(padded, k), rel=1e-12)
            assert torch.equal(proj, torch.where(mask, w, torch.zeros_like(w)))
            kept = [bool(mask[f0:f0 + 4, c, 0, j].all()) for f0 in (0, 4) for c, j in cols]
            gone = [not bool(mask[f0:f0 + 4, c, 0, j].any()) for f0 in (0, 4) for c, j in cols]
            assert all(a or b for a, b in zip(kept, gone)) and sum(kept) == k


def test_block_sparsity_budget_and_grouped_convs():
    """`sparsity` on `block` keeps the tiles that hold the same weight budget as the
    unstructured target, also when the filter count is not a multiple of 4 (10 outputs:
    3 tiles per column, one of them half padding); grouped and depthwise convs refuse
    `block` (a tile would mix groups) with the reason."""
    net = nn.Sequential(nn.Linear(500, 10), nn.Conv2d(8, 16, 3, groups=2))
    (t,) = resolve_targets(net, {"layers": {"0": {"structure": "block", "sparsity": 0.95}}})
    assert (t.units, t.keep) == (1500, 62)  # floor(5000 * 0.05 / 4), not floor(1500 * 0.05) = 75
    (t,) = resolve_targets(net, {"layers": {"0": {"structure": "unstructured", "sparsity": 0.95}}})
    assert t.keep == 250
    with pytest.raises(ConfigError, match="'block' is not defined for '1'.*grouped or depthwise"):
        resolve_targets(net, {"layers": {"1": {"structure": "block", "sparsity": 0.5}}})


@pytest.mark.parametrize("structure, view", [("block", _tiles), ("filter", lambda w: w.reshape(w.shape[0], -1))])
def test_projection_with_allowed_support_by_brute_force(structure, view):
    """With an element mask ``allowed``, the projection is onto {at most k groups} and
    {zero outside allowed}: the k groups of largest norm over their allowed elements,
    each keeping only those (error = the disallowed part + the best k-subset's rest)."""
    g = torch.Generator().manual_seed(11)
    net = nn.Sequential(nn.Conv2d(3, 8, (1, 2), bias=False))
    for trial in range(10):
        w = torch.randn(8, 3, 1, 2, generator=g, dtype=torch.float64)
        allowed = torch.rand(w.shape, generator=g) < 0.6
        inside = torch.where(allowed, w, torch.zeros_like(w))
        for k in range(1, view(w).shape[0]):
            (t,) = resolve_targets(net, {"layers": {"0": {"structure": structure, "keep": k}}})
            proj, mask = project_layer(t, w, allowed)
            assert not bool((mask & ~allowed).any())
            assert torch.equal(proj, torch.where(mask, w, torch.zeros_like(w)))
            best = float((w - inside).pow(2).sum()) + _brute_groups(view(inside), k)
            assert float((w - proj).pow(2).sum()) == pytest.approx(best, rel=1e-12)
