"""The ``mobileprune`` command line: a thin layer over the library.

Sub-commands: ``train``, ``prune``, ``compact``, ``export``, ``convert``, ``bench``,
``eval``, ``report``, ``demo`` (:mod:`.parser`; their bodies in :mod:`.train`,
:mod:`.prune`, :mod:`.deploy`). Before a command runs, an output that is one of its
inputs is refused and its outputs are locked (:mod:`mobileprune.files`). Every library
error (:class:`~mobileprune.errors.MobilePruneError`), a bad flag, an unwritable path or
a NaN is one line ``error: ...`` with exit status 2; Ctrl-C exits with 130. Outputs are
written atomically, so a failed run never overwrites an existing file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Sequence

from mobileprune.errors import MobilePruneError
from mobileprune.files import output_lock, refuse_inputs_as_outputs

__all__ = ["main", "build_parser"]


def build_parser():
    from mobileprune.cli.parser import build_parser as build

    return build()


def _side_files(out: str | None) -> list[Path]:
    """``OUT`` and the reports written beside it (``OUT.md``, ``OUT.json``)."""
    return [] if out is None else [Path(out), Path(out).with_suffix(".md"), Path(out).with_suffix(".json")]


def _io(args) -> tuple[list, list, list]:
    """The files a command reads, the files it writes and the folders it fills."""
    from mobileprune.cli.prune import run_dir_of

    cmd, ck = args.command, getattr(args, "checkpoint", None)
    if cmd == "prune":
        config = [args.config] if args.config and Path(args.config).exists() else []
        return [ck, *config], _side_files(args.out), [run_dir_of(args)]
    if cmd == "compact":
        return [ck], _side_files(args.out), []
    if cmd == "export":
        native = args.format == "native"
        return [ck], [] if native else [args.out], [args.out] if native else []
    if cmd == "convert":
        return [args.old], [args.new], []
    if cmd in ("report", "train"):
        return [ck], [args.out], []
    if cmd == "bench":
        return [ck, args.dense], [], [args.out_dir]
    return [], [], []


def _run(args) -> int:
    """Refuse outputs that are inputs, lock the outputs, then run the command; under
    ``torchrun`` join the group first (rank 0 locks, writes and prints)."""
    inputs, outputs, folders = _io(args)
    refuse_inputs_as_outputs(inputs, outputs, folders)
    main_rank = True
    if args.command in ("train", "prune"):
        from mobileprune import distributed

        if distributed.init_from_env():
            main_rank = distributed.is_main()
    with contextlib.ExitStack() as stack:
        if not main_rank:
            stack.enter_context(contextlib.redirect_stdout(open(os.devnull, "w")))
        for out in [*outputs[:1], *folders] if main_rank else []:
            if out is not None:
                stack.enter_context(output_lock(out))
        status = args.func(args)
    if args.command in ("train", "prune"):
        distributed.finish()
    return status


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
