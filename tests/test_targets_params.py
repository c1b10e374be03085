"""Every weight is prunable: targets over (module, parameter) pairs (issue 19, item 2).

Counts are checked against sizes computed apart from the targets (``named_parameters``
numels, hand-written names), structured projections against a brute-force choice of
the units with the largest l2 norm.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.checkpoint import load_checkpoint, save_checkpoint
from mobileprune.errors import ConfigError
from mobileprune.math.groups import from_unit_groups, to_unit_groups
from mobileprune.sparsity.masks import MaskEnforcer
from mobileprune.sparsity.proximal import ProximalPruner
from mobileprune.sparsity.report import layer_report, to_markdown
from mobileprune.sparsity.targets import explain, resolve_targets, weight_slots

T = 5  # sequence length


class Zoo(nn.Module):
    """One of every supported weight, all used by the forward pass of ``(B, T, 5)``."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 12)
        self.pos_embed = nn.Embedding(T, 12)                # never pruned by default
        self.lstm = nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(5, 4, batch_first=True)
        self.rnn = nn.RNN(5, 4, batch_first=True)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)          # packed in_proj
        self.attn2 = nn.MultiheadAttention(12, 2, kdim=5, vdim=7, batch_first=True)  # q/k/v
        self.lin3 = nn.Linear(5, 7)                          # on a 3-D input
        self.conv3 = nn.Conv3d(2, 3, 2)
        self.convt = nn.ConvTranspose2d(2, 4, 3)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12 + 4 + 4 + 3 + 4, 3)

    def forward(self, x):
        B = x.shape[0]
        tok = torch.arange(T) % 10
        h = self.lstm(x)[0] + self.emb(tok) + self.pos_embed(torch.arange(T))
        a = self.attn(h, h, h)[0]
        a = a + self.attn2(self.norm(a), x, self.lin3(x))[0]
        c = self.conv3(a.reshape(B, T, 2, 2, 3).transpose(1, 2)).mean((2, 3, 4))
        d = self.convt(x[..., :4].reshape(B, T, 2, 2).transpose(1, 2)).mean((2, 3))
        feats = [a.mean(1), self.gru(x)[0].mean(1), self.rnn(x)[0].mean(1), c, d]
        return self.head(torch.cat(feats, 1))


#: weight names, written out by hand: every selected weight of Zoo under ``default``
ZOO_WEIGHTS = [
    "emb",
    *[f"lstm.weight_{k}_l{layer}{sfx}" for layer in (0, 1) for sfx in ("", "_reverse") for k in ("ih", "hh")],
    "gru.weight_ih_l0", "gru.weight_hh_l0", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
    "attn.in_proj_weight", "attn.out_proj",
    "attn2.q_proj_weight", "attn2.k_proj_weight", "attn2.v_proj_weight", "attn2.out_proj",
    "lin3", "conv3", "convt", "head",
]


def _param(name: str) -> str:
    return name if "weight" in name.rsplit(".", 1)[-1] else f"{name}.weight"


def zoo(seed: int = 0) -> Zoo:
    torch.manual_seed(seed)
    m = Zoo()
    with torch.no_grad():  # no weight exactly 0 by chance
        for p in m.parameters():
            p.add_(torch.where(p == 0, torch.full_like(p, 1e-3), torch.zeros_like(p)))
    return m


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


# ------------------------------------------------------------------ selection


def test_default_selects_every_weight_in_model_order():
    m = zoo()
    assert m(batch()[0]).shape == (8, 3)
    targets = resolve_targets(m, {"default": 0.9})
    assert [t.name for t in targets] == ZOO_WEIGHTS
    assert [t.param_name for t in targets] == [_param(n) for n in ZOO_WEIGHTS]


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd"])
def test_default_prunes_each_weight_to_floor_n_tenth_and_retraining_keeps_zeros(opt):
    m = zoo()
    params = dict(m.named_parameters())
    pruner = ADMMPruner(m, {"default": 0.9})
    masks = pruner.finalize()
    for name in ZOO_WEIGHTS:
        n = params[_param(name)].numel()
        assert int(torch.count_nonzero(params[_param(name)])) == n // 10, name
    before = {k: params[k].detach().clone() for k in masks}
    make = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5),
            "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1)}[opt]
    o = make(m.parameters())
    x, y = batch()
    with MaskEnforcer(m, masks, o):
        for _ in range(4):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for name in ZOO_WEIGHTS:
        p = params[_param(name)]
        assert bool((p[~masks[_param(name)]] == 0).all()), name
        assert int(torch.count_nonzero(p)) <= p.numel() // 10
        assert not torch.equal(p.detach(), before[_param(name)]), f"{name} did not train"


def test_keys_glob_type_module_and_parameter_names():
    m = zoo()

    def names(layers, **kw):
        return [t.name for t in resolve_targets(m, {"layers": layers, **kw})]

    hh = [n for n in ZOO_WEIGHTS if n.startswith("lstm.weight_hh")]
    assert names({"lstm.weight_hh_*": 0.5}) == hh
    assert names({"type:LSTM": 0.5}) == [n for n in ZOO_WEIGHTS if n.startswith("lstm.")]
    assert names({"lstm": 0.5}) == [n for n in ZOO_WEIGHTS if n.startswith("lstm.")]
    assert names({"attn": 0.5}) == ["attn.in_proj_weight", "attn.out_proj"]
    assert names({"type:MultiheadAttention": 0.5}) == [
        "attn.in_proj_weight", "attn2.q_proj_weight", "attn2.k_proj_weight", "attn2.v_proj_weight"]
    assert "attn.out_proj" in names({"type:Linear": 0.5})  # NonDynamicallyQuantizableLinear
    assert names({"conv3.weight": 0.5, "lstm.weight_ih_l0": 0.5}) == ["lstm.weight_ih_l0", "conv3"]
    assert names({"re:rnn\\.weight_.*": 0.5}) == ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    # exact name beats the module name, which beats a pattern
    t = {x.name: x for x in resolve_targets(m, {"layers": {
        "lstm.weight_ih_l0": {"keep": 3}, "lstm": {"keep": 4}, "type:LSTM": {"keep": 5}}})}
    assert t["lstm.weight_ih_l0"].keep == 3 and t["lstm.weight_hh_l0"].keep == 4
    # exclude by glob; types restricts the default
    got = names({}, default=0.5, exclude=["lstm.*", "attn*"], types=["LSTM", "Linear", "Embedding"])
    assert got == ["emb", "lin3", "head"]


def test_position_embedding_only_by_exact_name():
    m = zoo()
    assert "pos_embed" not in [t.name for t in resolve_targets(m, {"default": 0.5})]
    assert "pos_embed" not in [t.name for t in resolve_targets(m, {"layers": {"type:Embedding": 0.5}})]
    assert [t.name for t in resolve_targets(m, {"layers": {"pos_embed": 0.5}})] == ["pos_embed"]


def test_tied_weights_are_one_unit():
    m = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 7, bias=False))
    m[1].weight = m[0].weight
    t = resolve_targets(m, {"default": 0.5})
    assert [(x.name, x.param_name) for x in t] == [("0", "0.weight")]
    ADMMPruner(m, {"default": 0.5}).finalize()
    assert int(torch.count_nonzero(m[0].weight)) == 14


# ------------------------------------------------------------------ structured


def brute_force_units(groups: list[torch.Tensor], k: int) -> set[int]:
    """The ``k`` units maximising the kept squared norm summed over ``groups`` (each
    ``(G, n)``, one row per unit), by trying every subset."""
    sq = sum(g.double().pow(2).sum(1) for g in groups)
    best = max(itertools.combinations(range(len(sq)), k), key=lambda c: float(sq[list(c)].sum()))
    return set(best)


def rnn_units(w: torch.Tensor, gates: int) -> torch.Tensor:
    """(H, gates * n): the rows of hidden unit h in every gate block, by hand."""
    H = w.shape[0] // gates
    return torch.stack([torch.cat([w[g * H + h] for g in range(gates)]) for h in range(H)])


@pytest.mark.parametrize("kind,gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_hidden_unit_filter_zeroes_whole_units_chosen_by_brute_force(kind, gates):
    m = zoo(3)
    mod = getattr(m, kind)
    H = mod.hidden_size
    k = H // 2
    ih, hh = mod.weight_ih_l0.detach().clone(), mod.weight_hh_l0.detach().clone()
    want = brute_force_units([rnn_units(ih, gates), rnn_units(hh, gates)], k)
    masks = ADMMPruner(m, {"layers": {f"{kind}.weight_?h_l0": {"structure": "filter", "keep": k}}}).finalize()
    for attr in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        p = getattr(mod, attr).detach()
        rows = p.reshape(gates, H, -1)
        alive = {h for h in range(H) if bool((rows[:, h] != 0).any())}
        assert alive == want, attr
    assert f"{kind}.bias_ih_l0" in masks and f"{kind}.bias_hh_l0" in masks


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_pruned_hidden_units_output_exactly_zero(cls):
    torch.manual_seed(0)
    m = cls(5, 6, batch_first=True, bidirectional=True)
    ADMMPruner(m, {"default": {"structure": "filter", "keep": 2}}).finalize()
    out = m(batch()[0])[0].reshape(8, T, 2, 6)
    for d, sfx in enumerate(("", "_reverse")):
        rows = getattr(m, f"weight_hh_l0{sfx}").detach().reshape(-1, 6, 6)
        dead = [h for h in range(6) if not bool((rows[:, h] != 0).any())]
        assert len(dead) == 4
        assert bool((out[:, :, d, dead] == 0).all()) and bool((out[:, :, d] != 0).any())


def test_single_recurrent_weight_filter_matches_brute_force():
    m = zoo(4)
    w = m.lstm.weight_hh_l1_reverse.detach().clone()
    want = brute_force_units([rnn_units(w, 4)], 2)
    ADMMPruner(m, {"layers": {"lstm.weight_hh_l1_reverse": {"structure": "unit", "keep": 2}}}).finalize()
    got = rnn_units(m.lstm.weight_hh_l1_reverse.detach(), 4)
    assert {h for h in range(6) if bool((got[h] != 0).any())} == want
    assert torch.equal(got[sorted(want)], rnn_units(w, 4)[sorted(want)])  # kept rows intact


def test_attention_heads_packed_and_separate_match_brute_force():
    m = zoo(5)
    E = 12
    ip, op = m.attn.in_proj_weight.detach().clone(), m.attn.out_proj.weight.detach().clone()
    d = E // 3
    in_heads = torch.stack([torch.cat([ip[b * E + j * d:b * E + (j + 1) * d].reshape(-1) for b in range(3)])
                            for j in range(3)])
    out_heads = torch.stack([op[:, j * d:(j + 1) * d].reshape(-1) for j in range(3)])
    want = brute_force_units([in_heads, out_heads], 1)
    q, kk, v = (getattr(m.attn2, a).detach().clone() for a in ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
    op2 = m.attn2.out_proj.weight.detach().clone()
    d2 = E // 2
    heads2 = [torch.stack([w[j * d2:(j + 1) * d2].reshape(-1) for j in range(2)]) for w in (q, kk, v)]
    heads2.append(torch.stack([op2[:, j * d2:(j + 1) * d2].reshape(-1) for j in range(2)]))
    want2 = brute_force_units(heads2, 1)
    ADMMPruner(m, {"layers": {"attn": {"structure": "head", "keep": 1},
                              "attn2": {"structure": "head", "keep": 1}}}).finalize()
    ip, op = m.attn.in_proj_weight.detach(), m.attn.out_proj.weight.detach()
    for j in range(3):
        rows = torch.cat([ip[b * E + j * d:b * E + (j + 1) * d] for b in range(3)])
        assert bool((rows != 0).any()) == (j in want) == bool((op[:, j * d:(j + 1) * d] != 0).any())
    for w in (m.attn2.q_proj_weight, m.attn2.k_proj_weight, m.attn2.v_proj_weight):
        assert {j for j in range(2) if bool((w[j * d2:(j + 1) * d2] != 0).any())} == want2
    assert {j for j in range(2) if bool((m.attn2.out_proj.weight[:, j * d2:(j + 1) * d2] != 0).any())} == want2


def test_embedding_tokens_dims_and_conv_transpose_output_channels():
    m = zoo(6)
    emb, ct = m.emb.weight.detach().clone(), m.convt.weight.detach().clone()
    rows = brute_force_units([emb], 4)          # channel: a token (input unit) = a row
    dims = brute_force_units([emb.t()], 5)      # filter: an embedding dimension = a column
    outs = brute_force_units([ct.transpose(0, 1).reshape(4, -1)], 2)  # output channel = dim 1
    ins = brute_force_units([ct.reshape(2, -1)], 1)
    ADMMPruner(m, {"layers": {"emb": {"structure": "channel", "keep": 4},
                              "convt": [{"structure": "filter", "keep": 2},
                                        {"structure": "channel", "keep": 1}]}}).finalize()
    assert {i for i in range(10) if bool((m.emb.weight[i] != 0).any())} == rows
    w = m.convt.weight.detach()
    assert {f for f in range(4) if bool((w[:, f] != 0).any())} == outs
    assert {c for c in range(2) if bool((w[c] != 0).any())} <= ins
    assert {f for f in range(4) if m.convt.bias[f] != 0} <= outs  # bias of pruned outputs zeroed
    m = zoo(6)
    ADMMPruner(m, {"layers": {"emb": {"structure": "filter", "keep": 5}}}).finalize()
    assert {d for d in range(12) if bool((m.emb.weight[:, d] != 0).any())} == dims


def test_unit_groups_roundtrip_and_layout():
    w = torch.arange(24 * 5.).reshape(24, 5)
    g = to_unit_groups(w, "filter", 4, 1)
    assert g.shape == (6, 20) and torch.equal(g[2], torch.cat([w[2], w[8], w[14], w[20]]))
    assert torch.equal(from_unit_groups(g, "filter", w.shape, 4, 1), w)
    g = to_unit_groups(w, "filter", 3, 2)  # 3 blocks of 4 units of 2 rows
    assert torch.equal(g[1], torch.cat([w[2], w[3], w[10], w[11], w[18], w[19]]))
    assert torch.equal(from_unit_groups(g, "filter", w.shape, 3, 2), w)
    c = to_unit_groups(w.t(), "channel", 1, 4)
    assert torch.equal(c[1], w[4:8].reshape(-1)) and torch.equal(from_unit_groups(c, "channel", (5, 24), 1, 4), w.t())
    with pytest.raises(ConfigError, match="do not split"):
        to_unit_groups(w, "filter", 5)


# ------------------------------------------------------------------ ADMM end to end


def test_admm_on_tiny_lstm_classifier_reaches_exact_budgets():
    torch.manual_seed(0)

    class Clf(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 8, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    m = Clf()
    x = torch.randn(64, 6, 4)
    y = (x[:, :, 0].sum(1) > 0).long()
    pruner = ADMMPruner(m, {"default": 0.8, "layers": {"lstm.weight_hh_l0": {"structure": "filter", "keep": 5}}},
                        rho=1e-2, update_every=10)
    assert [t.name for t in pruner.targets] == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc"]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(m(x), y) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    assert pruner.updates == 6
    masks = pruner.finalize()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3)
    with MaskEnforcer(m, masks, opt):
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    assert int(torch.count_nonzero(m.lstm.weight_ih_l0)) == 128 * 2 // 10
    assert int(torch.count_nonzero(m.fc.weight)) == 16 * 2 // 10
    hh = rnn_units(m.lstm.weight_hh_l0.detach(), 4)
    assert int((hh != 0).any(1).sum()) == 5
    rep = layer_report(m, pruner.targets)
    assert rep["totals"]["all_targets_met"] is True


# ------------------------------------------------------------------ consumers


def test_report_lists_every_parameter_with_target_or_reason():
    m = zoo()
    targets = resolve_targets(m, {"layers": {"lstm": 0.5, "attn2": 0.5}, "exclude": ["attn2.out_proj"]})
    with pytest.warns(UserWarning, match="the model is dense"):
        rep = layer_report(m, targets)
    rows = {r["parameter"]: r for r in rep["parameters"]}
    assert list(rows) == [n for n, _ in m.named_parameters()]
    for r in rows.values():
        assert (r["dense_reason"] is None) == bool(r["targets"]), r
    assert rows["lstm.weight_hh_l1"]["targets"] == ["lstm.weight_hh_l1 (unstructured)"]
    assert rows["norm.weight"]["dense_reason"] == "not selected: type LayerNorm is never pruned (normalisation)"
    assert rows["lstm.bias_ih_l0"]["dense_reason"] == "bias: never pruned"
    assert rows["attn.in_proj_bias"]["dense_reason"] == "bias: never pruned"
    assert rows["attn2.out_proj.weight"]["dense_reason"] == "excluded by config ('attn2.out_proj')"
    assert rows["conv3.weight"]["dense_reason"] == "no default given"
    assert rows["pos_embed.weight"]["dense_reason"].startswith("position embedding")
    assert {r["layer"] for r in rep["layers"]} == set(ZOO_WEIGHTS) | {"pos_embed"}
    md = to_markdown(rep)
    assert "norm.weight (12): not selected: type LayerNorm is never pruned" in md
    assert "| lstm.weight_hh_l0_reverse | LSTM | 24x6 | 144 |" in md
    # the same reasons from a config, or generic ones without
    with pytest.warns(UserWarning, match="the model is dense"):
        assert layer_report(m, config={"default": 0.5})["parameters"][0]["targets"] == ["emb (unstructured)"]
        generic = {r["parameter"]: r["dense_reason"] for r in layer_report(m)["parameters"]}
    assert generic["conv3.weight"] == "no target given (prunable)"
    ex = explain(m, {"default": 0.9})
    assert ex["lstm.weight_ih_l1"] == "target lstm.weight_ih_l1: unstructured keep 28 of 288"


def test_report_units_and_macs_of_linear_on_3d_input():
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight[1] = 0
    rep = layer_report(m, example_input=torch.zeros(1, 7, 5))
    r = {x["layer"]: x for x in rep["layers"]}
    assert r["0"]["macs"] == 20 * 7 and r["0"]["nonzero_macs"] == 15 * 7 and r["0"]["active_out"] == 3
    z = zoo()
    ADMMPruner(z, {"layers": {"lstm.weight_hh_l0": {"structure": "filter", "keep": 2}}}).finalize()
    row = {x["layer"]: x for x in layer_report(z)["layers"]}["lstm.weight_hh_l0"]
    assert (row["active_out"], row["units_out"], row["units_in"]) == (2, 6, 6)


def test_proximal_pruner_selects_new_weights():
    m = zoo()
    pr = ProximalPruner(m, {"method": "l0", "eta": 1e-2, "exclude": ["type:Conv3d"]})
    assert [pr.layer_names[p] for p in pr.regularizers] == [n for n in ZOO_WEIGHTS if n != "conv3"]
    assert pr.dense["conv3"] == "excluded by config ('type:Conv3d')"
    pr.prox_step(1.0)
    assert int(torch.count_nonzero(m.lstm.weight_ih_l0)) < m.lstm.weight_ih_l0.numel()
    assert set(pr.masks()) == {_param(n) for n in ZOO_WEIGHTS if n != "conv3"}
    pr = ProximalPruner(m, {"layers": {"lstm.weight_hh_*": {"method": "group_lasso", "lam": 1e-2}}})
    assert list(pr.regularizers) == [_param(n) for n in ZOO_WEIGHTS if n.startswith("lstm.weight_hh")]
    with pytest.raises(ConfigError, match="unknown layer 'lstm.bias_ih_l0'.*bias: never pruned"):
        ProximalPruner(m, {"method": "l0", "eta": 1e-2, "layers": {"lstm.bias_ih_l0": {}}})


def test_checkpoint_keeps_masks_of_new_weights(tmp_path):
    m = zoo()
    masks = ADMMPruner(m, {"default": 0.9}).finalize()
    path = save_checkpoint(tmp_path / "z.pt", m, kind="pruned", masks=masks)
    ck = load_checkpoint(path)
    m2 = zoo(9)
    m2.load_state_dict(ck["state_dict"])
    assert set(ck["masks"]) == set(masks)
    for k, v in masks.items():
        assert torch.equal(ck["masks"][k], v.cpu())
    assert int(torch.count_nonzero(m2.attn.in_proj_weight)) == 432 // 10


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("layers,parts", [
    ({"lstm.weight_ih_l0": {"structure": "shape", "sparsity": 0.5}},
     ["'shape'", "'lstm.weight_ih_l0'", "LSTM", "'unstructured', 'filter', 'channel'"]),
    ({"attn.in_proj_weight": {"structure": "filter", "sparsity": 0.5}},
     ["'filter'", "'attn.in_proj_weight'", "prune whole heads with 'head'", "'head', 'channel'"]),
    ({"lin3": {"structure": "head", "sparsity": 0.5}}, ["'head'", "'lin3'", "Linear", "'shape'"]),
    ({"emb": {"structure": "shape", "sparsity": 0.5}}, ["'emb'", "Embedding", "'filter', 'channel'"]),
    ({"convt": {"structure": "shape", "sparsity": 0.5}}, ["'convt'", "ConvTranspose2d"]),
    ({"lstm.bias_ih_l0": 0.5}, ["unknown layer 'lstm.bias_ih_l0'", "bias: never pruned", "lstm.weight_ih_l0"]),
    ({"norm": 0.5}, ["unknown layer 'norm'", "LayerNorm", "attn.in_proj_weight"]),
    ({"lstm.weight_xx": 0.5}, ["no such module or parameter", "lstm.weight_hh_l1_reverse"]),
    ({"gru.weight_hh_*": 0.5, "lstm.weight_qq_*": 0.5}, ["'lstm.weight_qq_*'", "matches no prunable layer"]),
    ({"attn": {"structure": "head", "keep": 4}}, ["has 3 head groups but the config keeps 4"]),
])
def test_refused_configs_say_why(layers, parts):
    with pytest.raises(ConfigError) as info:
        resolve_targets(zoo(), {"layers": layers})
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


def test_refused_types_and_grouped_conv_transpose():
    with pytest.raises(ConfigError, match="unknown layer type.*LayerNorm"):
        resolve_targets(zoo(), {"layers": {"type:LayerNorm": 0.5}})
    with pytest.raises(ConfigError, match="unknown layer type"):
        resolve_targets(zoo(), {"default": 0.5, "types": ["BatchNorm2d"]})
    m = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2))
    with pytest.raises(ConfigError, match="grouped ConvTranspose.*takes 'unstructured'$"):
        resolve_targets(m, {"layers": {"0": {"structure": "filter", "keep": 1}}})
    assert resolve_targets(m, {"default": 0.5})[0].keep == 36


def test_weight_slots_name_every_weight_once():
    slots = weight_slots(zoo())
    assert list(slots) == ZOO_WEIGHTS[:1] + ["pos_embed"] + ZOO_WEIGHTS[1:]
    assert slots["attn.out_proj"].structures["head"] == ("channel", 1, 4)


def test_readme_recurrent_config_block():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "lstm:" in b)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(16, 128, num_layers=2)
            self.gru = nn.GRU(16, 32)
            self.attn = nn.MultiheadAttention(64, 8)

    t = resolve_targets(Net(), yaml.safe_load(block))
    by = {(x.name, x.structure): x.keep for x in t}
    assert by[("lstm.weight_hh_l1", "filter")] == 64 and by[("gru.weight_hh_l0", "unstructured")] == 3 * 32 * 32 // 10
    assert by[("attn.in_proj_weight", "head")] == 4 and by[("attn.out_proj", "head")] == 4
    assert ("gru.weight_ih_l0", "unstructured") not in by
