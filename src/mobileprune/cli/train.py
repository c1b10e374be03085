"""``train``, ``eval``, ``report`` and ``demo``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mobileprune.errors import ConfigError
from mobileprune.pipeline.train import default_shift, set_training_speed, training_precision
from mobileprune.cli.models import check_accepts, load_model, parse_model_args


def loaders(args, dataset: str, model=None):
    """Train and test loaders of ``dataset``; with ``model``, first check that it accepts
    the data set's samples."""
    from mobileprune.data.registry import load_dataset, make_loaders

    bundle = load_dataset(dataset, args.data_dir)
    if model is not None:
        check_accepts(model, bundle.input_shape, f"data set {dataset}")
    return make_loaders(bundle, batch_size=args.batch_size, seed=args.seed)


def progress(args) -> bool | None:
    return False if getattr(args, "quiet", False) else None


def cmd_train(args) -> int:
    import torch

    from mobileprune.checkpoint import save_checkpoint
    from mobileprune.data.registry import load_dataset, make_loaders
    from mobileprune.models import build_model, kwargs_for_data, model_settings
    from mobileprune import distributed
    from mobileprune.pipeline.fit import fit

    model_settings(args.model)  # an unknown model name is reported before the data is read
    if args.precision:
        set_training_speed(args.precision)
    torch.manual_seed(args.seed)
    bundle = load_dataset(args.dataset, args.data_dir)
    if args.shift and len(bundle.input_shape) not in (2, 3):
        raise ConfigError(f"--shift translates images (C, H, W) or 1-D signals (C, L); data set "
                          f"{args.dataset} has samples of shape {tuple(bundle.input_shape)}: drop --shift")
    shift = default_shift(bundle.input_shape) if args.shift is None else args.shift
    kwargs = kwargs_for_data(args.model, bundle.input_shape, bundle.num_classes,
                             parse_model_args(args.model_arg))
    model = build_model(args.model, **kwargs)
    check_accepts(model, bundle.input_shape, f"data set {args.dataset}")
    train_loader, test_loader = make_loaders(bundle, batch_size=args.batch_size, seed=args.seed)
    t0 = time.perf_counter()
    res = fit(model, train_loader, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
              weight_decay=args.weight_decay, shift=shift, eval_loader=test_loader,
              progress=progress(args),
              model_name=args.model, model_kwargs=kwargs)
    save_checkpoint(args.out, model, kind="dense", model_name=args.model, model_kwargs=kwargs,
                    metrics={"test_accuracy": res["test_accuracy"], "epochs": args.epochs, "shift": shift,
                             "precision": training_precision(), "train_seconds": time.perf_counter() - t0},
                    extra={"dataset": args.dataset, "input_shape": list(bundle.input_shape),
                           "distributed": {"world_size": distributed.world_size(),
                                           "backend": distributed.backend()}})
    print(f"saved dense model to {args.out}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from mobileprune.pipeline.train import evaluate

    ckpt, model = load_model(args.checkpoint, args.model)
    dataset = args.dataset or ckpt["extra"].get("dataset") or "mnist-sample"
    _, test_loader = loaders(args, dataset, model)
    acc = evaluate(model, test_loader)
    nz = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    result = {"checkpoint": str(args.checkpoint), "dataset": dataset, "test_accuracy": acc,
              "parameters": total, "nonzero_parameters": nz}
    print(json.dumps(result, indent=2) if args.json else
          f"{args.checkpoint}: test accuracy {100 * acc:.2f}% on {dataset}; "
          f"{nz:,} of {total:,} parameters nonzero")
    return 0


def targets_from(ckpt, model):
    """The targets a prune run recorded (``extra.targets``: weight name -> kept count),
    on any prunable weight (:func:`mobileprune.sparsity.targets.weight_slots`)."""
    from mobileprune.sparsity.targets import LayerTarget, weight_slots

    keeps = (ckpt.get("extra") or {}).get("targets") or {}
    slots = weight_slots(model)
    return [LayerTarget(name=n, param_name=slots[n].param_name, shape=tuple(slots[n].weight.shape),
                        keep=k, module=slots[n].module_name)
            for n, k in keeps.items() if k is not None and n in slots]


def cmd_report(args) -> int:
    from mobileprune.files import atomic_write_text
    from mobileprune.sparsity.report import layer_report, to_json, to_markdown

    ckpt, model = load_model(args.checkpoint, args.model)
    rep = layer_report(model, targets_from(ckpt, model), metrics=ckpt.get("metrics"))
    text = to_json(rep) if args.format == "json" else to_markdown(rep, title=str(args.checkpoint))
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args) -> int:
    from mobileprune.cli import main

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
