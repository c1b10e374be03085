"""The steps of the zoo (issue 19, item 7), one function per step.

Each step takes a :class:`zoo_models.ZooModel` and a work directory, builds what it
needs itself (so a step never depends on another step having run) and returns
``"ok"`` or a one-line reason. An optional ``info`` dict receives the step's numbers
(parameter counts, differences, file sizes) for the benchmark's JSON.

* :func:`step_masks`: 90 % unstructured masks (``ADMMPruner(model, {"default": 0.9})
  .finalize()``) on every weight of a Linear / Conv / ConvTranspose / RNN / LSTM / GRU /
  MultiheadAttention / Embedding module (found here by walking the modules, not by
  asking the library); every one is selected and keeps exactly ``n // 10`` weights, the
  largest in magnitude.
* :func:`step_compact`: every 4th filter of every Conv and hidden Linear zeroed (with
  its bias and the BatchNorm right after it); :func:`mobileprune.compact` must give a
  model with fewer parameters whose outputs equal the zeroed model's (<= 1e-5 relative).
* :func:`step_sparse`: ``export_sparse`` of the 90 %-pruned model, run by
  ``mobileprune.runtime.load``, equal to torch (<= 1e-4 relative) at batch 1 and 2.
* :func:`step_onnx`, :func:`step_ptl`, :func:`step_pte`: the exports of the 90 %-pruned
  model, which verify themselves; their error message is the reason.

:func:`latency` (the benchmark's last column) times the sparse runtime against dense
torch.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from zoo_models import ZooModel, build, calibrate

SPARSITY = 0.9
COMPACT_RTOL = 1e-5
SPARSE_RTOL = 1e-4
MIN_SPREAD = 1e-3
_REASON_CHARS = 300


def one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most ~300 characters."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return line if len(line) <= _REASON_CHARS else line[:_REASON_CHARS - 3] + "..."


def rel_diff(got: Any, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` (``inf`` on a shape mismatch or a non-finite
    value)."""
    got = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got).float()
    want = want.detach().float()
    if got.shape != want.shape:
        return math.inf
    scale = float(want.abs().max()) or 1.0
    diff = float((got - want).abs().max())
    return diff / scale if math.isfinite(diff) else math.inf


def _call(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def input_spread(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """``max |y(a) - y(b)| / max |y|`` for two random batches ``a``, ``b`` of the shapes
    of ``inputs``: near 0 when the output does not depend on the input, and comparing
    outputs would check nothing."""
    g = torch.Generator().manual_seed(11)
    y = [_call(model, tuple(torch.randn(x.shape, generator=g) for x in inputs)) for _ in range(2)]
    return float((y[0] - y[1]).abs().max()) / (float(torch.stack(y).abs().max()) or 1.0)


def _example(inputs: tuple[torch.Tensor, ...]) -> Any:
    """The ``example_input`` argument of the library's functions: the tensor itself
    for one input, the tuple for several."""
    return inputs[0] if len(inputs) == 1 else inputs


def _second_batch(inputs: tuple[torch.Tensor, ...], batch: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    return tuple(torch.randn(batch, *x.shape[1:], generator=g) for x in inputs)


# ---------------------------------------------------------------------------------------
# (a) unstructured masks

def expected_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: parameter}`` of every weight the library should select under
    ``default:`` (README "Pruning configs"): the weight of every Linear, Conv*,
    ConvTranspose* and non-position Embedding, every ``weight_*`` of an RNN / LSTM / GRU,
    and ``in_proj_weight`` (or ``q/k/v_proj_weight``) of a MultiheadAttention."""
    out: dict[str, nn.Parameter] = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(m, nn.Embedding) and mname.rpartition(".")[2].lower().startswith("pos"):
            continue
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)):
            attrs = ["weight"]
        elif isinstance(m, nn.RNNBase):
            attrs = [a for a in m._flat_weights_names if a.startswith("weight")]
        elif isinstance(m, nn.MultiheadAttention):
            attrs = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
        else:
            continue
        for a in attrs:
            p = getattr(m, a, None)
            if isinstance(p, nn.Parameter):
                out.setdefault(prefix + a, p)
    return out


def _mask_error(name: str, before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> str | None:
    """Why weight ``name`` (``before`` -> ``after`` with ``mask``) is not an exact 90 %
    magnitude mask, or ``None``."""
    n = before.numel()
    keep = n // 10  # floor(n * (1 - 0.9)), in integers
    if int(mask.sum()) != keep:
        return f"{name}: the mask keeps {int(mask.sum())} of {n} weights, expected {keep}"
    nonzero = int((after != 0).sum())
    if nonzero != min(keep, int((before != 0).sum())):
        return f"{name}: {nonzero} of {n} weights nonzero, expected {keep}"
    if not torch.equal(after[mask], before[mask]) or bool((after[~mask] != 0).any()):
        return f"{name}: the weights inside the mask changed or those outside are not zero"
    if keep and before[~mask].numel() and float(before[mask].abs().min()) < float(before[~mask].abs().max()):
        return f"{name}: a pruned weight is larger in magnitude than a kept one"
    return None


def step_masks(entry: ZooModel, work: Path, info: dict | None = None) -> str:
    """(a) 90 % unstructured masks exact on every selected weight (module docstring).
    ``info["left_dense"]``: ``{parameter: reason}`` for the parameters of two or more
    dimensions the config leaves dense."""
    from mobileprune import ADMMPruner
    from mobileprune.sparsity.targets import resolve_targets

    model, _ = build(entry)
    expected = expected_weights(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        targets = resolve_targets(model, {"default": SPARSITY})
        masks = ADMMPruner(model, {"default": SPARSITY}).finalize()
    except Exception as exc:  # noqa: BLE001 - the step's reason
        return one_line(exc)
    params = dict(model.named_parameters())
    if info is not None:
        info["left_dense"] = {p: r for p, r in targets.reasons.items() if params[p].dim() >= 2}
        info["selected"] = len(masks)
    unselected = sorted(set(expected) - set(masks))
    if unselected:
        reasons = targets.reasons
        return f"{len(unselected)} weight(s) not selected: " + "; ".join(
            f"{n} ({reasons.get(n, '?')})" for n in unselected[:3])
    for name, mask in masks.items():
        why = _mask_error(name, before[name], params[name].detach(), mask.bool())
        if why:
            return why
    return "ok"


@functools.lru_cache(maxsize=2)
def _pruned(entry: ZooModel) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from mobileprune import ADMMPruner

    model, inputs = build(entry)
    masks = ADMMPruner(model, {"default": SPARSITY}).finalize()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(math.sqrt(mask.numel() / max(int(mask.sum()), 1)))
    calibrate(model, entry.shapes)
    return model, inputs


def pruned(entry: ZooModel) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model, inputs)``: :func:`zoo_models.build` with 90 % unstructured masks applied,
    the kept weights scaled by ``sqrt(n / kept)`` (the variance the layer had) and the
    BatchNorms calibrated again, as retraining would: the output still depends on the
    input, so comparing it checks something. A fresh copy each call (the pruning is
    cached for the last two entries)."""
    model, inputs = _pruned(entry)
    return copy.deepcopy(model), inputs


# ---------------------------------------------------------------------------------------
# (b) compaction

def _call_order(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """The Conv / Linear / BatchNorm modules in the order a forward pass calls them
    (each once, at its first call)."""
    order: list[nn.Module] = []
    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)

    def hook(mod: nn.Module, *_: Any) -> None:
        if all(mod is not o for o in order):
            order.append(mod)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        _call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def _zero_layer(layer: nn.Module, nxt: nn.Module | None, every: int) -> int:
    """Zero output units ``0, every, ...`` of a Conv / Linear ``layer``, its bias and the
    affine entries of ``nxt`` when that is a BatchNorm of as many features."""
    dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    units = layer.weight.shape[dim]
    if units < every:
        return 0
    rows = torch.arange(0, units, every)
    layer.weight.index_fill_(dim, rows, 0.0)
    if layer.bias is not None:
        layer.bias.index_fill_(0, rows, 0.0)
    if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == units and nxt.affine:
        nxt.weight.index_fill_(0, rows, 0.0)
        nxt.bias.index_fill_(0, rows, 0.0)
    return len(rows)


def _zero_rnn_units(rnn: nn.RNNBase, every: int) -> int:
    """Zero hidden units ``0, every, ...`` of every layer and direction of ``rnn``: their
    rows in every gate of ``weight_ih`` / ``weight_hh`` and the biases. With a zero
    initial state such a unit's output stays exactly 0 (LSTM: c' = 0.5 c + 0.5 tanh(0);
    GRU: h' = 0.5 h + 0.5 tanh(0))."""
    gates, hidden = {"LSTM": 4, "GRU": 3}.get(rnn.mode, 1), rnn.hidden_size
    if hidden < every or getattr(rnn, "proj_size", 0):
        return 0
    units = torch.arange(0, hidden, every)
    rows = torch.cat([units + g * hidden for g in range(gates)])
    names = [n for n in rnn._flat_weights_names if not n.startswith("weight_hr")]
    for n in names:
        getattr(rnn, n).index_fill_(0, rows, 0.0)
    return len(units) * sum(n.startswith("weight_ih") for n in names)


def _zero_heads(mha: nn.MultiheadAttention, every: int) -> int:
    """Zero heads ``0, every, ...`` of ``mha`` (of at least two heads): their rows of q, k
    and v and the biases, so the head's output is exactly 0 (uniform attention over
    zero values)."""
    if mha.num_heads < 2:
        return 0
    heads = torch.arange(0, mha.num_heads, every)
    rows = (heads[:, None] * mha.head_dim + torch.arange(mha.head_dim)).flatten()
    if mha.in_proj_weight is not None:
        rows3 = torch.cat([rows + k * mha.embed_dim for k in range(3)])
        mha.in_proj_weight.index_fill_(0, rows3, 0.0)
    else:
        for a in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            getattr(mha, a).index_fill_(0, rows, 0.0)
        rows3 = torch.cat([rows + k * mha.embed_dim for k in range(3)])
    if mha.in_proj_bias is not None:
        mha.in_proj_bias.index_fill_(0, rows3, 0.0)
    return len(heads)


@torch.no_grad()
def zero_filters(model: nn.Module, inputs: tuple[torch.Tensor, ...], every: int = 4) -> int:
    """Zero output units ``0, every, 2*every...`` so that they are dead: of every Conv and
    Linear a forward pass calls except the last one (whose outputs are the model's),
    with their bias and the BatchNorm called right after (:func:`_zero_layer`); the
    hidden units of every RNN / LSTM / GRU (:func:`_zero_rnn_units`); heads of every
    MultiheadAttention (:func:`_zero_heads`). Layers with fewer than ``every`` units
    are left alone. Returns the number of units zeroed."""
    order = _call_order(model, inputs)
    layers = [m for m in order if not isinstance(m, nn.modules.batchnorm._BatchNorm)]
    count = 0
    for layer in layers[:-1]:
        i = order.index(layer) + 1
        count += _zero_layer(layer, order[i] if i < len(order) else None, every)
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            count += _zero_rnn_units(m, every)
        elif isinstance(m, nn.MultiheadAttention):
            count += _zero_heads(m, every)
    return count


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def step_compact(entry: ZooModel, work: Path, info: dict | None = None) -> str:
    """(b) compaction after zeroing channels (module docstring)."""
    import mobileprune

    model, inputs = build(entry)
    zeroed = zero_filters(model, inputs)
    if input_spread(model, inputs) < MIN_SPREAD:
        return f"zoo set-up: the model's output does not depend on its input (spread < {MIN_SPREAD})"
    checks = [inputs, _second_batch(inputs)]
    refs = [_call(model, x) for x in checks]
    try:
        small = mobileprune.compact(model, _example(inputs))
    except Exception as exc:  # noqa: BLE001 - the step's reason
        return one_line(exc)
    before, after = n_params(model), n_params(small)
    diffs = [rel_diff(_call(small, x), r) for x, r in zip(checks, refs)]
    if info is not None:
        info.update(units_zeroed=zeroed, params_before=before, params_after=after, rel_diff=max(diffs))
    if max(diffs) > COMPACT_RTOL:
        return f"outputs differ after compact: {max(diffs):.2e} relative"
    if after >= before:
        return f"compact removed nothing ({zeroed} units zeroed, {before} parameters kept)"
    return "ok"


# ---------------------------------------------------------------------------------------
# (c) sparse export + runtime, (d)-(f) exports

def step_sparse(entry: ZooModel, work: Path, info: dict | None = None) -> str:
    """(c) ``export_sparse`` + ``mobileprune.runtime.load(path)(x)`` equal to torch."""
    from mobileprune import export_sparse, runtime

    model, inputs = pruned(entry)
    if input_spread(model, inputs) < MIN_SPREAD:
        return f"zoo set-up: the pruned model's output does not depend on its input (spread < {MIN_SPREAD})"
    path = work / f"{entry.name}.mps"
    try:
        rep = export_sparse(model, _example(inputs), path)
        net = runtime.load(path)
        diffs = [rel_diff(net(*[x.numpy() for x in xs]), _call(model, xs))
                 for xs in (inputs, _second_batch(inputs))]
    except Exception as exc:  # noqa: BLE001 - the step's reason
        return one_line(exc)
    if info is not None:
        info.update(rel_diff=max(diffs), bytes=path.stat().st_size,
                    compression=rep.get("totals", {}).get("compression"))
    if max(diffs) > SPARSE_RTOL:
        return f"runtime differs from torch: {max(diffs):.2e} relative"
    return "ok"


def _export_step(fn_name: str, suffix: str) -> Callable[[ZooModel, Path, dict | None], str]:
    def step(entry: ZooModel, work: Path, info: dict | None = None) -> str:
        import mobileprune

        model, inputs = pruned(entry)
        try:
            res = getattr(mobileprune, fn_name)(model, _example(inputs), work / f"{entry.name}.{suffix}")
        except Exception as exc:  # noqa: BLE001 - the step's reason
            return one_line(exc)
        if info is not None:
            info.update({k: res.get(k) for k in ("bytes", "max_abs_diff", "note") if k in res})
        if not res.get("verified"):
            return f"not verified: {res.get('note', 'no note')}"
        return "ok"
    step.__name__ = f"step_{suffix}"
    step.__doc__ = f"``mobileprune.{fn_name}`` of the 90 %-pruned model; it verifies itself."
    return step


step_onnx = _export_step("export_onnx", "onnx")
step_ptl = _export_step("export_torchscript_lite", "ptl")
step_pte = _export_step("export_executorch", "pte")

#: The steps, in table order.
STEPS: dict[str, Callable[[ZooModel, Path, dict | None], str]] = {
    "masks": step_masks, "compact": step_compact, "sparse": step_sparse,
    "onnx": step_onnx, "ptl": step_ptl, "pte": step_pte,
}
