"""compact on attention and recurrent models (issue 19, item 3): the hidden units of a
transformer's MLP, whole heads of ``nn.MultiheadAttention`` / ``nn.TransformerEncoder``
and LSTM / GRU / RNN hidden units. Brute force: zero chosen units, compact, compare the
outputs with torch's (<= 1e-5 relative) and the parameter counts with the ones computed
by hand; units that cannot go are listed in the record with the op that keeps them."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mobileprune import compact
from mobileprune.graph.ops.attention import PrunedMultiheadAttention

RTOL = 1e-5


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def assert_same(small: nn.Module, model: nn.Module, *inputs: torch.Tensor) -> None:
    """Outputs equal on ``inputs`` and on a second random batch of the same shapes."""
    g = torch.Generator().manual_seed(3)
    for xs in (inputs, tuple(torch.randn(x.shape, generator=g) for x in inputs)):
        with torch.no_grad():
            want, got = model(*xs), small(*xs)
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= RTOL * scale, "outputs differ"


def reasons(rec, layer: str) -> str:
    return " | ".join(k.reason for k in rec.kept_zero if k.layer == layer)


# ----------------------------------------------------------------- MLP hidden units

class TokenMLP(nn.Module):
    """A pre-norm transformer MLP block on ``(N, L, 16)`` tokens: ``x + fc2(gelu(fc1(
    ln(x))))``, then a head on the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc2(self.act(self.fc1(self.ln(x))))
        return self.head(x[:, 0])


@torch.no_grad()
def test_mlp_hidden_units_on_tokens_are_removed() -> None:
    torch.manual_seed(0)
    model = TokenMLP().eval()
    model.fc1.weight[[0, 5]] = 0.0     # constant gelu(b): folded into fc2's bias
    model.fc2.weight[:, 7] = 0.0       # not read
    x = torch.randn(2, 6, 16)
    small, rec = compact(model, x, return_record=True)
    assert_same(small, model, x)
    assert small.fc1.out_features == small.fc2.in_features == 29
    assert n_params(model) - n_params(small) == 3 * (16 + 1) + 3 * 16
    assert rec.removed["fc1"] == {"out": 3, "in": 0}
    assert small.fc2.out_features == 16  # the residual width stays


# ----------------------------------------------------------------- attention heads

class CrossAttention(nn.Module):
    """``MultiheadAttention(16, 4 heads)`` from 16-wide queries to 12-wide keys / values
    (separate q / k / v weights) or self-attention (packed ``in_proj_weight``)."""

    def __init__(self, packed: bool, batch_first: bool) -> None:
        super().__init__()
        kv = None if packed else 12
        self.attn = nn.MultiheadAttention(16, 4, kdim=kv, vdim=kv, batch_first=batch_first)
        self.head = nn.Linear(16, 3)
        self.packed, self.batch_first = packed, batch_first

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        kv = x if self.packed else mem
        y, _ = self.attn(x, kv, kv, need_weights=False)
        return self.head(y.mean(dim=1 if self.batch_first else 0))


def _zero_rows(m: nn.MultiheadAttention, which: str, head: int) -> None:
    """Zero the rows of ``head`` in q, k and / or v (``which``), with their biases."""
    d, n = m.head_dim, m.num_heads * m.head_dim
    rows = torch.arange(head * d, (head + 1) * d)
    for i, name in enumerate("qkv"):
        if name not in which:
            continue
        if m.in_proj_weight is not None:
            m.in_proj_weight[rows + i * n] = 0.0
        else:
            getattr(m, f"{name}_proj_weight")[rows] = 0.0
        if "bias" in which:
            m.in_proj_bias[rows + i * n] = 0.0


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@torch.no_grad()
def test_attention_heads_are_removed(packed: bool, batch_first: bool) -> None:
    torch.manual_seed(1)
    model = CrossAttention(packed, batch_first).eval()
    m = model.attn
    _zero_rows(m, "v", 1)                     # output = the v bias: folded into out_proj
    m.out_proj.weight[:, 12:16] = 0.0         # head 3 is not read
    _zero_rows(m, "qk", 2)                    # uniform attention: still depends on the input
    shape = (2, 5, 16) if batch_first else (5, 2, 16)
    x, mem = torch.randn(*shape), torch.randn(*shape[:2], 12)
    small, rec = compact(model, (x, mem), return_record=True)
    assert_same(small, model, x, mem)
    a = small.attn
    assert isinstance(a, PrunedMultiheadAttention) and a.num_heads == 2
    in_width = 16 if packed else 12
    per_head = 4 * (16 + 2 * in_width) + 3 * 4 + 16 * 4  # q/k/v rows, biases, out_proj columns
    assert n_params(model) - n_params(small) == 2 * per_head
    assert rec.removed["attn"]["out"] == 8 and rec.removed["attn.out_proj"]["in"] == 8
    kept = [k for k in rec.kept_zero if k.layer == "attn"]
    assert kept and kept[0].units == [8, 9, 10, 11] and "out_proj" in kept[0].reason
    kv = x if packed else mem
    y, w = a(x, kv, kv, need_weights=True)
    assert w.shape == (2, 5, 5) and torch.allclose(w.sum(-1), torch.ones(2, 5))


class Encoder(nn.Module):
    """``(N, T, 8)`` -> Linear -> ``nn.TransformerEncoder`` (2 layers, d 16, 4 heads, ff
    32) -> mean over time -> Linear."""

    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(dim=1))


@pytest.mark.parametrize("norm_first", [False, True])
@torch.no_grad()
def test_transformer_encoder_heads_and_feed_forward_units(norm_first: bool) -> None:
    torch.manual_seed(2)
    model = Encoder(norm_first).eval()
    l0, l1 = model.encoder.layers
    _zero_rows(l0.self_attn, "qkv bias", 0)
    l1.linear1.weight[[1, 2]] = 0.0           # relu(b): folded into linear2's bias
    l0.linear2.weight[:, 30] = 0.0            # not read
    l0.linear2.weight[5] = 0.0                # the residual width stays: listed
    x = torch.randn(2, 7, 8)
    small, rec = compact(model, x, return_record=True)
    assert_same(small, model, x)
    assert "embedding width" in reasons(rec, "encoder.layers.0.linear2")
    s0, s1 = small.encoder.layers
    assert (s0.self_attn.num_heads, s1.self_attn.num_heads) == (3, 4)
    assert (s0.linear1.out_features, s1.linear1.out_features) == (31, 30)
    head = 4 * 16 * 3 + 4 * 3 + 16 * 4
    assert n_params(model) - n_params(small) == head + 3 * (16 + 1 + 16)
    with torch.enable_grad():  # training mode runs the pruned layers too
        small.train()(x).sum().backward()


# ----------------------------------------------------------------- recurrent hidden units

class Recurrent(nn.Module):
    """``(N, T, 6)`` -> 2-layer LSTM / GRU / RNN (hidden 8) -> last step -> Linear;
    ``state=True`` classifies the final hidden state ``h_n[-1]`` instead."""

    def __init__(self, mode: str, bidirectional: bool, state: bool = False) -> None:
        super().__init__()
        self.rnn = getattr(nn, mode)(6, 8, num_layers=2, batch_first=True,
                                     bidirectional=bidirectional)
        self.fc = nn.Linear(8 * (1 + bidirectional), 3)
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.rnn(x)
        if self.state:
            return self.fc((h[0] if isinstance(h, tuple) else h)[-1])
        return self.fc(out[:, -1])


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _zero_units(rnn: nn.RNNBase, units: list[int], layers: tuple[int, ...] = (0, 1)) -> None:
    """Zero every gate row of ``units`` in ``layers`` (weights and biases)."""
    g, h = GATES[rnn.mode.split("_")[0]], rnn.hidden_size
    rows = torch.tensor([u + k * h for k in range(g) for u in units])
    for name in rnn._flat_weights_names:
        if any(name.split("_l")[1].startswith(str(k)) for k in layers):
            getattr(rnn, name)[rows] = 0.0


def _rnn_params(mode: str, hidden: int, dirs: int, inp: int = 6) -> int:
    g = GATES[mode]
    layer0 = dirs * (g * hidden * inp + g * hidden * hidden + 2 * g * hidden)
    layer1 = dirs * (g * hidden * hidden * dirs + g * hidden * hidden + 2 * g * hidden)
    return layer0 + layer1 + 3 * hidden * dirs + 3


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
@torch.no_grad()
def test_recurrent_hidden_units_are_removed(mode: str, bidirectional: bool) -> None:
    torch.manual_seed(3)
    model = Recurrent(mode, bidirectional).eval()
    _zero_units(model.rnn, [1, 5])            # dead in every layer and direction
    x = torch.randn(2, 5, 6)
    small, rec = compact(model, x, return_record=True)
    assert_same(small, model, x)
    assert small.rnn.hidden_size == 6
    assert n_params(small) == _rnn_params(mode, 6, 1 + bidirectional)
    assert rec.removed["rnn"]["out"] == 2


@torch.no_grad()
def test_recurrent_unit_that_is_not_read_is_removed() -> None:
    torch.manual_seed(4)
    model = Recurrent("LSTM", False).eval()
    r = model.rnn
    for k in (0, 1):
        getattr(r, f"weight_hh_l{k}")[:, 3] = 0.0
    r.weight_ih_l1[:, 3] = 0.0
    model.fc.weight[:, 3] = 0.0               # unit 3: rows nonzero, output never read
    x = torch.randn(2, 5, 6)
    small = compact(model, x)
    assert_same(small, model, x)
    assert small.rnn.hidden_size == 7


@torch.no_grad()
def test_recurrent_units_kept_are_listed() -> None:
    torch.manual_seed(5)
    model = Recurrent("GRU", False).eval()
    _zero_units(model.rnn, [2], layers=(0,))  # dead in layer 0 only: layer 1 still uses it
    x = torch.randn(2, 5, 6)
    with pytest.warns(UserWarning, match="cannot be removed"):
        small, rec = compact(model, x, return_record=True)
    assert small.rnn.hidden_size == 8
    assert [k.units for k in rec.kept_zero if k.layer == "rnn"] == [[2]]
    assert "rnn.weight_hh_l1' reads it with nonzero weights" in reasons(rec, "rnn")


@torch.no_grad()
def test_recurrent_final_state_read_keeps_units() -> None:
    torch.manual_seed(6)
    model = Recurrent("LSTM", False, state=True).eval()
    _zero_units(model.rnn, [1])
    x = torch.randn(2, 5, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small, rec = compact(model, x, return_record=True)
    assert small.rnn.hidden_size == 8 and caught
    assert "element 1" in reasons(rec, "rnn")


class WithState(nn.Module):
    """An LSTM given an initial state and an attention with ``add_bias_kv``: neither's
    units can be removed."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = (torch.ones(1, x.shape[0], 8), torch.ones(1, x.shape[0], 8))
        y, _ = self.rnn(x, h0)
        return self.fc(self.attn(y, y, y)[0][:, -1])


@torch.no_grad()
def test_units_of_refused_modules_are_listed() -> None:
    torch.manual_seed(7)
    model = WithState().eval()
    _zero_units(model.rnn, [4], layers=(0,))
    _zero_rows(model.attn, "qkv bias", 1)
    x = torch.randn(2, 5, 6)
    with pytest.warns(UserWarning, match="cannot be removed"):
        small, rec = compact(model, x, return_record=True)
    assert small.rnn.hidden_size == 8 and small.attn.num_heads == 2
    kept = {k.layer: k for k in rec.kept_zero}
    assert kept["rnn"].units == [4] and "initial state hx" in kept["rnn"].reason
    assert kept["attn"].units == [4, 5, 6, 7] and "add_bias_kv" in kept["attn"].reason


@torch.no_grad()
def test_compacted_models_export_and_compact_again(tmp_path) -> None:
    """The smaller modules run in the sparse runtime, and a pruned attention (a leaf of
    the tracer, as the module it replaces) can lose more heads."""
    from mobileprune import export_sparse, runtime

    torch.manual_seed(8)
    enc, rnn = Encoder(False).eval(), Recurrent("GRU", True).eval()
    _zero_rows(enc.encoder.layers[1].self_attn, "qkv bias", 2)
    _zero_units(rnn.rnn, [0, 3])
    for model, x in ((enc, torch.randn(1, 7, 8)), (rnn, torch.randn(1, 5, 6))):
        small = compact(model, x)
        assert n_params(small) < n_params(model)
        export_sparse(small, x, tmp_path / "m.mps")
        got = torch.as_tensor(runtime.load(tmp_path / "m.mps")(x.numpy()))
        assert float((got - small(x)).abs().max()) <= 1e-4 * float(small(x).abs().max())
    model = CrossAttention(True, True).eval()
    _zero_rows(model.attn, "qkv bias", 0)
    x = (torch.randn(2, 5, 16), torch.randn(2, 5, 12))
    once = compact(model, x)
    _zero_rows(once.attn, "qkv bias", 1)  # head 2 of the original
    twice = compact(once, x)
    assert twice.attn.num_heads == 2
    assert_same(twice, once, *x)


@torch.no_grad()
def test_compacted_checkpoint_restores_units_and_heads(tmp_path) -> None:
    """A compacted checkpoint records hidden sizes and head counts; restoring it resizes
    a fresh model through the same handlers; damaged sizes are refused."""
    from mobileprune.checkpoint import load_checkpoint, restore_model, save_checkpoint
    from mobileprune.errors import CheckpointError

    torch.manual_seed(9)
    model = Encoder(True).eval()
    _zero_rows(model.encoder.layers[0].self_attn, "qkv bias", 3)
    model.encoder.layers[1].linear1.weight[4] = 0.0
    rnn = Recurrent("LSTM", True).eval()
    _zero_units(rnn.rnn, [2, 6])
    for m, x, fresh in ((model, torch.randn(2, 7, 8), Encoder(True)),
                        (rnn, torch.randn(2, 5, 6), Recurrent("LSTM", True))):
        small = compact(m, x)
        save_checkpoint(tmp_path / "c.pt", small, kind="compacted")
        back = restore_model(load_checkpoint(tmp_path / "c.pt"), fresh.eval())
        assert_same(back, small, x)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    ckpt["extra"]["layer_sizes"]["rnn"]["hidden_size"] = 8
    with pytest.raises(CheckpointError, match="hidden_size"):
        restore_model(ckpt, Recurrent("LSTM", True))


class TimmBlock(nn.Module):
    """timm's ``Attention`` (4 heads of 8) on ``(N, L, 32)`` tokens, then a head."""

    def __init__(self) -> None:
        super().__init__()
        from zoo_models import import_timm

        self.attn = import_timm().layers.Attention(32, num_heads=4, qkv_bias=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x).mean(dim=1))


@torch.no_grad()
def test_timm_attention_heads_are_removed(tmp_path) -> None:
    from mobileprune import export_sparse, runtime
    from zoo_models import BY_NAME, missing

    if missing(BY_NAME["timm_deit_tiny"]):
        pytest.skip(missing(BY_NAME["timm_deit_tiny"]))

    torch.manual_seed(10)
    model = TimmBlock().eval()
    qkv = model.attn.qkv
    for i in range(3):                        # head 1: q, k, v rows and biases
        qkv.weight[i * 32 + 8:i * 32 + 16] = 0.0
        qkv.bias[i * 32 + 8:i * 32 + 16] = 0.0
    qkv.weight[64 + 24:64 + 32] = 0.0         # head 3: v rows only (bias folded into proj)
    x = torch.randn(2, 5, 32)
    small = compact(model, x)
    assert_same(small, model, x)
    a = small.attn
    assert (a.num_heads, a.attn_dim, a.qkv.out_features, a.proj.in_features) == (2, 16, 48, 16)
    assert n_params(model) - n_params(small) == 2 * (3 * 8 * 33 + 32 * 8)
    export_sparse(small, x[:1], tmp_path / "m.mps")
    got = torch.as_tensor(runtime.load(tmp_path / "m.mps")(x[:1].numpy()))
    assert float((got - small(x[:1])).abs().max()) <= 1e-4 * float(small(x[:1]).abs().max())


class EmbedRNN(nn.Module):
    """``(N, T, 6)`` -> Linear(6, 10) -> ReLU -> GRU(10, 8) -> last step -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.fc = nn.Linear(6, 10), nn.GRU(10, 8, batch_first=True), \
            nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(torch.relu(self.embed(x)))[0][:, -1])


@torch.no_grad()
def test_recurrent_input_features_follow_the_producer() -> None:
    """Zero outputs of the Linear before a GRU (constant relu(b) = 0) go, with the GRU's
    input columns; a nonzero constant stays (it does not fold into recurrent weights)."""
    torch.manual_seed(11)
    model = EmbedRNN().eval()
    model.embed.weight[[2, 7, 9]] = 0.0
    model.embed.bias[[2, 7]] = -1.0           # relu: 0
    model.embed.bias[9] = 0.5                 # relu: 0.5, kept
    x = torch.randn(2, 5, 6)
    small, rec = compact(model, x, return_record=True)
    assert_same(small, model, x)
    assert small.embed.out_features == small.rnn.input_size == 8
    assert [k.units for k in rec.kept_zero if k.layer == "embed"] == [[9]]


class SeqFirst(nn.Module):
    """A sequence-first LSTM (``(T, N, 6)``, torch's default layout) classifying its
    last step ``out[-1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = nn.LSTM(6, 8, num_layers=2), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][-1])


@torch.no_grad()
def test_sequence_first_recurrent_units_are_removed() -> None:
    torch.manual_seed(12)
    model = SeqFirst().eval()
    _zero_units(model.rnn, [0, 3])
    x = torch.randn(5, 2, 6)
    small = compact(model, x)
    assert_same(small, model, x)
    assert small.rnn.hidden_size == 6
