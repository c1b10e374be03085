"""Tests of mobileprune.math.projection against brute force over all supports.

The Euclidean projection onto ``{X : nnz(X) <= k}`` restricted to a support ``S`` is
``w`` on ``S`` and 0 elsewhere, with squared distance ``sum_{i not in S} w_i^2``; so the
exact projection distance is the minimum of that sum over every support of size ``k``
(sizes smaller than ``k`` can never do better). The same holds for rows/groups.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mobileprune.math.projection import project_top_groups, project_topk, topk_mask


def brute_force_dist2(w: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> float:
    """Smallest ||w - x||^2 over x supported on a k-subset of the allowed positions."""
    flat = [float(v) for v in w.reshape(-1).tolist()]
    idx = list(range(len(flat)))
    if allowed is not None:
        idx = [i for i, a in enumerate(allowed.reshape(-1).tolist()) if a]
    k = min(k, len(idx))
    total = sum(v * v for v in flat)
    best = math.inf
    for subset in itertools.combinations(idx, k):
        kept = sum(flat[i] * flat[i] for i in subset)
        best = min(best, total - kept)
    return best


def brute_force_group_dist2(g: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> float:
    rows = [[float(v) for v in r] for r in g.tolist()]
    sq = [sum(v * v for v in r) for r in rows]
    idx = list(range(len(rows)))
    if allowed is not None:
        idx = [i for i, a in enumerate(allowed.tolist()) if a]
    k = min(k, len(idx))
    best = math.inf
    for subset in itertools.combinations(idx, k):
        best = min(best, sum(sq) - sum(sq[i] for i in subset))
    return best


def _cases():
    """Small float64 tensors, random and with ties/zeros/duplicates of both signs."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for n in range(1, 9):
        out.append(torch.randn(n, generator=g, dtype=torch.float64))
    out.append(torch.randn(2, 4, generator=g, dtype=torch.float64))
    out.append(torch.randn(2, 2, 2, generator=g, dtype=torch.float64))
    # integer-valued entries: many ties in magnitude, some exact zeros
    out.append(torch.randint(-2, 3, (8,), generator=g).to(torch.float64))
    out.append(torch.randint(-1, 2, (2, 3), generator=g).to(torch.float64))
    out.append(torch.tensor([3.0, -3.0, 1.0, -1.0, 0.0, 2.0, -2.0], dtype=torch.float64))
    out.append(torch.zeros(5, dtype=torch.float64))
    return out


@pytest.mark.parametrize("w", _cases(), ids=lambda t: "x".join(map(str, t.shape)) or "scalar")
def test_project_topk_matches_brute_force(w):
    w_before = w.clone()
    for k in range(0, w.numel() + 1):
        proj, mask = project_topk(w, k)
        assert proj.shape == w.shape and mask.shape == w.shape
        assert mask.dtype == torch.bool
        assert int(mask.sum()) == k
        assert int(torch.count_nonzero(proj)) <= k
        # the projection is w on the mask and exactly 0 elsewhere
        assert torch.equal(proj[mask], w[mask])
        assert torch.all(proj[~mask] == 0)
        dist2 = float(((w - proj) ** 2).sum())
        assert dist2 == pytest.approx(brute_force_dist2(w, k), rel=1e-12, abs=1e-15)
    assert torch.equal(w, w_before), "input modified in place"


@pytest.mark.parametrize("seed", range(6))
def test_project_topk_allowed_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = 3 + seed % 6  # 3..8
    w = torch.randn(n, generator=g, dtype=torch.float64)
    if seed % 2:
        w = torch.randint(-2, 3, (n,), generator=g).to(torch.float64)  # ties
    allowed = torch.rand(n, generator=g) < 0.6
    allowed[0] = True  # at least one allowed position
    w_before, allowed_before = w.clone(), allowed.clone()
    n_allowed = int(allowed.sum())
    for k in range(0, n + 1):
        proj, mask = project_topk(w, k, allowed)
        assert not torch.any(mask & ~allowed), "selected a position outside `allowed`"
        assert int(mask.sum()) == min(k, n_allowed)
        assert torch.all(proj[~allowed] == 0)
        assert int(torch.count_nonzero(proj)) <= k
        dist2 = float(((w - proj) ** 2).sum())
        assert dist2 == pytest.approx(brute_force_dist2(w, k, allowed), rel=1e-12, abs=1e-15)
    assert torch.equal(w, w_before) and torch.equal(allowed, allowed_before)


def test_allowed_can_exclude_the_largest_entries():
    w = torch.tensor([10.0, -9.0, 1.0, -2.0, 0.5])
    allowed = torch.tensor([False, False, True, True, True])
    proj, mask = project_topk(w, 2, allowed)
    assert mask.tolist() == [False, False, True, True, False]
    assert proj.tolist() == [0.0, 0.0, 1.0, -2.0, 0.0]


def test_ties_are_broken_by_lower_flat_index():
    # all-equal magnitudes, alternating signs
    w = torch.tensor([1.0, -1.0, 1.0, -1.0])
    proj, mask = project_topk(w, 2)
    assert mask.tolist() == [True, True, False, False]
    assert proj.tolist() == [1.0, -1.0, 0.0, 0.0]
    # one clear winner pair (|2| twice, opposite signs), then a three-way tie at 0.5
    w = torch.tensor([0.5, -2.0, 2.0, 0.5, -0.5])
    _, mask = project_topk(w, 3)
    assert mask.tolist() == [True, True, True, False, False]
    # opposite-sign duplicates where the negative one comes first
    w = torch.tensor([0.1, -3.0, 0.2, 3.0])
    _, mask = project_topk(w, 1)
    assert mask.tolist() == [False, True, False, False]
    # 2-D: lower *flat* (row-major) index wins
    w = torch.tensor([[0.0, 7.0, 1.0], [-7.0, 7.0, 0.0]])
    _, mask = project_topk(w, 2)
    assert mask.tolist() == [[False, True, False], [True, False, False]]
    # all zeros: k positions are still selected, the first k
    _, mask = project_topk(torch.zeros(5), 3)
    assert mask.tolist() == [True, True, True, False, False]


def test_ties_exactly_k_and_deterministic_on_constant_tensor():
    w = torch.full((3, 4), -0.25)
    masks = [project_topk(w, 5)[1] for _ in range(3)]
    for m in masks:
        assert int(m.sum()) == 5
        assert torch.equal(m, masks[0])
    expected = torch.zeros(12, dtype=torch.bool)
    expected[:5] = True
    assert torch.equal(masks[0], expected.reshape(3, 4))


def test_k_zero_and_k_numel():
    w = torch.tensor([[1.5, -2.0], [0.0, 3.25]])
    proj, mask = project_topk(w, 0)
    assert not mask.any()
    assert torch.equal(proj, torch.zeros_like(w))
    proj, mask = project_topk(w, w.numel())
    assert mask.all()
    assert torch.equal(proj, w)
    assert proj.data_ptr() != w.data_ptr()  # a new tensor, not the input


def test_output_is_not_an_alias_of_the_input():
    w = torch.tensor([1.0, 2.0, 3.0])
    w_before = w.clone()
    proj, _ = project_topk(w, 3)
    proj.mul_(0)
    assert torch.equal(w, w_before)


def test_nan_raises():
    with pytest.raises(ValueError, match="NaN"):
        project_topk(torch.tensor([1.0, float("nan"), 2.0]), 1)
    with pytest.raises(ValueError, match="NaN"):
        project_top_groups(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)


@pytest.mark.parametrize("k", [-1, 5, 100])
def test_k_out_of_range_raises(k):
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        project_topk(torch.ones(4), k)


@pytest.mark.parametrize("k", [1.0, 2.5, True, "2"])
def test_k_not_int_raises(k):
    with pytest.raises(TypeError):
        project_topk(torch.ones(4), k)


def test_allowed_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        project_topk(torch.ones(4), 2, torch.ones(5, dtype=torch.bool))


def test_topk_mask_on_scores():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5])
    assert topk_mask(scores, 3).tolist() == [False, True, False, True, True]


# ----------------------------------------------------------------------- groups


def _group_cases():
    g = torch.Generator().manual_seed(99)
    out = [torch.randn(r, c, generator=g, dtype=torch.float64) for r, c in
           [(1, 3), (2, 2), (3, 1), (4, 3), (5, 2), (6, 4)]]
    out.append(torch.randint(-1, 2, (6, 2), generator=g).to(torch.float64))  # norm ties
    return out


@pytest.mark.parametrize("groups", _group_cases(), ids=lambda t: "x".join(map(str, t.shape)))
def test_project_top_groups_matches_brute_force(groups):
    before = groups.clone()
    r = groups.shape[0]
    for k in range(0, r + 1):
        proj, row_mask = project_top_groups(groups, k)
        assert row_mask.shape == (r,) and int(row_mask.sum()) == k
        # kept rows are intact, the others are entirely zero
        assert torch.equal(proj[row_mask], groups[row_mask])
        assert torch.all(proj[~row_mask] == 0)
        nonzero_rows = int((proj != 0).any(dim=1).sum())
        assert nonzero_rows <= k
        dist2 = float(((groups - proj) ** 2).sum())
        assert dist2 == pytest.approx(brute_force_group_dist2(groups, k), rel=1e-12, abs=1e-15)
    assert torch.equal(groups, before)


@pytest.mark.parametrize("seed", range(4))
def test_project_top_groups_allowed_matches_brute_force(seed):
    g = torch.Generator().manual_seed(100 + seed)
    groups = torch.randn(6, 3, generator=g, dtype=torch.float64)
    allowed = torch.rand(6, generator=g) < 0.5
    allowed[seed] = True
    for k in range(0, 7):
        proj, row_mask = project_top_groups(groups, k, allowed)
        assert not torch.any(row_mask & ~allowed)
        assert int(row_mask.sum()) == min(k, int(allowed.sum()))
        dist2 = float(((groups - proj) ** 2).sum())
        assert dist2 == pytest.approx(brute_force_group_dist2(groups, k, allowed), rel=1e-12,
                                      abs=1e-15)


def test_project_top_groups_hand_example_and_ties():
    # row norms: 5, 1, 5, 0, 5  (3-4-5 triangles) -> k=2 keeps rows 0 and 2
    groups = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -5.0], [0.0, 0.0], [-4.0, 3.0]])
    proj, row_mask = project_top_groups(groups, 2)
    assert row_mask.tolist() == [True, False, True, False, False]
    assert proj.tolist() == [[3.0, 4.0], [0.0, 0.0], [0.0, -5.0], [0.0, 0.0], [0.0, 0.0]]


def test_project_top_groups_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        project_top_groups(torch.ones(2, 2, 2), 1)
    with pytest.raises(ValueError, match="2-D"):
        project_top_groups(torch.ones(4), 1)


def test_infinite_entry_is_rejected_or_zeroed():
    w = torch.tensor([float("inf"), 1.0])
    try:
        proj, _ = project_topk(w, 1, torch.tensor([False, True]))
    except ValueError:
        return
    assert proj.tolist() == [0.0, 1.0]
