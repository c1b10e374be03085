"""Per-layer pruning report (like seed 003, Table 3), as a dict, markdown and JSON.

Counts are taken from the weights themselves (``count_nonzero``), never from the
config, so the report shows what the model really holds.

* ``layers``: one row per prunable weight (:mod:`mobileprune.sparsity.targets`: a Linear /
  Conv / ConvTranspose / Embedding ``weight``, every ``weight_ih_l*`` / ``weight_hh_l*``
  of an RNN / LSTM / GRU, an attention ``in_proj_weight`` or ``q/k/v_proj_weight``);
  ``layer`` is the weight's name (``conv1``, ``lstm.weight_hh_l0``).
* ``parameters``: one row per parameter of the model, with its targets or the reason it
  is left dense (``"bias: never pruned"``, ``"not selected: type LayerNorm is never
  pruned (normalisation)"``, ``"excluded by config ('fc2')"``, ``"no default given"``).
* ``weights``/``nonzero`` per layer: the weight tensor.
* never silent: a report of a model whose prunable weights hold no zero (nothing was
  pruned), or of a model with no prunable weight, warns (``UserWarning``) and says so in
  ``totals["note"]`` and the markdown (:func:`dense_note`).
* ``weight_compression``: total weights of the listed layers / their nonzero weights
  (the ratio seed 003 reports, e.g. 246x for LeNet-5).
* ``param_compression``: all parameters of the model (biases and any other tensor
  included) / nonzero parameters: the stricter number.
* ``active_out`` / ``active_in``: output units (conv filters, Linear rows; for the other
  weights their ``filter`` or ``head`` groups: hidden units, heads, ConvTranspose output
  channels, embedding dimensions) and input units (conv input channels, Linear columns,
  tokens of an Embedding; the ``channel`` groups) with at least one nonzero weight, the
  "active units" of MobilePrune (seed 000; e.g. 14-8-82-39 for LeNet-5 is conv1 and
  conv2 ``active_out``, fc1 and fc2 ``active_in``).
* with an ``example_input`` (one sample, batch dimension included): per-sample
  multiply-accumulates (Linear and Conv rows) of the dense layer (``macs``), of a sparse kernel that skips
  zero weights (``nonzero_macs`` = nonzeros x output positions) and of the layer with
  its inactive units removed (``active_macs``, within the layer).
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from mobileprune.math.groups import count_nonzero_groups, to_unit_groups
from mobileprune.sparsity.targets import (DEFAULT_TYPES, GEMM_TYPES, LayerTarget, WeightSlot, dense_reason,
                      resolve_targets, weight_slots)


@torch.no_grad()
def output_positions(model: nn.Module, example_input: Any, names: Iterable[str]) -> dict[str, int]:
    """Number of output positions per sample of each named layer (1 for a Linear on a
    2-D input, ``H_out * W_out`` for a Conv2d...), found by running ``example_input``."""
    modules = dict(model.named_modules())
    out: dict[str, int] = {}
    handles = []
    for n in names:
        def hook(mod, inp, res, n=n):
            # positions = elements per sample / output channels (or features)
            per_sample = res[0].numel() if res.dim() > 1 else res.numel()
            ch = mod.weight.shape[0]
            out[n] = per_sample // ch
        handles.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out


#: Attribute under which a model whose dead units were removed keeps the
#: :func:`size_of` of the model it started as (read by :func:`layer_report`).
ORIGINAL_SIZE = "_mobileprune_original_size"


def layer_report(model: nn.Module, targets: Iterable[LayerTarget] = (),
                 metrics: Mapping[str, Any] | None = None,
                 types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
                 example_input: Any = None,
                 original: Mapping[str, int] | None = None,
                 config: Any = None) -> dict[str, Any]:
    """Build the report of ``model``; ``targets`` adds each pruned weight's target.

    ``layers`` has one row per prunable weight (:func:`~mobileprune.sparsity.targets.weight_slots`)
    of ``types`` or with a target; ``parameters`` one row per parameter of the model
    (:func:`parameter_rows`): its targets, or why it is left dense. The reasons come from
    ``targets`` when it is what :func:`~mobileprune.sparsity.targets.resolve_targets` returned,
    else from ``config`` (resolved again), else they are generic.

    ``example_input`` (a tensor or tuple of tensors of batch size 1) enables the MAC
    columns (Linear and Conv rows). ``original`` (``{"weights": n, "parameters": m}``,
    see :func:`size_of`): the sizes of the model before its dead units were removed
    (pruning with ``schedule.compact``); the compressions are then taken against those,
    the honest ratio, and the totals keep both. When ``original`` is not given, the
    sizes recorded on the model by :func:`~mobileprune.surgery.compact.compact`,
    :func:`~mobileprune.surgery.compact.compact_in_place` or
    :func:`~mobileprune.checkpoint.restore_model` of a compacted checkpoint are used
    (attribute :data:`ORIGINAL_SIZE`), so a model shrunk in the user's own loop is
    still counted against the model it started as.
    """
    if original is None:
        original = getattr(model, ORIGINAL_SIZE, None)
    reasons = getattr(targets, "reasons", None)
    targets = list(targets)
    if config is not None and reasons is None:
        resolved = resolve_targets(model, config)
        reasons, targets = resolved.reasons, targets or list(resolved)
    by_param: dict[str, list[LayerTarget]] = {}
    for t in targets:
        by_param.setdefault(t.param_name, []).append(t)
    slots = {n: s for n, s in weight_slots(model).items()
             if isinstance(s.module, types) or s.param_name in by_param}
    gemm = [n for n, s in slots.items() if isinstance(s.module, GEMM_TYPES) and s.attr == "weight"]
    positions = output_positions(model, example_input, gemm) if example_input is not None else {}
    rows = [_layer_row(s, by_param.get(s.param_name, []), positions.get(n)) for n, s in slots.items()]
    totals = _totals(model, rows, original, bool(positions))
    note = dense_note(model, rows, totals)
    if note:
        totals["note"] = note
        warnings.warn(f"layer_report: {note}", UserWarning, stacklevel=2)
    return {"layers": rows, "totals": totals,
            "parameters": parameter_rows(model, by_param, reasons, types),
            "metrics": dict(metrics or {})}


def dense_note(model: nn.Module, rows: list[dict[str, Any]], totals: Mapping[str, Any]) -> str | None:
    """Why a report shows nothing pruned (``None`` if some prunable weight is zero, or
    units were removed from the model as given, ``totals["original_weights"]``)."""
    if not rows:
        return (f"{type(model).__name__} has no prunable weight (Linear, Conv, ConvTranspose, "
                "RNN / LSTM / GRU, MultiheadAttention, Embedding): the report lists its parameters only")
    if totals["nonzero"] < totals["weights"] or totals.get("original_weights", 0) > totals["weights"]:
        return None
    return (f"the model is dense: none of its {len(rows)} prunable weights has a zero, so nothing "
            "was pruned (prune it first: ADMMPruner / admm_prune / ProximalPruner)")


def _units(slot: WeightSlot, w: torch.Tensor) -> dict[str, Any]:
    """Output / input units of a weight and how many have a nonzero weight."""
    if isinstance(slot.module, GEMM_TYPES) and slot.attr == "weight":  # (F, C / groups, *k)
        return {"units_out": w.shape[0], "units_in": w.shape[1] * getattr(slot.module, "groups", 1),
                "active_out": count_nonzero_groups(w, "filter"),
                "active_in": count_nonzero_groups(w, "channel")}
    out: dict[str, Any] = {}
    for side, structures in (("out", ("filter", "head")), ("in", ("channel",))):
        lay = next((slot.structures[k] for k in structures if k in slot.structures), None)
        g = to_unit_groups(w, *lay) if lay is not None else None
        out[f"units_{side}"] = None if g is None else g.shape[0]
        out[f"active_{side}"] = None if g is None else int((g != 0).any(dim=1).sum())
    return out


def _layer_row(slot: WeightSlot, ts: list[LayerTarget], pos: int | None) -> dict[str, Any]:
    """One row of ``layers``: counts of the weight of ``slot`` against its targets."""
    w = slot.weight.detach()
    n = w.numel()
    nz = int(torch.count_nonzero(w))
    t = next((x for x in ts if x.structure == "unstructured"), None)
    structured = {x.structure: {"keep": x.keep, "groups": x.units, "nonzero_groups": x.count(w)}
                  for x in ts if x.structure != "unstructured"}
    row: dict[str, Any] = _units(slot, w)
    if pos is not None:
        groups = getattr(slot.module, "groups", 1)
        k = n // (w.shape[0] * w.shape[1])
        row.update(macs=n * pos, nonzero_macs=nz * pos,
                   active_macs=row["active_out"] * row["active_in"] * k * pos // max(groups, 1))
    row.update({
        "layer": slot.name,
        "parameter": slot.param_name,
        "type": slot.type_name,
        "shape": list(w.shape),
        "weights": n,
        "nonzero": nz,
        "sparsity": 1.0 - nz / n if n else 0.0,
        "target_keep": t.keep if t else None,
        "target_sparsity": t.sparsity if t else None,
        "structured_targets": structured,
        "meets_target": all(x.count(w) <= x.keep for x in ts) if ts else None,
    })
    return row


def _totals(model: nn.Module, rows: list[dict[str, Any]], original: Mapping[str, int] | None,
            macs: bool) -> dict[str, Any]:
    total_w = sum(r["weights"] for r in rows)
    nz_w = sum(r["nonzero"] for r in rows)
    params = [p.detach() for p in model.parameters()]
    total_p = sum(p.numel() for p in params)
    nz_p = sum(int(torch.count_nonzero(p)) for p in params)
    ref_w, ref_p = (original["weights"], original["parameters"]) if original else (total_w, total_p)
    totals = {
        "weights": total_w,
        "nonzero": nz_w,
        "sparsity": 1.0 - nz_w / total_w if total_w else 0.0,
        "weight_compression": ref_w / nz_w if nz_w else float("inf"),
        "parameters": total_p,
        "nonzero_parameters": nz_p,
        "param_compression": ref_p / nz_p if nz_p else float("inf"),
        "all_targets_met": all(r["meets_target"] for r in rows if r["meets_target"] is not None),
    }
    if original:
        totals.update(original_weights=ref_w, original_parameters=ref_p)
    if macs:  # Linear and Conv rows (the others have no MAC columns)
        for key in ("macs", "nonzero_macs", "active_macs"):
            totals[key] = sum(r.get(key, 0) for r in rows)
    return totals


def parameter_rows(model: nn.Module, by_param: Mapping[str, list[LayerTarget]],
                   reasons: Mapping[str, str] | None = None,
                   types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> list[dict[str, Any]]:
    """One row per parameter of ``model``: ``parameter``, ``shape``, ``numel``,
    ``nonzero``, ``targets`` (the names and structures of its targets, ``[]`` if none)
    and ``dense_reason`` (why it has no target; ``None`` if it has one). ``reasons``
    (``TargetList.reasons``) gives the config's reasons; without it they are generic."""
    slots = {s.param_name: s for s in weight_slots(model).values()}
    out = []
    for name, p in model.named_parameters():
        ts = by_param.get(name, [])
        why = None
        if not ts:
            why = (reasons or {}).get(name) or _generic_reason(model, name, slots.get(name), types)
        out.append({"parameter": name, "shape": list(p.shape), "numel": p.numel(),
                    "nonzero": int(torch.count_nonzero(p.detach())),
                    "targets": [f"{t.name} ({t.structure})" for t in ts], "dense_reason": why})
    return out


def _generic_reason(model: nn.Module, name: str, slot: WeightSlot | None,
                    types: tuple[type[nn.Module], ...]) -> str:
    if slot is None:
        return dense_reason(name, model)
    if slot.position:
        return "position embedding: never pruned unless named exactly"
    if not isinstance(slot.module, types):
        return f"not selected: type {slot.type_name} is not in 'types'"
    return "no target given (prunable)"


def size_of(model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> dict[str, int]:
    """``{"weights": prunable weights of ``types``, "parameters": all parameters}`` of
    ``model`` (the ``original`` argument of :func:`layer_report`)."""
    return {"weights": sum(s.weight.numel() for s in weight_slots(model).values()
                           if isinstance(s.module, types)),
            "parameters": sum(p.numel() for p in model.parameters())}


def _fmt_pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _int(x: int | None) -> str:
    return "" if x is None else f"{x:,}"


def _units_cell(r: Mapping[str, Any]) -> str:
    parts = [f"{r[f'active_{k}']}/{r[f'units_{k}']} {k}" for k in ("out", "in")
             if r.get(f"units_{k}") is not None]
    return ", ".join(parts)


def _dense_lines(params: list[Mapping[str, Any]]) -> list[str]:
    """The parameters left dense: each one with its reason, biases counted together."""
    dense = [p for p in params if p["dense_reason"] is not None]
    biases = [p for p in dense if p["dense_reason"].startswith("bias")]
    others = [p for p in dense if not p["dense_reason"].startswith("bias")]
    if not dense:
        return []
    lines = ["", f"Parameters left dense ({len(dense)}):"]
    lines += [f"- {p['parameter']} ({'x'.join(map(str, p['shape'])) or 'scalar'}): {p['dense_reason']}"
              for p in others]
    if biases:
        lines.append(f"- {len(biases)} biases ({sum(p['numel'] for p in biases):,} values): never pruned")
    return lines


def to_markdown(report: Mapping[str, Any], title: str | None = None) -> str:
    """Render a report as a markdown table with totals and metrics."""
    lines = []
    if title:
        lines += [f"## {title}", ""]
    t = report["totals"]
    macs = "macs" in t
    lines += ["| layer | type | shape | weights | nonzero | sparsity | target sparsity | meets target "
              "| active out/in units |" + (" MACs | nonzero MACs |" if macs else ""),
              "|---|---|---|---:|---:|---:|---:|:---:|---:|" + ("---:|---:|" if macs else "")]
    for r in report["layers"]:
        met = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
        lines.append(
            f"| {r['layer']} | {r['type']} | {'x'.join(map(str, r['shape']))} | {r['weights']:,} | "
            f"{r['nonzero']:,} | {_fmt_pct(r['sparsity'])} | {_fmt_pct(r['target_sparsity'])} | {met} "
            f"| {_units_cell(r)}"
            + "".join(f"; {k} {v['nonzero_groups']}/{v['groups']} (target {v['keep']})"
                      for k, v in r.get("structured_targets", {}).items()) + " |"
            + (f" {_int(r.get('macs'))} | {_int(r.get('nonzero_macs'))} |" if macs else "")
        )
    lines.append(f"| **total** | | | {t['weights']:,} | {t['nonzero']:,} | {_fmt_pct(t['sparsity'])} | | "
                 f"{'yes' if t['all_targets_met'] else 'NO'} | |"
                 + (f" {t['macs']:,} | {t['nonzero_macs']:,} |" if macs else ""))
    orig = "original_weights" in t  # dead units removed during pruning: against the model as given
    w_src = f"{t['original_weights']:,} weights in the model as given" if orig else f"{t['weights']:,} weights"
    w_left = f"; {t['weights']:,} weights left after removing dead units" if orig else ""
    p_src = f"{t['original_parameters']:,}" if orig else f"{t['parameters']:,}"
    p_left = f"; {t['parameters']:,} parameters left" if orig else ""
    lines += ["",
              f"- weight compression: **{t['weight_compression']:.1f}x** "
              f"({w_src} -> {t['nonzero']:,} nonzero{w_left})",
              f"- parameter compression (biases and all other parameters included): "
              f"{t['param_compression']:.1f}x ({p_src} -> {t['nonzero_parameters']:,}{p_left})"]
    if t.get("note"):
        lines.append(f"- note: {t['note']}")
    lines += _dense_lines(report.get("parameters") or [])
    m = report.get("metrics") or {}
    if "accuracy_before" in m or "accuracy_after" in m:
        before, after = m.get("accuracy_before"), m.get("accuracy_after")
        s = "- test accuracy: "
        s += f"{100 * before:.2f}% before" if before is not None else ""
        s += f", {100 * after:.2f}% after" if after is not None else ""
        if before is not None and after is not None:
            s += f" ({100 * (after - before):+.2f} points)"
        lines.append(s)
    for k, v in m.items():
        if k not in ("accuracy_before", "accuracy_after"):
            lines.append(f"- {k}: {v}")
    if report.get("seconds"):  # a pipeline's wall time per phase
        lines.append("- wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items()))
    return "\n".join(lines) + "\n"


def to_json(report: Mapping[str, Any]) -> str:
    """Serialise a report to JSON (``inf`` written as the string ``"inf"``)."""
    def fix(o):
        if isinstance(o, float) and o == float("inf"):
            return "inf"
        if isinstance(o, dict):
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o
    return json.dumps(fix(report), indent=2) + "\n"
