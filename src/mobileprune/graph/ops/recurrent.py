"""Recurrent layers: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (key ``"rnn"``): hidden units
removed by compaction; LSTM and GRU lowered to one runtime ``lstm`` / ``gru`` op per
layer (both directions in one op).

Hidden units (:meth:`Recurrent.channels`): the module has one ``hidden_size``, so unit
``j`` is one slot for every layer and direction (removed from all of them or kept).
Each gate block's rows of unit ``j`` are the rows ``j + g * hidden_size`` of
``weight_ih_l*`` / ``weight_hh_l*`` / the biases; its outputs are read by the columns
``j`` of ``weight_hh`` (its own layer and direction), the columns ``j`` (and
``j + hidden_size`` for the reverse direction) of the next layer's ``weight_ih``, and,
for the last layer, the consumers of the module's output ``(N, T, D * hidden_size)``
(features on its last axis). A unit is *dead* in a layer and direction when all its
gate rows are zero and one step of the cell from the zero input and state gives
``h = 0`` (and ``c = 0``): its output is then exactly 0 at every step (each step maps
the zero state to itself). Unit ``j`` is removed when, in every layer and direction, it
is dead or every weight that reads it (among kept rows) is zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, fx, nn

from mobileprune.graph.passes.channels import Layer, nan, where
from mobileprune.graph.passes.lower import Missing, Ref, as_float64
from mobileprune.graph.registry import OpHandler, args_of, register
from mobileprune.graph.resize import as_param, cut

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _directions(m: nn.RNNBase) -> list[str]:
    return [""] + (["_reverse"] if m.bidirectional else [])


@torch.no_grad()
def _step_from_zero(m: nn.RNNBase, layer: int, sfx: str) -> tuple[Tensor, Tensor]:
    """``(h, c)`` per unit after one step of layer ``layer`` (direction ``sfx``) from
    the zero input and zero state, computed in the module's dtype (``c = h`` for a GRU /
    RNN): only the biases act."""
    H, G = m.hidden_size, _GATES[m.mode]
    w = getattr(m, f"weight_hh_l{layer}{sfx}")
    zero = torch.zeros(G * H, dtype=w.dtype, device=w.device)
    b_ih = getattr(m, f"bias_ih_l{layer}{sfx}", None) if m.bias else None
    b_hh = getattr(m, f"bias_hh_l{layer}{sfx}", None) if m.bias else None
    bi, bh = (zero if b is None else b.detach() for b in (b_ih, b_hh))
    if m.mode == "LSTM":
        i, f, g, o = (bi + bh).chunk(4)
        c = torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    elif m.mode == "GRU":
        (ir, iz, i_n), (hr, hz, hn) = bi.chunk(3), bh.chunk(3)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        h = (1 - z) * torch.tanh(i_n + r * hn)
        c = h
    else:
        h = c = (torch.tanh if m.mode == "RNN_TANH" else torch.relu)(bi + bh)
    return h.cpu(), c.cpu()


def _silent(flow, m: nn.RNNBase, layer: int, sfx: str) -> Tensor:
    """Bool per hidden unit: every gate row of layer ``layer`` (direction ``sfx``) in
    ``weight_ih`` and ``weight_hh`` is zero."""
    z = [flow.zero(getattr(m, f"weight_{t}_l{layer}{sfx}")).all(1) for t in ("ih", "hh")]
    return (z[0] & z[1]).reshape(_GATES[m.mode], m.hidden_size).all(0)


def _unit_rows(units: Tensor, gates: int, hidden: int) -> Tensor:
    """The gate rows ``u + g * hidden`` of units ``units``, gate block by gate block."""
    return torch.cat([units + g * hidden for g in range(gates)])


def _stacked(m: nn.Module, name: str, layer: int) -> np.ndarray | None:
    """``{name}_l{layer}`` with its ``_reverse`` rows below it when bidirectional."""
    parts = [getattr(m, f"{name}_l{layer}{sfx}", None)
             for sfx in ([""] + (["_reverse"] if m.bidirectional else []))]
    return None if parts[0] is None else np.concatenate([as_float64(p) for p in parts])


def _final_state(node: fx.Node, emit, out: str, layer: int, T: int, H: int, D: int) -> list:
    """Per direction, the final hidden state of one layer as a ``(1, H)`` value: forward
    ``out[T - 1, :H]``, reverse ``out[0, H:]`` (slices of the layer's output)."""
    states = []
    for d in range(D):
        t0 = T - 1 if d == 0 else 0
        name = f"{out}.h{d}"
        v = emit.op(node, "slice", [out], {"axis": 0, "start": t0, "end": t0 + 1, "step": 1},
                    shape=[1, H * D], name=name + "t")
        if D > 1:
            v = emit.op(node, "slice", [v], {"axis": 1, "start": d * H, "end": (d + 1) * H,
                                             "step": 1}, shape=[1, H], name=name)
        states.append(v)
    return states


@register
class Recurrent(OpHandler):
    key = "rnn"

    any_axis = True

    def _unfit(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        m = a.get("module")
        if not isinstance(m, nn.RNNBase) or m.mode not in _GATES:
            return f"a recurrent layer {type(m).__name__} (LSTM, GRU or RNN)"
        if getattr(m, "proj_size", 0):
            return "an LSTM with proj_size (its hidden units are not removed)"
        if a["hx"] is not None:
            return "an initial state hx (a hidden unit is dead only from the zero state)"
        return flow.frozen(a["module_name"], m)

    def channels(self, node: fx.Node, flow) -> str | None:
        """Hidden units (module doc): one slot per unit, a ``"rnn"`` layer (the resize)
        and one ``"reader"`` per ``weight_ih`` / ``weight_hh``; the output tensor (the
        first element of the result) carries the last layer's units on its last axis."""
        why = self._unfit(node, flow)
        a = args_of(node)
        m, x, name = a["module"], a["input"], a["module_name"]
        if why is not None:
            if isinstance(m, nn.RNNBase) and m.mode in _GATES:
                zero = [_silent(flow, m, k, sfx) for k in range(m.num_layers)
                        for sfx in _directions(m)]
                flow.report_units(node, name, m, "rnn", torch.stack(zero).any(0), why)
            return why
        H, G = m.hidden_size, _GATES[m.mode]
        units = flow.new(H)
        flow.groups.append((units, f"the last hidden unit of {name!r}"))
        ids, const = self._input(node, flow, x)
        rnn = Layer(node, name, m, "rnn", x, in_ids=ids, in_const=const, out_ids=units,
                    zero_row=torch.zeros(H, dtype=torch.bool))
        flow.layers.append(rnn)
        rows = units.repeat(G)
        for k in range(m.num_layers):
            consts = []
            for sfx in _directions(m):
                zi, zh = (flow.zero(getattr(m, f"weight_{t}_l{k}{sfx}")) for t in ("ih", "hh"))
                silent = _silent(flow, m, k, sfx)
                h, c = _step_from_zero(m, k, sfx)
                dead = silent & (h == 0) & (c == 0)
                rnn.zero_row |= silent
                consts.append(torch.where(dead, torch.zeros(H, dtype=torch.float64), nan(H)))
                flow.layers += [
                    Layer(node, f"{name}.weight_ih_l{k}{sfx}", m, "reader", None, zi, no_pad=False,
                          in_ids=ids, in_const=const, out_ids=rows),
                    Layer(node, f"{name}.weight_hh_l{k}{sfx}", m, "reader", None, zh, no_pad=False,
                          in_ids=units, in_const=consts[-1], out_ids=rows)]
            ids, const = units.repeat(len(consts)), torch.cat(consts)
        flow.pieces[node] = [(ids, const)]  # result[0]; a read final state keeps them all
        flow.set_axis(node, 2)                # (getitem refuses the untraced result[1])
        return None

    def _input(self, node: fx.Node, flow, x) -> tuple[Tensor, Tensor]:
        """Slots and constants of layer 0's input columns: the input's, when it carries
        them on its last axis; else new blocked ones (and the input's channels kept)."""
        shape = flow.shape(x)
        if flow.tracked(x) and flow.axis_of(x) == len(shape) - 1:
            return flow.slots[x], flow.const[x]
        why = f"{where(node)}: the input's features are not traced on its last axis"
        flow.block_inputs(node, "unknown_in", why)
        return flow.blocked(shape[-1], node, why), nan(shape[-1])

    def check(self, node: fx.Node, ctx) -> str | None:
        a = args_of(node)
        m = a.get("module")
        if not isinstance(m, (nn.LSTM, nn.GRU)):
            return f"the runtime has no {type(m).__name__} op (LSTM and GRU only)"
        if getattr(m, "proj_size", 0):
            return "an LSTM with proj_size (the runtime's lstm has none)"
        if a["hx"] is not None:
            return "an initial state hx (the runtime starts from zero)"
        return None

    def resize(self, module: nn.Module, keep_in, keep_out, shift=None) -> None:
        """Cut ``module`` to the hidden units ``keep_out``: their rows in every gate block
        of every ``weight_ih`` / ``weight_hh`` / bias, their columns in ``weight_hh`` and in
        the next layer's ``weight_ih`` (both directions); layer 0's ``weight_ih`` columns
        to the input features ``keep_in``. ``shift`` must be None (no bias folds)."""
        if shift is not None:
            raise ValueError("a recurrent layer takes no bias shift")
        m, H = module, module.hidden_size
        keep_out = torch.arange(H) if keep_out is None else keep_out
        rows = _unit_rows(keep_out, _GATES[m.mode], H)
        nxt = torch.cat([keep_out + d * H for d in range(len(_directions(m)))])
        with torch.no_grad():
            for name in m._flat_weights_names:
                old = getattr(m, name)
                new = cut(old.detach(), 0, rows)
                if name.startswith("weight_ih"):
                    new = cut(new, 1, keep_in if name.startswith("weight_ih_l0") else nxt)
                elif name.startswith("weight_hh"):
                    new = cut(new, 1, keep_out)
                setattr(m, name, as_param(old, new))
        m.hidden_size = int(keep_out.numel())
        if keep_in is not None:
            m.input_size = int(keep_in.numel())
        m._init_flat_weights()

    def lower(self, node: fx.Node, emit) -> None:
        """Layer k: ``lstm`` / ``gru`` of layer k - 1's output ``(T, H * D)``; the result
        is ``(output, h_n)`` (GRU) or ``(output, (h_n, c_n))`` (LSTM) with ``h_n`` the
        concatenated final states ``(layers * D, N, H)`` and ``c_n`` not available."""
        a = args_of(node)
        m = a["module"]
        bdim = 0 if m.batch_first else 1
        x = emit.value(node, a["input"], bdim=bdim)
        T = emit.sample(node, a["input"], bdim=bdim)[0]
        H, D, kind = m.hidden_size, 2 if m.bidirectional else 1, type(m).__name__.lower()
        states = []
        for k in range(m.num_layers):
            x = emit.op(node, kind, [x], {"hidden_size": H, "bidirectional": m.bidirectional},
                        shape=[T, H * D], name=f"{node.name}.l{k}",
                        module=a["module_name"] if k == 0 else None,
                        weight_ih=_stacked(m, "weight_ih", k), weight_hh=_stacked(m, "weight_hh", k),
                        bias_ih=_stacked(m, "bias_ih", k), bias_hh=_stacked(m, "bias_hh", k))
            states += _final_state(node, emit, x, k, T, H, D)
        h_n = states[0] if len(states) == 1 else emit.op(
            node, "concat", states, {"axis": 0}, shape=[len(states), H], name=f"{node.name}.h_n")
        h = Ref(h_n, 1)
        state = h if kind == "gru" else (h, Missing("an LSTM's final cell state c_n is not "
                                                    "computed by the runtime"))
        emit.set_static(node, (Ref(x, bdim), state))
