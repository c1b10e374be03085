"""Shape ops: views (flatten, view / reshape, squeeze, unsqueeze), axis moves (permute,
transpose), indexing and splitting (``x[...]``, chunk, split, unbind), ``expand`` and the
size queries (``x.size()``, ``x.shape``, ``x.dim()``) whose values are static."""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from mobileprune.graph.passes.channels import nodes_in, norm_dims
from mobileprune.graph.passes.lower import Missing, Ref
from mobileprune.graph.registry import OpHandler, args_of, op_of, register


def flatten_channels(node: fx.Node, flow, x: Any, start: Any, end: Any) -> str | None:
    """``flatten(x, start, end)``: from dim 1, channel ``c`` becomes its ``prod(dims)``
    consecutive features; from dim >= 2, the channels stay."""
    if not flow.tracked(x):
        return None if flow.shape(node) is None else "its input carries no channel slots"
    si = flow.shape(x)
    dims = norm_dims([start, end], len(si))
    if dims is None or dims[0] == 0 or dims[1] < dims[0]:
        return f"a flatten over dims {start}..{end} (merges the batch dimension)"
    if dims[0] >= 2:
        return flow.keep(node, x)
    return flow.expand(node, x, math.prod(si[2:dims[1] + 1]))


def batch_only(node: fx.Node) -> bool:
    """Every user of a shape tuple reads only its batch size (``shape[0]``)."""
    return all(op_of(u) == "getitem" and args_of(u).get("index") == 0 for u in node.users)


def _keeps_axes(node: fx.Node, flow, x: Any, moved: bool) -> str | None:
    """A shape op that keeps (``moved=False``) or moves the batch / channel axes."""
    if not flow.tracked(x):
        return None if flow.shape(node) is None else "its input carries no channel slots"
    if moved:
        return "it moves the batch or channel dimension"
    return flow.keep(node, x)


def reshape(node: fx.Node, emit, x: Any) -> None:
    """``node`` as a ``reshape`` of tensor ``x`` (batch first on both sides, the same
    number of elements per sample); no op when the per-sample shape is unchanged."""
    si, so = emit.sample(node, x), emit.sample(node)
    if math.prod(si) != math.prod(so):
        raise emit.fail(node, f"view {emit.shape(node, x)} -> {emit.shape(node)} changes the "
                              f"per-sample size")
    src = emit.value(node, x)
    if si == so:
        emit.bind(node, src)
    else:
        emit.op(node, "reshape", [src])


def permute(node: fx.Node, emit, x: Any, dims: list[int]) -> None:
    """``node = x.permute(dims)`` (torch axes): the batch may move (the output's ``bdim``
    follows it); the runtime permutes the per-sample axes."""
    r = emit.ref(node, x)
    rank = len(emit.shape(node, x))
    dims = [int(d) % rank for d in dims]
    b_out = dims.index(r.bdim)
    rin = [r.bdim] + [k for k in range(rank) if k != r.bdim]   # torch axes, runtime order
    rout = [b_out] + [k for k in range(rank) if k != b_out]
    perm = [rin.index(dims[k]) - 1 for k in rout[1:]]
    emit.sample(node, bdim=b_out)
    if perm == sorted(perm):
        emit.bind(node, Ref(r.name, b_out))
    else:
        emit.op(node, "permute", [r.name], {"perm": perm}, bdim=b_out)


@register
class Flatten(OpHandler):
    key = "flatten"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        return flatten_channels(node, flow, a["input"], a["start_dim"], a["end_dim"])

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        rank = len(emit.shape(node, a["input"]))
        if int(emit.static(node, a["start_dim"])) % rank == 0:
            raise emit.fail(node, "flatten merges the batch dimension")
        reshape(node, emit, a["input"])


@register
class Reshape(OpHandler):
    key = "reshape"

    def channels(self, node: fx.Node, flow) -> str | None:
        """Only a flatten from dim 1 is understood: ``(N, C, *S) -> (N, C * prod(S))``
        (recorded: compaction rewrites it to ``flatten(x, 1)`` when the sizes are
        hard-coded)."""
        x = args_of(node)["input"]
        if not flow.tracked(x):
            return None if flow.shape(node) is None else "its input carries no channel slots"
        si, so = flow.shape(x), flow.shape(node)
        if so is None or len(so) != 2 or so[0] != si[0] or so[1] != math.prod(si[1:]):
            return f"a view {si} -> {so} that is not a flatten from dim 1"
        why = flow.expand(node, x, math.prod(si[2:]))
        if why is None:
            flow.flat_views.append(node)
        return why

    def lower(self, node: fx.Node, emit) -> None:
        """``view`` / ``reshape``: the sizes may be computed from ``x.size()`` / ``x.shape``
        (static); the output shape is the traced one."""
        a = args_of(node)
        emit.static(node, a["shape"], "the shape")
        reshape(node, emit, a["input"])


@register
class Squeeze(OpHandler):
    key = "squeeze"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        x = a["input"]
        dims = norm_dims(a["dim"], len(flow.shape(x))) if flow.tracked(x) else []
        return _keeps_axes(node, flow, x, dims is None or any(d < 2 for d in dims))

    def lower(self, node: fx.Node, emit) -> None:
        """Drop axes of size 1 (not the batch's): a reshape; the batch axis moves left by
        the dropped axes before it."""
        a = args_of(node)
        r, si = emit.ref(node, a["input"]), emit.shape(node, a["input"])
        dim = emit.static(node, a["dim"])
        dims = range(len(si)) if dim is None else (dim if isinstance(dim, (list, tuple))
                                                   else [dim])
        gone = {int(d) % len(si) for d in dims if si[int(d) % len(si)] == 1} - {r.bdim}
        _view(node, emit, r, r.bdim - sum(1 for d in gone if d < r.bdim))


@register
class Unsqueeze(OpHandler):
    key = "unsqueeze"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        so = flow.shape(node)
        dims = norm_dims(a["dim"], len(so)) if so is not None else None
        return _keeps_axes(node, flow, a["input"], dims is None or dims[0] < 2)

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        r = emit.ref(node, a["input"])
        d = int(emit.static(node, a["dim"])) % len(emit.shape(node))
        _view(node, emit, r, r.bdim + (1 if d <= r.bdim else 0))


def _view(node: fx.Node, emit, r: Ref, b_out: int) -> None:
    """``node`` is ``r`` with axes of size 1 added or removed (a reshape of the per-sample
    data, the batch on torch axis ``b_out``)."""
    so = emit.sample(node, bdim=b_out)
    if so == emit.producer_shape(r):
        emit.bind(node, Ref(r.name, b_out))
    else:
        emit.op(node, "reshape", [r.name], bdim=b_out)


@register
class Permute(OpHandler):
    key = "permute"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        so = flow.shape(node)
        dims = norm_dims(list(a["dims"]), len(so)) if so is not None else None
        return _keeps_axes(node, flow, a["input"], dims is None or dims[:2] != [0, 1])

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        permute(node, emit, a["input"], list(emit.static(node, a["dims"], "the dims")))


@register
class Transpose(OpHandler):
    key = "transpose"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        so = flow.shape(node)
        dims = norm_dims([a["dim0"], a["dim1"]], len(so)) if so is not None else None
        return _keeps_axes(node, flow, a["input"],
                           dims is None or (dims[0] != dims[1] and min(dims) < 2))

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        rank = len(emit.shape(node, a["input"]))
        d0, d1 = (int(emit.static(node, a[k])) % rank for k in ("dim0", "dim1"))
        dims = list(range(rank))
        dims[d0], dims[d1] = d1, d0
        permute(node, emit, a["input"], dims)


@register
class Expand(OpHandler):
    key = "expand"

    def channels(self, node: fx.Node, flow) -> str | None:
        a = args_of(node)
        x, so = a["input"], flow.shape(node)
        moved = flow.tracked(x) and (so is None or so[:2] != flow.shape(x)[:2])
        return _keeps_axes(node, flow, x, moved)

    def lower(self, node: fx.Node, emit) -> None:
        """No data repeated (a no-op), or a static tensor expanded over the batch (it
        stays static: a leading axis of size 1 is the batch's)."""
        a = args_of(node)
        if emit.is_static(a["input"]):
            t = emit.static(node, a["input"])
            if not (t.dim() == len(emit.shape(node)) and t.shape[0] == 1
                    and tuple(t.shape[1:]) == emit.shape(node)[1:]):
                raise emit.fail(node, "expand of a constant over other than the batch axis")
            emit.set_static(node, t)
            return
        if emit.shape(node) != emit.shape(node, a["input"]):
            raise emit.fail(node, "expand that repeats data (the runtime broadcasts in "
                                  "add / sub / mul instead)")
        emit.bind(node, emit.ref(node, a["input"]))


@register
class Size(OpHandler):
    key = "size"

    def channels(self, node: fx.Node, flow) -> str | None:
        """``x.size(0)``, or ``x.size()`` read only at 0: harmless; other sizes pin ``x``."""
        a = args_of(node)
        x, d = a["input"], a["dim"]
        if not flow.tracked(x):
            return None
        ok = batch_only(node) if d is None else isinstance(d, int) and d % len(flow.shape(x)) == 0
        return None if ok else "it reads the channel count (x.size(1)): the channels are kept"

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        s = emit.shape(node, a["input"])
        d = emit.static(node, a["dim"])
        emit.set_static(node, s if d is None else s[int(d)])


@register
class Ndim(OpHandler):
    key = "ndim"

    def channels(self, node: fx.Node, flow) -> str | None:
        return None

    def lower(self, node: fx.Node, emit) -> None:
        emit.set_static(node, len(emit.shape(node, args_of(node)["input"])))


@register
class GetAttr(OpHandler):
    key = "getattr"

    def channels(self, node: fx.Node, flow) -> str | None:
        """``x.ndim`` / ``x.dtype`` / ...: harmless; ``x.shape`` read only at 0 too."""
        a = args_of(node)
        if not flow.tracked(a["input"]) or a["name"] in _HARMLESS:
            return None
        if a["name"] == "shape" and batch_only(node):
            return None
        return f"it reads x.{a['name']} (the channel count): the channels are kept"

    def lower(self, node: fx.Node, emit) -> None:
        """``x.shape`` / ``x.ndim`` of a tensor; any attribute of a static value."""
        a = args_of(node)
        x, name = a["input"], a["name"]
        if emit.is_static(x):
            emit.set_static(node, getattr(emit.static(node, x), name))
        elif name == "shape":
            emit.set_static(node, emit.shape(node, x))
        elif name == "ndim":
            emit.set_static(node, len(emit.shape(node, x)))
        else:
            raise emit.fail(node, f"tensor attribute {name!r}")


def _slice(node: fx.Node, emit, r: Ref, shape: list[int], axis: int, start: int, stop: int,
           step: int, tag: str) -> tuple[Ref, list[int]]:
    """``r[..., start:stop:step, ...]`` on torch axis ``axis`` (not the batch): a ``slice``
    op on the per-sample axis (no op when it keeps everything); the new ref and shape."""
    if axis == r.bdim:
        raise emit.fail(node, "indexing or splitting the batch axis")
    rt = axis if axis < r.bdim else axis - 1
    n = len(range(start, stop, step))
    if n == 0:
        raise emit.fail(node, "an empty slice")
    if (start, n, step) == (0, shape[rt], 1):
        return r, shape
    shape = shape[:rt] + [n] + shape[rt + 1:]
    name = emit.op(node, "slice", [r.name], {"axis": rt, "start": start, "end": stop,
                                             "step": step}, shape=shape,
                   name=f"{node.name}.{tag}")
    return Ref(name, r.bdim), shape


def _finish(node: fx.Node, emit, r: Ref, shape: list[int], b_out: int, out: Any = None) -> Ref:
    """The ref of ``out`` (default ``node``; an element of a tuple result is named by its
    tag): ``r`` reshaped to its per-sample shape if needed."""
    target = emit.sample(node, out, bdim=b_out)
    if target != shape:
        tag = None if out is None else f"{node.name}.{out.name}"
        name = emit.op(node, "reshape", [r.name], shape=target, name=tag or f"{node.name}.v")
        r = Ref(name, r.bdim)
    return Ref(r.name, b_out)


def _index_items(emit, node: fx.Node, idx: Any, rank: int) -> list:
    """A basic index (ints, slices, None, Ellipsis) as one item per axis (+ the Nones)."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items):
        raise emit.fail(node, f"advanced indexing {idx!r} (only ints, slices, None, ...)")
    real = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k:k + 1] = [slice(None)] * (rank - real)
    return items + [slice(None)] * (rank - sum(1 for i in items if i is not None))


_HARMLESS = ("ndim", "dtype", "device", "is_cuda", "requires_grad")


def _index_last(node: fx.Node, flow, x: fx.Node, items: list, ax: int) -> str | None:
    """Basic indexing ``x[:, i, ...]`` / ``x[-1]`` of a tensor whose channels are on axis
    ``ax > 1`` (the features of tokens or of a sequence, which may be first): the channel
    axis stays whole, each int before it removes an axis (the channels move down by
    one); the values of a channel are only sub-sampled, so its constant stays."""
    if nodes_in(items) or any(isinstance(it, bool) or not isinstance(it, (int, slice))
                              for it in items):
        return "an index other than ints and slices"
    if len(items) > ax and items[ax] != slice(None):
        return "it indexes the channel dimension"
    out = ax - sum(isinstance(it, int) for it in items[:ax])
    return flow.same(node, x, flow.const[x].clone(), axis=out)


@register
class GetItem(OpHandler):
    key = "getitem"
    any_axis = True

    def channels(self, node: fx.Node, flow) -> str | None:
        """A piece of a split (its slots), or indexing that keeps the batch and channel
        axes whole (``x[:, :, 0]``); sizes and other values: nothing to track."""
        a = args_of(node)
        x, idx = a["input"], a["index"]
        if isinstance(x, fx.Node) and x in flow.pieces and isinstance(idx, int):
            n = len(flow.pieces[x])
            if not -n <= idx < n:  # an element the producer does not trace
                return f"element {idx} of a result whose traced elements are 0..{n - 1}" \
                    if node.users else None
            flow.slots[node], flow.const[node] = flow.pieces[x][idx]
            flow.set_axis(node, flow.axis_of(x))  # a tuple's axis is its pieces'
            return None
        if not flow.tracked(x):
            return None if flow.shape(node) is None or len(flow.shape(node)) < 2 \
                else "its input carries no channel slots"
        items = list(idx) if isinstance(idx, tuple) else [idx]
        ax = flow.axis_of(x)
        if ax != 1:
            return _index_last(node, flow, x, items, ax)
        whole = len(items) >= 2 and items[0] == slice(None) and items[1] == slice(None)
        return flow.keep(node, x, idx) if whole else "it indexes the batch or channel dimension"

    def lower(self, node: fx.Node, emit) -> None:
        """An element of a static value or of a tuple result; or basic indexing of a
        tensor: ``slice`` ops, then one reshape for the axes ints remove and None adds."""
        a = args_of(node)
        x, idx = a["input"], emit.static(node, a["index"], "the index")
        if not emit.is_tensor(x):
            val = emit.static(node, x)
            item = val if isinstance(val, Missing) else val[idx]
            if isinstance(item, Ref):
                emit.bind(node, item)
            else:
                emit.set_static(node, item)
            return
        r, shp = emit.ref(node, x), emit.shape(node, x)
        shape = emit.sample(node, x, bdim=r.bdim)
        axis, b_out, out_axis, cur = 0, 0, 0, r
        for k, it in enumerate(_index_items(emit, node, idx, len(shp))):
            if it is None:
                out_axis += 1
                continue
            if axis == r.bdim:
                if it != slice(None):
                    raise emit.fail(node, "indexing the batch axis")
                b_out = out_axis
            else:
                s = it if isinstance(it, slice) else slice(it % shp[axis], it % shp[axis] + 1)
                cur, shape = _slice(node, emit, cur, shape, axis, *s.indices(shp[axis]), f"s{k}")
            out_axis += 1 if isinstance(it, slice) else 0
            axis += 1
        emit.bind(node, _finish(node, emit, cur, shape, b_out))


class Split(OpHandler):
    """A tuple of pieces along one axis (``chunk``, ``split``, ``unbind``): one ``slice``
    each (and a reshape for ``unbind``); the tuple is static, of refs."""

    def channels(self, node: fx.Node, flow) -> str | None:
        """Along an axis after the channel dim: every piece keeps the slots; ``chunk``
        of the channels: equal pieces whose positions are coupled (each piece loses the
        same positions, so the pieces stay equal); other splits of the channels: kept."""
        a = args_of(node)
        x = a["input"]
        if not flow.tracked(x):
            return None
        n_in = flow.shape(x)
        axis = norm_dims(a["dim"], len(n_in))
        if axis is None or axis[0] == 0:
            return "a split of the batch dimension"
        outs = [m.shape for m in node.meta.get("tensor_meta", ())] \
            if isinstance(node.meta.get("tensor_meta"), (list, tuple)) else []
        s, c = flow.slots[x], flow.const[x]
        if axis[0] >= 2:
            flow.pieces[node] = [(s, c.clone()) for _ in outs]
            return None
        if self.key != "chunk" or not outs or len({tuple(o)[1] for o in outs}) != 1:
            return f"a {self.key} of the channels into sizes fixed in the code"
        k = int(outs[0][1])
        flow.pieces[node] = [(s[i * k:(i + 1) * k], c[i * k:(i + 1) * k])
                             for i in range(len(outs))]
        for piece, _ in flow.pieces[node][1:]:
            flow.union(flow.pieces[node][0][0], piece)
        return None

    def sizes(self, node: fx.Node, emit, a: dict, n: int) -> list[int]:
        raise NotImplementedError

    def lower(self, node: fx.Node, emit) -> None:
        a = args_of(node)
        x = a["input"]
        r, shp = emit.ref(node, x), emit.shape(node, x)
        axis = int(emit.static(node, a["dim"])) % len(shp)
        shape = emit.sample(node, x, bdim=r.bdim)
        pieces, start = [], 0
        for k, n in enumerate(self.sizes(node, emit, a, shp[axis])):
            p, s = _slice(node, emit, r, shape, axis, start, start + n, 1, f"p{k}")
            if self.key == "unbind":
                name = emit.op(node, "reshape", [p.name], shape=s[:axis - (axis > r.bdim)]
                               + s[axis + 1 - (axis > r.bdim):], name=f"{node.name}.u{k}")
                p = Ref(name, r.bdim - (axis < r.bdim))
            pieces.append(p)
            start += n
        emit.set_static(node, tuple(pieces))


@register
class Chunk(Split):
    key = "chunk"

    def sizes(self, node, emit, a, n):
        c = math.ceil(n / int(emit.static(node, a["chunks"])))
        return [min(c, n - i) for i in range(0, n, c)]


@register
class SplitSizes(Split):
    key = "split"

    def sizes(self, node, emit, a, n):
        s = emit.static(node, a["split_size_or_sections"])
        if isinstance(s, int):
            return [min(s, n - i) for i in range(0, n, s)]
        return [int(v) for v in s]


@register
class Unbind(Split):
    key = "unbind"

    def sizes(self, node, emit, a, n):
        return [1] * n
