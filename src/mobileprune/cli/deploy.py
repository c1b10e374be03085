"""``compact``, ``export``, ``convert`` and ``bench``."""

from __future__ import annotations

import json
from pathlib import Path

from mobileprune.cli.args import check_shape, int_list, parse_input_shape
from mobileprune.cli.models import load_model
from mobileprune.errors import ConfigError

EXPORT_FORMATS = {"sparse": ".mps", "ptl": ".ptl", "onnx": ".onnx", "pte": ".pte", "native": ""}


def input_shape_of(args, ckpt):
    """``--input-shape``, else the shape the checkpoint records (checked before use)."""
    if args.input_shape:
        return parse_input_shape(args.input_shape)
    shape = (ckpt.get("extra") or {}).get("input_shape")
    if not shape:
        raise ConfigError("the checkpoint does not record its input shape: pass "
                          "--input-shape C,H,W (C,H,W;C,H,W;... for several inputs)")
    where = f"{args.checkpoint} (extra.input_shape)"
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [check_shape(s, where) for s in shape]
    return check_shape(shape, where)


def example_input(args, ckpt, n: int = 1):
    """A random input of batch ``n``: one tensor, or a tuple for a model with several inputs."""
    import torch

    shape = input_shape_of(args, ckpt)
    if isinstance(shape, list):
        return tuple(torch.randn(n, *s) for s in shape)
    return torch.randn(n, *shape)


def cmd_compact(args) -> int:
    import torch

    from mobileprune.checkpoint import save_checkpoint
    from mobileprune.files import atomic_write_text
    from mobileprune.measure.latency import compare_latency, speedup
    from mobileprune.pipeline.train import forward
    from mobileprune.sparsity.report import layer_report
    from mobileprune.surgery.compact import compact

    ckpt, model = load_model(args.checkpoint, args.model)
    model.eval()
    example = example_input(args, ckpt)
    small = compact(model, example)
    x = example_input(args, ckpt, 8)
    with torch.no_grad():
        diff = float((forward(small, x) - forward(model, x)).abs().max())
    reps = {k: layer_report(m, example_input=example)["totals"] for k, m in (("pruned", model), ("compacted", small))}
    lat = compare_latency({"pruned": model, "compacted": small}, example, repeats=args.repeats,
                          threads=args.threads)
    result = {"checkpoint": str(args.checkpoint), "max_abs_diff": diff, "threads": args.threads,
              "parameters": {k: v["parameters"] for k, v in reps.items()},
              "macs": {k: v["macs"] for k, v in reps.items()},
              "latency_batch1_ms": {k: v["median_ms"] for k, v in lat.items()},
              "latency_detail": lat}
    result["speedup"] = lat["pruned"]["median_ms"] / lat["compacted"]["median_ms"]
    result["within_noise"] = speedup(lat["compacted"], lat["pruned"]) is None
    out = Path(args.out)
    save_checkpoint(out, small, kind="compacted", model_name=ckpt["model"]["name"],
                    model_kwargs=ckpt["model"]["kwargs"], metrics=ckpt.get("metrics"),
                    extra={**(ckpt.get("extra") or {}), "compaction": result})
    md = _compact_markdown(args, ckpt, result)
    atomic_write_text(out.with_suffix(".md"), md)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    print(md)
    print(f"saved compacted model to {out}")
    return 0


def _compact_markdown(args, ckpt, result) -> str:
    p, m, l = result["parameters"], result["macs"], result["latency_batch1_ms"]
    return "\n".join([
        f"## {ckpt['model']['name'] or args.model}: compacted vs pruned ({args.checkpoint})", "",
        "| model | parameters | MACs / sample | batch-1 latency (median, ms) |",
        "|---|---:|---:|---:|",
        f"| pruned (masked, dense layers) | {p['pruned']:,} | {m['pruned']:,} | {l['pruned']:.3f} |",
        f"| compacted | {p['compacted']:,} | {m['compacted']:,} | {l['compacted']:.3f} |", "",
        f"- parameters {p['pruned'] / p['compacted']:.2f}x fewer, MACs {m['pruned'] / m['compacted']:.2f}x "
        f"fewer, latency {'within noise ' if result['within_noise'] else ''}{result['speedup']:.2f}x "
        f"({args.repeats} interleaved runs, {args.threads} thread(s))",
        f"- max |compacted - pruned| on random inputs: {result['max_abs_diff']:.2e}", ""])


def cmd_export(args) -> int:
    ckpt, model = load_model(args.checkpoint, args.model)
    model.eval()
    example = example_input(args, ckpt)
    out = Path(args.out)
    if args.format == "native":
        from mobileprune.deploy.export import export_native

        rep = export_native(model, example, out, value_dtype=args.value_dtype)
        check = (f"max abs diff {rep['max_abs_diff']:.2e}" if rep["verified"]
                 else rep.get("note", "not verified"))
        print(f"wrote native bundle {out} ({len(rep['files'])} files, model.mps "
              f"{rep['bytes']:,} bytes; {check}); build it with: cmake -S {out} -B build && "
              f"cmake --build build")
        return 0
    if args.format == "sparse":
        from mobileprune.deploy.sparse import export_sparse, format_size_report

        rep = export_sparse(model, example, out, value_dtype=args.value_dtype)
        print(format_size_report(rep))
    else:
        from mobileprune.deploy import export as ex

        fn = {"ptl": ex.export_torchscript_lite, "onnx": ex.export_onnx, "pte": ex.export_executorch}[args.format]
        rep = fn(model, example, out)
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in rep.items()}, indent=2))
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def cmd_convert(args) -> int:
    from mobileprune.runtime import SparseFormatError, convert

    try:
        size = convert(args.old, args.new)
    except (SparseFormatError, ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {args.new} (format 3, {size:,} bytes)")
    return 0


def cmd_bench(args) -> int:
    from mobileprune.measure.bench import bench_checkpoint

    if args.model:
        raise ConfigError("bench reads built-in model checkpoints; for --model use the library "
                          "(mobileprune.measure.bench) or export the model first")
    out_dir = Path(args.out_dir or Path(args.checkpoint).with_suffix("").name + "_bench")
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    res = bench_checkpoint(args.checkpoint, out_dir, input_shape=shape, dense_checkpoint=args.dense,
                           repeats=args.repeats, warmup=args.warmup,
                           batch_sizes=int_list(args.batch_sizes, "--batch-sizes"),
                           threads=int_list(args.threads, "--threads"),
                           formats=tuple(args.formats.split(",")))
    print((out_dir / "bench.md").read_text())
    print(f"wrote {out_dir}/bench.json, bench.md" + (", bench.png" if res["files"].get("png") else ""))
    return 0
