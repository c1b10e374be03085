"""Model file format 3 (docs/native_format.md): the Python writer / reader.

The reference for every check is the version-1/2 description the exporter writes and the
Python runtime runs: a model encoded as format 3 and decoded again must describe the same
graph with the same numbers, and run to the same outputs.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from mobileprune.models import build_model
from mobileprune.runtime import SparseFormatError, SparseModel, read_container, write_container
from mobileprune.runtime import format3
from mobileprune.deploy.sparse import export_sparse

NATIVE_SRC = Path(__file__).resolve().parents[1] / "src/mobileprune/runtime/native/src"


def _prune(model: nn.Module, keep: float = 0.1, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_((torch.rand(p.shape, generator=g) < keep).float())
    return model.eval()


class _Zoo(nn.Module):
    """Reaches every op type of the format: pools with their options, every activation,
    broadcasting arithmetic with tensors and numbers, concat, reshape, grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=(2, 1), dilation=(2, 1), groups=4, bias=False)
        self.c1d = nn.Conv1d(8, 3, 2, stride=2, padding=1)
        self.fc = nn.Linear(3 * 3, 5)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = nn.functional.max_pool2d(y, 3, stride=2, padding=1, ceil_mode=True)
        z = nn.functional.avg_pool2d(self.dw(y), 2, count_include_pad=False, divisor_override=3)
        a, b, c = nn.functional.hardswish(z), torch.sigmoid(z) * 2.0, 1.0 - z
        z = torch.cat([nn.functional.leaky_relu(a + b * c, 0.1), c], dim=1)
        z = nn.functional.elu(nn.functional.hardtanh(z, -1.5, 2.0), 0.7)
        s = nn.functional.adaptive_avg_pool2d(z, 1)
        z = z * torch.tanh(s) - nn.functional.hardsigmoid(s)
        v = self.c1d(nn.functional.silu(z.flatten(2)))
        v = nn.functional.avg_pool1d(v, 2, ceil_mode=True)
        return torch.softmax(self.fc(v.flatten(1)), dim=1)


def _roundtrip_cases():
    return [
        ("lenet5", build_model("lenet5"), torch.randn(2, 1, 28, 28)),
        ("fernet", build_model("fernet"), torch.randn(1, 1, 48, 48)),
        ("resnet20", build_model("resnet20"), torch.randn(1, 3, 32, 32)),
        ("harcnn", build_model("harcnn", in_channels=9, num_classes=6, window=128, width=16),
         torch.randn(2, 9, 128)),
        ("zoo", _Zoo(), torch.randn(2, 2, 12, 10)),
    ]


@pytest.mark.parametrize("name,model,x", _roundtrip_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_encode_decode_describes_the_same_model(tmp_path, name, model, x):
    _prune(model)
    path = tmp_path / "m.mps"
    export_sparse(model, x, path)
    header, arrays = read_container(path)
    raw = format3.encode(header, arrays)
    h3, a3 = format3.decode(raw)
    # the same graph: op names, types, inputs, shapes, attributes and weight records
    by_name = {op["name"]: op for op in h3["ops"]}
    assert [op["name"] for op in h3["ops"]] == [op["name"] for op in header["ops"]]
    for op in header["ops"]:
        got = by_name[op["name"]]
        assert (got["op"], got["inputs"], got["shape"]) == (op["op"], op["inputs"], op["shape"])
        for key, v in (op.get("attrs") or {}).items():
            assert got["attrs"][key] == pytest.approx(v) if isinstance(v, float) else got["attrs"][key] == v, key
        if "weight" in op:
            w, g = op["weight"], got["weight"]
            assert (g["rows"], g["cols"], g["nnz"], g["storage"]) == (w["rows"], w["cols"], w["nnz"], w["storage"])
            for k, arr_name in w["arrays"].items():
                np.testing.assert_array_equal(a3[g["arrays"][k]].reshape(-1), arrays[arr_name].reshape(-1))
    assert h3["outputs"] == header["outputs"]
    assert format3.encode(h3, a3) == raw  # decode is the exact inverse
    # and it runs to the same numbers (Python runtime on the decoded description)
    h2 = dict(h3, format_version=2)
    write_container(tmp_path / "back.mps", h2, a3)
    np.testing.assert_allclose(SparseModel(tmp_path / "back.mps")(x.numpy()),
                               model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_layout_follows_the_document(tmp_path):
    model = _prune(build_model("lenet5"))
    export_sparse(model, torch.randn(1, 1, 28, 28), tmp_path / "m.mps")
    raw = format3.encode(*read_container(tmp_path / "m.mps"))
    assert raw[:8] == b"MPSPARSE" and struct.unpack_from("<II", raw, 8) == (3, 128)
    assert struct.unpack_from("<Q", raw, 16)[0] == len(raw)
    assert struct.unpack_from("<I", raw, 24)[0] == zlib.crc32(raw[128:])
    offsets = struct.unpack_from("<7Q", raw, 72)
    assert list(offsets[:5]) == sorted(offsets[:5]) and all(o % 8 == 0 for o in offsets[:5])
    assert offsets[6] % 64 == 0  # data
    nv, nops = struct.unpack_from("<II", raw, 28)
    assert offsets[1] - offsets[0] >= 48 * nv and offsets[2] - offsets[1] >= 160 * nops


def _inc_table(name: str, macro: str) -> dict[str, int]:
    text = (NATIVE_SRC / name).read_text()
    return {n: int(c) for _, c, n in re.findall(rf'^{macro}\((\w+), (\d+), "(\w+)"\)', text, re.M)}


def test_codes_match_the_c_enumerators():
    assert format3.OP_CODES == _inc_table("ops.inc", "MP_OP")
    assert format3.ACTIVATION_CODES == _inc_table("activations.inc", "MP_ACT")


def _lenet_description(tmp_path):
    export_sparse(_prune(build_model("lenet5")), torch.randn(1, 1, 28, 28), tmp_path / "m.mps")
    return read_container(tmp_path / "m.mps")


@pytest.mark.parametrize("edit,match", [
    (lambda h: h["ops"][0].update(op="warp"), "unknown op type 'warp'"),
    (lambda h: h["ops"][0]["attrs"].update(stride=[1, "2"]), "attribute 'stride'"),
    (lambda h: h["ops"][0]["weight"].update(storage="coo"), "unknown weight storage"),
    (lambda h: h["ops"][0]["weight"]["arrays"].update(values="nope"), "values array 'nope' missing"),
    (lambda h: h["ops"][1].update(inputs=["later"]), "not defined before"),
    (lambda h: h.update(outputs=["ghost"]), "outputs"),
    (lambda h: h.update(value_dtype="int8"), "value_dtype"),
], ids=["op", "attr-type", "storage", "array", "order", "outputs", "dtype"])
def test_encode_refuses_an_ill_typed_description(tmp_path, edit, match):
    header, arrays = _lenet_description(tmp_path)
    edit(header)
    with pytest.raises(SparseFormatError, match=match):
        format3.encode(header, arrays)


def test_decode_refuses_damaged_bytes(tmp_path):
    raw = format3.encode(*_lenet_description(tmp_path))
    with pytest.raises(SparseFormatError, match="too short"):
        format3.decode(raw[:100])
    with pytest.raises(SparseFormatError, match="truncated"):
        format3.decode(raw[:-64])
    flipped = bytearray(raw)
    flipped[-1] ^= 1
    with pytest.raises(SparseFormatError, match="CRC"):
        format3.decode(bytes(flipped))
    assert format3.is_format3(raw) and not format3.is_format3(b"MPSPARSE\x02\0\0\0")
