"""ChannelFlow (graph/passes/channels.py) and the handlers' channel rules: one tiny case
per op key (zero filters, compact, outputs equal, layers smaller), the ops that block
with a recorded reason, the compaction record, the warning / strict refusal, functional
batch norm, and ADMM's fallback on an untraceable model."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune.errors import UnsupportedModelError
from mobileprune.graph import HANDLERS, trace
from mobileprune.graph.passes.channels import ChannelFlow
from mobileprune.surgery.compact import CompactionWarning, compact

SHAPE = (2, 3, 6, 6)


def _asserts(h):
    for op, k in ((operator.eq, 4), (operator.ne, 3), (operator.lt, 5), (operator.le, 4),
                  (operator.gt, 3), (operator.ge, 4)):
        torch._assert(op(h.dim(), k), "rank")
    return h


def _chunk_swap(h):
    a, b = h.chunk(2, 1)
    return torch.cat([b, a], 1)


# key(s) covered -> (op on the conv output h, dead filters, also zero the head's columns)
CASES = {
    ("relu",): (F.relu, None, False), ("relu6",): (F.relu6, None, False),
    ("hardtanh",): (lambda h: F.hardtanh(h, -0.5, 0.5), None, False),
    ("leaky_relu",): (F.leaky_relu, None, False), ("elu",): (F.elu, None, False),
    ("selu",): (F.selu, None, False), ("celu",): (F.celu, None, False),
    ("silu",): (F.silu, None, False), ("mish",): (F.mish, None, False),
    ("hardswish",): (F.hardswish, None, False), ("hardsigmoid",): (F.hardsigmoid, None, False),
    ("gelu",): (F.gelu, None, False), ("sigmoid",): (torch.sigmoid, None, False),
    ("tanh",): (torch.tanh, None, False), ("softplus",): (F.softplus, None, False),
    ("clamp",): (lambda h: h.clamp(min=-0.2), None, False),
    ("abs", "sqrt"): (lambda h: torch.sqrt(h.abs()), None, False),
    ("neg", "exp"): (lambda h: torch.exp(-h), None, False),
    ("square",): (torch.square, None, False),
    ("softmax",): (lambda h: F.softmax(h, dim=-1), None, True),
    ("log_softmax",): (lambda h: F.log_softmax(h, dim=3), None, True),
    ("max_pool",): (lambda h: F.max_pool2d(h, 2), None, False),
    ("avg_pool",): (lambda h: F.avg_pool2d(h, 2), None, False),
    ("adaptive_avg_pool",): (lambda h: F.adaptive_avg_pool2d(h, 2), None, False),
    ("adaptive_max_pool",): (lambda h: F.adaptive_max_pool2d(h, 2), None, False),
    ("interpolate",): (nn.Upsample(scale_factor=2), None, False),
    ("mean",): (lambda h: h.mean((2, 3)), None, False),
    ("sum",): (lambda h: h.sum(3), None, False), ("amax",): (lambda h: h.amax(3), None, False),
    ("identity",): (lambda h: h.contiguous(), None, False),
    ("to",): (lambda h: h.to(torch.float32), None, False),
    ("add", "mul"): (lambda h: h + h * torch.sigmoid(h), None, False),
    ("sub", "div"): (lambda h: h / 2.0 - h, None, False),
    ("floordiv",): (lambda h: h // 0.5, None, False),
    ("cat",): (lambda h: torch.cat([h, torch.cat([h, h], 2)[:, :, :6]], 1), None, False),
    ("getitem",): (lambda h: h[:, :, 1:], None, False),
    ("pad",): (lambda h: F.pad(h, (1, 0, 0, 2), value=0.5), None, True),
    ("flatten",): (lambda h: torch.flatten(h, 2), None, False),
    ("reshape", "getattr"): (lambda h: h.view(h.shape[0], -1), None, False),
    ("size",): (lambda h: h.reshape(h.size(0), -1), None, False),
    ("squeeze", "unsqueeze"): (lambda h: h.unsqueeze(2).squeeze(2), None, False),
    ("permute",): (lambda h: h.permute(0, 1, 3, 2), None, False),
    ("transpose",): (lambda h: h.transpose(2, 3), None, False),
    ("expand",): (lambda h: h.mean((2, 3), keepdim=True).expand(-1, -1, 3, 3), None, False),
    ("chunk",): (_chunk_swap, [1, 5], False),
    ("split", "unbind"): (lambda h: torch.cat([torch.cat(h.split(2, 2), 2).flatten(2),
                                               torch.cat(h.unbind(3), 2)], 2), None, False),
    ("ndim", "eq", "ne", "lt", "le", "gt", "ge", "assert"): (_asserts, None, False),
}


class Net(nn.Module):
    """conv1 (3 -> 8) -> op -> flatten -> Linear head."""

    def __init__(self, op, mid: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.mid = mid if mid is not None else nn.Identity()
        self.op = op
        with torch.no_grad():
            n = torch.flatten(op(self.mid(self.conv1(torch.zeros(SHAPE)))), 1).shape[1]
        self.head = nn.Linear(n, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.op(self.mid(self.conv1(x))), 1))


def _kill(m: Net, dead, cols: bool) -> None:
    with torch.no_grad():
        m.conv1.weight[dead] = 0
        m.conv1.bias[dead] = 0
        if cols:  # the op keeps 8 channels, each k consecutive features
            k = m.head.in_features // 8
            for c in dead:
                m.head.weight[:, c * k:(c + 1) * k] = 0


def _same(a, b) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


def _check(m: nn.Module, dead) -> nn.Module:
    x = torch.randn(SHAPE)
    m.eval()
    small = compact(m, x).eval()
    for seed in (1, 2):
        xs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            _same(small(xs), m(xs))
    return small


@pytest.mark.parametrize("keys", list(CASES), ids=["-".join(k) for k in CASES])
def test_channel_rule(keys):
    op, dead, cols = CASES[keys]
    dead = dead or [2, 5]
    torch.manual_seed(0)
    m = Net(op)
    seen = {n.meta["mp_op"] for n in trace(m, torch.randn(SHAPE)).gm.graph.nodes}
    assert set(keys) <= seen, set(keys) - seen
    _kill(m, dead, cols)
    small = _check(m, dead)
    assert small.conv1.out_channels == 8 - len(dead)


def _bn(n=8):
    bn = nn.BatchNorm2d(n)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))
    return bn


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's pattern: a BatchNorm2d subclass whose own forward calls F.batch_norm."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return F.relu(x)


@pytest.mark.parametrize("kind", ["module", "functional", "layer_norm", "group_norm",
                                  "depthwise"])
def test_norm_and_depthwise_rules(kind):
    torch.manual_seed(0)
    if kind == "functional":
        mid = BatchNormAct2d(8)
        ref = _bn()
        mid.load_state_dict(ref.state_dict())
    else:
        mid = {"module": _bn, "layer_norm": lambda: nn.LayerNorm([6, 6]),
               "group_norm": lambda: nn.GroupNorm(8, 8),
               "depthwise": lambda: nn.Conv2d(8, 16, 3, groups=8)}[kind]()
    m = Net(lambda h: h, mid)
    _kill(m, [2, 5], kind in ("layer_norm", "group_norm"))
    small = _check(m, [2, 5])
    assert small.conv1.out_channels == 6
    if kind in ("module", "functional"):
        assert small.mid.num_features == 6 and small.mid.running_mean.numel() == 6
    if kind == "group_norm":
        assert small.mid.num_groups == small.mid.num_channels == 6
    if kind == "depthwise":
        assert (small.mid.in_channels, small.mid.out_channels, small.mid.groups) == (6, 12, 6)


BLOCKED = {
    "conv_transpose": lambda: nn.ConvTranspose2d(8, 4, 1),
    "matmul": lambda: _MatW(),
    "sdpa": lambda: _Fn(lambda h: F.scaled_dot_product_attention(h, h, h)),
    "multihead_attention": lambda: _Fn(nn.MultiheadAttention(6, 1, batch_first=True),
                                       lambda f, h: f(h, h, h)[0]),
    "transformer_layer": lambda: nn.TransformerEncoderLayer(6, 1, 12, batch_first=True),
    "transformer_encoder": lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(6, 1, 12, batch_first=True), 1, enable_nested_tensor=False),
    "rnn": lambda: _Fn(nn.GRU(6, 6, batch_first=True), lambda f, h: f(h)[0]),
}


class _Fn(nn.Module):
    def __init__(self, f, call=None) -> None:
        super().__init__()
        self.f, self.call = f, call

    def forward(self, h):
        return self.call(self.f, h) if self.call else self.f(h)


class _MatW(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6))

    def forward(self, h):
        return h @ self.w


@pytest.mark.parametrize("key", list(BLOCKED))
def test_blocking_ops_record_reason_and_warn(key):
    """Attention, recurrent layers, ... block the channels that reach them (on a
    (N, 8, 6) tensor: the 8 conv channels are the sequence), with the op and a reason."""
    torch.manual_seed(0)
    mid = BLOCKED[key]()

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(3, 8, 1) if key != "conv_transpose" else nn.Conv2d(3, 8, 1)
            self.mid = mid

        def forward(self, x):
            return self.mid(self.conv1(x))

    m = M().eval()
    x = torch.randn(2, 3, 6, 6) if key == "conv_transpose" else torch.randn(2, 3, 6)
    with torch.no_grad():
        m.conv1.weight[2] = 0
    flow = ChannelFlow(trace(m, x).gm)
    reasons = [why for n, why in flow.refused if n.meta["mp_op"] == key] + \
        [b.why for b in flow.blocks if b.node.meta.get("mp_op") == key]  # handled, input kept
    assert any(reasons)
    with pytest.warns(CompactionWarning, match=f"op '{key}'"):
        compact(m, x)


def test_every_handler_has_a_case():
    covered = {k for keys in CASES for k in keys} | set(BLOCKED) | {
        "conv", "linear", "batch_norm", "layer_norm", "group_norm", "dropout"}
    skipped = {"stochastic_depth": "torchvision's op: its Dropout rule is the same class",
               "embedding": "integer input: blocked by its handler's rule",
               "timm_attention": "timm's module: tests/test_compact_units.py (zoo extra)"}
    assert set(HANDLERS) - covered - set(skipped) == set()


def test_unknown_op_blocks_with_source_line():
    m = Net(lambda h: torch.roll(h, 1, 2))
    _kill(m, [2], False)
    with pytest.warns(CompactionWarning, match=r"roll.*test_channel_flow\.py"):
        compact(m, torch.randn(SHAPE))


class ConvReLUHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(torch.relu(self.conv1(x))), 1))


def test_record_counts_by_hand():
    torch.manual_seed(0)
    m = ConvReLUHead().eval()
    with torch.no_grad():
        m.conv1.weight[[2, 5]] = 0
    small, rec = compact(m, torch.randn(1, 3, 6, 6), return_record=True)
    assert rec.params_before == (8 * 27 + 8) + (4 * 8 + 4) + (64 * 2 + 2)
    assert rec.params_after == (6 * 27 + 6) + (4 * 6 + 4) + (64 * 2 + 2)
    assert rec.macs_before == 8 * 27 * 16 + 4 * 8 * 16 + 64 * 2
    assert rec.macs_after == 6 * 27 * 16 + 4 * 6 * 16 + 64 * 2
    assert rec.removed == {"conv1": {"out": 2, "in": 0}, "conv2": {"out": 0, "in": 2}}
    assert rec.history == [("conv1", "out", [0, 1, 3, 4, 6, 7]),
                           ("conv2", "in", [0, 1, 3, 4, 6, 7])]
    assert rec.kept_zero == [] and "MACs" in rec.summary()


def test_nothing_removable_warns_and_strict_raises():
    m = ConvReLUHead().eval()
    with pytest.warns(CompactionWarning, match="no zero filters"):
        out = compact(m, torch.randn(1, 3, 6, 6))
    assert out.conv1.out_channels == 8
    with pytest.raises(UnsupportedModelError, match="strict"):
        compact(m, torch.randn(1, 3, 6, 6), strict=True)
    with torch.no_grad():
        m.fc.weight[1] = 0  # an output unit: kept, listed with the reason
    out, rec = compact(m, torch.randn(1, 3, 6, 6), return_record=True)
    assert [(k.layer, k.units) for k in rec.kept_zero] == [("fc", [1])]
    assert "model output" in rec.kept_zero[0].reason
    with pytest.raises(UnsupportedModelError, match="'fc' units \\[1\\].*model output"):
        compact(m, torch.randn(1, 3, 6, 6), strict=True)


def test_admm_structured_on_untraceable_model_falls_back_with_warning():
    from mobileprune.sparsity.admm import ADMMPruner

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            h = self.conv(x)
            if h.sum() > 0:
                h = h * 2
            return self.fc(h.mean((2, 3)))

    cfg = {"types": ["Conv2d"], "default": {"sparsity": 0.5, "structure": "filter"}}
    with pytest.warns(UserWarning, match=r"\['conv'\].*per layer.*coupling"):
        p = ADMMPruner(Branchy(), cfg, example_input=torch.randn(1, 3, 6, 6))
    masks = p.finalize()
    assert int(masks["conv.weight"].reshape(8, -1).any(1).sum()) == 4
