"""The tracer's torch.export fallback (mobileprune.graph.export): a forward torch.fx
cannot trace (Python control flow on sizes, as in timm's MobileViT / EfficientViT) is
captured by torch.export on the example input and read by the same passes, so compact
and export_sparse give the same exact results; a branch on tensor values, or an op the
runtime lacks, is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune import compact
from mobileprune.deploy.sparse import export_sparse
from mobileprune.errors import UnsupportedModelError
from mobileprune.graph import trace
from mobileprune.runtime import load
from test_compact import DataDependent  # a branch on tensor values (x.sum() > 0)
from test_lower import _Fn  # forward(x) = fn(self, x), with the given submodules


def _rel(got, want) -> float:
    got, want = torch.as_tensor(got), want.detach()
    return float((got - want).abs().max()) / float(want.abs().max())


class ShapeBranch(nn.Module):
    """fx cannot trace it: ``if`` on a size (``x.shape[-1] % 4``), like MobileViT's
    ``if new_h != H``. Conv + BatchNorm + ReLU, a constant pad the branch decides, a
    functional BatchNorm outside any layer, a residual add, a slice, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        if x.shape[-1] % 4 != 0:
            x = F.pad(x, (0, 4 - x.shape[-1] % 4))
        y = F.batch_norm(self.conv2(x), self.bn2.running_mean, self.bn2.running_var,
                         self.bn2.weight, self.bn2.bias, False, 0.1, 1e-5)
        x = self.act(x + y)[:, :, :, :-1]
        return self.fc(x.mean((2, 3)))


def _calibrated(model: nn.Module, shape=(1, 3, 6, 6)) -> nn.Module:
    """Non-trivial BatchNorm statistics, then eval mode."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, *shape[1:]))
    return model.eval()


def test_fx_failure_falls_back_to_torch_export_on_the_users_layers():
    model = _calibrated(ShapeBranch())
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    t = trace(model, x)
    assert t.via == "export"
    calls = {n.target: n.meta["mp_op"] for n in t.gm.graph.nodes if n.op == "call_module"}
    assert calls == {"conv1": "conv", "bn1": "batch_norm", "act": "relu", "conv2": "conv",
                     "fc": "linear"}
    assert t.gm.get_submodule("conv1") is t.work.conv1
    keys = [n.meta["mp_op"] for n in t.gm.graph.nodes]
    assert "unknown" not in keys and {"pad", "batch_norm", "add", "getitem", "mean"} <= set(keys)
    assert torch.equal(t.out, model(x))


def test_compact_through_the_fallback_is_exact():
    model = _calibrated(ShapeBranch())
    with torch.no_grad():  # channels 0 and 5 dead: zero filters, BatchNorm shift 0
        for c in (0, 5):
            model.conv1.weight[c] = 0
            model.conv1.bias[c] = 0
            model.bn1.bias[c] = -1.0
    x = torch.randn(1, 3, 6, 6)
    small, rec = compact(model, x, return_record=True)
    assert small.conv1.out_channels == 6 and small.conv2.in_channels == 6
    assert small.bn2.num_features == 6  # read by F.batch_norm, resized with its channels
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for xs in (x, torch.randn(1, 3, 6, 6)):
        with torch.no_grad():
            assert _rel(small(xs), model(xs)) <= 1e-5


def test_compact_never_returns_an_exported_graph():
    """The class forward cannot run with fewer channels (a size written in it): the fx
    path would return its traced graph; torch.export's holds the example's sizes, so
    compact refuses."""

    class Fixed(ShapeBranch):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8 * 16, 4)

        def forward(self, x):
            x = self.act(self.bn1(self.conv1(x)))
            if x.shape[-1] % 4 != 0:
                x = x[:, :, :4, :4]
            return self.fc(x.reshape(x.shape[0], 8 * 16))

    model = _calibrated(Fixed())
    with torch.no_grad():
        model.conv1.weight[3] = 0
        model.conv1.bias[3] = 0
        model.bn1.bias[3] = -1.0
    with pytest.raises(UnsupportedModelError, match="only runs at example_input's sizes"):
        compact(model, torch.randn(1, 3, 6, 6))


def test_sparse_export_through_the_fallback_matches_torch(tmp_path):
    model = _calibrated(ShapeBranch())
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 3, 6, 6), path)
    net = load(path)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 6, 6)
        with torch.no_grad():
            assert _rel(net(x.numpy()), model(x)) <= 1e-4


def test_a_branch_on_tensor_values_is_refused_with_both_reasons(tmp_path, capfd):
    for run in (lambda m, x: compact(m, x),
                lambda m, x: export_sparse(m, x, tmp_path / "m.mpsparse")):
        with pytest.raises(UnsupportedModelError) as ei:
            run(DataDependent(), torch.randn(2, 3))
        msg = str(ei.value)
        assert "torch.fx cannot trace DataDependent" in msg
        assert "torch.export cannot capture it" in msg and "tensor values" in msg
    assert not (tmp_path / "m.mpsparse").exists()
    assert "def forward" not in capfd.readouterr().err  # torch's partial graph: silenced


def test_an_op_the_runtime_lacks_is_named(tmp_path):
    class Flip(nn.Module):
        def forward(self, x):
            if x.shape[1] > 2:
                x = x.flip(1)  # the line the message shows
            return x

    with pytest.raises(UnsupportedModelError) as ei:
        export_sparse(Flip(), torch.randn(1, 6), tmp_path / "m.mpsparse")
    msg = str(ei.value)
    assert "aten::flip" in msg and "the line the message shows" in msg, msg


def test_layers_with_tuple_results_stay_aten_ops_and_are_refused(tmp_path):
    class Rnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x):
            if x.shape[1] > 1:
                x = x * 2
            return self.rnn(x)[0]

    t = trace(Rnn(), torch.randn(1, 5, 4))
    assert t.via == "export"
    assert not [n for n in t.gm.graph.nodes if n.op == "call_module"]
    with pytest.raises(UnsupportedModelError, match="aten::lstm"):
        export_sparse(Rnn(), torch.randn(1, 5, 4), tmp_path / "m.mpsparse")


def test_autocast_disabled_block_is_inlined(tmp_path):
    """timm's EfficientViT attention runs in ``torch.autocast(enabled=False)`` behind an
    ``if v.device.type != 'meta'`` that fx cannot trace."""

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(6, 18)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            v = F.pad(v, (0, 1), mode="constant", value=1.0)
            if v.device.type != "meta":
                with torch.autocast(device_type=v.device.type, enabled=False):
                    out = q.float() @ (k.transpose(-1, -2) @ v)
            out = out[..., :-1] / (out[..., -1:] + 1e-5)
            return out.to(x.dtype)

    model = Attn().eval()
    t = trace(model, torch.randn(1, 5, 6))
    assert t.via == "export"
    assert all(n.meta["mp_op"] != "unknown" for n in t.gm.graph.nodes), t.gm.graph
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 5, 6), path)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        assert _rel(load(path)(x.numpy()), model(x)) <= 1e-4


class _Branchy(_Fn):
    """``fn(self, x)`` behind an ``if`` on a size: traced by torch.export only."""

    def forward(self, x):
        if x.shape[-1] > 1:
            x = x * 1.5
        return self.fn(self, x)


# ATen spellings of functional ops outside any layer: (id, fn(self, x), per-sample shape)
FUNCTIONAL = [
    ("acts", lambda s, x: F.relu6(x) + F.hardtanh(x, -0.5, 0.5) + torch.sigmoid(x)
     + torch.tanh(x) + F.gelu(x) + F.silu(x) + F.hardswish(x) + F.leaky_relu(x, 0.1), (4, 6)),
    ("pools", lambda s, x: F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)
     + F.adaptive_avg_pool2d(x, 3), (4, 6, 6)),
    ("linear_norm", lambda s, x: F.layer_norm(F.linear(x, s.l.weight, s.l.bias), (3,)),
     (5, 6)),
    ("attention", lambda s, x: torch.bmm(torch.softmax(torch.bmm(x, x.transpose(1, 2)), -1),
                                         x), (5, 6)),
    ("shapes", lambda s, x: torch.cat([x[:, 0].unsqueeze(1), x[:, 1:]], 1)[:, :, 1:].permute(
        0, 2, 1) + x[:, :, 1:].sum(1, keepdim=True).transpose(1, 2), (4, 6)),
    ("splits", lambda s, x: sum(x.split(2, 1)) + sum(x.unbind(1)).unsqueeze(1).squeeze(1)
     .unsqueeze(1).mean(2, keepdim=True), (4, 6)),
    ("unflatten", lambda s, x: x.unflatten(2, (2, 3)).sum(-1), (4, 6)),
    ("inplace", lambda s, x: (x.clone().add_(1.0).mul_(x)).relu_(), (4, 6)),
]


@pytest.mark.parametrize("case,fn,shape", FUNCTIONAL, ids=[c[0] for c in FUNCTIONAL])
def test_functional_aten_ops_lower_like_torch(case, fn, shape, tmp_path):
    torch.manual_seed(0)
    model = _Branchy(fn, l=nn.Linear(6, 3)).eval()
    t = trace(model, torch.randn(1, *shape))
    assert t.via == "export"
    unknown = [n.format_node() for n in t.gm.graph.nodes if n.meta["mp_op"] == "unknown"]
    assert not unknown, unknown
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, *shape), path)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert _rel(load(path)(x.numpy()), model(x)) <= 1e-4


def test_several_inputs_and_outputs_keep_their_structure(tmp_path):
    class TwoInTwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(3, 4)

        def forward(self, x, y):
            if x.shape[1] != y.shape[1]:
                y = F.pad(y, (0, 0))
            h = torch.relu(self.a(x) + self.b(y))
            return h, h.sum(1, keepdim=True)

    model = TwoInTwoOut().eval()
    xs = (torch.randn(1, 6), torch.randn(1, 3))
    t = trace(model, xs)
    assert t.via == "export" and [n.target for n in t.gm.graph.nodes if n.op == "placeholder"] \
        == ["x", "y"]
    want = model(*xs)
    assert isinstance(t.out, tuple) and all(torch.equal(g, w) for g, w in zip(t.out, want))
    export_sparse(model, xs, tmp_path / "m.mpsparse")
    more = (torch.randn(3, 6), torch.randn(3, 3))
    got = load(tmp_path / "m.mpsparse")(*[v.numpy() for v in more])
    with torch.no_grad():
        assert all(_rel(g, w) <= 1e-4 for g, w in zip(got, model(*more)))


def test_a_per_sample_scalar_is_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedModelError, match="op 'sum'.*no axis besides the batch"):
        export_sparse(_Fn(lambda s, x: s.a(x).sum(1), a=nn.Linear(6, 4)), torch.randn(1, 6),
                      tmp_path / "m.mpsparse")


def test_every_aten_spelling_resolves_and_binds_by_name():
    """Each ATen overload of the table exists in this torch, and each of its schema
    arguments is a parameter of its row (``self`` the first, renames applied) or one
    the binding may drop (a default, an ignored one, a loose row)."""
    from mobileprune.graph import canonical as c

    for key, names in c._ATEN.items():
        spec = c.BY_KEY[key]
        for name in names:
            packet, _, overload = name.partition(".")
            op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
            assert op is not None, name
            assert c.BY_ATEN[op] is spec
            if key == "getitem" or name == "unflatten.int":  # bound by their own rules
                continue
            for arg in op._schema.arguments:
                assert (c.aten_param(spec, arg.name) in spec.params or arg.has_default_value() or spec.loose
                        or arg.name in c._ATEN_IGNORED), (name, arg.name)
