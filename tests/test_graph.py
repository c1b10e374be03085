"""The graph layer's tracer and op table (mobileprune.graph): every spelling of an op
gets one key and the same argument names; unknown ops say why."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune.errors import UnsupportedModelError
from mobileprune.graph import SPECS, source_line, trace
from mobileprune.graph.canonical import BY_FUNCTION, BY_METHOD, BY_MODULE, module_spec


def _ops(model, x):
    t = trace(model, x)
    return [(n.meta["mp_op"], n.meta["mp_args"]) for n in t.gm.graph.nodes
            if n.op not in ("placeholder", "output", "get_attr")]


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("spelling", [
    nn.LeakyReLU(0.2), _Fn(lambda x: F.leaky_relu(x, 0.2)),
    _Fn(lambda x: F.leaky_relu(x, negative_slope=0.2))])
def test_every_spelling_binds_the_same_arguments(spelling):
    (key, args), = _ops(spelling, torch.randn(2, 3))
    assert key == "leaky_relu"
    assert args["negative_slope"] == 0.2 and args["inplace"] is False


@pytest.mark.parametrize("fn,key", [
    (lambda x: x + 1, "add"), (lambda x: 1 + x, "add"), (lambda x: x.add(1), "add"),
    (lambda x: torch.add(x, 1), "add"), (lambda x: x - 2, "sub"), (lambda x: x * 3, "mul"),
    (lambda x: x / 4, "div"), (lambda x: torch.relu(x), "relu"), (lambda x: x.relu_(), "relu"),
    (lambda x: F.relu(x, inplace=True), "relu"), (lambda x: x.sigmoid(), "sigmoid"),
    (lambda x: torch.flatten(x, 1), "flatten"), (lambda x: x.view(2, -1), "reshape"),
    (lambda x: x.permute(1, 0), "permute"), (lambda x: x.transpose(0, 1), "transpose"),
    (lambda x: x.softmax(-1), "softmax"), (lambda x: x.mean(1), "mean"),
    (lambda x: x.contiguous(), "identity"), (lambda x: F.gelu(x, approximate="tanh"), "gelu"),
    (lambda x: x @ x.t(), "matmul")])
def test_function_and_method_spellings(fn, key):
    ops = _ops(_Fn(fn), torch.randn(2, 3))
    assert ops[0][0] == key or ops[-1][0] == key


def test_inplace_and_reversed_spellings():
    (key, args), = _ops(_Fn(lambda x: x.relu_()), torch.randn(2, 3))
    assert args["inplace"] is True
    (key, args), = _ops(_Fn(lambda x: 2 - x), torch.randn(2, 3))
    assert key == "sub" and args["input"] == 2
    (key, args), = _ops(_Fn(lambda x: x.view(2, 3)), torch.randn(2, 3))
    assert args["shape"] == (2, 3)


def test_module_spelling_carries_the_module_and_its_attributes():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, stride=1, padding=1))
    t = trace(m, torch.randn(1, 3, 8, 8))
    (k1, a1), (k2, a2) = [(n.meta["mp_op"], n.meta["mp_args"]) for n in t.gm.graph.nodes
                          if n.op == "call_module"]
    assert a1["module"] is t.work[0] and a1["module"] is not m[0]  # the traced copy's layer
    assert (k1, a1["module_name"]) == ("conv", "0")
    assert (k2, a2["kernel_size"], a2["stride"], a2["padding"]) == ("max_pool", 2, 1, 1)


def test_subclass_with_its_own_forward_is_traced_through():
    class BNAct(nn.BatchNorm2d):  # the shape of timm's BatchNormAct2d
        def forward(self, x):
            x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.1, self.eps)
            return F.relu(x)

    class Plain(nn.BatchNorm2d):
        pass

    assert module_spec(BNAct(3)) is None and module_spec(Plain(3)).key == "batch_norm"
    keys = [k for k, _ in _ops(BNAct(3), torch.randn(2, 3, 4, 4))]
    assert keys == ["batch_norm", "relu"]


def test_unknown_ops_say_why_and_where():
    t = trace(_Fn(lambda x: torch.cumsum(x, 1)), torch.randn(2, 3))
    node = [n for n in t.gm.graph.nodes if n.op == "call_function"][0]
    assert node.meta["mp_op"] == "unknown"
    assert "cumsum" in node.meta["mp_why"]
    assert "test_graph.py" in source_line(node) and "cumsum" in source_line(node)


def test_other_torch_layers_stay_whole_as_unknown():
    m = nn.Sequential(nn.Conv2d(4, 4, 1), nn.PixelShuffle(2))
    t = trace(m, torch.randn(1, 4, 2, 2))
    keys = [n.meta["mp_op"] for n in t.gm.graph.nodes if n.op == "call_module"]
    assert keys == ["conv", "unknown"]


def test_untraceable_forward_is_one_clear_error():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match="torch.fx cannot trace Branchy"):
        trace(Branchy(), torch.randn(2))


def test_table_is_consistent():
    keys = [s.key for s in SPECS]
    assert len(keys) == len(set(keys))
    for s in SPECS:
        for m in s.modules:
            assert BY_MODULE[m] is s
        for f in s.functions:
            assert BY_FUNCTION[f] is s
        for name in s.methods:
            assert BY_METHOD[name] is s
        assert set(s.module_attrs) <= set(s.params), s.key
        assert set(s.defaults) <= set(s.params) | {"inplace"}, s.key
    assert BY_FUNCTION[operator.add].key == "add"


def test_tracing_never_changes_the_users_model():
    m = nn.Sequential(nn.Linear(3, 3), nn.Dropout())
    m.train()
    trace(m, torch.randn(2, 3))
    assert m.training and m[1].training
