"""The ``mobileprune`` command line: a thin layer over the library.

Sub-commands: ``train``, ``prune``, ``compact``, ``export``, ``convert``, ``bench``,
``eval``, ``report``, ``demo``. Every library error
(:class:`~mobileprune.errors.MobilePruneError`) is printed as ``error: ...`` and exits
with status 2; outputs are written atomically, so a failed run never overwrites an
existing file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from mobileprune.errors import ConfigError, MobilePruneError
from mobileprune.files import output_lock, refuse_inputs_as_outputs
from mobileprune.sparsity.regularizers import METHODS as PROX_METHODS


def _config_path(arg: str) -> Path:
    from mobileprune.sparsity.targets import config_path
    return config_path(arg)


def _add_data_args(p: argparse.ArgumentParser, default_dataset: str | None = "mnist-sample") -> None:
    p.add_argument("--dataset", default=default_dataset,
                   help="data set name: mnist-sample (embedded, offline) or mnist "
                        "(default: %(default)s, or the one recorded in the checkpoint)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the data sets, unpacked or as archives "
                        "(default: $MOBILEPRUNE_DATA)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)


def _no_progress(args) -> bool | None:
    return False if getattr(args, "quiet", False) else None


def _loaders(args, dataset: str):
    from mobileprune.data.registry import load_dataset, make_loaders

    bundle = load_dataset(dataset, args.data_dir)
    return make_loaders(bundle, batch_size=args.batch_size, seed=args.seed)


# -- train -------------------------------------------------------------------------------
def cmd_train(args) -> int:
    import torch

    from mobileprune.checkpoint import save_checkpoint
    from mobileprune.models import build_model
    from mobileprune.pipeline.train import cosine_lr, evaluate, make_optimizer, train_epoch

    torch.manual_seed(args.seed)
    train_loader, test_loader = _loaders(args, args.dataset)
    model = build_model(args.model)
    opt = make_optimizer(args.optimizer, model.parameters(), args.lr, weight_decay=args.weight_decay)
    sched = cosine_lr(opt, args.epochs * len(train_loader))
    t0 = time.perf_counter()
    acc = None
    for ep in range(args.epochs):
        stats = train_epoch(model, train_loader, opt, scheduler=sched, progress=_no_progress(args),
                            desc=f"train {ep + 1}/{args.epochs}")
        acc = evaluate(model, test_loader)
        print(f"epoch {ep + 1}/{args.epochs} | loss {stats['loss']:.4f} | test acc {100 * acc:.2f}%")
    save_checkpoint(args.out, model, kind="dense", model_name=args.model,
                    metrics={"test_accuracy": acc, "epochs": args.epochs,
                             "train_seconds": time.perf_counter() - t0},
                    extra={"dataset": args.dataset, "input_shape": list(train_loader.dataset[0][0].shape)})
    print(f"saved dense model to {args.out}")
    return 0


# -- prune -------------------------------------------------------------------------------
def _load_model(path: str):
    from mobileprune.checkpoint import load_checkpoint, restore_model

    ckpt = load_checkpoint(path)
    return ckpt, restore_model(ckpt, source=str(path))


def _read_config(arg: str | None) -> dict[str, Any]:
    from mobileprune.sparsity.targets import load_yaml

    if arg is None:
        return {}
    raw = load_yaml(_config_path(arg))
    if not isinstance(raw, dict):
        raise ConfigError(f"config {arg} must be a mapping")
    return raw


def _admm_config(args) -> tuple[dict[str, Any], Any]:
    """The pipeline config of ``--method admm`` from the file and the flags."""
    from mobileprune.pipeline.prune import PipelineConfig

    if args.config is None and args.sparsity is None:
        raise ConfigError("give --config FILE|NAME or --sparsity S")
    if args.sparsity is not None and args.config is not None:
        raise ConfigError("--sparsity and --config are exclusive")
    for key in ("lam", "eta", "beta", "rounds", "prox_epochs", "target_nonzero"):
        if getattr(args, key) is not None:
            raise ConfigError(f"--{key.replace('_', '-')} is for the proximal methods, not --method admm")
    raw = _read_config(args.config) if args.config else {"default": args.sparsity}
    for key, section in (("admm_epochs", "admm"), ("retrain_epochs", "retrain")):
        if getattr(args, key) is not None:
            raw.setdefault(section, {})["epochs"] = getattr(args, key)
    if args.regrow is not None:
        raw.setdefault("retrain", {})["regrow"] = args.regrow
    cfg = PipelineConfig.from_dict(raw)
    return raw, cfg


def _prox_config(args) -> dict[str, Any]:
    """The config of a proximal method (seed 000) from the file and the flags."""
    if args.sparsity is not None:
        raise ConfigError("--sparsity is for --method admm; proximal methods take --lam/--eta")
    if args.admm_epochs is not None:
        raise ConfigError("--admm-epochs is for --method admm")
    raw = _read_config(args.config)
    if raw.get("method") not in (None, args.method):
        raise ConfigError(f"--method {args.method} disagrees with method {raw['method']!r} in the config")
    raw["method"] = args.method
    for key in ("lam", "eta", "beta"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    sched = raw.setdefault("schedule", {})
    for key in ("rounds", "prox_epochs", "retrain_epochs", "target_nonzero"):
        if getattr(args, key) is not None:
            sched[key] = getattr(args, key)
    if args.regrow is not None:
        sched["final_regrow"] = args.regrow
    return raw


def cmd_prune(args) -> int:
    import torch

    from mobileprune.pipeline.prune import admm_prune, proximal_prune

    if args.method == "admm":
        raw, cfg = _admm_config(args)
        run, saved_cfg, what = admm_prune, cfg.to_dict(), "pruned with ADMM"
    else:
        raw = cfg = _prox_config(args)
        run, saved_cfg, what = proximal_prune, raw, f"pruned with {args.method}"
    ckpt, model = _load_model(args.checkpoint)
    dataset = args.dataset or ckpt["extra"].get("dataset") or raw.get("dataset") or "mnist-sample"
    torch.manual_seed(args.seed)
    train_loader, test_loader = _loaders(args, dataset)
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.stem + ".run")
    res = run(model, train_loader, cfg, eval_loader=test_loader, run_dir=run_dir,
              resume=not args.fresh, progress=_no_progress(args),
              model_name=ckpt["model"]["name"], model_kwargs=ckpt["model"]["kwargs"])
    status = _finish_prune(args, ckpt, model, res, saved_cfg, dataset, what,
                           train_loader.dataset[0][0].shape)
    if not args.run_dir and not args.keep_run:
        shutil.rmtree(run_dir, ignore_errors=True)  # finished: its state is in OUT now
    return status


def _finish_prune(args, ckpt, model, res, config, dataset, what, input_shape) -> int:
    from mobileprune.checkpoint import atomic_write_text, save_checkpoint
    from mobileprune.sparsity.report import to_json, to_markdown

    out = Path(args.out)
    save_checkpoint(out, model, kind="pruned", model_name=ckpt["model"]["name"],
                    model_kwargs=ckpt["model"]["kwargs"], masks=res.masks, config=config,
                    metrics=res.report["metrics"],
                    extra={"dataset": dataset, "input_shape": list(input_shape),
                           "compacted": res.compacted, "history": res.history, "targets":
                           {r["layer"]: r["target_keep"] for r in res.report["layers"]}})
    md = to_markdown(res.report, title=f"{ckpt['model']['name']} {what}")
    atomic_write_text(out.with_suffix(".md"), md)
    atomic_write_text(out.with_suffix(".json"), to_json(res.report))
    print(md)
    print(f"saved pruned model to {out} (report: {out.with_suffix('.md')}, {out.with_suffix('.json')})")
    return 0


# -- compact -----------------------------------------------------------------------------
def _example_input(args, ckpt, n: int = 1):
    """A random input of batch ``n`` for ``--input-shape`` or the shape the checkpoint
    records: one tensor, or a tuple of tensors for a model with several inputs."""
    import torch

    if args.input_shape:
        shape = _parse_input_shape(args.input_shape)
    else:
        shape = (ckpt.get("extra") or {}).get("input_shape")
        if not shape:
            raise ConfigError("the checkpoint does not record its input shape: pass "
                              "--input-shape C,H,W (C,H,W;C,H,W;... for several inputs)")
        shape = [tuple(s) for s in shape] if isinstance(shape[0], (list, tuple)) else tuple(shape)
    if isinstance(shape, list):
        return tuple(torch.randn(n, *s) for s in shape)
    return torch.randn(n, *shape)


def cmd_compact(args) -> int:
    import torch

    from mobileprune.checkpoint import atomic_write_text, save_checkpoint
    from mobileprune.surgery.compact import compact
    from mobileprune.measure.latency import compare_latency
    from mobileprune.sparsity.report import layer_report
    from mobileprune.pipeline.train import forward

    ckpt, model = _load_model(args.checkpoint)
    model.eval()
    example = _example_input(args, ckpt)
    small = compact(model, example)
    x = _example_input(args, ckpt, 8)
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
    out = Path(args.out)
    save_checkpoint(out, small, kind="compacted", model_name=ckpt["model"]["name"],
                    model_kwargs=ckpt["model"]["kwargs"], metrics=ckpt.get("metrics"),
                    extra={**(ckpt.get("extra") or {}), "compaction": result})
    p, m, l = result["parameters"], result["macs"], result["latency_batch1_ms"]
    md = "\n".join([
        f"## {ckpt['model']['name']}: compacted vs pruned ({args.checkpoint})", "",
        "| model | parameters | MACs / sample | batch-1 latency (median, ms) |",
        "|---|---:|---:|---:|",
        f"| pruned (masked, dense layers) | {p['pruned']:,} | {m['pruned']:,} | {l['pruned']:.3f} |",
        f"| compacted | {p['compacted']:,} | {m['compacted']:,} | {l['compacted']:.3f} |", "",
        f"- parameters {p['pruned'] / p['compacted']:.2f}x fewer, MACs {m['pruned'] / m['compacted']:.2f}x "
        f"fewer, latency {result['speedup']:.2f}x ({args.repeats} interleaved runs, {args.threads} thread(s))",
        f"- max |compacted - pruned| on random inputs: {diff:.2e}", ""])
    atomic_write_text(out.with_suffix(".md"), md)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    print(md)
    print(f"saved compacted model to {out}")
    return 0


# -- export ------------------------------------------------------------------------------
EXPORT_FORMATS = {"sparse": ".mps", "ptl": ".ptl", "onnx": ".onnx", "pte": ".pte", "native": ""}


def cmd_export(args) -> int:
    ckpt, model = _load_model(args.checkpoint)
    model.eval()
    example = _example_input(args, ckpt)
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


# -- convert -----------------------------------------------------------------------------
def cmd_convert(args) -> int:
    from mobileprune.runtime import SparseFormatError, convert

    try:
        size = convert(args.old, args.new)
    except (SparseFormatError, ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {args.new} (format 3, {size:,} bytes)")
    return 0


# -- bench -------------------------------------------------------------------------------
def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{flag} values must be positive, got {text!r}")
    return vals


def _parse_input_shape(text: str) -> tuple[int, ...] | list[tuple[int, ...]]:
    """``--input-shape`` (compact, export, bench): one shape ``1,28,28`` (a tuple), or one shape per
    model input separated by ``;``, e.g. ``3,32,32;3,32,32;3,32,32;625`` (a list)."""
    flag = "--input-shape"
    example = "e.g. 1,28,28, or 3,32,32;3,32,32;3,32,32;625 for a model with several inputs"
    parts = [p.strip() for p in text.split(";")]
    if any(not p for p in parts):
        raise ConfigError(f"{flag} has an empty shape in {text!r}: give comma-separated "
                          f"integers per input, inputs separated by ';' ({example})")
    shapes = []
    for p in parts:
        try:
            vals = tuple(int(v) for v in p.split(","))
        except ValueError:
            raise ConfigError(f"{flag} must be comma-separated integers per input, inputs "
                              f"separated by ';' ({example}), got {text!r}") from None
        if min(vals) < 1:
            raise ConfigError(f"{flag} values must be positive, got {text!r}")
        shapes.append(vals)
    return shapes[0] if len(shapes) == 1 else shapes


def cmd_bench(args) -> int:
    from mobileprune.measure.bench import bench_checkpoint

    out_dir = Path(args.out_dir or Path(args.checkpoint).with_suffix("").name + "_bench")
    shape = _parse_input_shape(args.input_shape) if args.input_shape else None
    res = bench_checkpoint(args.checkpoint, out_dir, input_shape=shape, dense_checkpoint=args.dense,
                           repeats=args.repeats, warmup=args.warmup,
                           batch_sizes=_int_list(args.batch_sizes, "--batch-sizes"),
                           threads=_int_list(args.threads, "--threads"),
                           formats=tuple(args.formats.split(",")))
    print((out_dir / "bench.md").read_text())
    print(f"wrote {out_dir}/bench.json, bench.md" + (", bench.png" if res["files"].get("png") else ""))
    return 0


# -- eval / report -----------------------------------------------------------------------
def cmd_eval(args) -> int:
    from mobileprune.pipeline.train import evaluate

    ckpt, model = _load_model(args.checkpoint)
    dataset = args.dataset or ckpt["extra"].get("dataset") or "mnist-sample"
    _, test_loader = _loaders(args, dataset)
    acc = evaluate(model, test_loader)
    import torch

    nz = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    result = {"checkpoint": str(args.checkpoint), "dataset": dataset, "test_accuracy": acc,
              "parameters": total, "nonzero_parameters": nz}
    print(json.dumps(result, indent=2) if args.json else
          f"{args.checkpoint}: test accuracy {100 * acc:.2f}% on {dataset}; "
          f"{nz:,} of {total:,} parameters nonzero")
    return 0


def _targets_from(ckpt, model):
    """The targets a prune run recorded (``extra.targets``: weight name -> kept count),
    on any prunable weight (:func:`mobileprune.sparsity.targets.weight_slots`)."""
    from mobileprune.sparsity.targets import LayerTarget, weight_slots

    keeps = (ckpt.get("extra") or {}).get("targets") or {}
    slots = weight_slots(model)
    return [LayerTarget(name=n, param_name=slots[n].param_name, shape=tuple(slots[n].weight.shape), keep=k,
                        module=slots[n].module_name)
            for n, k in keeps.items() if k is not None and n in slots]


def cmd_report(args) -> int:
    from mobileprune.checkpoint import atomic_write_text
    from mobileprune.sparsity.report import layer_report, to_json, to_markdown

    ckpt, model = _load_model(args.checkpoint)
    rep = layer_report(model, _targets_from(ckpt, model), metrics=ckpt.get("metrics"))
    text = to_json(rep) if args.format == "json" else to_markdown(rep, title=str(args.checkpoint))
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


# -- demo --------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    out_dir = Path(args.out_dir)
    dense = out_dir / "lenet5-dense.pt"
    print("mobileprune demo: LeNet-5 on the embedded MNIST sample (5,000 train / 1,000 test "
          "images), ADMM pruning to 71x fewer weights, masked retraining, report.\n")
    t0 = time.perf_counter()
    common = ["--dataset", "mnist-sample", "--seed", str(args.seed)] + (["--quiet"] if args.quiet else [])
    if not dense.exists() or args.fresh:
        print("== 1/2 train dense LeNet-5 ==")
        main(["train", "--model", "lenet5", "--epochs", str(args.epochs), "--out", str(dense)] + common)
    else:
        print(f"== 1/2 reuse dense model {dense} (--fresh to retrain) ==")
    print("\n== 2/2 ADMM prune + masked retrain ==")
    prune_args = ["prune", str(dense), "--config", "demo", "--out", str(out_dir / "lenet5-admm.pt")] + common
    if args.fresh:
        prune_args.append("--fresh")
    main(prune_args)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out_dir}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mobileprune import __version__

    ap = argparse.ArgumentParser(prog="mobileprune", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"mobileprune {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a dense built-in model and save a checkpoint",
                       description="Train a dense built-in model and save a mobileprune checkpoint.")
    p.add_argument("--model", default="lenet5", help="built-in model (lenet5, lenet300100)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--out", required=True, help="output checkpoint (.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="ADMM-prune a checkpoint to per-layer targets",
                       description="ADMM regularisation, masked mapping and masked retraining "
                                   "(seed 003, Algorithm 1) of a checkpoint, with a per-layer report. "
                                   "Resumable: rerun the same command after an interruption.")
    p.add_argument("checkpoint", help="dense (or previously pruned) checkpoint")
    p.add_argument("--config", help="YAML pipeline config, or a built-in name "
                                    "(demo, lenet5-71x, lenet5-246x)")
    p.add_argument("--method", default="admm", choices=["admm", *PROX_METHODS],
                   help="admm (seed 003, default) or a MobilePrune proximal method (seed 000): "
                        "l0_group_lasso is MobilePrune; l0, l1, l2, group_lasso, "
                        "sparse_group_lasso are the baselines")
    p.add_argument("--sparsity", type=float, help="ADMM: prune every Linear/Conv layer to this fraction")
    p.add_argument("--lam", type=float, help="proximal methods: group-norm weight")
    p.add_argument("--eta", type=float, help="proximal methods: l0 weight")
    p.add_argument("--beta", type=float, help="proximal methods: l1 weight")
    p.add_argument("--rounds", type=int, help="proximal methods: number of rounds")
    p.add_argument("--prox-epochs", type=int, help="proximal methods: prox epochs per round")
    p.add_argument("--target-nonzero", type=int,
                   help="proximal methods: stop the rounds once at most this many weights are nonzero")
    p.add_argument("--admm-epochs", type=int, help="override admm.epochs of the config")
    p.add_argument("--retrain-epochs", type=int, help="override the retraining epochs of the config")
    p.add_argument("--regrow", type=float, metavar="FRACTION",
                   help="retrain with masks that move at a constant count (RigL): this fraction "
                        "of each layer's weights swapped at first (ADMM: retrain.regrow; proximal "
                        "methods: schedule.final_regrow, needs final_retrain_epochs)")
    p.add_argument("--out", required=True, help="output pruned checkpoint (.pt); the report goes "
                                                "next to it as .md and .json")
    p.add_argument("--run-dir", help="directory for resumable state (default: OUT.run/, removed "
                                     "once the run has finished unless --keep-run)")
    p.add_argument("--fresh", "--no-resume", dest="fresh", action="store_true",
                   help="start over, ignoring the state of an interrupted run in the run dir")
    p.add_argument("--keep-run", action="store_true",
                   help="keep the default run dir OUT.run/ (per-stage checkpoints) after success")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(p, default_dataset=None)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("compact", help="physically remove zero filters/channels/neurons",
                       description="Build a smaller dense model without the pruned units (graph traced "
                                   "with torch.fx), check it gives the same outputs, and compare "
                                   "parameters, MACs and batch-1 latency.")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output checkpoint of the compacted model")
    p.add_argument("--input-shape", help="input shape without batch, e.g. 1,28,28; several inputs: "
                                         "one shape each, separated by ';' (default: recorded)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("export", help="export for deployment: sparse runtime file, native bundle, "
                                      ".ptl, ONNX, .pte",
                       description="Export a checkpoint: 'sparse' (mobileprune.runtime file, CSR "
                                   "weights), 'native' (a directory: the sparse file, the C engine's "
                                   "sources, CMakeLists.txt, an example input and output), 'ptl' "
                                   "(TorchScript lite), 'onnx' or 'pte' (ExecuTorch, XNNPACK). Each "
                                   "export is checked numerically against the torch model.")
    p.add_argument("checkpoint")
    p.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    p.add_argument("--out", required=True, help="output file (a directory for --format native)")
    p.add_argument("--input-shape", help="input shape without batch, e.g. 1,28,28; several inputs: "
                                         "one shape each, separated by ';' (default: recorded)")
    p.add_argument("--value-dtype", default="float32", choices=["float32", "float16"],
                   help="sparse / native format: value type")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="rewrite an old sparse model file (format 1/2) as format 3",
                       description="Rewrite a sparse model file of format version 1 or 2 (JSON "
                                   "header) as version 3, the native engine's format (checked by "
                                   "its loader, written atomically).")
    p.add_argument("old", help="the format 1/2 file")
    p.add_argument("new", help="the format 3 file to write (not OLD)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="latency and size: dense, pruned, compacted, sparse runtime, ORT, ExecuTorch",
                       description="Measure, in one run, batch-1 and larger-batch latency (median of "
                                   "interleaved runs after warm-up) of dense torch, pruned torch, "
                                   "compacted torch, the sparse runtime, and the dense and compacted "
                                   "models under ONNX Runtime and ExecuTorch; file sizes; speedups "
                                   "against dense torch and against the fastest dense runtime. "
                                   "Writes bench.json, bench.md and bench.png.")
    p.add_argument("checkpoint", help="pruned checkpoint")
    p.add_argument("--dense", help="the dense checkpoint it was pruned from (the honest baseline)")
    p.add_argument("--out-dir", help="output directory (default: CHECKPOINT_bench/)")
    p.add_argument("--input-shape", help="input shape without batch, e.g. 1,28,28; for a model with "
                                         "several inputs one shape per input separated by ';', e.g. "
                                         "'3,64,64;3,64,64;3,64,64;625' (default: recorded)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--formats", default="torch,compacted,sparse,onnx,pte")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="test accuracy and nonzeros of a checkpoint",
                       description="Evaluate a checkpoint's test accuracy.")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_data_args(p, default_dataset=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="per-layer sparsity report of a checkpoint",
                       description="Per-layer weights, nonzeros, sparsity and compression of a checkpoint.")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="offline end-to-end demo on the embedded MNIST sample",
                       description="Train LeNet-5 on the embedded MNIST sample, ADMM-prune it, "
                                   "retrain with masks, evaluate and print the per-layer report.")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--epochs", type=int, default=6, help="dense training epochs")
    p.add_argument("--fresh", action="store_true", help="start over even if outputs exist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return ap


def _side_files(out: str | None) -> list[Path]:
    """``OUT`` and the reports written beside it (``OUT.md``, ``OUT.json``)."""
    return [] if out is None else [Path(out), Path(out).with_suffix(".md"), Path(out).with_suffix(".json")]


def _existing(*paths: str | None) -> list[str]:
    return [p for p in paths if p is not None and Path(p).exists()]


def _io(args) -> tuple[list, list, list]:
    """The files a command reads, the files it writes and the folders it fills."""
    cmd, ck = args.command, getattr(args, "checkpoint", None)
    if cmd == "prune":
        run_dir = args.run_dir or Path(args.out).with_name(Path(args.out).stem + ".run")
        return [ck, *_existing(args.config)], _side_files(args.out), [run_dir]
    if cmd == "compact":
        return [ck], _side_files(args.out), []
    if cmd == "export":
        native = args.format == "native"
        return [ck], [] if native else [args.out], [args.out] if native else []
    if cmd == "convert":
        return [args.old], [args.new], []
    if cmd == "report":
        return [ck], [args.out], []
    if cmd == "bench":
        return [ck, args.dense], [], [args.out_dir]
    if cmd == "train":
        return [], [args.out], []
    return [], [], []


def _run(args) -> int:
    """Refuse outputs that are inputs, lock the outputs, then run the command."""
    inputs, outputs, folders = _io(args)
    refuse_inputs_as_outputs(inputs, outputs, folders)
    with contextlib.ExitStack() as stack:
        for out in [*outputs[:1], *folders]:
            if out is not None:
                stack.enter_context(output_lock(out))
        return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (MobilePruneError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check the path and its permissions",
              file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted; a resumable run continues where it stopped when the same "
              "command is run again", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
