"""Masked retraining and ADMM under DistributedDataParallel (2 CPU processes, gloo):
pruned weights stay exactly 0.0 on every rank, the ranks stay in sync, and the result
equals one process training on both ranks' data (DDP averages the gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mobileprune import ADMMPruner, MaskEnforcer, RegrowingMaskEnforcer
from mobileprune.sparsity.masks import masks_from_weights

WORLD = 2
STEPS = 6
CONFIG = {"default": 0.8}

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():  # prune: the smallest 80% of every weight
        for layer in (m[0], m[3]):
            w = layer.weight
            k = int(0.8 * w.numel())
            w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0.0
    return m


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * STEPS, 8, 1, 8, 8, generator=g), torch.randint(0, 5, (WORLD * STEPS, 8), generator=g)


def _train(model, xs, ys, opt, admm=None):
    for x, y in zip(xs, ys):
        loss = nn.functional.cross_entropy(model(x), y)
        if admm is not None:
            loss = loss + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if admm is not None:
            admm.step()


def _regrowing(model, opt):
    return RegrowingMaskEnforcer(model, masks_from_weights(model, ["0.weight", "3.weight"]), opt,
                                 end_step=STEPS, alpha=0.5, every=2)


def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        xs, ys = _data()
        mine = slice(rank, None, WORLD)  # each rank trains on its half of every step's data
        # masked retraining
        base = _model()
        masks = masks_from_weights(base, ["0.weight", "3.weight"])
        ddp = DDP(base)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        with MaskEnforcer(base, masks, opt):
            _train(ddp, xs.view(STEPS, WORLD * 8, 1, 8, 8)[:, mine], ys.view(STEPS, WORLD * 8)[:, mine], opt)
        # ADMM regularisation
        base2 = _model()
        ddp2 = DDP(base2)
        opt2 = torch.optim.Adam(ddp2.parameters(), lr=1e-2)
        admm = ADMMPruner(base2, CONFIG, rho=1e-2, update_every=2)
        _train(ddp2, xs.view(STEPS, WORLD * 8, 1, 8, 8)[:, mine], ys.view(STEPS, WORLD * 8)[:, mine], opt2, admm)
        admm_masks = admm.finalize()
        # masks that move (RigL): the update steps see the whole batch's gradient
        base3 = _model()
        ddp3 = DDP(base3)
        opt3 = torch.optim.SGD(ddp3.parameters(), lr=0.1, momentum=0.9)
        with _regrowing(base3, opt3) as enf:
            _train(ddp3, xs.view(STEPS, WORLD * 8, 1, 8, 8)[:, mine], ys.view(STEPS, WORLD * 8)[:, mine], opt3)
        torch.save({"masked": base.state_dict(), "masks": masks, "admm": base2.state_dict(),
                    "admm_masks": admm_masks, "regrow": base3.state_dict(),
                    "regrow_masks": dict(enf.masks)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = str(tmp / "rank")
    mp.start_processes(_worker, args=(f"file://{tmp / 'init'}", out), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


def test_masked_retraining_under_ddp_keeps_zeros_and_matches_one_process(ranks):
    r0, r1 = ranks
    for k, v in r0["masked"].items():
        assert torch.equal(v, r1["masked"][k]), f"ranks out of sync on {k}"
    for name, mask in r0["masks"].items():
        w = r0["masked"][name]
        assert int(torch.count_nonzero(w[~mask])) == 0, f"pruned weights of {name} came back"
    # one process on both ranks' data per step: the same weights
    ref = _model()
    masks = masks_from_weights(ref, ["0.weight", "3.weight"])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    xs, ys = _data()
    with MaskEnforcer(ref, masks, opt):
        _train(ref, xs.view(STEPS, WORLD * 8, 1, 8, 8), ys.view(STEPS, WORLD * 8), opt)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(r0["masked"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_admm_under_ddp_stays_in_sync_and_meets_its_targets(ranks):
    r0, r1 = ranks
    for k, v in r0["admm"].items():
        assert torch.equal(v, r1["admm"][k]), f"ranks out of sync on {k}"
    for name, mask in r0["admm_masks"].items():
        assert torch.equal(mask, r1["admm_masks"][name])
        n = mask.numel()
        assert int(mask.sum()) == math.floor(n * (1 - 0.8) + 1e-9), name  # the exact target


def test_regrowing_masks_under_ddp_match_one_process(ranks):
    r0, r1 = ranks
    for k, v in r0["regrow"].items():
        assert torch.equal(v, r1["regrow"][k]), f"ranks out of sync on {k}"
    start = masks_from_weights(_model(), ["0.weight", "3.weight"])
    for name, mask in r0["regrow_masks"].items():
        assert torch.equal(mask, r1["regrow_masks"][name])
        assert int(mask.sum()) == int(start[name].sum())
        assert int(torch.count_nonzero(r0["regrow"][name][~mask])) == 0
    assert any(not torch.equal(m, start[n]) for n, m in r0["regrow_masks"].items())  # they moved
    ref = _model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    xs, ys = _data()
    with _regrowing(ref, opt) as enf:
        _train(ref, xs.view(STEPS, WORLD * 8, 1, 8, 8), ys.view(STEPS, WORLD * 8), opt)
    for name, mask in enf.masks.items():
        assert torch.equal(mask, r0["regrow_masks"][name]), name
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(r0["regrow"][k], v, rtol=1e-4, atol=1e-5, msg=k)
