"""Recurrent layers: ``nn.LSTM`` / ``nn.GRU`` (key ``"rnn"``), one runtime ``lstm`` /
``gru`` op per layer (both directions in one op)."""

from __future__ import annotations

import numpy as np
from torch import fx, nn

from mobileprune.graph.passes.lower import Missing, Ref, as_float64
from mobileprune.graph.registry import OpHandler, args_of, register


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

    def channels(self, node: fx.Node, flow) -> str | None:
        return "LSTM / GRU / RNN hidden units are not removed yet (their channels are kept)"

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
