"""Write the small format-3 model files of tests/native/data/ (fuzzer seeds, C test inputs).

    PYTHONPATH=src python tests/native/gen_seeds.py [OUT_DIR]

Each is a tiny torch model exported with :func:`mobileprune.deploy.sparse.export_sparse` and
written as format version 3 (:mod:`mobileprune.runtime.format3`); together they use every op
code, CSR and dense storage, float32 and float16 values, uint16 indices, one and several
inputs. Besides each ``NAME.mps`` it writes ``NAME.in`` / ``NAME.out``: a random input
(batch 2, raw little-endian float32, inputs concatenated) and torch's output for it, an
independent reference for C tests (within 1e-5 relative; the float16 model's reference uses
the same float16-rounded weights). Deterministic (fixed seeds); a few kB per model so that
fuzzing stays fast.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobileprune.runtime import format3
from mobileprune.runtime.model import read_container
from mobileprune.deploy.sparse import export_sparse


def _prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the smallest-magnitude fraction ``sparsity`` of every conv / linear weight."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(w.numel() * sparsity)
                if k:
                    thr = w.abs().flatten().kthvalue(k).values
                    w.mul_((w.abs() > thr).to(w.dtype))
    return model.eval()


class Cnn2d(nn.Module):
    """conv2d (csr) + batchnorm + relu + maxpool, grouped strided conv + hardswish,
    avgpool, flatten, linear (csr) + softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.avg_pool2d(nn.functional.hardswish(self.conv2(x)), 2, ceil_mode=True)
        return torch.softmax(self.fc(x.flatten(1)), dim=1)


class Cnn1d(nn.Module):
    """conv1d (dilated) + leaky_relu + maxpool1d, depthwise conv1d + elu, avgpool1d,
    global average pool, linear (dense storage) + tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 4, 3, dilation=2, padding=2)
        self.dw = nn.Conv1d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = nn.functional.max_pool1d(nn.functional.leaky_relu(self.conv1(x), 0.1), 2)
        x = nn.functional.avg_pool1d(nn.functional.elu(self.dw(x)), 2)
        return torch.tanh(self.fc(x.mean(-1)))


class TwoInputs(nn.Module):
    """Two inputs: conv2d + relu6 (hardtanh), flatten, concat with a vector, linear,
    sigmoid / silu / hardsigmoid, tensor add / mul / sub with broadcasting and numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(3 * 3 * 3 + 6, 8)
        self.gate = nn.Linear(6, 8)

    def forward(self, img, vec):
        a = nn.functional.relu6(self.conv(img)).flatten(1)
        h = self.fc(torch.cat([a, vec], dim=1))
        g = torch.sigmoid(self.gate(vec))
        y = nn.functional.silu(h) * g + 0.5
        return nn.functional.hardsigmoid(2.0 - y) - h


class Residual(nn.Module):
    """A residual block: conv + relu, conv, add, relu, global average pool, linear; float16
    weight values (no batchnorm, so the weights rounded to float16 are exactly the file's)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c2(torch.relu(self.c1(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(x + y), 1).flatten(1))


def _randomise_bn(model: nn.Module, g: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _export(model, xs, path: Path, **kwargs) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "model.mps"
        export_sparse(model, xs if len(xs) > 1 else xs[0], old, **kwargs)
        raw = old.read_bytes()
    if not format3.is_format3(raw):
        raw = format3.encode(*read_container(raw))
    path.write_bytes(raw)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(3)
    cases = {
        "seed_cnn2d": (Cnn2d(), [(1, 12, 12)], 0.6, {}),
        "seed_cnn1d": (Cnn1d(), [(3, 16)], 0.3, {"storage": "dense"}),
        "seed_two_inputs": (TwoInputs(), [(2, 4, 4), (6,)], 0.5, {}),
        "seed_residual_f16": (Residual(), [(4, 4, 4)], 0.5, {"value_dtype": "float16"}),
    }
    for name, (model, shapes, sparsity, kwargs) in cases.items():
        torch.manual_seed(len(name))
        model = _prune(type(model)(), sparsity)
        _randomise_bn(model, g)
        if kwargs.get("value_dtype") == "float16":
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                        m.weight.copy_(m.weight.half().float())
        xs = [torch.randn(2, *s, generator=g) for s in shapes]
        _export(model, xs, out_dir / f"{name}.mps", **kwargs)
        with torch.no_grad():
            ref = model(*xs)
        np.concatenate([x.numpy().ravel() for x in xs]).astype("<f4").tofile(out_dir / f"{name}.in")
        ref.numpy().astype("<f4").tofile(out_dir / f"{name}.out")
        print(f"{name}.mps: {(out_dir / f'{name}.mps').stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data")
