"""Every weight is prunable (issue 19, item 2): recurrent, attention, transformer,
embedding, transposed and 3-D conv weights under ``default: 0.9``.

Each case lists its weight parameters by hand (not through ``weight_slots``); the
pruned fraction is counted from the weights themselves (``== 0``), and every size is a
multiple of 10 so that ``default: 0.9`` means exactly 90 % zeros. The masks must hold
through SGD with momentum and weight decay, in the forward pass (an ``nn.LSTM`` reads
its weights through ``_flat_weights``), and through ``state_dict`` save / load.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from mobileprune.errors import ConfigError
from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.sparsity.masks import MaskEnforcer
from mobileprune.sparsity.report import layer_report, to_markdown
from mobileprune.sparsity.targets import explain, resolve_targets


class Seq(nn.Module):
    """A recurrent layer on ``(B, T, 6)``; the first output only."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


class Attn(nn.Module):
    """Self-attention (packed ``in_proj_weight``) or cross-attention with ``kdim`` /
    ``vdim`` (separate ``q/k/v_proj_weight``) on ``(B, T, 10)``."""

    def __init__(self, cross: bool):
        super().__init__()
        self.cross = cross
        self.attn = (nn.MultiheadAttention(10, 2, kdim=6, vdim=4, batch_first=True) if cross
                     else nn.MultiheadAttention(10, 2, batch_first=True))

    def forward(self, x):
        if self.cross:
            return self.attn(x, x[..., :6], x[..., 6:])[0]
        return self.attn(x, x, x)[0]


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(10, 2, 20, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


class Emb(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 10)

    def forward(self, x):  # token ids from the first feature
        return self.emb((x[..., 0].abs() * 7).long() % 20)


class Image(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def _lstm_names(layers: int, bidirectional: bool) -> list[str]:
    sfx = ("", "_reverse") if bidirectional else ("",)
    return [f"rnn.weight_{k}_l{i}{s}" for i in range(layers) for s in sfx for k in ("ih", "hh")]


_ENC = [f"encoder.layers.{i}.{w}" for i in (0, 1) for w in
        ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")]

#: case -> (model factory, input shape, every weight parameter pruned, written by hand)
CASES = {
    "lstm": (lambda: Seq(nn.LSTM(6, 10, batch_first=True)), (4, 3, 6), _lstm_names(1, False)),
    "gru": (lambda: Seq(nn.GRU(6, 10, batch_first=True)), (4, 3, 6), _lstm_names(1, False)),
    "bilstm": (lambda: Seq(nn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=True)),
               (4, 3, 6), _lstm_names(2, True)),
    "mha_packed": (lambda: Attn(False), (4, 3, 10), ["attn.in_proj_weight", "attn.out_proj.weight"]),
    "mha_qkv": (lambda: Attn(True), (4, 3, 10),
                ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"]),
    "transformer": (Encoder, (4, 3, 10), _ENC),
    "embedding": (Emb, (4, 3, 1), ["emb.weight"]),
    "conv_transpose2d": (lambda: Image(nn.ConvTranspose2d(3, 5, 2)), (2, 3, 4, 4), ["conv.weight"]),
    "conv3d": (lambda: Image(nn.Conv3d(2, 5, 2)), (2, 2, 3, 3, 3), ["conv.weight"]),
}


def build(case: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, list[str]]:
    factory, shape, names = CASES[case]
    torch.manual_seed(seed)
    model = factory()
    with torch.no_grad():  # no weight exactly 0 by chance
        for p in model.parameters():
            p.add_(torch.where(p == 0, torch.full_like(p, 1e-3), torch.zeros_like(p)))
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1)), names


def zeros(p: torch.Tensor) -> int:
    return int((p.detach() == 0).sum())


def train(model: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    target = torch.randn_like(model(x))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)


@pytest.mark.parametrize("case", list(CASES))
def test_default_09_prunes_exactly_90_percent_and_masks_hold(case):
    model, x, names = build(case)
    params = dict(model.named_parameters())
    assert all(params[n].numel() % 10 == 0 for n in names)
    before = {n: p.detach().clone() for n, p in params.items()}
    masks = ADMMPruner(model, {"default": 0.9}).finalize()
    assert sorted(masks) == sorted(names)  # no bias, no norm weight
    for n in names:
        assert zeros(params[n]) == params[n].numel() * 9 // 10, n
        assert torch.equal(masks[n], params[n].detach() != 0), n
    for n, p in params.items():  # everything else untouched
        if n not in names:
            assert torch.equal(p.detach(), before[n]), n

    opt = sgd(model)
    with MaskEnforcer(model, masks, opt):
        train(model, x, opt)
        for n in names:
            p = params[n].detach()
            assert bool((p[~masks[n]] == 0).all()) and zeros(p) >= p.numel() * 9 // 10, n
            assert not torch.equal(p, before[n] * masks[n]), f"{n} did not train"
        # the forward pass reads the masked tensors (LSTM: its _flat_weights)
        masked = {n: params[n].detach() * masks[n] for n in names}
        with torch.no_grad():
            assert torch.allclose(model(x), torch.func.functional_call(model, masked, (x,)), atol=1e-6)

        buf = io.BytesIO()  # save / load the model and the optimizer: still masked
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model2, _, _ = build(case, seed=7)
    model2.load_state_dict(state["model"])
    params2 = dict(model2.named_parameters())
    for n in names:
        assert torch.equal(params2[n].detach() != 0, params[n].detach() != 0), n
    opt2 = sgd(model2)
    opt2.load_state_dict(state["opt"])
    with MaskEnforcer(model2, masks, opt2):
        train(model2, x, opt2)
    for n in names:
        assert bool((params2[n].detach()[~masks[n]] == 0).all()), n


@pytest.mark.parametrize("case", list(CASES))
def test_report_lists_every_weight_parameter(case):
    model, _, names = build(case)
    targets = resolve_targets(model, {"default": 0.9})
    ADMMPruner(model, {"default": 0.9}).finalize()
    rep = layer_report(model, targets)
    rows = {r["parameter"]: r for r in rep["parameters"]}
    assert list(rows) == [n for n, _ in model.named_parameters()]
    assert sorted(r["parameter"] for r in rep["layers"]) == sorted(names)
    for n, r in rows.items():
        if n in names:
            assert r["targets"] and r["dense_reason"] is None, n
        else:
            assert not r["targets"] and r["dense_reason"], n
            assert r["dense_reason"].startswith(("bias", "not selected: type LayerNorm")), (n, r)
    assert rep["totals"]["all_targets_met"] is True
    md = to_markdown(rep)
    assert all(r["layer"] in md for r in rep["layers"])


class Mixed(nn.Module):
    """An LSTM, a Transformer encoder, an embedding and a head (selection tests)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 10)
        self.rnn = nn.LSTM(10, 10, batch_first=True)
        self.encoder = Encoder().encoder
        self.head = nn.Linear(10, 3)


def _selected(config) -> list[str]:
    return [t.param_name for t in resolve_targets(Mixed(), config)]


def test_select_by_name_glob_and_type():
    assert _selected({"layers": {"rnn.weight_hh_l0": 0.5}}) == ["rnn.weight_hh_l0"]
    assert _selected({"layers": {"encoder.*.in_proj_weight": 0.5}}) == [
        "encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.1.self_attn.in_proj_weight"]
    # a glob on the parameter name (with ".weight") selects the same out_proj as on the weight name
    outs = ["encoder.layers.0.self_attn.out_proj.weight", "encoder.layers.1.self_attn.out_proj.weight"]
    assert _selected({"layers": {"*.out_proj.weight": 0.5}}) == outs
    assert _selected({"layers": {"*.out_proj": 0.5}}) == outs
    assert _selected({"layers": {"re:encoder\\.layers\\.1\\..*weight": 0.5}}) == _ENC[4:]
    assert _selected({"layers": {"type:LSTM": 0.5}}) == ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    assert _selected({"default": 0.5, "types": ["LSTM", "Embedding"]}) == [
        "emb.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    linear = _selected({"layers": {"type:Linear": 0.5}})  # out_proj is a Linear subclass
    assert linear == [n for n in _ENC if "in_proj" not in n] + ["head.weight"]
    # the default selects every weight: embedding, recurrent, attention, FFN, head
    assert _selected({"default": 0.9}) == (["emb.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"]
                                           + _ENC + ["head.weight"])


def test_explain_states_what_happens_to_every_parameter():
    ex = explain(Mixed(), {"default": 0.9, "exclude": ["emb"]})
    assert list(ex) == [n for n, _ in Mixed().named_parameters()]
    assert ex["emb.weight"] == "excluded by config ('emb')"
    assert ex["rnn.weight_hh_l0"] == "target rnn.weight_hh_l0: unstructured keep 40 of 400"
    assert ex["encoder.layers.0.norm1.weight"].startswith("not selected: type LayerNorm")
    assert ex["rnn.bias_ih_l0"] == "bias: never pruned"


def test_no_match_names_the_pattern_and_the_closest_names():
    with pytest.raises(ConfigError) as info:
        resolve_targets(Mixed(), {"layers": {"encoder.*.in_proj": 0.5}})
    msg = str(info.value)
    assert "pattern 'encoder.*.in_proj'" in msg and "matches no prunable layer" in msg
    assert "closest names: encoder.layers.0.self_attn.in_proj_weight" in msg
    with pytest.raises(ConfigError, match=r"unknown layer 'rnn\.weight_hh'.*closest names: rnn\.weight_hh_l0"):
        resolve_targets(Mixed(), {"layers": {"rnn.weight_hh": 0.5}})
    with pytest.raises(ConfigError, match="to select by type write 'type:LSTM'"):
        resolve_targets(Mixed(), {"layers": {"LSTM": 0.5}})
    with pytest.raises(ConfigError, match="'type:GRU'.*types of the prunable weights: Embedding, LSTM"):
        resolve_targets(Mixed(), {"layers": {"type:GRU": 0.5}})


def test_structured_units_of_recurrent_and_attention_weights():
    """Structured targets on the new weights: whole hidden units of an LSTM (their rows
    in all 4 gate blocks, ``weight_ih`` and ``weight_hh`` together) and whole heads."""
    model = Mixed()
    ADMMPruner(model, {"layers": {"rnn": {"structure": "filter", "keep": 4},
                                  "encoder.layers.0.self_attn": {"structure": "head", "keep": 1}}}).finalize()
    for w in (model.rnn.weight_ih_l0, model.rnn.weight_hh_l0):
        alive = (w.detach().reshape(4, 10, -1) != 0).any(2).any(0)  # (gate, unit, in)
        assert int(alive.sum()) == 4
    ip = model.encoder.layers[0].self_attn.in_proj_weight.detach().reshape(3, 2, 5, 10)  # (qkv, head, d, E)
    assert int((ip != 0).any(3).any(2).any(0).sum()) == 1


def test_proximal_unit_grouping_is_the_exact_group_prox_of_hidden_units_and_heads():
    """``grouping: unit``: the group lasso prox on whole hidden units (rows ``g*H + h``
    of every gate) and whole heads, checked against the closed form
    ``x_g * max(0, 1 - s lam / ||x_g||)`` computed on groups built by hand."""
    from mobileprune.sparsity.proximal import ProximalPruner

    model = Mixed()
    lam, s = 2.0, 0.5
    hh = model.rnn.weight_hh_l0.detach().clone()                    # (4 * 10, 10)
    ip = model.encoder.layers[0].self_attn.in_proj_weight.detach().clone()  # (3 * 10, 10), 2 heads
    pr = ProximalPruner(model, {"method": "group_lasso", "lam": lam, "grouping": "unit",
                                "types": ["LSTM", "MultiheadAttention"]})
    pr.prox_step(s)
    units = [[g * 10 + h for g in range(4)] for h in range(10)]
    heads = [[b * 10 + j * 5 + i for b in range(3) for i in range(5)] for j in range(2)]
    for before, after, groups in ((hh, model.rnn.weight_hh_l0, units),
                                  (ip, model.encoder.layers[0].self_attn.in_proj_weight, heads)):
        want = before.clone()
        for rows in groups:
            want[rows] = before[rows] * max(0.0, 1 - s * lam / float(before[rows].norm()))
        assert torch.allclose(after.detach(), want, atol=1e-6)
    model = Mixed()
    norms = model.rnn.weight_hh_l0.detach().reshape(4, 10, 10).pow(2).sum((0, 2)).sqrt()
    ProximalPruner(model, {"method": "l0_group_lasso", "lam": float(norms.median()), "eta": 1e-6,
                           "grouping": "unit", "types": ["LSTM"]}).prox_step(1.0)
    rows = (model.rnn.weight_hh_l0.detach().reshape(4, 10, 10) != 0).any(2)  # (gate, unit)
    assert 0 < int(rows[0].sum()) < 10
    assert bool((rows == rows[:1]).all()), "a unit goes from every gate block at once"
    with pytest.raises(ConfigError, match="grouping 'unit' is not defined for '0'.*grouped ConvTranspose"):
        ProximalPruner(nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2)),
                       {"method": "group_lasso", "lam": 1.0, "grouping": "unit"})
