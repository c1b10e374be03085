"""Minimal training utilities shared by the pipelines and the CLI.

Nothing here is required to use mobileprune: every algorithm also works inside your
own loop. These helpers exist so the one-command pipeline has one well-tested loop.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mobileprune.errors import ConfigError
from mobileprune.pipeline.heap import keep_freed_memory
from mobileprune import distributed

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, *,
                   momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (with momentum), ``adam`` or ``adamw``."""
    name = name.lower()
    if not lr > 0:
        raise ConfigError(f"learning rate must be positive, got {lr!r}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def _progress(iterable, progress: bool | None, desc: str, total: int | None = None):
    """``iterable`` with progress: a tqdm bar on a terminal; elsewhere (logs, CI, nohup) a
    line every ``$MOBILEPRUNE_PROGRESS_SECONDS`` (default 30) seconds
    (:class:`LineProgress`); nothing with ``progress=False`` or on a rank other than 0."""
    if progress is False or not distributed.is_main():
        return iterable
    if progress is None and not sys.stderr.isatty():
        every = _env_seconds()
        return LineProgress(iterable, desc, total, every)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False,
                disable=None if progress is None else False, dynamic_ncols=True)


def _env_seconds() -> float:
    """``$MOBILEPRUNE_PROGRESS_SECONDS`` (default 30), a number >= 0."""
    text = os.environ.get("MOBILEPRUNE_PROGRESS_SECONDS", "30")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"MOBILEPRUNE_PROGRESS_SECONDS must be a number of seconds >= 0, got {text!r}")
    return value


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class LineProgress:
    """Progress for a log: one line to stderr at most every ``every`` seconds and at the
    end, ``desc: step i/total (p%), loss ..., acc ..., elapsed ..., ETA ...``."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, every: float,
                 stream=None, clock=time.monotonic) -> None:
        self.iterable, self.desc, self.total, self.every = iterable, desc, total, every
        self.stream, self.clock, self.postfix = stream or sys.stderr, clock, {}

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = values

    def line(self, step: int, elapsed: float) -> str:
        parts = [f"{self.desc}: step {step}" + (f"/{self.total} ({100 * step / self.total:.0f}%)"
                                                  if self.total else "")]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and 0 < step < self.total:
            parts.append(f"ETA {_clock(elapsed / step * (self.total - step))}")
        return ", ".join(parts)

    def __iter__(self):
        start = last = self.clock()
        step = 0
        for item in self.iterable:
            yield item
            step += 1
            now = self.clock()
            if now - last >= self.every:
                print(self.line(step, now - start), file=self.stream, flush=True)
                last = now
        if step:
            print(self.line(step, self.clock() - start), file=self.stream, flush=True)


#: The training shift of ``mobileprune train`` for image samples (see :func:`default_shift`).
IMAGE_SHIFT = 2


def default_shift(input_shape: tuple[int, ...]) -> int:
    """The :func:`random_shift` a dense model is trained with when the user names none:
    :data:`IMAGE_SHIFT` pixels for image samples ``(C, H, W)`` of at least 16x16, none for
    other data (1-D signals, feature vectors). Measured on LeNet-5 / full MNIST (10
    epochs): 99.27 % dense without a shift, 99.46 % with 2 pixels, and the lenet5-71x
    config (then 35 epochs) from those two models 99.09 % and 99.39 %
    (docs/benchmarks/lenet5_71x_cli.md)."""
    shape = tuple(int(d) for d in input_shape)
    return IMAGE_SHIFT if len(shape) == 3 and min(shape[1:]) >= 16 else 0


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate every sample of ``x`` (``(N, C, H, W)`` or ``(N, C, L)``) by its own
    random offset in ``[-max_shift, max_shift]`` along each spatial axis, filling with
    the edge values (the background of normalised images, unlike a zero fill); data
    augmentation, a pure function: ``x`` is not modified."""
    if max_shift < 0:
        raise ConfigError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    if x.dim() not in (3, 4):
        raise ConfigError(f"random_shift needs (N, C, L) or (N, C, H, W) input, got shape {tuple(x.shape)}")
    s = max_shift
    n = x.shape[0]
    spatial = x.shape[2:]
    pad = [s, s] * len(spatial)
    xp = nn.functional.pad(x, pad, mode="replicate")
    offs = [torch.randint(0, 2 * s + 1, (n,), generator=generator) for _ in spatial]
    idx = [o[:, None] + torch.arange(L)[None, :] for o, L in zip(offs, spatial)]  # (N, L) each
    b = torch.arange(n)
    if len(spatial) == 1:
        return xp[b[:, None], :, idx[0]].permute(0, 2, 1)
    out = xp[b[:, None, None], :, idx[0][:, :, None], idx[1][:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def forward(model: nn.Module, x: Tensor | Sequence[Tensor]) -> Tensor:
    """``model(x)``, or ``model(*x)`` when a batch's inputs are a tuple/list of tensors (a
    model with several inputs, e.g. :class:`~mobileprune.models.ITrackerMobile`)."""
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def training_loss(model: nn.Module, x: Tensor, y: Tensor, *,
                  loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                  teacher: nn.Module | None = None, distill: float = 0.0,
                  temperature: float = 4.0) -> tuple[Tensor, Tensor]:
    """``(loss, model(x))``: ``loss_fn``, mixed with distillation from ``teacher`` when
    ``distill = a > 0``: ``(1 - a) * loss_fn + a * T^2 * KL(softmax(teacher / T) ||
    softmax(model / T))`` (Hinton et al. 2015)."""
    out = forward(model, x)
    loss = loss_fn(out, y)
    if distill > 0:
        with torch.no_grad():
            soft = torch.softmax(forward(teacher, x) / temperature, dim=1)
        kd = nn.functional.kl_div(torch.log_softmax(out / temperature, dim=1), soft,
                                  reduction="batchmean") * temperature ** 2
        loss = (1 - distill) * loss + distill * kd
    return loss, out


PRECISIONS = ("auto", "bf16", "fp32")
_SPEED = {"precision": os.environ.get("MOBILEPRUNE_PRECISION", "auto"), "channels_last": "auto",
          "heap": os.environ.get("MOBILEPRUNE_HEAP", "keep")}
HEAP_MODES = ("keep", "system")


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), read from
    ``/proc/cpuinfo`` (``False`` where the OS does not tell)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def set_training_speed(precision: str = "auto", channels_last: str | bool = "auto",
                       heap: str = "keep") -> None:
    """How every training loop computes (issue 21): ``precision`` ``"bf16"`` runs forward
    passes under ``torch.autocast`` in bfloat16 (weights, gradients and optimizer stay
    float32, so masks stay exact), ``"fp32"`` does not, ``"auto"`` picks bf16 where the
    CPU has it natively (:func:`bf16_supported`); ``channels_last`` (``"auto"``: on for
    models with 2-D convolutions) trains in that memory layout and puts the model back
    to the standard layout after every epoch; ``heap`` ``"keep"`` (the default, or
    ``$MOBILEPRUNE_HEAP``) makes glibc keep freed tensors for the next step
    (:func:`mobileprune.pipeline.heap.keep_freed_memory`, from the first training epoch
    on, for the rest of the process), ``"system"`` leaves the C library's settings."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if channels_last not in ("auto", True, False):
        raise ConfigError(f"channels_last must be 'auto', true or false, got {channels_last!r}")
    if heap not in HEAP_MODES:
        raise ConfigError(f"heap must be one of {', '.join(HEAP_MODES)}, got {heap!r}")
    _SPEED.update(precision=precision, channels_last=channels_last, heap=heap)


def training_precision() -> str:
    """``"bf16"`` or ``"fp32"``: what :func:`train_epoch` runs in now."""
    p = _SPEED["precision"]
    if p not in PRECISIONS:  # set from $MOBILEPRUNE_PRECISION
        raise ConfigError(f"MOBILEPRUNE_PRECISION must be one of {', '.join(PRECISIONS)}, got {p!r}")
    return ("bf16" if bf16_supported() else "fp32") if p == "auto" else p


@contextlib.contextmanager
def fast_layout(model: nn.Module, *others: nn.Module | None, example=None):
    """Put ``model`` and ``others`` in the memory layout of :func:`set_training_speed`
    (``channels_last`` for models with 2-D convolutions by default) for the duration,
    then back to the standard layout; yield the layout (``None``: standard) for the
    inputs (:func:`to_layout`).

    ``others`` (e.g. a distillation teacher) run on the same inputs and take the same
    layout: a model left in the standard layout would get channels_last inputs whose
    single-channel first layer reads as standard, and would run its convolutions and
    poolings on the slow path (about 2x slower for LeNet-5's teacher). With the default
    ``"auto"`` and an ``example`` batch, every model first runs one sample of it in
    channels_last (:func:`_runs_in`); a model that cannot (e.g. ``out.view(n, -1)`` on a
    convolution's output) keeps the standard layout for all, with a warning."""
    cl = _SPEED["channels_last"]
    if cl == "auto":
        cl = any(isinstance(m, nn.Conv2d) for m in model.modules())
    layout = torch.channels_last if cl else None
    models = [m for m in (model, *others) if m is not None]
    if layout is not None:
        for m in models:
            m.to(memory_format=layout)
        probe = _SPEED["channels_last"] == "auto" and example is not None
        if probe and not _runs_in(layout, models, example):
            for m in models:
                m.to(memory_format=torch.contiguous_format)
            layout = None
    try:
        yield layout
    finally:
        if layout is not None:
            for m in models:
                m.to(memory_format=torch.contiguous_format)


def _runs_in(layout, models: Sequence[nn.Module], x) -> bool:
    """Whether every model runs one sample of the batch ``x`` in ``layout``: a forward pass
    in eval mode without gradients (no state changes); a ``RuntimeError`` (e.g. a
    ``view`` that needs the standard strides) means no, with a warning naming it."""
    sample = x[:1] if isinstance(x, Tensor) else type(x)(t[:1] for t in x)
    for m in models:
        was = m.training
        m.eval()
        try:
            with torch.no_grad():
                forward(m, to_layout(sample, layout))
        except RuntimeError as e:
            warnings.warn(f"{type(m).__name__} does not run in channels_last ({str(e).splitlines()[0]}); "
                          "training and evaluating it in the standard layout, which is slower "
                          "(use reshape instead of view to allow channels_last)", stacklevel=4)
            return False
        finally:
            m.train(was)
    return True


def _peek(iterable):
    """``(first item or None, an iterator over every item)``."""
    it = iter(iterable)
    first = next(it, None)
    return first, (it if first is None else itertools.chain([first], it))


def to_layout(x, layout):
    """``x`` in ``layout`` when it is one 4-D tensor (an image batch); else unchanged."""
    if layout is not None and isinstance(x, Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=layout)
    return x


@contextlib.contextmanager
def fast_training(model: nn.Module, *others: nn.Module | None, example=None):
    """Yield ``(bf16, layout)`` for the training loop (see :func:`set_training_speed`
    and :func:`fast_layout`), with the heap setting applied."""
    if _SPEED["heap"] not in HEAP_MODES:  # set from $MOBILEPRUNE_HEAP
        raise ConfigError(f"MOBILEPRUNE_HEAP must be one of {', '.join(HEAP_MODES)}, "
                          f"got {_SPEED['heap']!r}")
    if _SPEED["heap"] == "keep":
        keep_freed_memory()
    with fast_layout(model, *others, example=example) as layout:
        yield training_precision() == "bf16", layout


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                penalty: Callable[[], Tensor] | None = None,
                after_step: Callable[[], object] | None = None,
                scheduler=None, progress: bool | None = None, desc: str = "train",
                teacher: nn.Module | None = None, distill: float = 0.0,
                temperature: float = 4.0, shift: int = 0) -> dict[str, float]:
    """One epoch of minibatch training.

    ``penalty()`` is added to the loss (e.g. :meth:`ADMMPruner.penalty`, seed 003 Eq. 5)
    and ``after_step()`` runs after each optimizer step (e.g. :meth:`ADMMPruner.step`).
    With a ``teacher`` and ``distill = a > 0`` the loss is
    ``(1 - a) * loss_fn + a * T^2 * KL(softmax(teacher / T) || softmax(model / T))``
    (knowledge distillation, Hinton et al. 2015), e.g. from the dense model while
    retraining the pruned one. ``shift > 0`` augments each batch with
    :func:`random_shift` (the teacher sees the same shifted inputs). Raises
    ``FloatingPointError`` when the loss becomes NaN or infinite.
    """
    if not 0.0 <= distill <= 1.0:
        raise ConfigError(f"distill must be in [0, 1], got {distill!r}")
    if distill > 0 and teacher is None:
        raise ConfigError("distill > 0 needs a teacher model")
    if teacher is not None:
        teacher.eval()
    model.train()
    total, n, correct = 0.0, 0, 0
    classes = None
    bar = _progress(loader, progress, desc, total=len(loader))
    first, batches = _peek(bar)
    with fast_training(model, teacher, example=first[0] if first else None) as (bf16, layout):
        for x, y in batches:
            if shift:
                if isinstance(x, (tuple, list)):
                    raise ConfigError("shift augments one image input; this loader yields "
                                      f"{len(x)} inputs per batch")
                x = random_shift(x, shift)
            x = to_layout(x, layout)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, out = training_loss(model, x, y, loss_fn=loss_fn, teacher=teacher,
                                          distill=distill, temperature=temperature)
            loss = loss.float()
            stats = _step(model, loss, penalty, optimizer, scheduler, after_step, desc)
            b = y.shape[0]
            total += stats * b
            n += b
            if classes is None:  # class-index targets: report a training accuracy
                classes = not y.is_floating_point() and y.dim() == 1
            if classes:
                correct += int((out.argmax(1) == y).sum())
            if hasattr(bar, "set_postfix") and n:
                bar.set_postfix(loss=f"{total / n:.4f}", refresh=False,
                                **({"acc": f"{correct / n:.4f}"} if classes else {}))
    return {"loss": total / max(n, 1),
            "train_accuracy": correct / max(n, 1) if classes else None}


def _step(model: nn.Module, loss: Tensor, penalty, optimizer, scheduler, after_step, desc: str) -> float:
    """Backward, (gradient average across ranks,) optimizer and scheduler step; the loss."""
    full = loss + penalty() if penalty is not None else loss
    if not torch.isfinite(full):
        raise FloatingPointError(f"loss diverged ({float(full)}) in {desc}; lower the learning rate or the regularisation strength (rho, lam)")
    optimizer.zero_grad(set_to_none=True)
    full.backward()
    if distributed.active():  # every rank steps as one process on the joint batch
        distributed.average_gradients(model)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if after_step is not None:
        after_step()
    if distributed.active():
        distributed.sync_buffers(model)
    return loss.item()


def _eval_outputs(model: nn.Module, loader: DataLoader, progress: bool | None):
    """``(model(x), y)`` for every batch of ``loader``, in eval mode, without gradients and
    in the training layout (:func:`fast_layout`); the model's mode and layout are
    restored afterwards, also when the caller stops early or raises."""
    was_training = model.training
    model.eval()
    first, batches = _peek(_progress(loader, progress, "eval"))
    try:
        with torch.no_grad(), fast_layout(model, example=first[0] if first else None) as layout:
            for x, y in batches:
                yield forward(model, to_layout(x, layout)), y
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, loader: DataLoader, *, progress: bool | None = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, no grad)."""
    correct = n = 0
    batches = _eval_outputs(model, loader, progress)
    for out, y in batches:
        if y.is_floating_point() or y.dim() != 1:
            batches.close()
            raise ConfigError(f"evaluate measures classification accuracy, but the targets "
                              f"are {y.dtype} of shape {tuple(y.shape)} (not class indices); "
                              f"pass another metric, e.g. mobileprune.pipeline.train.mean_distance")
        correct += int((out.argmax(1) == y).sum())
        n += y.shape[0]
    if n == 0:
        raise ValueError("evaluation data is empty")
    return correct / n


def mean_distance(model: nn.Module, loader: DataLoader, *, progress: bool | None = False) -> float:
    """Mean Euclidean distance between the outputs and the targets (eval mode, no grad):
    a regression metric, lower is better; for gaze estimation (iTracker) the error in cm
    between the predicted and the true gaze point."""
    total, n = 0.0, 0
    batches = _eval_outputs(model, loader, progress)
    for out, y in batches:
        if out.shape != y.shape:
            batches.close()
            raise ConfigError(f"mean_distance: outputs {tuple(out.shape)} and targets "
                              f"{tuple(y.shape)} differ in shape")
        total += float(torch.linalg.vector_norm((out - y).reshape(len(y), -1), dim=1).sum())
        n += y.shape[0]
    if n == 0:
        raise ValueError("evaluation data is empty")
    return total / n


def cosine_lr(optimizer: torch.optim.Optimizer, total_steps: int):
    """Cosine decay of the learning rate to 0 over ``total_steps`` steps."""
    total_steps = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
