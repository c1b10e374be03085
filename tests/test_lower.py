"""The Lower pass (mobileprune.graph.passes.lower) behind export_sparse: every op key of
the table (graph.SPECS) either lowers to runtime ops that reproduce torch on the native
engine, or is refused with UnsupportedModelError naming the op, the node, the user's
source line and the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune.deploy.sparse import export_sparse
from mobileprune.errors import UnsupportedModelError
from mobileprune.graph import HANDLERS, SPECS, OpHandler
from mobileprune.runtime import load, read_container

REL_TOL = 1e-4


class _Fn(nn.Module):
    """``forward(x) = fn(self, x)`` with the given submodules / parameters."""

    def __init__(self, fn, **mods) -> None:
        super().__init__()
        self.fn = fn
        for k, m in mods.items():
            setattr(self, k, m)

    def forward(self, x):
        return self.fn(self, x)


class StochasticDepth(nn.Module):
    """Stand-in for torchvision.ops.StochasticDepth (same qualified name, same eval-mode
    forward): importing torchvision takes seconds."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        return x


StochasticDepth.__module__ = "torchvision.ops.stochastic_depth"


def _shuffle(x, g=2):
    """torchvision's ShuffleNetV2 channel shuffle."""
    b, c, h, w = x.size()
    x = x.view(b, g, c // g, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def _seq(*mods):
    return nn.Sequential(*mods)


_X2 = (6,)          # (N, 6)
_X3 = (5, 6)        # (N, T=5, 6)
_X4 = (4, 6, 6)     # (N, C=4, 6, 6)

# key -> [(case id, model factory, per-sample input shape)]
def _timm_attention() -> nn.Module:
    """timm's ``Attention`` (2 heads of 3 on 6 features); skips without the zoo extra."""
    from zoo_models import BY_NAME, import_timm, missing

    if missing(BY_NAME["timm_deit_tiny"]):
        pytest.skip(missing(BY_NAME["timm_deit_tiny"]))
    return import_timm().layers.Attention(6, num_heads=2, qkv_bias=True)


CASES = {
    "conv": [("conv1d", lambda: nn.Conv1d(5, 3, 3, padding="same"), (5, 7)),
             ("conv2d", lambda: nn.Conv2d(4, 3, 3, stride=2, groups=1, padding=1), _X4)],
    "linear": [("2d", lambda: nn.Linear(6, 3), _X2), ("3d", lambda: nn.Linear(6, 3), _X3),
               ("4d", lambda: _seq(nn.Linear(6, 2)), _X4),
               ("F", lambda: _Fn(lambda s, x: F.linear(x, s.w.weight, s.w.bias),
                                 w=nn.Linear(6, 2)), _X2)],
    "batch_norm": [("fold", lambda: _seq(nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)), _X4),
                   ("alone", lambda: _seq(nn.ReLU(), nn.BatchNorm2d(4)), _X4),
                   ("F", lambda: _Fn(lambda s, x: F.relu(F.batch_norm(
                       x, s.b.running_mean, s.b.running_var, s.b.weight, s.b.bias, False,
                       0.1, 1e-3)), b=nn.BatchNorm2d(4)), _X4)],
    "layer_norm": [("last", lambda: nn.LayerNorm(6), _X3),
                   ("permuted", lambda: _Fn(lambda s, x: s.n(x.permute(0, 2, 3, 1)).permute(
                       0, 3, 1, 2), n=nn.LayerNorm(4)), _X4),
                   ("F2", lambda: _Fn(lambda s, x: F.layer_norm(x, (5, 6))), _X3)],
    "group_norm": [("gn", lambda: nn.GroupNorm(2, 4), _X4)],
    "pad": [("last", lambda: _Fn(lambda s, x: F.pad(x, (0, 1), value=1.0)), _X3),
            ("hw", lambda: _Fn(lambda s, x: F.pad(x, (1, 2, 0, 1))), _X4)],
    "timm_attention": [("qkv_bias", _timm_attention, _X3)],
    "multihead_attention": [
        ("batch_first", lambda: _Fn(lambda s, x: s.a(x, x, x)[0],
                                    a=nn.MultiheadAttention(6, 2, batch_first=True)), _X3),
        ("seq_first", lambda: _Fn(lambda s, x: s.a(*[x.transpose(0, 1)] * 3,
                                                   need_weights=False)[0].transpose(0, 1),
                                  a=nn.MultiheadAttention(6, 3)), _X3),
        ("cross_kdim", lambda: _Fn(lambda s, x: s.a(x, x[..., :4], x[..., 3:])[0],
                                   a=nn.MultiheadAttention(6, 2, kdim=4, vdim=3,
                                                           batch_first=True)), _X3),
        ("weights", lambda: _Fn(lambda s, x: s.a(x, x, x)[1],
                                a=nn.MultiheadAttention(6, 2, batch_first=True)), _X3)],
    "transformer_layer": [
        ("post", lambda: nn.TransformerEncoderLayer(6, 2, 8, dropout=0.1, batch_first=True),
         _X3),
        ("pre_gelu", lambda: nn.TransformerEncoderLayer(6, 3, 8, activation="gelu",
                                                        norm_first=True, batch_first=True),
         _X3)],
    "transformer_encoder": [
        ("two_layers_norm", lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(6, 2, 8, batch_first=True), 2, norm=nn.LayerNorm(6),
            enable_nested_tensor=False), _X3),
        ("seq_first_mask", lambda: _Fn(lambda s, x: s.e(x.transpose(0, 1), mask=s.m).transpose(
            0, 1), e=nn.TransformerEncoder(nn.TransformerEncoderLayer(6, 3, 8), 1,
                                           enable_nested_tensor=False),
            m=nn.Buffer(nn.Transformer.generate_square_subsequent_mask(5))), _X3)],
    "rnn": [("lstm", lambda: _Fn(lambda s, x: s.r(x)[0], r=nn.LSTM(6, 4, batch_first=True)),
             _X3),
            ("lstm_h", lambda: _Fn(lambda s, x: s.f(s.r(x)[1][0][-1]), f=nn.Linear(8, 2),
                                   r=nn.LSTM(6, 8, num_layers=2, bidirectional=True,
                                             batch_first=True)), _X3),
            ("gru_seq_first", lambda: _Fn(lambda s, x: s.r(x.transpose(0, 1))[1].squeeze(0),
                                          r=nn.GRU(6, 4)), _X3),
            ("gru_last_step", lambda: _Fn(lambda s, x: s.r(x)[0][:, -1, :],
                                          r=nn.GRU(6, 4, bidirectional=True, batch_first=True)),
             _X3)],
    # constant indices (position ids): folded to a constant at export
    "embedding": [("positions", lambda: _Fn(lambda s, x: x + s.e(s.i), e=nn.Embedding(5, 6),
                                            i=nn.Buffer(torch.arange(5))), _X3)],
    "relu": [("m", lambda: nn.ReLU(), _X2), ("inplace", lambda: _seq(nn.Linear(6, 6),
                                                                     nn.ReLU(inplace=True)), _X2),
             ("method", lambda: _Fn(lambda s, x: x.relu()), _X2)],
    "relu6": [("m", lambda: nn.ReLU6(), _X2)],
    "hardtanh": [("F", lambda: _Fn(lambda s, x: F.hardtanh(x, -0.5, 0.7)), _X2)],
    "leaky_relu": [("m", lambda: nn.LeakyReLU(0.2), _X2)],
    "elu": [("m", lambda: nn.ELU(0.7), _X2)],
    "silu": [("m", lambda: nn.SiLU(), _X2), ("F", lambda: _Fn(lambda s, x: F.silu(x)), _X2)],
    "hardswish": [("m", lambda: nn.Hardswish(), _X2)],
    "hardsigmoid": [("F", lambda: _Fn(lambda s, x: F.hardsigmoid(x)), _X2)],
    "gelu": [("m", lambda: nn.GELU(), _X2), ("tanh", lambda: nn.GELU("tanh"), _X2)],
    "sigmoid": [("method", lambda: _Fn(lambda s, x: x.sigmoid()), _X2)],
    "tanh": [("fn", lambda: _Fn(lambda s, x: torch.tanh(x)), _X2)],
    "softmax": [("last", lambda: nn.Softmax(-1), _X3), ("middle", lambda: nn.Softmax(1), _X3),
                ("method", lambda: _Fn(lambda s, x: x.softmax(dim=2)), _X4)],
    "clamp": [("both", lambda: _Fn(lambda s, x: x.clamp(-0.5, 0.5)), _X2),
              ("min0", lambda: _Fn(lambda s, x: torch.clamp(x, min=0)), _X2)],
    "neg": [("op", lambda: _Fn(lambda s, x: -x), _X2)],
    "square": [("fn", lambda: _Fn(lambda s, x: torch.square(x)), _X2)],
    "max_pool": [("m", lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), _X4),
                 ("F1d", lambda: _Fn(lambda s, x: F.max_pool1d(x, 2)), _X3)],
    "avg_pool": [("m", lambda: nn.AvgPool2d(2, count_include_pad=False, padding=1), _X4)],
    "adaptive_avg_pool": [("1", lambda: nn.AdaptiveAvgPool2d(1), _X4),
                          ("div", lambda: nn.AdaptiveAvgPool2d((3, 2)), _X4),
                          ("any", lambda: nn.AdaptiveAvgPool2d((4, 5)), _X4),
                          ("1d", lambda: nn.AdaptiveAvgPool1d(4), _X3)],
    "identity": [("m", lambda: _seq(nn.Linear(6, 6), nn.Identity()), _X2),
                 ("methods", lambda: _Fn(lambda s, x: s.f(x.contiguous().clone().float()),
                                         f=nn.Linear(6, 2)), _X2)],
    "dropout": [("m", lambda: _seq(nn.Linear(6, 6), nn.Dropout(0.3), nn.Dropout1d()), _X2),
                ("F", lambda: _Fn(lambda s, x: F.dropout(s.f(x), 0.5, s.training),
                                  f=nn.Linear(6, 2)), _X2)],
    "stochastic_depth": [("tv", lambda: _seq(nn.Linear(6, 6), StochasticDepth(0.2, "row")),
                          _X2)],
    "assert": [("shape", lambda: _Fn(lambda s, x: (torch._assert(x.shape[1] == 6, "6"),
                                                   s.f(x))[1], f=nn.Linear(6, 2)), _X2)],
    "to": [("same", lambda: _Fn(lambda s, x: s.f(x.to(torch.float32)), f=nn.Linear(6, 2)),
            _X2)],
    "add": [("two", lambda: _Fn(lambda s, x: x + x.sigmoid()), _X2),
            ("scalar_first", lambda: _Fn(lambda s, x: 1.5 + x), _X2),
            ("param", lambda: _Fn(lambda s, x: x + s.p, p=nn.Parameter(torch.randn(1, 5, 6))),
             _X3),
            ("bias", lambda: _Fn(lambda s, x: x + s.p, p=nn.Parameter(torch.randn(6))), _X3)],
    "sub": [("rsub", lambda: _Fn(lambda s, x: 2 - x), _X2),
            ("bcast", lambda: _Fn(lambda s, x: x - x.mean((2, 3), keepdim=True)), _X4)],
    "mul": [("gate", lambda: _Fn(lambda s, x: x * x.mean((2, 3), keepdim=True).sigmoid()),
             _X4), ("inplace", lambda: _Fn(lambda s, x: x.sigmoid().mul_(3.0)), _X2),
            ("layer_scale", lambda: _Fn(lambda s, x: x.mul(s.g.reshape(1, -1, 1, 1)),
                                        g=nn.Parameter(torch.rand(4))), _X4)],
    "div": [("scalar", lambda: _Fn(lambda s, x: x / 3), _X2),
            ("tensors", lambda: _Fn(lambda s, x: x / (x.sigmoid() + 1)), _X2),
            ("rdiv", lambda: _Fn(lambda s, x: 2 / (x.sigmoid() + 1)), _X2)],
    "floordiv": [("shuffle", lambda: _Fn(lambda s, x: _shuffle(x)), _X4)],
    "matmul": [("act", lambda: _Fn(lambda s, x: x @ x.transpose(1, 2)), _X3),
               ("bmm", lambda: _Fn(lambda s, x: torch.bmm(x.transpose(1, 2), x)), _X3),
               ("weight", lambda: _Fn(lambda s, x: x @ s.w, w=nn.Parameter(torch.randn(6, 3))),
                _X3)],
    "sdpa": [("plain", lambda: _Fn(lambda s, x: F.scaled_dot_product_attention(
        x, x.sigmoid(), x)), _X3),
             ("causal_heads", lambda: _Fn(lambda s, x: F.scaled_dot_product_attention(
                 *[x.view(x.size(0), 5, 2, 3).transpose(1, 2)] * 3, is_causal=True)), _X3)],
    "cat": [("channels", lambda: _Fn(lambda s, x: torch.cat([x, x.relu()], 1)), _X4),
            ("token", lambda: _Fn(lambda s, x: torch.cat(
                [s.cls.expand(x.shape[0], -1, -1), x], dim=1),
                cls=nn.Parameter(torch.randn(1, 1, 6))), _X3)],
    "flatten": [("m", lambda: _seq(nn.Flatten(), nn.Linear(144, 2)), _X4),
                ("fn", lambda: _Fn(lambda s, x: torch.flatten(x, 2)), _X4)],
    "reshape": [("sizes", lambda: _Fn(lambda s, x: x.reshape(x.size(0), -1, 2)), _X4),
                ("shape", lambda: _Fn(lambda s, x: x.view(x.shape[0], x.shape[1] * 2, 18)), _X4)],
    "permute": [("m", lambda: _Fn(lambda s, x: x.permute(0, 3, 1, 2)), _X4)],
    "transpose": [("m", lambda: _Fn(lambda s, x: x.transpose(1, 2)), _X3)],
    "squeeze": [("m", lambda: _Fn(lambda s, x: x.mean(1, keepdim=True).squeeze(1)), _X3)],
    "unsqueeze": [("m", lambda: _Fn(lambda s, x: x.unsqueeze(1).relu()), _X3)],
    "chunk": [("m", lambda: _Fn(lambda s, x: (lambda c: c[0] * c[1].sigmoid())(x.chunk(2, 1))),
               _X4)],
    "split": [("m", lambda: _Fn(lambda s, x: torch.split(x, [2, 4], 2)[1]), _X3)],
    "unbind": [("m", lambda: _Fn(lambda s, x: x.unbind(1)[3]), _X3)],
    "expand": [("noop", lambda: _Fn(lambda s, x: x.expand(x.shape[0], 6)), _X2)],
    "getitem": [("slices", lambda: _Fn(lambda s, x: x[:, 1:4, ::2]), _X3),
                ("int", lambda: _Fn(lambda s, x: x[:, -1]), _X3),
                ("none", lambda: _Fn(lambda s, x: x[..., None, 2:]), _X3)],
    "mean": [("spatial", lambda: _Fn(lambda s, x: x.mean((2, 3))), _X4),
             ("channels", lambda: _Fn(lambda s, x: x.mean(1)), _X4),
             ("seq", lambda: _Fn(lambda s, x: torch.mean(x, dim=-2, keepdim=True)), _X3)],
    "sum": [("m", lambda: _Fn(lambda s, x: x.sum(1)), _X3)],
    "size": [("m", lambda: _Fn(lambda s, x: x.view(x.size(0), x.size(1) * x.size(2))), _X3)],
    "ndim": [("m", lambda: _Fn(lambda s, x: x.flatten(x.dim() - 2)), _X3)],
    "getattr": [("m", lambda: _Fn(lambda s, x: x.reshape(x.shape[0], -1)), _X3)],
}

# key -> (model factory, per-sample input shape, text the refusal names)
REFUSED = {
    "conv_transpose": (lambda: nn.ConvTranspose2d(4, 2, 2), _X4, "transposed convolution"),
    **{k: (lambda: _Fn(lambda s, x: x * (x > 0)), _X2, "comparison of tensor values")
       for k in ("gt",)},
    **{k: (lambda k=k: _Fn(lambda s, x: getattr(x, f"__{k}__")(0.5).float()), _X2,
           "comparison of tensor values") for k in ("eq", "ne", "lt", "le", "ge")},
    "selu": (lambda: nn.SELU(), _X2, "no 'selu' activation"),
    "celu": (lambda: nn.CELU(), _X2, "no 'celu' activation"),
    "mish": (lambda: nn.Mish(), _X2, "no 'mish' activation"),
    "softplus": (lambda: nn.Softplus(), _X2, "no 'softplus' activation"),
    "log_softmax": (lambda: nn.LogSoftmax(1), _X2, "no 'log_softmax' activation"),
    "abs": (lambda: _Fn(lambda s, x: x.abs()), _X2, "no 'abs' activation"),
    "exp": (lambda: _Fn(lambda s, x: torch.exp(x)), _X2, "no 'exp' activation"),
    "sqrt": (lambda: _Fn(lambda s, x: x.sqrt()), _X2, "no 'sqrt' activation"),
    "adaptive_max_pool": (lambda: nn.AdaptiveMaxPool2d(1), _X4, "adaptive max pooling"),
    "interpolate": (lambda: nn.Upsample(scale_factor=2), _X4, "resampling"),
    "amax": (lambda: _Fn(lambda s, x: x.amax(1)), _X3, "max reduction"),
}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max())
    assert scale > 0, "degenerate reference output"
    return float(np.abs(got - ref).max()) / scale


@pytest.mark.parametrize("key,case,build,shape", [
    (k, c, b, s) for k, cases in CASES.items() for c, b, s in cases])
def test_lowered_op_matches_torch(key, case, build, shape, tmp_path):
    """Export (which checks batch 1 itself), then run a new batch of 3 on the engine:
    equal to torch within 1e-4 of the largest output."""
    torch.manual_seed(0)
    model = build().eval()
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, *shape), path)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel_err(load(path)(x.numpy()), ref) <= REL_TOL


@pytest.mark.parametrize("key", list(REFUSED))
def test_refused_op_is_named_with_its_source_line(key, tmp_path):
    build, shape, needle = REFUSED[key]
    with pytest.raises(UnsupportedModelError) as ei:
        export_sparse(build(), torch.randn(1, *shape), tmp_path / "m.mpsparse")
    msg = str(ei.value)
    assert f"op {key!r}" in msg and needle in msg, msg
    assert not (tmp_path / "m.mpsparse").exists()


def test_every_key_lowers_or_is_refused():
    """A key of the op table with neither a lowering case nor a refusal fails here, and
    every key has a handler that overrides ``lower`` or is an eval no-op."""
    keys = [s.key for s in SPECS]
    assert set(keys) == set(CASES) | set(REFUSED), (
        sorted(set(keys) - set(CASES) - set(REFUSED)), sorted(set(CASES) - set(keys)))
    assert not set(CASES) & set(REFUSED)
    for k in keys:
        h = HANDLERS[k]
        assert h.eval_noop or type(h).lower is not OpHandler.lower, k


def test_eval_noops_vanish(tmp_path):
    m = _seq(nn.Linear(6, 6), nn.Dropout(), nn.Identity(), StochasticDepth(0.5, "row"))
    export_sparse(m, torch.randn(1, 6), tmp_path / "m.mpsparse")
    assert [op["op"] for op in read_container(tmp_path / "m.mpsparse")[0]["ops"]] == ["linear"]


def test_unknown_op_names_the_source_line(tmp_path):
    class Cumsum(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)  # the line the message shows

    with pytest.raises(UnsupportedModelError) as ei:
        export_sparse(Cumsum(), torch.randn(1, 6), tmp_path / "m.mpsparse")
    msg = str(ei.value)
    assert "op 'unknown'" in msg and "cumsum" in msg
    assert "test_lower.py" in msg and "the line the message shows" in msg


def test_training_mode_dropout_and_batch_axis_are_refused(tmp_path):
    cases = [(_Fn(lambda s, x: F.dropout(x, 0.5)), _X2, "training=True"),
             (_Fn(lambda s, x: x.softmax(0)), _X2, "softmax over dim 0"),
             (_Fn(lambda s, x: x[1:]), _X2, "batch axis"),
             (_Fn(lambda s, x: x.sum(0)), _X2, "batch axis"),
             (_Fn(lambda s, x: s.l(x)[0], l=nn.LSTM(6, 4)), _X3, "batch"),  # (T, N, I) wanted
             (_Fn(lambda s, x: s.l(x)[0], l=nn.RNN(6, 4, batch_first=True)), _X3,
              "no RNN op"),
             (_Fn(lambda s, x: s.l(x, s.h)[0], l=nn.GRU(6, 4, batch_first=True),
                  h=nn.Buffer(torch.zeros(1, 2, 4))), _X3, "initial state")]
    for model, shape, needle in cases:
        with pytest.raises(UnsupportedModelError, match=needle):
            export_sparse(model, torch.randn(2, *shape), tmp_path / "m.mpsparse")


def test_a_reshape_folding_the_batch_says_what_to_do(tmp_path):
    """A reshape that folds the batch into another axis (MobileViT's patch unfolding) is
    refused with the shape, the reason and the two ways out."""
    m = _Fn(lambda s, x: x.reshape(-1, 3).relu())
    with pytest.raises(UnsupportedModelError) as ei:
        export_sparse(m, torch.randn(1, 6), tmp_path / "m.mpsparse")
    msg = str(ei.value)
    assert "shape (2, 3) does not keep the batch (1) on axis 0" in msg
    assert "batch kept apart" in msg and "ONNX" in msg


def test_lstm_cell_state_is_refused_by_name(tmp_path):
    m = _Fn(lambda s, x: s.r(x)[1][1][0], r=nn.LSTM(6, 4, batch_first=True))
    with pytest.raises(UnsupportedModelError, match="final cell state"):
        export_sparse(m, torch.randn(1, *_X3), tmp_path / "m.mpsparse")


def test_folded_batch_norm_leaves_no_op(tmp_path):
    m = _seq(nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
    with torch.no_grad():
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].running_mean.normal_()
    export_sparse(m.eval(), torch.randn(1, *_X4), tmp_path / "m.mpsparse")
    ops = [op["op"] for op in read_container(tmp_path / "m.mpsparse")[0]["ops"]]
    assert ops == ["conv2d", "relu"]


class _AssertBN(nn.Module):
    """timm's ``BatchNormAct2d``: asserts the input's rank, then ``F.batch_norm``;
    ``residual`` adds the conv output back (a second reader of its values)."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.residual = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), residual

    def forward(self, x):
        y = self.conv(x)
        torch._assert(y.ndim == 4, "expected 4D input")
        z = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                         self.bn.bias, False, 0.1, self.bn.eps)
        return F.relu(z + y if self.residual else z)


@pytest.mark.parametrize("residual", [False, True])
def test_batch_norm_folds_past_a_rank_assert(tmp_path, residual):
    """Reading the conv output's rank does not keep the batch norm from folding into
    the conv; a second reader of its values does (the export checks both against torch)."""
    m = _AssertBN(residual)
    with torch.no_grad():
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.running_mean.normal_()
        m.bn.weight.normal_()
    export_sparse(m.eval(), torch.randn(1, *_X4), tmp_path / "m.mps")
    ops = [op["op"] for op in read_container(tmp_path / "m.mps")[0]["ops"]]
    assert ops == (["conv2d", "batchnorm", "add", "relu"] if residual else ["conv2d", "relu"])


def test_a_wrong_lowering_is_caught_before_writing(tmp_path, monkeypatch):
    """The export runs the lowered file on the engine against torch: a handler that
    lowers ReLU to the runtime's sigmoid is refused and nothing is written."""
    relu = HANDLERS["relu"]

    def wrong(node, emit):
        emit.op(node, "activation", [emit.value(node, node.meta["mp_args"]["input"])],
                {"fn": "sigmoid"})

    monkeypatch.setattr(relu, "lower", wrong)
    with pytest.raises(UnsupportedModelError, match="differs from torch"):
        export_sparse(_seq(nn.Linear(6, 6), nn.ReLU()), torch.randn(2, 6), tmp_path / "m.mps")
    assert not (tmp_path / "m.mps").exists()


def test_a_constant_computed_from_the_batch_size_is_refused(tmp_path):
    """``torch.arange(x.size(0))`` is folded at export from the example's batch of 1;
    the second check (a batch of 2) finds that the file would be wrong there."""
    m = _Fn(lambda s, x: x + torch.arange(x.size(0)).float()[:, None])
    with pytest.raises(UnsupportedModelError, match="a batch of 2"):
        export_sparse(m, torch.randn(1, 6), tmp_path / "m.mps")
    assert not (tmp_path / "m.mps").exists()
