"""Physical removal of dead filters / channels / neurons (mobileprune.surgery.compact).

Every case checks: the compacted model reproduces the original (max abs diff <= 1e-5 on
random inputs, eval mode), its parameter count equals a hand count of the surviving
weights, and the original model is unchanged.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from mobileprune.surgery.compact import compact, dead_units
from mobileprune.errors import ConfigError, UnsupportedModelError
from mobileprune.models.har import HARCNN
from mobileprune.models.lenet import LeNet5, LeNet300100


def nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomize_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))


def _inputs(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g) for s in shapes)


def check(model: nn.Module, shapes, expected_params: int, **kw) -> nn.Module:
    """Compact ``model`` and run the three checks; returns the compacted model."""
    if not isinstance(shapes, list):
        shapes = [shapes]
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [p for p in model.parameters()]
    example = _inputs(shapes, 0)
    out = compact(model, example if len(example) > 1 else example[0], **kw)
    out.eval()
    # the original is untouched
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert all(a is b for a, b in zip(params_before, model.parameters()))
    # same outputs on random inputs
    with torch.no_grad():
        for seed in (1, 2, 3):
            xs = _inputs(shapes, seed)
            ref, got = model(*xs), out(*xs)
            assert got.shape == ref.shape
            assert (got - ref).abs().max().item() <= 1e-5
    assert nparams(out) == expected_params
    return out


# --------------------------------------------------------------------------- models

class ConvBNReLUConv(nn.Module):
    def __init__(self, pad2: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=pad2)

    def forward(self, x):
        return self.conv2(self.relu(self.bn(self.conv1(x))))


def test_conv_bn_relu_conv_folds_dead_filters():
    m = ConvBNReLUConv()
    _randomize_bn(m.bn)
    with torch.no_grad():
        m.conv1.weight[[1, 4]] = 0  # nonzero bias: constant channels, folded (padding 0)
    c = check(m, (2, 3, 10, 10), (6 * 3 * 9 + 6) + 6 * 2 + (4 * 6 * 9 + 4))
    assert type(c) is ConvBNReLUConv
    assert c.bn.num_features == 6 and c.bn.running_mean.shape == (6,)
    keep = [0, 2, 3, 5, 6, 7]
    assert torch.equal(c.bn.running_var, m.bn.running_var[keep])
    assert torch.equal(c.conv2.weight, m.conv2.weight[:, keep])


def test_bn_constant_into_padded_conv_is_kept():
    m = ConvBNReLUConv(pad2=1)
    _randomize_bn(m.bn)
    with torch.no_grad():
        m.bn.bias[[1, 4]] = 3.0  # relu(bn(const)) > 0: nonzero constant, border-dependent
        m.conv1.weight[[1, 4]] = 0
    check(m, (2, 3, 10, 10), nparams(m))


class ConvReLUConv(nn.Module):
    def __init__(self, pad2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=pad2)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


@pytest.mark.parametrize("pad2", [0, 1])
def test_dead_filter_bias_vs_padding(pad2):
    m = ConvReLUConv(pad2)
    with torch.no_grad():
        m.conv1.weight[[0, 3]] = 0
        m.conv1.bias[0] = 0.7   # constant 0.7 after relu: foldable only without padding
        m.conv1.bias[3] = -0.2  # relu -> exactly 0: removable whatever the padding
    kept = 3 if pad2 == 0 else 4
    check(m, (2, 3, 9, 9), (kept * 3 * 9 + kept) + (4 * kept * 9 + 4))


def test_all_filters_dead_keeps_one_channel():
    m = ConvReLUConv(0)
    with torch.no_grad():
        m.conv1.weight.zero_()
    check(m, (2, 3, 9, 9), (1 * 3 * 9 + 1) + (4 * 1 * 9 + 4))


class ConvPoolLinear(nn.Module):
    def __init__(self, style: str = "module") -> None:
        super().__init__()
        self.style = style
        self.conv = nn.Conv2d(2, 6, 3)
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        if self.style == "module":
            x = self.flat(x)
        elif self.style == "view":
            x = x.view(x.size(0), -1)
        else:  # hard-coded size: the class forward cannot run compacted
            x = x.view(-1, 96)
        return self.fc(x)


@pytest.mark.parametrize("style", ["module", "view", "literal"])
def test_conv_pool_flatten_linear_slices_columns(style):
    m = ConvPoolLinear(style)
    with torch.no_grad():
        m.conv.weight[[0, 3]] = 0
        m.conv.bias[0], m.conv.bias[3] = 0.5, -0.3
    c = check(m, (3, 2, 10, 10), (4 * 2 * 9 + 4) + (5 * 4 * 16 + 5))
    cols = torch.cat([torch.arange(ch * 16, ch * 16 + 16) for ch in (1, 2, 4, 5)])
    assert torch.equal(c.fc.weight, m.fc.weight[:, cols])
    # channel 0 carries relu(0.5) = 0.5 into its 16 columns; channel 3 carries 0
    expected_bias = m.fc.bias + 0.5 * m.fc.weight[:, :16].sum(1)
    assert torch.allclose(c.fc.bias, expected_bias, atol=1e-6)
    if style == "literal":
        assert isinstance(c, fx.GraphModule)
    else:
        assert type(c) is ConvPoolLinear


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for fc in self.fcs[:-1]:
            x = torch.relu(fc(x))
        return self.fcs[-1](x)


def test_linear_dead_rows():
    m = MLP([10, 8, 3])
    with torch.no_grad():
        m.fcs[0].weight[[2, 5]] = 0
    check(m, (4, 10), (6 * 10 + 6) + (3 * 6 + 3))


def test_linear_dead_columns():
    m = MLP([10, 8, 3])
    with torch.no_grad():
        m.fcs[1].weight[:, [1, 7]] = 0  # no outgoing weight: fc0 rows 1, 7 are useless
    c = check(m, (4, 10), (6 * 10 + 6) + (3 * 6 + 3))
    keep = [0, 2, 3, 4, 5, 6]
    assert torch.equal(c.fcs[0].weight, m.fcs[0].weight[keep])
    assert torch.equal(c.fcs[0].bias, m.fcs[0].bias[keep])


def test_linear_dead_columns_cascade():
    m = MLP([6, 10, 8, 3])
    with torch.no_grad():
        m.fcs[2].weight[:, [1, 7]] = 0
        # input 3 of fc1 only feeds rows 1 and 7, which are removed: fc0 row 3 goes too
        m.fcs[1].weight[:, 3] = 0
        m.fcs[1].weight[[1, 7], 3] = 1.5
    check(m, (4, 6), (9 * 6 + 9) + (6 * 9 + 6) + (3 * 6 + 3))


def test_output_units_never_removed():
    m = MLP([5, 4, 3])
    with torch.no_grad():
        m.fcs[1].weight[1] = 0  # a dead output neuron stays: the output size is fixed
    c = check(m, (2, 5), nparams(m))
    assert c.fcs[1].out_features == 3


class TwoBranchAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.conv2 = nn.Conv2d(3, 6, 1)
        self.conv3 = nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv1(x) + self.conv2(x)))


def test_residual_add_removed_only_when_dead_in_both_branches():
    m = TwoBranchAdd()
    with torch.no_grad():
        m.conv1.weight[[0, 2]] = 0
        m.conv2.weight[[0, 5]] = 0  # channel 0 dead in both; 2 and 5 in one branch only
    c = check(m, (2, 3, 7, 7), 2 * (5 * 3 + 5) + (4 * 5 * 9 + 4))
    assert c.conv1.out_channels == c.conv2.out_channels == c.conv3.in_channels == 5
    assert dead_units(m, torch.randn(1, 3, 7, 7))["conv1"]["removable"] == [0]


def test_residual_add_kept_when_dead_in_one_branch():
    m = TwoBranchAdd()
    with torch.no_grad():
        m.conv1.weight[2] = 0
        m.conv2.weight[5] = 0
    check(m, (2, 3, 7, 7), nparams(m))


class ResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
        self.conv_b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = F.relu(self.conv_a(x))
        y = self.conv_b(h)
        y += h
        return self.head(F.relu(y))


@pytest.mark.parametrize("dead_b", [True, False])
def test_resnet_block_identity_shortcut(dead_b):
    m = ResBlock()
    with torch.no_grad():
        m.conv_a.weight[4] = 0
        m.conv_a.bias[4] = -1.0  # h_4 == 0: removable from conv_b's (padded) input
        if dead_b:
            m.conv_b.weight[4] = 0  # y_4 = b + 0: constant, folded into the 1x1 head
    if dead_b:
        expected = (5 * 3 * 9 + 5) + (5 * 5 * 9 + 5) + (2 * 5 + 2)
    else:
        expected = nparams(m)
    check(m, (2, 3, 6, 6), expected)


class CatBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(3, 5, 1)
        self.conv3 = nn.Conv2d(9, 2, 3)

    def forward(self, x):
        return self.conv3(F.relu(torch.cat([self.conv1(x), self.conv2(x)], dim=1)))


def test_concat_of_two_branches():
    m = CatBranches()
    with torch.no_grad():
        m.conv1.weight[1] = 0
        m.conv2.weight[[0, 4]] = 0
        m.conv3.weight[:, 4 + 2] = 0  # zero outgoing weights of conv2 filter 2
    c = check(m, (2, 3, 6, 6), (3 * 3 + 3) + (2 * 3 + 2) + (2 * 5 * 9 + 2))
    assert torch.equal(c.conv3.weight, m.conv3.weight[:, [0, 2, 3, 5, 7]])


class Depthwise(nn.Module):
    def __init__(self, mult: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6 * mult, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(6 * mult)
        self.pw = nn.Conv2d(6 * mult, 4, 1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        return self.pw(F.relu6(self.bn(self.dw(x))))


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_couples_in_and_out_channels(mult):
    m = Depthwise(mult)
    _randomize_bn(m.bn)
    with torch.no_grad():
        m.conv1.weight[[1, 3]] = 0
        m.conv1.bias[[1, 3]] = -0.5  # relu -> 0 feeds the padded depthwise conv exactly
        m.dw.weight[5 * mult:6 * mult] = 0  # dead depthwise filters make conv1 filter 5 useless
    keep = 3
    dw = keep * mult
    c = check(m, (2, 3, 6, 6),
              (keep * 3 + keep) + (dw * 9 + dw) + 2 * dw + (4 * dw + 4))
    assert c.dw.groups == c.dw.in_channels == keep and c.dw.out_channels == dw


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 1)
        self.conv_b = nn.Conv2d(3, 4, 1)
        self.conv_c = nn.Conv2d(8, 3, 1)
        self.conv_in = nn.Conv2d(5, 2, 1)

    def forward(self, a, b):
        y = self.conv_c(F.relu(torch.cat((self.conv_a(a), self.conv_b(b)), 1)))
        return y + self.conv_in(torch.cat([a, b], dim=1)).sum(1, keepdim=True)


def test_multi_input_model():
    m = TwoInputs()
    with torch.no_grad():
        m.conv_a.weight[0] = 0
        m.conv_b.weight[3] = 0
        m.conv_in.weight[:, 1] = 0  # graph input channels are never removed
    c = check(m, [(2, 2, 5, 5), (2, 3, 5, 5)],
              (3 * 2 + 3) + (3 * 3 + 3) + (3 * 6 + 3) + (2 * 5 + 2))
    assert c.conv_in.in_channels == 5


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.conv2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x).transpose(1, 2))


def test_unsupported_op_keeps_channels_or_raises():
    m = Transposed()
    with torch.no_grad():
        m.conv1.weight[2] = 0
    c = check(m, (2, 3, 6, 6), nparams(m))
    assert c.conv1.out_channels == 6
    with pytest.raises(UnsupportedModelError, match="transpose"):
        compact(m, torch.randn(2, 3, 6, 6), strict=True)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_model_raises():
    with pytest.raises(UnsupportedModelError, match="symbolic_trace"):
        compact(DataDependent(), torch.randn(2, 3))
    with pytest.raises(UnsupportedModelError, match="example_input"):
        compact(MLP([4, 3]), torch.randn(2, 5))
    with pytest.raises(ConfigError):
        compact(MLP([4, 3]), torch.randn(2, 4), atol=-1.0)


def test_gap_mean_linear_and_grouped_conv_kept():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.grouped = nn.Conv2d(6, 6, 1, groups=2)  # groups not in {1, C}: intact
            self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            g = self.grouped(self.conv(x)).sum(1, keepdim=True)
            return self.fc(F.relu(self.conv2(x)).mean((2, 3))) + g.mean((2, 3))

    m = Net()
    with torch.no_grad():
        m.conv.weight[1] = 0
        m.conv2.weight[2] = 0  # constant through relu and the spatial mean: folded
    check(m, (2, 3, 5, 5), nparams(m) - (3 * 9 + 1) - 2)


# --------------------------------------------------------------------------- zoo models

@pytest.mark.filterwarnings("ignore:.*jit.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lenet5_random_dead_units():
    torch.manual_seed(0)
    m = LeNet5()
    g = torch.Generator().manual_seed(7)
    d1 = torch.randperm(20, generator=g)[:6]
    d2 = torch.randperm(50, generator=g)[:15]
    d3 = torch.randperm(500, generator=g)[:200]
    with torch.no_grad():
        m.conv1.weight[d1] = 0
        m.conv2.weight[d2] = 0
        m.fc1.weight[d3] = 0
    k1, k2, k3 = 14, 35, 300
    expected = (k1 * 25 + k1) + (k2 * k1 * 25 + k2) + (k3 * k2 * 16 + k3) + (10 * k3 + 10)
    c = check(m, (2, 1, 28, 28), expected)
    assert (c.conv1.out_channels, c.conv2.out_channels, c.fc1.out_features) == (k1, k2, k3)
    report = dead_units(m, torch.randn(1, 1, 28, 28))
    assert report["conv1"]["removable"] == sorted(d1.tolist())
    assert report["conv2"]["removable"] == sorted(d2.tolist())
    assert report["fc1"]["removable"] == sorted(d3.tolist())
    assert report["fc2"] == {"out_units": 10, "removable": [], "kept": 10, "zero": []}
    # usable like any module: scripting, pickling, deepcopy
    x = torch.randn(3, 1, 28, 28)
    scripted = torch.jit.script(c)
    assert torch.allclose(scripted(x), c(x), atol=1e-6)
    c2 = pickle.loads(pickle.dumps(c))
    assert torch.equal(c2(x), c(x))
    assert torch.equal(copy.deepcopy(c)(x), c(x))


def test_lenet300100_random_dead_neurons():
    torch.manual_seed(1)
    m = LeNet300100()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        m.fc1.weight[torch.randperm(300, generator=g)[:120]] = 0
        m.fc2.weight[torch.randperm(100, generator=g)[:30]] = 0
    k1, k2 = 180, 70
    check(m, (2, 1, 28, 28), (k1 * 784 + k1) + (k2 * k1 + k2) + (10 * k2 + 10))


def test_harcnn_conv1d_without_bias():
    m = HARCNN(3, 4, 32, width=8, kernel_size=3, depth=2, hidden=10)
    with torch.no_grad():
        m.conv1.weight[[0, 5]] = 0
        m.conv2.weight[1] = 0
    out_len = 32 - 2 * 2
    check(m, (2, 3, 32), (6 * 3 * 3) + (7 * 6 * 3) + (10 * 7 * out_len + 10) + (4 * 10 + 4))


@pytest.mark.filterwarnings("ignore:.*jit.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_graphmodule_result_is_scriptable_and_picklable():
    m = ConvPoolLinear("literal")
    with torch.no_grad():
        m.conv.weight[2] = 0
    c = compact(m.eval(), torch.randn(2, 2, 10, 10))
    assert isinstance(c, fx.GraphModule)
    x = torch.randn(4, 2, 10, 10)
    assert torch.allclose(torch.jit.script(c)(x), m(x), atol=1e-5)
    buf = io.BytesIO()
    torch.save(c, buf)
    buf.seek(0)
    assert torch.allclose(torch.load(buf, weights_only=False)(x), m(x), atol=1e-5)
    assert torch.allclose(copy.deepcopy(c)(x), m(x), atol=1e-5)


def test_training_flag_preserved_and_nothing_dead_returns_copy():
    m = MLP([4, 3, 2]).train()
    c = compact(m, torch.randn(2, 4))
    assert c is not m and c.training and all(mod.training for mod in c.modules())
    assert nparams(c) == nparams(m)


class InplaceAlias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 2, 1)
        self.conv3 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv1(x)
        a = self.conv2(F.relu(y, inplace=True))  # conv3 below sees the mutated y
        return a + self.conv3(y)


def test_inplace_op_on_shared_tensor_is_conservative():
    m = InplaceAlias()
    with torch.no_grad():
        m.conv1.weight[0] = 0
        m.conv1.bias[0] = -0.5  # -0.5 before the in-place relu, 0 after
    check(m, (2, 3, 4, 4), nparams(m))


def test_dead_units_report_shape():
    m = ConvReLUConv(1)
    with torch.no_grad():
        m.conv1.weight[[0, 3]] = 0
        m.conv1.bias[0] = 0.7
        m.conv1.bias[3] = -0.2
    r = dead_units(m, torch.randn(1, 3, 9, 9))
    assert r["conv1"] == {"out_units": 5, "removable": [3], "kept": 4, "zero": [0, 3]}
    assert r["conv2"]["removable"] == []


class SqueezeExcite(nn.Module):
    """SE gate (mul couples channels), spatial mean, functional pools, scalar ops."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.sq = nn.Linear(8, 4)
        self.ex = nn.Linear(4, 8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.c3 = nn.Conv2d(6, 5, 3)
        self.fc = nn.Linear(5 * 3 * 3, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        g = torch.sigmoid(self.ex(F.relu(self.sq(h.mean((2, 3))))))
        h = h * g.unsqueeze(-1).unsqueeze(-1)
        h = F.max_pool2d(self.c2(h), 2)
        h = F.avg_pool2d(F.gelu(h), 2, padding=1)  # zero padding counted: only 0 stays constant
        return self.fc(self.c3(h * 2.0 + 1.0).flatten(1))


def test_squeeze_excite_and_functional_ops():
    m = SqueezeExcite()
    _randomize_bn(m.bn)
    with torch.no_grad():
        m.c1.weight[[1, 6]] = 0
        m.ex.weight[[1, 6]] = 0  # h and its gate both constant on channels 1, 6
        m.c2.weight[[0, 2]] = 0
        m.c2.bias[0] = 0.0  # 0 through gelu and the padded avg pool: removable
        m.c2.bias[2] = 0.3  # not constant after the padded avg pool: kept
        m.sq.weight[:, 3] = 0  # h_3 still feeds c2 through the gate product: kept
    c = check(m, (2, 3, 16, 16),
              (6 * 3 * 9 + 6) + 2 * 6 + (4 * 6 + 4) + (6 * 4 + 6) + (5 * 6 + 5)
              + (5 * 5 * 9 + 5) + (3 * 45 + 3))
    assert (c.c1.out_channels, c.ex.out_features, c.c2.out_channels) == (6, 6, 5)
