"""The argument parser: one small function per command; every number is range-checked
where it is parsed (:mod:`mobileprune.cli.args`)."""

from __future__ import annotations

import argparse

from mobileprune.cli import deploy, prune, train
from mobileprune.cli.args import Parser, count, real
from mobileprune.cli.models import describe_models

SHAPE_HELP = ("input shape without batch, e.g. 1,28,28; several inputs: one shape each, "
              "separated by ';' (default: recorded in the checkpoint)")
USER_MODEL_HELP = ("your own model: package.module:factory, an importable callable returning it; "
                   "CHECKPOINT is then its state dict (or a mobileprune checkpoint of it)")


def _datasets() -> str:
    from mobileprune.data.registry import DATASETS

    return ", ".join(sorted(DATASETS))


def _data_args(p: argparse.ArgumentParser, default: str | None = "mnist-sample") -> None:
    p.add_argument("--dataset", default=default,
                   help=f"data set: {_datasets()} (mnist-sample is embedded and offline; "
                        "default: %(default)s, or the one recorded in the checkpoint)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the data sets, unpacked or as archives "
                        "(default: $MOBILEPRUNE_DATA)")
    p.add_argument("--batch-size", type=count(1), default=128, help="default: %(default)s")
    p.add_argument("--seed", type=count(0), default=0, help="default: %(default)s")


def _speed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="training arithmetic: auto (the default, or $MOBILEPRUNE_PRECISION) uses "
                        "bf16 autocast where the CPU computes it natively, else fp32")


def _add(sub, name: str, func, help: str, description: str | None = None, **kw) -> Parser:
    p = sub.add_parser(name, help=help, description=description or help, **kw)
    p.set_defaults(func=func)
    return p


def _train(sub) -> None:
    p = _add(sub, "train", train.cmd_train, "train a dense built-in model and save a checkpoint",
             "Train a dense built-in model on a data set and save a mobileprune checkpoint. The "
             "model's size settings (classes, input channels / features / length) follow the "
             "data set; --model-arg sets the others.",
             epilog="built-in models and their settings:\n" + describe_models(),
             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5", help="built-in model (listed below; default: %(default)s)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="a model setting, repeatable (e.g. --model-arg width=64)")
    p.add_argument("--epochs", type=count(1), default=10, help="default: %(default)s")
    p.add_argument("--lr", type=real(0, open_low=True), default=1e-3, help="default: %(default)s")
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    p.add_argument("--weight-decay", type=real(0), default=0.0, help="default: %(default)s")
    p.add_argument("--shift", type=count(0), default=None, metavar="PIXELS",
                   help="augment: translate each training input by up to this many pixels "
                        "(edge-filled; images and 1-D signals; default: 2 for images of at least "
                        "16x16, 0 for other data; 0 turns it off)")
    p.add_argument("--out", required=True, help="output checkpoint (.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _data_args(p)
    _speed_args(p)


def _prune(sub) -> None:
    from mobileprune.sparsity.regularizers import METHODS

    p = _add(sub, "prune", prune.cmd_prune, "ADMM-prune a checkpoint to per-layer targets",
             "ADMM regularisation, masked mapping and masked retraining (seed 003, Algorithm 1), "
             "or a MobilePrune proximal method (seed 000), with a per-layer report. Resumable: "
             "rerun the same command after an interruption.")
    p.add_argument("checkpoint", help="dense (or previously pruned) checkpoint")
    p.add_argument("--model", help=USER_MODEL_HELP)
    p.add_argument("--config", help="YAML pipeline config, or a built-in name (demo, lenet5-71x, lenet5-246x)")
    p.add_argument("--method", default="admm", choices=["admm", *METHODS],
                   help="admm (seed 003, default) or a MobilePrune proximal method (seed 000): "
                        "l0_group_lasso is MobilePrune; l0, l1, l2, group_lasso, "
                        "sparse_group_lasso are the baselines")
    p.add_argument("--sparsity", type=real(0, 1), help="ADMM: prune every Linear/Conv layer to this fraction")
    for flag, what in (("--lam", "group-norm weight"), ("--eta", "l0 weight"), ("--beta", "l1 weight")):
        p.add_argument(flag, type=real(0), help=f"proximal methods: {what}")
    p.add_argument("--rounds", type=count(0), help="proximal methods: number of rounds")
    p.add_argument("--prox-epochs", type=count(0), help="proximal methods: prox epochs per round")
    p.add_argument("--target-nonzero", type=count(1),
                   help="proximal methods: stop the rounds once at most this many weights are nonzero")
    p.add_argument("--admm-epochs", type=count(0), help="override admm.epochs of the config")
    p.add_argument("--retrain-epochs", type=count(0), help="override the retraining epochs of the config")
    p.add_argument("--regrow", type=real(0, 1), metavar="FRACTION",
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
    _data_args(p, default=None)
    _speed_args(p)


def _config(sub) -> None:
    from mobileprune.sparsity.regularizers import METHODS

    p = _add(sub, "config", prune.cmd_config, "show a built-in pruning config, or check one",
             "config show NAME: print a built-in config (demo, lenet5-71x, ...). config check FILE: "
             "validate a config whole, listing every error with its YAML line (docs/config.md "
             "lists every key).")
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("name", help="a built-in name (show) or a YAML file (check)")
    p.add_argument("--method", choices=["admm", *METHODS], help="check: the method the config is for "
                   "(default: its method key, else admm)")


def _model_io(p: argparse.ArgumentParser, out_help: str) -> None:
    """CHECKPOINT, --model, --out and --input-shape of a command that transforms a model."""
    p.add_argument("checkpoint")
    p.add_argument("--model", help=USER_MODEL_HELP)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--input-shape", help=SHAPE_HELP)


def _compact(sub) -> None:
    p = _add(sub, "compact", deploy.cmd_compact, "physically remove zero filters/channels/neurons",
             "Build a smaller dense model without the pruned units (graph traced with torch.fx), "
             "check it gives the same outputs, and compare parameters, MACs and batch-1 latency.")
    _model_io(p, "output checkpoint of the compacted model")
    p.add_argument("--repeats", type=count(1), default=50, help="timed runs per model (default: %(default)s)")
    p.add_argument("--threads", type=count(1), default=1, help="torch threads while timing (default: %(default)s)")


def _export(sub) -> None:
    p = _add(sub, "export", deploy.cmd_export,
             "export for deployment: sparse runtime file, native bundle, .ptl, ONNX, .pte",
             "Export a checkpoint: 'sparse' (mobileprune.runtime file, CSR weights), 'native' (a "
             "directory: the sparse file, the C engine's sources, CMakeLists.txt, an example input "
             "and output), 'ptl' (TorchScript lite), 'onnx' or 'pte' (ExecuTorch, XNNPACK). Each "
             "export is checked numerically against the torch model.")
    _model_io(p, "output file (a directory for --format native)")
    p.add_argument("--format", required=True, choices=sorted(deploy.EXPORT_FORMATS))
    p.add_argument("--value-dtype", default="float32", choices=["float32", "float16"],
                   help="sparse / native format: value type (default: %(default)s)")
    p = _add(sub, "convert", deploy.cmd_convert, "rewrite an old sparse model file (format 1/2) as format 3",
             "Rewrite a sparse model file of format version 1 or 2 (JSON header) as version 3, "
             "the native engine's format (checked by its loader, written atomically).")
    p.add_argument("old", help="the format 1/2 file")
    p.add_argument("new", help="the format 3 file to write (not OLD)")


def _bench(sub) -> None:
    p = _add(sub, "bench", deploy.cmd_bench,
             "latency and size: dense, pruned, compacted, sparse runtime, ORT, ExecuTorch",
             "Measure, in one run, batch-1 and larger-batch latency (median of interleaved runs "
             "after warm-up) of dense torch, pruned torch, compacted torch, the sparse runtime, and "
             "the dense and compacted models under ONNX Runtime and ExecuTorch; file sizes; speedups "
             "against dense torch and against the fastest dense runtime. Writes bench.json, "
             "bench.md and bench.png.")
    p.add_argument("checkpoint", help="pruned checkpoint")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--dense", help="the dense checkpoint it was pruned from (the honest baseline)")
    p.add_argument("--out-dir", help="output directory (default: CHECKPOINT_bench/)")
    p.add_argument("--input-shape", help=SHAPE_HELP)
    p.add_argument("--repeats", type=count(1), default=20, help="default: %(default)s")
    p.add_argument("--warmup", type=count(0), default=5, help="default: %(default)s")
    p.add_argument("--batch-sizes", default="1,8", help="default: %(default)s")
    p.add_argument("--threads", default="1,2", help="default: %(default)s")
    p.add_argument("--formats", default="torch,compacted,sparse,onnx,pte", help="default: %(default)s")


def _inspect(sub) -> None:
    p = _add(sub, "eval", train.cmd_eval, "test accuracy and nonzeros of a checkpoint",
             "Evaluate a checkpoint's test accuracy.")
    p.add_argument("checkpoint")
    p.add_argument("--model", help=USER_MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    _data_args(p, default=None)
    p = _add(sub, "report", train.cmd_report, "per-layer sparsity report of a checkpoint",
             "Per-layer weights, nonzeros, sparsity and compression of a checkpoint.")
    p.add_argument("checkpoint")
    p.add_argument("--model", help=USER_MODEL_HELP)
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("--out", help="write to this file instead of stdout")
    p = _add(sub, "demo", train.cmd_demo, "offline end-to-end demo on the embedded MNIST sample",
             "Train LeNet-5 on the embedded MNIST sample, ADMM-prune it, retrain with masks, "
             "evaluate and print the per-layer report.")
    p.add_argument("--out-dir", default="runs/demo", help="default: %(default)s")
    p.add_argument("--epochs", type=count(1), default=6, help="dense training epochs (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="start over even if outputs exist")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> Parser:
    from mobileprune import __version__

    ap = Parser(prog="mobileprune", description="The mobileprune command line: prune, compact, "
                                                "export and measure PyTorch models for phones.")
    ap.add_argument("--version", action="version", version=f"mobileprune {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in (_train, _prune, _config, _compact, _export, _bench, _inspect):
        add(sub)
    return ap
