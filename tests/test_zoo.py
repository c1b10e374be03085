"""The zoo (issue 19, item 7): public architectures x the library's steps.

Every architecture of ``tests/zoo_models.py`` (torchvision, timm, LSTM / GRU /
Transformer classifiers, the built-in models) goes through the steps of
``tests/zoo_steps.py``: 90 % unstructured masks exact on every weight, compaction after
zeroing channels, sparse export + runtime equal to torch, ONNX / .ptl / .pte exports
verified. Each case passes, or is listed in :data:`KNOWN_FAILURES` with a fragment of
the reason it fails with: such a case is an ``xfail(strict=True)`` that only counts when
the step fails *with that reason*; a different failure fails the test, and a fix shows
up as XPASS, which fails the test too, so the entry gets removed.

Time (the module must stay under ~2 minutes on a 2-core machine): the exports through
``torch.export`` are the slow part (ONNX 1-11 s per model, .pte 2-25 s), so the
``onnx`` and ``pte`` columns run here only on :data:`SLOW_STEP_MODELS`, a few
representative models (a torchvision ViT, a timm ViT, one recurrent model for ONNX).
Plain CNNs' ONNX and .pte exports are tests/test_export.py's round trips (LeNet-5,
LeNet-300-100, FER-Net, ResNet-20); the GRU / Transformer / attention classifiers' ONNX and
.pte exports, and the LSTM's .pte, are tested there on smaller copies of the same layers
(``test_sequence_models_export_to_*``). ``benchmarks/zoo.py`` runs every step on every
model (and the latency column) and writes ``docs/zoo.md``.
torchvision / timm cases skip with the reason when the ``zoo`` extra is not installed.
"""

from __future__ import annotations

import pytest

from mobileprune.measure.latency import torch_threads
from zoo_models import BY_NAME, ZOO, missing
from zoo_steps import STEPS

#: The models the slow columns run on here (``benchmarks/zoo.py`` runs them all).
SLOW_STEP_MODELS: dict[str, tuple[str, ...]] = {
    "onnx": ("tv_vit", "timm_deit_tiny", "lstm_classifier"),
    "pte": ("timm_deit_tiny",),
}

#: ``{(model, step): fragment of the reason}``: cases that fail on main today, each with
#: why (the library's message). Remove an entry when its case passes (XPASS fails).
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    # traced by the torch.export fallback (torch.fx cannot: `if new_h != H`); its
    # MobileViT block folds the batch into other axes (`x.reshape(B * C * n_h, ...)`,
    # the transformer runs on `(B * P, N, C)`), which the runtime cannot hold
    ("timm_mobilevit_xxs", "sparse"): "does not keep the batch (1) on axis 0",
}


class KnownFailure(AssertionError):
    """A step failed with the reason :data:`KNOWN_FAILURES` gives for it."""


def _cases():
    for entry in ZOO:
        for step in STEPS:
            if entry.name not in SLOW_STEP_MODELS.get(step, (entry.name,)):
                continue
            marks = []
            why = missing(entry)
            if why:
                marks.append(pytest.mark.skip(reason=why))
            known = KNOWN_FAILURES.get((entry.name, step))
            if known:
                marks.append(pytest.mark.xfail(raises=KnownFailure, strict=True, reason=known))
            yield pytest.param(entry.name, step, marks=marks, id=f"{entry.name}-{step}")


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.mark.parametrize("name,step", list(_cases()))
def test_zoo(name: str, step: str, tmp_path) -> None:
    result = STEPS[step](BY_NAME[name], tmp_path)
    if result == "ok":
        return
    known = KNOWN_FAILURES.get((name, step))
    if known is not None and known in result:
        raise KnownFailure(result)
    pytest.fail(f"{name} / {step}: {result}" + (f" (known failure expected: {known!r})" if known else ""),
                pytrace=False)


def test_zoo_covers_the_issue() -> None:
    """At least 20 architectures, unique names, every family issue 19 names."""
    assert len(ZOO) >= 20 and len(BY_NAME) == len(ZOO)
    sources = [e.source for e in ZOO]
    assert sources.count("torchvision") >= 8 and sources.count("timm") >= 3
    assert {"lstm_classifier", "gru_classifier", "transformer_classifier"} <= set(BY_NAME)


def test_zeroed_units_are_dead() -> None:
    """The units zero_filters zeroes output exactly 0: a Conv + BatchNorm's channels
    (CIFAR ResNet-20) and an LSTM's hidden units; the others do not."""
    import torch
    from torch import nn

    from zoo_models import build
    from zoo_steps import zero_filters

    model, inputs = build(BY_NAME["mp_resnet20"])
    assert zero_filters(model, inputs) > 0
    outs = {}
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # the stem's
    bn.register_forward_hook(lambda m, i, o: outs.setdefault("bn", o))
    with torch.no_grad():
        model(*inputs)
    assert torch.all(outs["bn"][:, ::4] == 0) and bool(outs["bn"][:, 1::4].any())
    lstm, xs = build(BY_NAME["lstm_classifier"])
    zero_filters(lstm, xs)
    with torch.no_grad():
        seq, _ = lstm.rnn(torch.randn(3, 16, 8))
    assert torch.all(seq[..., ::4] == 0) and bool(seq[..., 1::4].any())
