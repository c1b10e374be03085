"""``prune``: ADMM (seed 003) or a MobilePrune proximal method (seed 000) on a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mobileprune.pipeline.train import set_training_speed, training_precision
from mobileprune.cli.models import load_model
from mobileprune.cli.train import loaders, progress
from mobileprune.errors import ConfigError


def _read_config(arg: str | None, method: str) -> dict[str, Any]:
    """The config file or built-in ``arg``, validated whole (every error at once) before
    any work."""
    from mobileprune.pipeline.config import check_config

    if arg is None:
        return {}
    raw = check_config(arg, method)
    if not isinstance(raw, dict):
        raise ConfigError(f"config {arg} must be a mapping")
    return dict(raw)


def cmd_config(args) -> int:
    """``config show NAME`` prints a built-in config; ``config check FILE`` validates one."""
    from mobileprune.pipeline.config import check_config
    from mobileprune.sparsity.targets import builtin_configs, config_path

    if args.action == "show":
        if args.name not in builtin_configs():
            raise ConfigError(f"no built-in config {args.name!r}; built-in: {', '.join(builtin_configs())}")
        print(config_path(args.name).read_text(), end="")
        return 0
    raw = check_config(args.name, args.method)
    kind = raw.get("method") or args.method or "admm"
    stages = len(raw.get("stages") or [raw]) if kind == "admm" else None
    print(f"ok: {args.name} is a valid {kind} config" + (f" ({stages} stage(s))" if stages else ""))
    return 0


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
    raw = _read_config(args.config, "admm") if args.config else {"default": args.sparsity}
    for key, section in (("admm_epochs", "admm"), ("retrain_epochs", "retrain")):
        if getattr(args, key) is not None:
            raw.setdefault(section, {})["epochs"] = getattr(args, key)
    if args.regrow is not None:
        raw.setdefault("retrain", {})["regrow"] = args.regrow
    return raw, PipelineConfig.from_dict(raw)


def _prox_config(args) -> dict[str, Any]:
    """The config of a proximal method (seed 000) from the file and the flags."""
    if args.sparsity is not None:
        raise ConfigError("--sparsity is for --method admm; proximal methods take --lam/--eta")
    if args.admm_epochs is not None:
        raise ConfigError("--admm-epochs is for --method admm")
    raw = _read_config(args.config, args.method)
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


def _world() -> dict[str, Any]:
    """How many processes trained (``torchrun``) and over which backend."""
    from mobileprune import distributed

    return {"world_size": distributed.world_size(), "backend": distributed.backend()}


def run_dir_of(args) -> Path:
    """``--run-dir``, or ``OUT.run/`` beside ``--out``."""
    return Path(args.run_dir) if args.run_dir else Path(args.out).with_name(Path(args.out).stem + ".run")


def cmd_prune(args) -> int:
    import torch

    from mobileprune import distributed
    from mobileprune.pipeline.prune import admm_prune, proximal_prune

    if args.method == "admm":
        raw, cfg = _admm_config(args)
        run, saved_cfg, what = admm_prune, cfg.to_dict(), "pruned with ADMM"
    else:
        raw = cfg = _prox_config(args)
        run, saved_cfg, what = proximal_prune, raw, f"pruned with {args.method}"
    if args.precision:
        set_training_speed(args.precision)
    ckpt, model = load_model(args.checkpoint, args.model)
    dataset = args.dataset or ckpt["extra"].get("dataset") or raw.get("dataset") or "mnist-sample"
    torch.manual_seed(args.seed)
    train_loader, test_loader = loaders(args, dataset, model)
    run_dir = run_dir_of(args)
    res = run(model, train_loader, cfg, eval_loader=test_loader, run_dir=run_dir,
              resume=not args.fresh, progress=progress(args),
              model_name=ckpt["model"]["name"], model_kwargs=ckpt["model"]["kwargs"])
    _save(args, ckpt, model, res, saved_cfg, dataset, what, train_loader.dataset[0][0].shape)
    if not args.run_dir and not args.keep_run and distributed.is_main():
        shutil.rmtree(run_dir, ignore_errors=True)  # finished: its state is in OUT now
    return 0


def _save(args, ckpt, model, res, config, dataset, what, input_shape) -> None:
    from mobileprune.checkpoint import save_checkpoint
    from mobileprune.files import atomic_write_text
    from mobileprune.sparsity.report import to_json, to_markdown

    out = Path(args.out)
    save_checkpoint(out, model, kind="pruned", model_name=ckpt["model"]["name"],
                    model_kwargs=ckpt["model"]["kwargs"], masks=res.masks, config=config,
                    metrics=res.report["metrics"],
                    extra={"dataset": dataset, "input_shape": list(input_shape),
                           "distributed": _world(), "precision": training_precision(),
                           "compacted": res.compacted, "history": res.history, "targets":
                           {r["layer"]: r["target_keep"] for r in res.report["layers"]}})
    md = to_markdown(res.report, title=f"{ckpt['model']['name'] or args.model} {what}")
    atomic_write_text(out.with_suffix(".md"), md)
    atomic_write_text(out.with_suffix(".json"), to_json({**res.report, "distributed": _world()}))
    print(md)
    print(f"saved pruned model to {out} (report: {out.with_suffix('.md')}, {out.with_suffix('.json')})")
