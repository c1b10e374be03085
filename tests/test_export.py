"""Deployment exports (mobileprune.deploy.export): .ptl, ONNX and ExecuTorch .pte.

Every export is run back in its runtime and compared with the eager model; compacted
models give smaller files; models that cannot be exported raise UnsupportedModelError;
files are written atomically. Tests that need an optional package skip with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobileprune.deploy import numerics
from mobileprune.surgery.compact import compact
from mobileprune.errors import ConfigError, MobilePruneError, UnsupportedModelError
from mobileprune.deploy.export import (ExportDependencyError, export_executorch, export_onnx,
                                export_torchscript_lite)
from mobileprune.models import FERNet, LeNet5, LeNet300100
from mobileprune.models.resnet_cifar import CifarResNet


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


HAS_ONNX = _has("onnxscript") and _has("onnx")
HAS_ORT = _has("onnxruntime")
HAS_ET = _has("executorch")
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxscript not installed "
                                "(pip install -c constraints.txt '.[export]')")
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed "
                               "(pip install -c constraints.txt '.[export]')")
needs_et = pytest.mark.skipif(not HAS_ET, reason="executorch not installed "
                              "(pip install -c constraints.txt '.[export]')")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


def _lenet5():
    return LeNet5(), (1, 1, 28, 28)


def _lenet300100():
    return LeNet300100(), (1, 1, 28, 28)


def _fernet():
    m = FERNet(batchnorm=True, input_size=16)
    _randomize_bn(m)
    return m, (1, 1, 16, 16)


def _resnet20():
    m = CifarResNet(3, widths=(4, 8, 16))  # ResNet-20 depth, narrow and on 16x16 inputs
    _randomize_bn(m, 1)
    return m, (1, 3, 16, 16)


MODELS = {"lenet5": _lenet5, "lenet300100": _lenet300100, "fernet": _fernet,
          "resnet20": _resnet20}


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model, shape = MODELS[name]()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7))
    return model, x


def _check_result(r: dict, path: Path, fmt: str) -> None:
    assert r["path"] == path and path.exists()
    assert r["bytes"] == path.stat().st_size > 0
    assert r["format"] == fmt
    assert r["verified"] is True
    assert 0.0 <= r["max_abs_diff"] <= 1e-4
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_lite_round_trip(name, tmp_path):
    model, x = _build(name)
    model.train()
    path = tmp_path / f"{name}.ptl"
    r = export_torchscript_lite(model, x, path)
    _check_result(r, path, "ptl")
    assert model.training  # the caller's model is not switched to eval
    assert r["dynamic_batch"] is True
    from torch.jit.mobile import _load_for_lite_interpreter

    loaded = _load_for_lite_interpreter(str(path))
    model.eval()
    x5 = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        want = model(x5)
        diff = float((loaded(x5) - want).abs().max())
    assert diff <= 1e-4 * (1 + float(want.abs().max()))


@needs_onnx
@needs_ort
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_round_trip(name, tmp_path):
    import onnxruntime as ort

    model, x = _build(name)
    path = tmp_path / f"{name}.onnx"
    r = export_onnx(model, x, path)
    _check_result(r, path, "onnx")
    assert r["dynamic_batch"] is True and isinstance(r["opset"], int)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # symbolic batch axis
    x3 = torch.randn(3, *x.shape[1:])
    got = sess.run(None, {"input": x3.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x3).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * (1 + np.abs(want).max())


@needs_onnx
@needs_ort
def test_onnx_opset_and_static_fallback(tmp_path):
    class FixedBatch(nn.Module):  # hard-codes the batch size: no dynamic batch axis
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(x.reshape(2, 8))

    r = export_onnx(FixedBatch(), torch.randn(2, 2, 4), tmp_path / "f.onnx", opset=18)
    assert r["verified"] and r["opset"] == 18 and r["dynamic_batch"] is False
    with pytest.raises(ConfigError):
        export_onnx(FixedBatch(), torch.randn(2, 2, 4), tmp_path / "g.onnx", opset=3)


@needs_et
@pytest.mark.parametrize("name", ["lenet5", "lenet300100", "fernet"])  # lowering is slow: 3 of 4
def test_executorch_round_trip(name, tmp_path):
    model, x = _build(name)
    path = tmp_path / f"{name}.pte"
    r = export_executorch(model, x, path)
    _check_result(r, path, "pte")
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    x2 = torch.randn(x.shape)
    got = method.execute([x2])[0]
    with torch.no_grad():
        want = model.eval()(x2)
    assert float((got - want).abs().max()) <= 1e-4 * (1 + float(want.abs().max()))


# --------------------------------------------------------------------------- compaction

def _half_pruned_lenet5() -> nn.Module:
    """LeNet-5 with every other conv filter and fc1 neuron zeroed (half removed)."""
    torch.manual_seed(3)
    m = LeNet5()
    with torch.no_grad():
        for layer in (m.conv1, m.conv2, m.fc1):
            layer.weight[1::2] = 0
            layer.bias[1::2] = 0
    return m


def test_compacted_lenet5_gives_smaller_files(tmp_path):
    pruned = _half_pruned_lenet5()
    x = torch.randn(1, 1, 28, 28)
    small = compact(pruned, x)
    assert small.conv1.out_channels == 10 and small.fc1.out_features == 250
    sizes = {}
    exporters = [("ptl", export_torchscript_lite)]
    if HAS_ONNX and HAS_ORT:
        exporters.append(("onnx", export_onnx))
    for fmt, fn in exporters:
        dense = fn(pruned, x, tmp_path / f"dense.{fmt}")
        comp = fn(small, x, tmp_path / f"compact.{fmt}")
        assert dense["verified"] and comp["verified"]
        assert dense["zero_fraction"] > 0.4 and comp["zero_fraction"] == 0.0
        sizes[fmt] = (dense["bytes"], comp["bytes"])
        # half the filters of conv2 and half the neurons of fc1 go: fc1 shrinks ~4x
        assert comp["bytes"] < 0.4 * dense["bytes"], (fmt, sizes[fmt])
    print("dense vs compacted bytes:", sizes)


# --------------------------------------------------------------------------- errors

class DataDependent(nn.Module):
    """Branches on a tensor value: tracing and torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class Stateful(nn.Module):
    """Python-side state that tracing freezes: the file does not reproduce the model."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * float(self.calls)


def test_data_dependent_control_flow_is_unsupported(tmp_path):
    x = torch.randn(2, 4)
    if HAS_ONNX:
        with pytest.raises(UnsupportedModelError, match="torch.export cannot capture"):
            export_onnx(DataDependent(), x, tmp_path / "m.onnx")
    if HAS_ET:
        with pytest.raises(UnsupportedModelError, match="torch.export cannot capture"):
            export_executorch(DataDependent(), x, tmp_path / "m.pte")
    assert os.listdir(tmp_path) == []


def test_control_flow_model_is_scripted_for_ptl(tmp_path):
    """Tracing would freeze the branch; torch.jit.script gives a correct program, and
    that is the one written."""
    model = DataDependent()
    r = export_torchscript_lite(model, torch.randn(2, 4), tmp_path / "m.ptl")
    assert r["verified"] and r["program"] == "torch.jit.script"
    from torch.jit.mobile import _load_for_lite_interpreter

    loaded = _load_for_lite_interpreter(str(tmp_path / "m.ptl"))
    with torch.no_grad():
        for x in (torch.ones(2, 4), -torch.ones(2, 4)):  # both branches survive
            assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_scripted_model_with_control_flow_exports_to_ptl(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(DataDependent())
    r = export_torchscript_lite(scripted, torch.randn(2, 4), tmp_path / "m.ptl")
    assert r["verified"]
    from torch.jit.mobile import _load_for_lite_interpreter

    loaded = _load_for_lite_interpreter(str(tmp_path / "m.ptl"))
    for x in (torch.ones(2, 4), -torch.ones(2, 4)):  # both branches survive
        assert torch.allclose(loaded(x), scripted(x), atol=1e-6)


def test_bad_arguments(tmp_path):
    with pytest.raises(UnsupportedModelError):
        export_torchscript_lite(lambda x: x, torch.randn(1, 4), tmp_path / "a.ptl")
    with pytest.raises(ConfigError):
        export_torchscript_lite(LeNet300100(), [1, 2], tmp_path / "a.ptl")
    with pytest.raises(UnsupportedModelError, match="does not run"):
        export_torchscript_lite(LeNet300100(), torch.randn(1, 5), tmp_path / "a.ptl")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- atomic writes

def test_failed_ptl_export_keeps_existing_file(tmp_path):
    path = tmp_path / "m.ptl"
    path.write_bytes(b"old contents")
    with pytest.raises(UnsupportedModelError, match="no TorchScript program reproduces"):
        export_torchscript_lite(Stateful(), torch.randn(2, 4), path)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["m.ptl"]


@needs_onnx
@needs_ort
def test_failed_onnx_verification_leaves_no_partial_file(tmp_path, monkeypatch):
    def mismatch(got, want, what):
        raise numerics.Mismatch(f"{what}: forced mismatch")

    monkeypatch.setattr(numerics, "compare", mismatch)  # fails after the file was written
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(UnsupportedModelError, match="forced mismatch"):
        export_onnx(nn.Linear(4, 2), torch.randn(1, 4), path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.onnx"]


# --------------------------------------------------------------------------- missing packages

def test_missing_onnxscript_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import raises ImportError
    with pytest.raises(ExportDependencyError, match="onnxscript.*not installed") as info:
        export_onnx(LeNet300100(), torch.randn(1, 784), tmp_path / "m.onnx")
    assert isinstance(info.value, ImportError) and isinstance(info.value, MobilePruneError)
    assert os.listdir(tmp_path) == []


def test_missing_executorch_is_a_clear_error(tmp_path, monkeypatch):
    for mod in ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ExportDependencyError, match="executorch"):
        export_executorch(LeNet300100(), torch.randn(1, 784), tmp_path / "m.pte")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- sequence models

class _LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1])


class _GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class _TransformerClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


class _MHAClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha, self.fc = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.mha(x, x, x, need_weights=False)
        return self.fc(y.mean(1))


SEQ_MODELS = {"lstm": (_LSTMClassifier, 6), "gru": (_GRUClassifier, 6),
              "transformer": (_TransformerClassifier, 8), "mha": (_MHAClassifier, 8)}


def _seq(name: str):
    torch.manual_seed(0)
    cls, features = SEQ_MODELS[name]
    return cls(), torch.randn(2, 4, features, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", list(SEQ_MODELS))
def test_sequence_models_export_to_ptl(name, tmp_path):
    """LSTM / GRU / Transformer / attention: tracer warnings are no refusal, the lite
    interpreter reproduces the model on another batch size too."""
    model, x = _seq(name)
    path = tmp_path / f"{name}.ptl"
    r = export_torchscript_lite(model, x, path)
    _check_result(r, path, "ptl")
    assert r["dynamic_batch"] is True
    from torch.jit.mobile import _load_for_lite_interpreter

    x3 = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        want = model.eval()(x3)
        got = _load_for_lite_interpreter(str(path))(x3)
    assert float((got - want).abs().max()) <= 1e-4 * (1 + float(want.abs().max()))


@needs_onnx
@needs_ort
@pytest.mark.parametrize("name", list(SEQ_MODELS))
def test_sequence_models_export_to_onnx(name, tmp_path):
    model, x = _seq(name)
    path = tmp_path / f"{name}.onnx"
    _check_result(export_onnx(model, x, path), path, "onnx")


@needs_et
@pytest.mark.parametrize("name", ["lstm", "gru", "transformer", "mha"])
def test_sequence_models_export_to_pte(name, tmp_path):
    model, x = _seq(name)
    path = tmp_path / f"{name}.pte"
    r = export_executorch(model, x, path)
    _check_result(r, path, "pte")
    assert r["backend"] == ("portable" if name in ("lstm", "gru") else "xnnpack")


class FrozenBranch(nn.Module):
    """A branch on a tensor value that torch.jit.script cannot compile (``*xs``): the
    traced program keeps the example's branch, wrong on the random input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, *xs):
        x = xs[0]
        if x.mean() > 10:  # the example's mean is 20; a random input's is about 0
            return self.fc(x)
        return -self.fc(x)


def test_wrong_program_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(UnsupportedModelError) as info:
        export_torchscript_lite(FrozenBranch(), torch.full((2, 4), 20.0), tmp_path / "m.ptl")
    msg = str(info.value)
    assert "\n" not in msg and "no TorchScript program reproduces FrozenBranch" in msg
    assert "torch.jit.trace: wrong on a random input of the same shape" in msg
    assert "torch.jit.script fails" in msg
    assert os.listdir(tmp_path) == []
