"""Sparse model files (mobileprune.deploy.sparse) and the torch-free runtime.

Equivalence: every built-in model, pruned to 0 / 50 / 90 / 99 % (and with an all-zero
layer), exported (BatchNorm folded), loaded and run with batch 1 and 3 in the three
modes; the runtime output must match PyTorch (eval mode) to max abs error <= 1e-4 x
max |output|. Plus: float16 storage, round trips, hand-counted size report, corrupt /
truncated / foreign files, unsupported ops, and the runtime imported and run in a
subprocess where ``import torch`` fails (with the library it finds, and with one named by
``MOBILEPRUNE_NATIVE_LIB``). The runtime runs on the native engine (C, through ctypes);
its own tests are in test_native.py.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune.errors import UnsupportedModelError
from mobileprune.models import build_model
from mobileprune.runtime import SparseFormatError, SparseModel, load, read_container, write_container
from mobileprune.deploy.sparse import export_sparse, format_size_report, size_report

SRC = Path(__file__).resolve().parents[1] / "src"
REL_TOL = 1e-4


# ---------------------------------------------------------------------------------------
# helpers

def _layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def _prune(model: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Magnitude-prune every Conv/Linear to ``sparsity``; rescale survivors so that
    activations keep their scale (outputs stay non-trivial even at 99 %); random BN
    statistics so that folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in _layers(model):
            w = m.weight
            k = int(round(w.numel() * sparsity))
            if k:
                idx = torch.argsort(w.abs().flatten())[:k]
                w.view(-1)[idx] = 0.0
                w.mul_(1.0 / max(1.0 - sparsity, 1e-2) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max())
    assert scale > 0, "degenerate reference output"
    return float(np.abs(got - ref).max()) / scale


def _ref(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.no_grad():
        return (model(*x) if isinstance(x, tuple) else model(x)).numpy()


MODELS = {
    "lenet5": (lambda: build_model("lenet5"), (1, 28, 28)),
    "lenet300100": (lambda: build_model("lenet300100"), (1, 28, 28)),
    "harcnn": (lambda: build_model("harcnn", in_channels=9, num_classes=6, window=48, width=16,
                                   kernel_size=5, depth=3, hidden=32), (9, 48)),
    "fernet": (lambda: build_model("fernet", batchnorm=True), (1, 48, 48)),
    "resnet20": (lambda: build_model("resnet20"), (3, 32, 32)),
    "vggcifar": (lambda: build_model("vggcifar", cfg=[16, "M", 32, "M", 32, "M"], hidden=32,
                                     input_size=16), (3, 16, 16)),
    # four inputs (face, left eye, right eye, face grid), one tower shared by both eyes
    "itracker": (lambda: build_model("itracker", size=32),
                 ((3, 32, 32), (3, 32, 32), (3, 32, 32), (625,))),
}


def _inputs(shape, n: int, seed: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of batch ``n`` for one per-sample shape or a tuple of them."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    shapes = shape if isinstance(shape[0], tuple) else (shape,)
    return tuple(torch.randn(n, *s, generator=g) for s in shapes)


def test_models_registry_covered():
    from mobileprune.models import MODELS as REGISTRY
    # resnet56 is resnet20 with more blocks: same ops
    assert set(REGISTRY) - {"resnet56"} <= set(MODELS)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("name", list(MODELS))
def test_equivalence_builtin_models(name, sparsity, tmp_path):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = _prune(build(), sparsity, seed=1)
    path = tmp_path / f"{name}.mpsparse"
    example = _inputs(shape, 1)
    export_sparse(model, example[0] if len(example) == 1 else example, path)
    xs = _inputs(shape, 3, seed=2)
    ref = _ref(model, xs)
    for mode in ("auto", "sparse", "dense"):
        sm = load(path, mode=mode)
        for n in (1, 3):
            got = sm(*[x[:n].numpy() for x in xs])
            assert got.dtype == np.float32 and got.shape == ref[:n].shape
            assert _rel_err(got, ref[:n]) <= REL_TOL, (name, sparsity, mode, n)


def test_batchnorm_is_folded(tmp_path):
    model = _prune(build_model("resnet20"), 0.5)
    path = tmp_path / "r.mpsparse"
    export_sparse(model, torch.randn(1, 3, 32, 32), path)
    header, _ = read_container(path)
    kinds = [op["op"] for op in header["ops"]]
    assert "batchnorm" not in kinds
    assert kinds.count("conv2d") == 21 and kinds.count("add") == 9
    # without folding the BNs stay as ops and the result is the same
    path2 = tmp_path / "r2.mpsparse"
    export_sparse(model, torch.randn(1, 3, 32, 32), path2, fold_bn=False)
    h2, _ = read_container(path2)
    assert [op["op"] for op in h2["ops"]].count("batchnorm") == 21
    x = torch.randn(2, 3, 32, 32)
    assert _rel_err(load(path2)(x.numpy()), _ref(model, x)) <= REL_TOL


def test_all_zero_layer(tmp_path):
    model = _prune(build_model("fernet"), 0.5)
    lenet = _prune(build_model("lenet5"), 0.9)
    with torch.no_grad():
        model.conv5.weight.zero_()
        model.conv5.bias.copy_(torch.linspace(-1, 1, 64))  # some channels ReLU to zero
        model.fc2.weight[:10].zero_()
        lenet.conv2.weight.zero_()  # whole layer: CSR with nnz = 0
        lenet.fc1.weight[:, :400].zero_()
    for m, shape in ((model, (1, 48, 48)), (lenet, (1, 28, 28))):
        path = tmp_path / "z.mpsparse"
        export_sparse(m, torch.randn(1, *shape), path)
        x = torch.randn(3, *shape)
        ref = _ref(m, x)
        for mode in ("auto", "sparse", "dense"):
            assert _rel_err(load(path, mode=mode)(x.numpy()), ref) <= REL_TOL
    header, _ = read_container(path)
    conv2 = next(op for op in header["ops"] if op["name"] == "conv2")
    assert conv2["weight"]["nnz"] == 0 and conv2["weight"]["storage"] == "csr"


class _Zoo(nn.Module):
    """Every op kind the runtime supports, in unusual configurations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=8)  # depthwise, x2
        self.g = nn.Conv2d(16, 8, (3, 1), stride=(1, 2), padding=(1, 0), groups=2)
        self.pw = nn.Conv2d(8, 8, 1)
        self.c5 = nn.Conv2d(16, 12, 3, stride=2, padding="valid", bias=False)
        self.relu_ip = nn.ReLU(inplace=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.mp = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.ap = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.c1d = nn.Conv1d(6, 6, 4, padding="same", dilation=2)
        self.bn1d = nn.BatchNorm1d(6)
        self.pool1d = nn.AvgPool1d(3, stride=2, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(138, 7)

    def forward(self, x):                                          # (N, 3, 22, 22)
        y = F.relu(self.bn1(self.c1(x)))                           # (8, 11, 11)
        d = self.dw(y)                                             # (16, 11, 11)
        a = torch.relu(self.g(d))                                  # (8, 11, 6)
        b = self.pw(F.avg_pool2d(y, (1, 2), ceil_mode=True))       # (8, 11, 6)
        s = a + b
        s = torch.cat([s, F.relu(a)], dim=1)                       # (16, 11, 6)
        s = self.bn2(s)                                            # after cat: not folded
        c = self.relu_ip(self.c5(self.ap(d)))                      # (16, 6, 6) -> (12, 2, 2)
        m = F.max_pool2d(self.mp(d), 2, padding=1, dilation=2)     # (16, 6, 6) -> (16, 3, 3)
        m = self.gap(m)                                            # (16, 1, 1)
        q = F.adaptive_avg_pool2d(x, (2, 11)).flatten(1).view(x.size(0), 6, 11)
        q = self.pool1d(F.relu(self.bn1d(self.c1d(q))))            # (6, 11) -> (6, 6)
        q = F.max_pool1d(q, 2, stride=1, padding=1, ceil_mode=True)  # (6, 7)
        p = F.adaptive_avg_pool2d(d, 1)                            # (16, 1, 1)
        g = s.mean(dim=(2, 3))                                     # (16,)
        h = torch.cat([c.flatten(1), g, q.reshape(q.size(0), -1), m.view(m.size(0), -1),
                       torch.flatten(p, 1)], 1)                    # 48 + 16 + 42 + 16 + 16
        return self.fc(self.drop(h)), c


@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_equivalence_all_op_kinds(sparsity, tmp_path):
    torch.manual_seed(3)
    model = _prune(_Zoo(), sparsity, seed=4)
    path = tmp_path / "zoo.mpsparse"
    export_sparse(model, torch.randn(2, 3, 22, 22), path)
    header, _ = read_container(path)
    kinds = {op["op"] for op in header["ops"]}
    assert kinds == {"conv1d", "conv2d", "linear", "maxpool1d", "maxpool2d", "avgpool1d",
                     "avgpool2d", "global_avgpool", "batchnorm", "relu", "reshape", "add",
                     "concat"}
    x = torch.randn(3, 3, 22, 22)
    with torch.no_grad():
        r1, r2 = model(x)
    for mode in ("auto", "sparse", "dense"):
        sm = load(path, mode=mode)
        for n in (1, 3):
            o1, o2 = sm(x[:n].numpy())
            assert _rel_err(o1, r1[:n].numpy()) <= REL_TOL, mode
            assert _rel_err(o2, r2[:n].numpy()) <= REL_TOL, mode


class _Activations(nn.Module):
    """Every activation the runtime knows besides ReLU, as modules, functions and tensor
    methods (in-place where torch allows), MobileNet style (ReLU6, Hardswish)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 6 * 6, 12)
        self.relu6 = nn.ReLU6(inplace=True)
        self.hs, self.hsig, self.silu = nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU()
        self.leaky, self.elu = nn.LeakyReLU(0.2), nn.ELU(0.7)
        self.ht, self.tanh, self.sig = nn.Hardtanh(-0.5, 0.8), nn.Tanh(), nn.Sigmoid()
        self.sm = nn.Softmax(dim=1)

    def forward(self, x):
        y = self.relu6(self.c1(x))                     # (8, 6, 6); in place, read once
        y = self.hs(self.c2(y)) + self.hsig(y) + self.silu(y)
        y = self.leaky(y) + self.elu(y)
        z = self.fc(torch.flatten(y, 1))               # (12,)
        parts = [self.ht(z), self.tanh(z), self.sig(z), F.relu6(z), F.hardtanh(z, -2.0, 2.0),
                 F.leaky_relu(z, 0.05), F.elu(z, alpha=0.3), torch.sigmoid(z), torch.tanh(z),
                 F.hardswish(z), F.hardsigmoid(z), F.silu(z), z.sigmoid(), z.tanh()]
        w = torch.cat(parts, 1).view(z.size(0), 14, 12)
        return self.sm(z), F.softmax(w, dim=2), torch.softmax(w, -2), w.softmax(dim=1)


@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_activations(sparsity, tmp_path):
    model = _prune(_Activations(), sparsity, seed=5)
    with torch.no_grad():
        model.c1.weight.mul_(4)  # inputs spread over every activation's bends and tails
    path = tmp_path / "act.mpsparse"
    export_sparse(model, torch.randn(1, 3, 6, 6), path)
    kinds = [op["attrs"]["fn"] for op in read_container(path)[0]["ops"]
             if op["op"] == "activation"]
    assert set(kinds) == {"hardtanh", "hardswish", "hardsigmoid", "silu", "leaky_relu", "elu",
                          "tanh", "sigmoid", "softmax"}
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
    for mode in ("auto", "sparse", "dense"):
        got = load(path, mode=mode)(x.numpy())
        assert len(got) == len(refs)
        for g, r in zip(got, refs):
            assert g.dtype == np.float32 and _rel_err(g, r) <= REL_TOL, mode


def test_activation_errors(tmp_path):
    class ImplicitSoftmax(nn.Module):
        def forward(self, x):
            return nn.functional.softmax(x, dim=0)

    with pytest.raises(UnsupportedModelError, match="softmax over dim 0"):
        export_sparse(ImplicitSoftmax(), torch.randn(1, 4), tmp_path / "a.mpsparse")

    class InPlaceReused(nn.Module):
        def forward(self, x):
            y = F.hardtanh(x, inplace=True)
            return y + x

    with pytest.raises(UnsupportedModelError, match="in-place"):
        export_sparse(nn.Sequential(nn.Linear(4, 4), InPlaceReused()), torch.randn(1, 4),
                      tmp_path / "b.mpsparse")
    good = tmp_path / "c.mpsparse"
    export_sparse(nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU()), torch.randn(1, 4), good)

    def e_fn(h, a):
        h["ops"][-1]["attrs"]["fn"] = "mish"  # not an activation of the engine

    def e_param(h, a):
        h["ops"][-1]["attrs"]["negative_slope"] = "x"

    for edit in (e_fn, e_param):
        with pytest.raises(SparseFormatError, match="activation"):
            load(_rewrite(good, tmp_path / f"{edit.__name__}.mpsparse", edit))


class _SqueezeExcite(nn.Module):
    """MobileNetV3-style: a squeeze-excitation gate (x * s, s of shape (N, C, 1, 1)), and
    +, -, * with numbers on either side and in place."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.se1 = nn.Conv2d(8, 4, 1)
        self.se2 = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8 * 5 * 5, 6)

    def forward(self, x):
        y = F.hardswish(self.c1(x))                               # (8, 5, 5)
        s = F.hardsigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        z = y * s                                                 # gate: (8,5,5) * (8,1,1)
        z = torch.sub(z, 0.25 * y) + (1 - s) * 2                  # broadcast both ways
        z = z - 1.5
        z = z.mul_(0.5)                                           # in place, read once
        z = torch.mul(z, s).sub(y)
        return self.fc(z.flatten(1)) * 3 - 1


@pytest.mark.parametrize("sparsity", [0.0, 0.8])
def test_broadcast_and_scalar_arithmetic(sparsity, tmp_path):
    model = _prune(_SqueezeExcite(), sparsity, seed=6)
    path = tmp_path / "se.mpsparse"
    export_sparse(model, torch.randn(1, 3, 5, 5), path)
    ops = read_container(path)[0]["ops"]
    assert {op["op"] for op in ops} >= {"add", "sub", "mul"}
    assert any("scalar" in op["attrs"] and op["attrs"]["scalar_first"] for op in ops)
    x = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(7))
    for mode in ("auto", "sparse", "dense"):
        assert _rel_err(load(path, mode=mode)(x.numpy()), _ref(model, x)) <= REL_TOL, mode

    class RankMismatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(18, 3)

        def forward(self, x):  # (2, 3, 3) * (3,): torch broadcasts it at batch 1 only
            return x * self.fc(x.flatten(1))

    with pytest.raises(UnsupportedModelError, match="same rank"):
        export_sparse(RankMismatch(), torch.randn(1, 2, 3, 3), tmp_path / "r.mpsparse")


def test_float16_storage(tmp_path):
    model = _prune(build_model("lenet5"), 0.9)
    p32, p16 = tmp_path / "a.mpsparse", tmp_path / "b.mpsparse"
    r32 = export_sparse(model, torch.randn(1, 1, 28, 28), p32)
    r16 = export_sparse(model, torch.randn(1, 1, 28, 28), p16, value_dtype="float16")
    assert read_container(p16)[0]["value_dtype"] == "float16"
    assert r16["totals"]["value_bytes"] * 2 == r32["totals"]["value_bytes"]
    assert os.path.getsize(p16) < os.path.getsize(p32)
    x = torch.randn(3, 1, 28, 28)
    ref = _ref(model, x)
    got = load(p16)(x.numpy())
    assert 0 < _rel_err(got, ref) <= 5e-3
    # exact up to float32 rounding against the float16-rounded weights
    m16 = _prune(build_model("lenet5"), 0.0)
    m16.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in _layers(m16):
            m.weight.copy_(m.weight.half().float())
    assert _rel_err(got, _ref(m16, x)) <= REL_TOL


def test_round_trip_and_header(tmp_path):
    model = _prune(build_model("lenet300100"), 0.8)
    path = tmp_path / "m.mpsparse"
    rep = export_sparse(model, torch.randn(1, 1, 28, 28), path)
    assert rep["file_bytes"] == os.path.getsize(path)
    header, arrays = read_container(path)
    assert path.read_bytes()[:12] == b"MPSPARSE" + (3).to_bytes(4, "little")
    assert header["magic"] == "mobileprune.sparse" and header["format_version"] == 3
    assert header["architecture"] == "LeNet300100"
    assert header["inputs"] == [{"name": "x", "shape": [1, 28, 28]}]
    assert [op["op"] for op in header["ops"]] == ["reshape", "linear", "relu", "linear",
                                                  "relu", "linear"]
    fc1 = header["ops"][1]["weight"]
    assert fc1["storage"] == "csr" and arrays[fc1["arrays"]["indices"]].dtype == np.uint16
    assert arrays[fc1["arrays"]["indptr"]].dtype == np.uint32
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    a = load(path, tune=False)(x)  # fixed plan: bitwise comparisons between loads
    b = SparseModel(path.read_bytes(), tune=False)(x)  # from bytes
    np.testing.assert_array_equal(a, b)
    # re-writing the same description as a format-2 file gives a loadable, identical model
    h2 = {k: v for k, v in header.items() if k not in ("arrays", "data_nbytes", "data_crc32")}
    h2["format_version"] = 2
    write_container(tmp_path / "copy.mpsparse", h2, {k: np.array(v) for k, v in arrays.items()})
    np.testing.assert_array_equal(load(tmp_path / "copy.mpsparse", tune=False)(x), a)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves no temp file
    # the exported model is untouched and keeps its mode
    model.train()
    export_sparse(model, torch.randn(1, 1, 28, 28), path)
    assert model.training
    sm = load(path)
    assert "LeNet300100" in repr(sm) and "fc1" in sm.summary()
    assert [p.name for p in sm.plan()] == ["fc1", "fc2", "fc3"]
    assert all(p.relu_fused for p in sm.plan()[:2])


def test_size_report_hand_count(tmp_path):
    lin = nn.Linear(10, 4)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, [1, 4, 7]] = 1.0
        lin.weight[2, 9] = -2.0               # nnz = 4, rows 1 and 3 empty
        conv.weight.fill_(0.5)                # fully dense: stored dense
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 2 * 2, 10), nn.ReLU(), lin)
    path = tmp_path / "s.mpsparse"
    rep = export_sparse(model, torch.randn(1, 2, 4, 4), path)
    by = {l["name"]: l for l in rep["layers"]}
    c, l4 = by["0"], by["4"]
    assert (c["rows"], c["cols"], c["nnz"], c["storage"]) == (3, 18, 54, "dense")
    assert c["dense_float32_bytes"] == 4 * 54 and c["stored_bytes"] == 4 * 54
    assert c["index_bytes"] == 0 and c["bias_bytes"] == 0
    assert (l4["rows"], l4["cols"], l4["nnz"], l4["storage"]) == (4, 10, 4, "csr")
    assert l4["index_bytes"] == 4 * 5 + 2 * 4       # uint32 indptr (rows + 1), uint16 indices
    assert l4["value_bytes"] == 4 * 4 and l4["bias_bytes"] == 4 * 4
    assert l4["stored_bytes"] == 20 + 8 + 16 + 16
    assert l4["dense_float32_bytes"] == 4 * 40 + 4 * 4
    t = rep["totals"]
    assert t["stored_bytes"] == sum(l["stored_bytes"] for l in rep["layers"])
    assert t["dense_float32_bytes"] == 4 * 54 + (4 * 120 + 4 * 10) + (4 * 40 + 16)
    assert rep["file_bytes"] == os.path.getsize(path) > t["stored_bytes"]
    assert size_report(model, torch.randn(1, 2, 4, 4))["totals"] == t  # from a model
    text = format_size_report(rep)
    assert "csr" in text and "dense" in text and "total" in text
    # forcing CSR for all layers: counted the same way
    r2 = export_sparse(model, torch.randn(1, 2, 4, 4), path, storage="csr")
    c2 = {l["name"]: l for l in r2["layers"]}["0"]
    assert c2["stored_bytes"] == 4 * 4 + 2 * 54 + 4 * 54


def _bad(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bad_files_rejected(tmp_path):
    model = _prune(build_model("lenet5"), 0.9)
    good = tmp_path / "good.mpsparse"
    export_sparse(model, torch.randn(1, 1, 28, 28), good)
    raw = good.read_bytes()
    rng = np.random.default_rng(0)
    cases = {
        "random": rng.integers(0, 256, len(raw), dtype=np.uint8).tobytes(),
        "truncated": raw[:len(raw) // 2],
        "tiny": raw[:10],
        "empty": b"",
        "magic": b"NOTMPSPR" + raw[8:],
        "version": raw[:8] + struct.pack("<I", 2) + raw[12:],
        "trailing": raw + b"\0" * 64,
        "flipped data": raw[:-100] + bytes([raw[-100] ^ 0xFF]) + raw[-99:],
        "flipped header": raw[:40] + bytes([raw[40] ^ 0x01]) + raw[41:],
    }
    for name, data in cases.items():
        with pytest.raises(SparseFormatError):
            load(_bad(tmp_path / f"{name.replace(' ', '_')}.bin", data))
    assert issubclass(SparseFormatError, ValueError)
    with pytest.raises(SparseFormatError):
        load(tmp_path)  # a directory


def _rewrite(src: Path, dst: Path, edit) -> Path:
    header, arrays = read_container(src)
    header = json.loads(json.dumps(header))
    arrays = {k: np.array(v) for k, v in arrays.items()}
    edit(header, arrays)
    h = {k: v for k, v in header.items() if k not in ("arrays", "data_nbytes", "data_crc32")}
    h["format_version"] = 2  # the JSON container: load() converts it (format3.encode)
    write_container(dst, h, arrays)
    return dst


def test_inconsistent_files_rejected(tmp_path):
    model = _prune(build_model("lenet5"), 0.9)
    good = tmp_path / "good.mpsparse"
    export_sparse(model, torch.randn(1, 1, 28, 28), good)

    def op(h, name):
        return next(o for o in h["ops"] if o["name"] == name)

    def arr(h, name, key):  # the array name of a weight array of an op
        return op(h, name)["weight"]["arrays"][key]

    def e_shape(h, a):
        op(h, "conv1")["shape"] = [20, 25, 24]

    def e_indptr(h, a):
        a[arr(h, "fc1", "indptr")] = a[arr(h, "fc1", "indptr")][:-1]

    def e_index(h, a):
        a[arr(h, "fc1", "indices")][0] = 800

    def e_nnz(h, a):
        op(h, "fc1")["weight"]["nnz"] += 1

    def e_bias(h, a):
        a[op(h, "fc1")["bias"]] = a[op(h, "fc1")["bias"]][:3]

    def e_missing(h, a):
        del a[arr(h, "fc2", "values")]

    def e_input(h, a):
        op(h, "fc2")["inputs"] = ["nowhere"]

    def e_opkind(h, a):
        op(h, "pool1")["op"] = "softmax"

    def e_magic(h, a):
        h["magic"] = "something.else"

    def e_attrs(h, a):
        op(h, "conv2")["attrs"]["in_channels"] = 21

    def e_dtype(h, a):
        a[arr(h, "fc1", "indptr")] = a[arr(h, "fc1", "indptr")].astype(np.int32)

    for i, edit in enumerate([e_shape, e_indptr, e_index, e_nnz, e_bias, e_missing, e_input,
                              e_opkind, e_magic, e_attrs, e_dtype]):
        bad = _rewrite(good, tmp_path / f"bad{i}.mpsparse", edit)
        with pytest.raises(SparseFormatError):
            load(bad)


def test_several_inputs_and_a_shared_tower(tmp_path):
    """ITrackerMobile (seed 003's eye tracker): four inputs give a format-version-2 file;
    the eye tower, applied to both eyes, is stored once; the runtime takes the inputs in
    ``forward``'s order and matches torch; input mistakes get errors naming the input."""
    build, shape = MODELS["itracker"]
    model = _prune(build(), 0.9, seed=3)
    path = tmp_path / "it.mpsparse"
    rep = export_sparse(model, list(_inputs(shape, 2)), path)
    header, arrays = read_container(path)
    assert header["format_version"] == 3 and "input" not in header
    assert [i["name"] for i in header["inputs"]] == ["face", "left", "right", "grid"]
    assert [tuple(i["shape"]) for i in header["inputs"]] == list(shape)
    convs = [op for op in header["ops"] if op["op"] == "conv2d"]
    assert len(convs) == 12  # the eye tower twice, the face tower once
    for k in range(1, 5):
        pair = [op for op in convs if op["module"] == f"conv_e{k}"]
        assert len(pair) == 2 and pair[0]["name"] != pair[1]["name"]
        assert pair[0]["weight"]["arrays"] == pair[1]["weight"]["arrays"]
        assert pair[0]["bias"] == pair[1]["bias"]
    # every weight stored once: the stored values are exactly the model's nonzeros
    layers = _layers(model)
    values = {op["weight"]["arrays"]["values"] for op in header["ops"] if "weight" in op}
    assert len(values) == len(layers)
    assert sum(arrays[k].size for k in values) == sum(int((m.weight != 0).sum()) for m in layers)
    assert len(rep["layers"]) == len(layers)
    assert rep["totals"]["weights"] == sum(m.weight.numel() for m in layers)
    assert rep["totals"]["nnz"] == sum(int((m.weight != 0).sum()) for m in layers)

    sm = load(path)
    assert sm.input_names == ["face", "left", "right", "grid"] and sm.input_shape is None
    face, left, right, grid = _inputs(shape, 3, seed=4)
    ref = _ref(model, (face, left, right, grid))
    got = sm(face.numpy(), left.numpy(), right.numpy(), grid.numpy())
    assert _rel_err(got, ref) <= REL_TOL
    # the order matters: swapped eyes give torch's swapped-eyes result, not the same one
    swapped = sm(face.numpy(), right.numpy(), left.numpy(), grid.numpy())
    assert _rel_err(swapped, _ref(model, (face, right, left, grid))) <= REL_TOL
    assert np.abs(swapped - got).max() > 1e-3 * np.abs(ref).max()
    for n in (1, 3):  # batch 1 and 3, and out=
        buf = np.empty((n, 2), np.float32)
        res = sm(face[:n].numpy(), left[:n].numpy(), right[:n].numpy(), grid[:n].numpy(), out=buf)
        assert res is buf and _rel_err(buf, ref[:n]) <= REL_TOL

    with pytest.raises(ValueError, match=r"takes 4 input\(s\) \(face, left, right, grid\), got 1"):
        sm(face.numpy())
    with pytest.raises(ValueError, match="input 'grid' must have shape \\(N, 625\\)"):
        sm(face.numpy(), left.numpy(), right.numpy(), grid[:, :624].numpy())
    with pytest.raises(ValueError, match="different batch sizes"):
        sm(face.numpy(), left.numpy(), right[:2].numpy(), grid.numpy())
    with pytest.raises(ValueError, match="different batch sizes"):
        export_sparse(model, (face, left[:2], right, grid), tmp_path / "x.mpsparse")

    # the format version is checked: a version-2 header without its input list or with an
    # input named twice, a format-3 file whose prefix says 1 or 2, and a version this
    # runtime does not know
    def e_no_inputs(h, a):
        del h["inputs"]

    def e_dup(h, a):
        h["inputs"][1]["name"] = "face"

    for edit, msg in ((e_no_inputs, "input"), (e_dup, "face")):
        with pytest.raises(SparseFormatError, match=msg):
            load(_rewrite(path, tmp_path / f"{edit.__name__}.mpsparse", edit))
    raw = bytearray(path.read_bytes())
    for version, msg in ((1, "header"), (2, "header"), (4, "unsupported format_version 4")):
        raw[8:12] = version.to_bytes(4, "little")
        with pytest.raises(SparseFormatError, match=msg):
            load(bytes(raw))


def test_call_and_mode_validation(tmp_path):
    model = _prune(build_model("lenet5"), 0.5)
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 1, 28, 28), path)
    with pytest.raises(ValueError):
        load(path, mode="fast")
    sm = load(path)
    with pytest.raises(ValueError):
        sm(np.zeros((1, 28, 28), np.float32))  # batch dimension missing
    with pytest.raises(ValueError):
        sm(np.zeros((0, 1, 28, 28), np.float32))
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28))  # float64 accepted
    assert _rel_err(sm(x), _ref(model, torch.from_numpy(x).float())) <= REL_TOL
    with pytest.raises(ValueError):
        export_sparse(model, torch.randn(1, 1, 28, 28), path, value_dtype="int8")


class _Exp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.exp(self.fc(x))


class _InplaceAlias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        z = F.relu(y, inplace=True)
        return z + y


def test_unsupported_ops_name_the_node(tmp_path):
    x = torch.randn(1, 4)
    cases = [
        (_Exp(), x, "exp"),
        (nn.Sequential(nn.Linear(4, 4), nn.Mish()), x, "'1'"),
        (_InplaceAlias(), x, "relu"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveMaxPool2d(3)), torch.randn(1, 1, 9, 8),
         "'1'"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")),
         torch.randn(1, 1, 6, 6), "reflect"),
    ]
    for model, inp, needle in cases:
        with pytest.raises(UnsupportedModelError) as ei:
            export_sparse(model, inp, tmp_path / "u.mpsparse")
        assert needle in str(ei.value), str(ei.value)
    assert not (tmp_path / "u.mpsparse").exists()


# ---------------------------------------------------------------------------------------
# torch-free runtime (subprocesses)

_BLOCK_TORCH = textwrap.dedent("""
    import sys, types, importlib.abc

    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, _NoTorch())
    SRC, MODE = sys.argv[1], sys.argv[4]
    sys.path.insert(0, SRC)
    if MODE == "stub":
        # stand-in for the package __init__ (which imports torch-heavy modules) until it
        # loads them lazily: only the subpackage path is needed
        pkg = types.ModuleType("mobileprune")
        pkg.__path__ = [SRC + "/mobileprune"]
        sys.modules["mobileprune"] = pkg
    import numpy as np
    from mobileprune.runtime import load, backend, _native
    m = load(sys.argv[2])
    x = np.load(sys.argv[3] + ".x.npy")
    y = m(x)
    assert "torch" not in sys.modules
    np.save(sys.argv[3] + ".y.npy", y)
    print(backend())
    print(_native.library_path())
""")


def _run_torch_free(tmp_path: Path, model: nn.Module, shape, mode: str, env_extra=None):
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, *shape), path)
    x = np.random.default_rng(5).standard_normal((3, *shape)).astype(np.float32)
    base = str(tmp_path / "io")
    np.save(base + ".x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(_BLOCK_TORCH)
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(script), str(SRC), str(path), base, mode],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, x, base


def test_torch_free_runtime_subprocess(tmp_path):
    model = _prune(build_model("lenet5"), 0.9)
    proc, x, base = _run_torch_free(tmp_path, model, (1, 28, 28), "stub",
                                    {"MOBILEPRUNE_NATIVE_LIB": ""})
    assert proc.returncode == 0, proc.stderr
    kernels, lib = proc.stdout.split()
    assert kernels.startswith("native-") and Path(lib).parent == SRC / "mobileprune" / "runtime"
    assert _rel_err(np.load(base + ".y.npy"), _ref(model, torch.from_numpy(x))) <= REL_TOL


def test_torch_free_named_library_subprocess(tmp_path):
    """``MOBILEPRUNE_NATIVE_LIB`` selects the library (a sanitizer build, for instance): a
    copy of the engine elsewhere runs the model, a missing one is a clear error."""
    from mobileprune.runtime import _native

    copy = tmp_path / "libcopy.so"
    copy.write_bytes(Path(_native.library_path()).read_bytes())
    torch.manual_seed(3)
    model = _prune(_Zoo(), 0.6, seed=4)

    class First(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)[0]

    wrapped = First(model).eval()
    proc, x, base = _run_torch_free(tmp_path, wrapped, (3, 22, 22), "stub",
                                    {"MOBILEPRUNE_NATIVE_LIB": str(copy)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == str(copy)
    assert _rel_err(np.load(base + ".y.npy"), _ref(wrapped, torch.from_numpy(x))) <= REL_TOL
    proc, _, _ = _run_torch_free(tmp_path, wrapped, (3, 22, 22), "stub",
                                 {"MOBILEPRUNE_NATIVE_LIB": str(tmp_path / "missing.so")})
    assert proc.returncode != 0 and "MOBILEPRUNE_NATIVE_LIB" in proc.stderr


def test_torch_free_plain_import(tmp_path):
    """``import mobileprune.runtime`` itself must not import torch (needs the package
    ``__init__`` to load its torch-based modules lazily)."""
    init = (SRC / "mobileprune" / "__init__.py").read_text()
    if "__getattr__" not in init:
        pytest.skip("mobileprune/__init__.py still imports torch eagerly (lazy __getattr__ "
                    "change pending)")
    model = _prune(build_model("lenet5"), 0.9)
    proc, x, base = _run_torch_free(tmp_path, model, (1, 28, 28), "plain")
    assert proc.returncode == 0, proc.stderr
    assert _rel_err(np.load(base + ".y.npy"), _ref(model, torch.from_numpy(x))) <= REL_TOL


# ---------------------------------------------------------------------------------------
# the engine's kernel choice (mode="auto", tune) and the max-pool path

def test_auto_mode_plans_every_layer(tmp_path):
    """mode="auto" picks a kernel per layer; tune=False plans by the cost model alone
    (two loads plan alike and agree bitwise); tuned or not, the result is torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 12 * 12, 64), nn.ReLU(), nn.Linear(64, 10))
    _prune(model, 0.6)  # density 0.4: where the dense / sparse choice is close
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 8, 12, 12), path)
    x = torch.randn(2, 8, 12, 12)
    ref = _ref(model, x)
    tuned = load(path, mode="auto")
    fixed, fixed2 = load(path, mode="auto", tune=False), load(path, mode="auto", tune=False)
    assert [p.name for p in tuned.plan()] == ["0", "3", "5"]
    assert all(p.kernel for p in tuned.plan())
    assert fixed.summary() == fixed2.summary()
    np.testing.assert_array_equal(fixed(x.numpy()), fixed2(x.numpy()))
    for sm in (tuned, fixed):
        assert _rel_err(sm(x.numpy()), ref) <= REL_TOL


@pytest.mark.parametrize("portable", [False, True])  # SIMD and portable kernels
@pytest.mark.parametrize("k, H, W", [(2, 9, 7), (3, 12, 12), (2, 2, 3)])
def test_maxpool_fast_path_matches_torch_with_nan(k, H, W, portable, tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.MaxPool2d(k)).eval()
    path = tmp_path / "p.mpsparse"
    export_sparse(model, torch.randn(1, 2, H, W), path)
    x = torch.randn(2, 2, H, W)
    x[0, 0, 0, 0] = float("nan")  # NaN propagates through the conv and the pool
    ref = _ref(model, x)
    got = load(path, portable=portable)(x.numpy())
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.allclose(np.nan_to_num(got), np.nan_to_num(ref), atol=1e-6)


@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
@pytest.mark.parametrize("tail", ["flatten", "conv", "linear", "pool"])
def test_outputs_are_fresh_arrays(mode, tail, tmp_path):
    """A returned output never shares memory with the runtime's reused buffers: a later
    call (same or another batch size) leaves it unchanged, whatever op produced it
    (a layer writing into its own array, or a view such as a flatten of a layer's
    output)."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()]
    layers += {"flatten": [nn.Conv2d(4, 3, 3), nn.Flatten()], "conv": [nn.Conv2d(4, 3, 3)],
               "linear": [nn.Flatten(), nn.Linear(4 * 8 * 8, 5)],
               "pool": [nn.MaxPool2d(2)]}[tail]
    model = _prune(nn.Sequential(*layers), 0.9)
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 2, 8, 8), path)
    sm = load(path, mode=mode)
    xs = [torch.randn(n, 2, 8, 8) for n in (1, 1, 3, 1)]
    outs = [sm(x.numpy()) for x in xs]  # each call could overwrite an earlier result
    for x, out in zip(xs, outs):
        assert _rel_err(out, _ref(model, x)) <= REL_TOL
    assert not any(np.shares_memory(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])


def test_model_bytes_are_aligned_and_kept(tmp_path):
    """The engine reads the weights in place: the model keeps its file bytes alive, 64-byte
    aligned (as the format aligns its arrays) and read-only, for as long as it lives."""
    model = _prune(build_model("lenet5"), 0.9)
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 1, 28, 28), path)
    sm = load(path.read_bytes())
    assert sm._data.ctypes.data % 64 == 0 and not sm._data.flags.writeable
    assert sm._data.tobytes() == path.read_bytes()
    x = torch.randn(2, 1, 28, 28)
    import gc
    gc.collect()
    assert _rel_err(sm(x.numpy()), _ref(model, x)) <= REL_TOL


@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
@pytest.mark.parametrize("tail", ["conv", "strided_conv", "linear", "flatten"])
def test_out_argument_writes_the_callers_array(mode, tail, tmp_path):
    """``model(x, out=buf)`` writes the output into ``buf`` and returns it: the same
    values as a plain call and as torch, for a last layer with a direct kernel (conv) and
    for the copy path; a strided last conv (padded output rows) still gives a contiguous
    result from a plain call."""
    torch.manual_seed(1)
    layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()]
    layers += {"conv": [nn.Conv2d(4, 3, 3, padding=1)],
               "strided_conv": [nn.Conv2d(4, 3, 3, stride=2)],
               "linear": [nn.Flatten(), nn.Linear(4 * 8 * 8, 5)],
               "flatten": [nn.Conv2d(4, 3, 3), nn.Flatten()]}[tail]
    model = _prune(nn.Sequential(*layers), 0.9)
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 2, 8, 8), path)
    sm = load(path, mode=mode)
    for n in (1, 3):
        x = torch.randn(n, 2, 8, 8)
        ref = _ref(model, x)
        plain = sm(x.numpy())
        assert plain.flags.c_contiguous and _rel_err(plain, ref) <= REL_TOL
        buf = np.full(ref.shape, np.nan, np.float32)
        got = sm(x.numpy(), out=buf)
        assert got is buf
        assert np.array_equal(buf, plain)


def test_out_argument_validation(tmp_path):
    model = _prune(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1)), 0.5)
    path = tmp_path / "m.mpsparse"
    export_sparse(model, torch.randn(1, 1, 6, 6), path)
    sm = load(path, mode="sparse")
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    bad = {"shape": np.zeros((1, 3, 6, 6), np.float32),            # batch 1, input 2
           "dtype": np.zeros((2, 3, 6, 6), np.float64),
           "non-contiguous": np.zeros((2, 3, 6, 12), np.float32)[..., ::2],
           "list": [[0.0]]}
    ro = np.zeros((2, 3, 6, 6), np.float32)
    ro.flags.writeable = False
    bad["read-only"] = ro
    for what, out in bad.items():
        with pytest.raises(ValueError, match=r"out for output .* must be a writeable "
                                             r"C-contiguous float32 array of shape \(2, 3, 6, 6\)"):
            sm(x, out=out)
    with pytest.raises(ValueError, match="one per model output"):
        sm(x, out=(np.zeros((2, 3, 6, 6), np.float32),) * 2)
    assert not ro.any()


def test_out_argument_several_outputs(tmp_path):
    torch.manual_seed(3)
    model = _prune(_Zoo(), 0.6, seed=4)
    path = tmp_path / "zoo.mpsparse"
    export_sparse(model, torch.randn(2, 3, 22, 22), path)
    sm = load(path)
    x = torch.randn(2, 3, 22, 22)
    with torch.no_grad():
        r1, r2 = model(x)
    bufs = (np.empty(tuple(r1.shape), np.float32), np.empty(tuple(r2.shape), np.float32))
    got = sm(x.numpy(), out=bufs)
    assert got is bufs
    assert _rel_err(bufs[0], r1.numpy()) <= REL_TOL and _rel_err(bufs[1], r2.numpy()) <= REL_TOL
    with pytest.raises(ValueError, match="one per model output"):
        sm(x.numpy(), out=bufs[0])


@pytest.mark.parametrize("conv,hw", [
    (dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), 16),  # Wo 16: full vectors
    (dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), 12),  # Wo 12: a remainder
    (dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1), 32),
    (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2, padding=2), 48),
    (dict(in_channels=4, out_channels=20, kernel_size=1), 7),             # pointwise, odd width
])
def test_conv_kernels_simd_and_portable(conv, hw, tmp_path):
    """A sparse convolution layer, through the SIMD kernels this CPU runs and through the
    portable C kernels (MP_PLAN_PORTABLE), sparse and dense, batch 1 and 2, against torch."""
    layer = _prune(nn.Conv2d(**conv), 0.6, seed=3)
    x = torch.randn(2, conv["in_channels"], hw, hw, generator=torch.Generator().manual_seed(4))
    ref = _ref(layer, x)
    path = tmp_path / "c.mpsparse"
    export_sparse(layer, x[:1], path)
    for portable in (False, True):
        for mode in ("sparse", "dense"):
            sm = load(path, mode=mode, portable=portable)
            for n in (1, 2):
                assert _rel_err(sm(x[:n].numpy()), ref[:n]) <= REL_TOL, (portable, mode, n)


def test_batch1_fast_path_keeps_every_check(tmp_path):
    """After the first call ``SparseModel.__call__`` reuses the plan made for the batch
    size; inputs of another shape, dtype or layout are still checked and give the torch
    result or a clear error."""
    layer = _prune(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(4, 3, 3, padding=1)), 0.7, seed=5)
    path = tmp_path / "c.mpsparse"
    export_sparse(layer, torch.randn(1, 2, 16, 16), path)
    sm = load(path, mode="sparse")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 16, 16, generator=g)
    first = sm(x.numpy())
    assert list(sm._pool) == [1] and len(sm._pool[1]) == 1  # the plan of batch 1 is kept
    second = sm(x.numpy())
    assert _rel_err(second, _ref(layer, x)) <= REL_TOL and np.array_equal(first, second)
    assert not np.shares_memory(first, second) and second.flags.c_contiguous
    wide = torch.randn(1, 2, 16, 32, generator=g)
    strided = wide.numpy()[..., ::2]  # right shape, not contiguous
    assert _rel_err(sm(strided), _ref(layer, wide[..., ::2].contiguous())) <= REL_TOL
    assert _rel_err(sm(x.numpy().astype(np.float64)), _ref(layer, x)) <= REL_TOL
    with pytest.raises(ValueError, match="shape"):
        sm(np.zeros((1, 2, 16, 15), np.float32))
    x3 = torch.randn(3, 2, 16, 16, generator=g)
    assert _rel_err(sm(x3.numpy()), _ref(layer, x3)) <= REL_TOL
    assert _rel_err(sm(x.numpy()), _ref(layer, x)) <= REL_TOL  # batch 1 again
    buf = np.full((1, 3, 16, 16), np.nan, np.float32)
    assert sm(x.numpy(), out=buf) is buf and np.array_equal(buf, first)
    with pytest.raises(ValueError):
        sm(x.numpy(), out=np.zeros((1, 3, 16, 15), np.float32))
    with pytest.raises(ValueError):
        sm(x.numpy(), out=np.zeros((1, 3, 16, 16), np.float64))


def test_profile_times_every_layer_of_a_call(tmp_path):
    """SparseModel.profile: one LayerTime per describe line, in order; fused activations and
    alias reshapes take no time; the convolutions do; the layers' times add up to no more
    than a whole timed call's wall time; bad arguments are one-line errors."""
    import time

    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    path = tmp_path / "lenet5.mps"
    export_sparse(model, torch.randn(1, 1, 28, 28), path)
    sm = load(path, tune=False)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    prof = sm.profile(x, repeats=5)
    lines = sm.describe(2).splitlines()
    assert [t.describe for t in prof] == [ln.strip() for ln in lines]
    assert [t.name for t in prof] == [ln.split()[0] for ln in lines]
    for t in prof:
        idle = " fused into " in t.describe or " alias (no copy)" in t.describe
        assert (t.seconds == 0.0) if idle else (t.seconds > 0.0), t
    assert {t.op for t in prof} >= {"conv2d", "linear"}
    t0 = time.perf_counter()
    for _ in range(5):
        sm(x)
    assert sum(t.seconds for t in prof) <= 5 * (time.perf_counter() - t0)
    with pytest.raises(ValueError, match="repeats must be"):
        sm.profile(x, repeats=0)
    with pytest.raises(ValueError, match="shape"):
        sm.profile(x[:, :, :5])
    np.testing.assert_array_equal(sm(x), sm(x))  # the pooled plans are untouched


class _SqueezeHead(nn.Module):
    """A depthwise 3x3 (stride 2) then global pooling and two 1x1 convs on one pixel."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.se1 = nn.Conv2d(16, 24, 1)
        self.se2 = nn.Conv2d(24, 10, 1)

    def forward(self, x):
        x = F.relu6(self.dw(F.relu(self.stem(x))))
        return torch.flatten(self.se2(F.relu(self.se1(self.pool(x)))), 1)


@pytest.mark.parametrize("density", [0.1, 1.0])
def test_depthwise_taps_and_one_pixel_convs_match_torch(tmp_path, density):
    """A sparse depthwise conv may run as taps on the unpadded input, and a 1x1 conv on one
    pixel as a linear operator: outputs equal torch's at batch 1 and 5, tuned or not."""
    torch.manual_seed(1)
    model = _SqueezeHead().eval()
    _random_mask(model, density)
    x = torch.randn(5, 3, 15, 17)
    path = tmp_path / "sq.mps"
    export_sparse(model, x[:1], path)
    with torch.no_grad():
        want = model(x).numpy()
    for tune in (True, False):
        sm = load(path, tune=tune)
        np.testing.assert_allclose(sm(x.numpy()), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sm(x[:1].numpy()), want[:1], rtol=1e-4, atol=1e-5)
        lines = {ln.split()[0]: ln for ln in sm.describe(1).splitlines()}
        for name in ("se1", "se2"):  # one pixel: the linear operator's kernels
            assert any(k in lines[name] for k in ("spmv", "gemv", "bsrmv")), lines[name]
        if not tune and density < 1:
            assert " taps " in lines["dw"], lines["dw"]


def _random_mask(model: nn.Module, density: float) -> None:
    """Keep each conv weight with probability ``density`` (torch's global generator)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_((torch.rand_like(m.weight) < density).float())


class _OnePixel(nn.Module):
    """Convs with one output pixel: valid 5x5 on a 5x5 map, 3x3 padded on 1x1, strided."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 5)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 3, stride=2, padding=(1, 2), dilation=(1, 2))

    def forward(self, x):
        return torch.flatten(self.c(F.relu(self.b(F.relu(self.a(x))))), 1)


@pytest.mark.parametrize("density", [0.3, 1.0])
def test_one_pixel_convs_run_as_linear_and_match_torch(tmp_path, density):
    """Every conv with one output pixel runs as a linear operator over the input taps that
    land inside the input (those in the padding dropped); outputs equal torch's."""
    torch.manual_seed(2)
    model = _OnePixel().eval()
    _random_mask(model, density)
    x = torch.randn(4, 3, 5, 5)
    path = tmp_path / "one.mps"
    export_sparse(model, x[:1], path)
    with torch.no_grad():
        want = model(x).numpy()
    sm = load(path)
    np.testing.assert_allclose(sm(x.numpy()), want, rtol=1e-4, atol=1e-5)
    lines = {ln.split()[0]: ln for ln in sm.describe(1).splitlines()}
    for name in ("a", "b", "c"):
        assert any(k in lines[name] for k in ("spmv", "gemv", "bsrmv")), lines[name]


class _ConvChain(nn.Module):
    """Conv stacks the plan chains (a conv writing its only reader's padded input) and
    convs it must not chain: an output read twice (residual), a model output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, (3, 5), padding=(1, 2))
        self.c = nn.Conv2d(8, 6, 3, padding=(2, 1), dilation=(2, 1))
        self.d = nn.Conv2d(6, 6, 3, padding=1)  # read twice: by e and by the sum
        self.e = nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x):
        y = self.c(F.relu(self.b(F.relu(self.a(x)))))
        d = self.d(y)
        return self.e(F.relu(d)) + d, y


@pytest.mark.parametrize("density", [0.2, 1.0])
def test_chained_convs_match_torch(tmp_path, density):
    """A conv whose output only the next conv reads writes straight into that conv's padded
    input buffer; outputs equal torch's at batch 1, 3 and 4 on 1 and 2 threads (on 2 threads
    a batch runs as sample groups, one per thread: 1 + 2 and 2 + 2 samples, each group
    writing into its own part of the next conv's buffers), and every plan chains exactly the
    convs with one conv reader that is not a model output."""
    torch.manual_seed(2)
    model = _ConvChain().eval()
    _random_mask(model, density)
    x = torch.randn(4, 3, 11, 16)  # rows of 16: vectors inside rows (flat ones: the C tests)
    path = tmp_path / "chain.mps"
    export_sparse(model, x[:1], path)
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    for threads in (1, 2):
        sm = load(path, threads=threads)
        for n in (1, 3, 4):
            got = sm(x[:n].numpy())
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w[:n], rtol=1e-4, atol=1e-5)
            lines = {ln.split()[0]: ln for ln in sm.describe(n).splitlines()}
            writes = {k for k, ln in lines.items() if "writes the next conv's padded input" in ln}
            assert writes == {"a", "b"}, (threads, n, lines)
            assert "input written padded by the previous conv" in lines["c"], lines["c"]
