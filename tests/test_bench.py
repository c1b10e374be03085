"""mobileprune.measure.bench: one-run deployment benchmark (torch, compacted, sparse runtime, ONNX
Runtime, ExecuTorch), its JSON / markdown / PNG outputs, and missing backends.

Kept short (the machine may be busy): LeNet-5, repeats=3, warmup=1, one thread. The
ExecuTorch test exports only batch-1 programs (lowering costs seconds per file). The
multi-input tests use ITrackerMobile(size=32): four inputs (face, left, right, grid).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobileprune import runtime
from mobileprune.measure.bench import bench_checkpoint, bench_inputs, benchmark_model
from mobileprune.checkpoint import save_checkpoint
from mobileprune.errors import ConfigError
from mobileprune.sparsity.masks import masks_from_weights
from mobileprune.models import LeNet5, build_model


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


HAS_ONNX = _has("onnxscript") and _has("onnx")
HAS_ORT = _has("onnxruntime")
HAS_ET = _has("executorch")
HAS_MPL = _has("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = dict(repeats=3, warmup=1, threads=(1,))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _models(seed: int = 0) -> tuple[LeNet5, LeNet5]:
    """(dense, pruned): ~90% zeros by magnitude, plus whole zeroed filters / neurons."""
    torch.manual_seed(seed)
    dense = LeNet5().eval()
    pruned = LeNet5().eval()
    pruned.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for p in pruned.parameters():
            if p.dim() > 1:
                thr = p.abs().flatten().kthvalue(int(0.9 * p.numel())).values
                p[p.abs() <= thr] = 0
        for layer, n in ((pruned.conv1, 5), (pruned.conv2, 10), (pruned.fc1, 100)):
            layer.weight[:n] = 0
            layer.bias[:n] = 0
    return dense, pruned


def _check_result(res: dict, out: Path, settings: list[tuple[int, int]]) -> None:
    assert json.loads((out / "bench.json").read_text()) == res
    keys = [f"b{b}_t{t}" for b, t in settings]
    assert [s["key"] for s in res["settings"]] == keys
    dense_torch = res["dense_torch"]
    for name, be in res["backends"].items():
        for k in keys:
            if int(k[1:].split("_")[0]) not in be["batch_sizes"]:
                assert k not in be["latency"]
                continue
            r = be["latency"][k]
            assert r["median_ms"] > 0 and r["runs"] >= res["repeats"]
            assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        # outputs of every backend agree with torch: 1e-4 relative to the output scale
        assert be["outputs_match"], name
        assert 0 <= be["max_abs_diff"] <= be["tolerance"], name
    # speedups are the ratios of the recorded medians of the same setting
    for k in keys:
        dense_cands = {n: res["backends"][n]["latency"][k]["median_ms"]
                       for n in res["dense_backends"] if k in res["backends"][n]["latency"]}
        fastest = min(dense_cands.values())
        assert res["fastest_dense"][k]["median_ms"] == fastest
        assert res["fastest_dense"][k]["backend"] in dense_cands
        base = res["backends"][dense_torch]["latency"][k]["median_ms"]
        for name, be in res["backends"].items():
            if k not in be["latency"]:
                continue
            r = be["latency"][k]
            assert r["speedup_vs_dense_torch"] == pytest.approx(base / r["median_ms"], rel=1e-12)
            assert r["speedup_vs_fastest_dense"] == pytest.approx(fastest / r["median_ms"],
                                                                  rel=1e-12)
    # files
    md = (out / "bench.md").read_text()
    assert "Median latency" in md and "Speedup vs dense torch" in md and "File sizes" in md
    for name in res["backends"]:
        assert f"`{name}`" in md
    if HAS_MPL:
        assert res["files"]["png"] == "bench.png"
        assert (out / "bench.png").read_bytes()[:8] == PNG_MAGIC
    for s in res["sizes"].values():
        assert (out / s["path"]).stat().st_size == s["bytes"] > 0
    assert not list(out.glob("*.tmp")), "temporary files left behind"


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    if not (HAS_ONNX and HAS_ORT):
        pytest.skip("onnx/onnxscript/onnxruntime not installed "
                    "(pip install -c constraints.txt '.[export]')")
    dense, pruned = _models()
    out = tmp_path_factory.mktemp("bench")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = benchmark_model(pruned, torch.randn(1, 1, 28, 28), out, dense_model=dense,
                              batch_sizes=(1, 2), formats=("torch", "compacted", "sparse", "onnx"),
                              title="LeNet-5 test", **FAST)
    finally:
        torch.set_num_threads(n)
    return res, out, dense, pruned


def test_benchmark_all_backends_one_run(onnx_run):
    res, out, dense, pruned = onnx_run
    assert set(res["backends"]) == {"torch_dense", "torch_pruned", "torch_compacted",
                                    "sparse_runtime", "onnx_dense", "onnx_compacted"}
    assert res["dense_torch"] == "torch_dense" and res["dense_reference"] == "dense_model"
    assert res["dense_backends"] == ["torch_dense", "onnx_dense"]
    assert res["title"] == "LeNet-5 test" and res["input_shape"] == [1, 28, 28]
    assert not res["skipped"]
    _check_result(res, out, [(1, 1), (2, 1)])
    refs = {n: b["reference"] for n, b in res["backends"].items()}
    assert refs == {"torch_dense": "torch_dense", "torch_pruned": "torch_pruned",
                    "torch_compacted": "torch_pruned", "sparse_runtime": "torch_pruned",
                    "onnx_dense": "torch_dense", "onnx_compacted": "torch_pruned"}


def test_file_sizes_are_consistent(onnx_run):
    res, out, dense, pruned = onnx_run
    s = res["sizes"]
    assert set(s) == {"dense_state", "compacted_state", "sparse", "onnx_dense", "onnx_compacted"}
    dense_bytes = s["dense_state"]["bytes"]
    assert dense_bytes > 4 * sum(p.numel() for p in dense.parameters())  # float32 + pickle
    assert s["sparse"]["bytes"] < dense_bytes / 3  # ~90% zeros stored as CSR
    assert s["compacted_state"]["bytes"] < dense_bytes
    assert s["onnx_compacted"]["bytes"] < s["onnx_dense"]["bytes"]
    assert s["sparse"]["vs_dense_state"] == pytest.approx(dense_bytes / s["sparse"]["bytes"])
    stats = res["model_stats"]
    assert stats["compacted_parameters"] < stats["dense_parameters"] == stats["pruned_parameters"]
    assert stats["pruned_zero_fraction"] > 0.9


def test_inputs_not_modified_and_pruned_baseline(tmp_path):
    """Without dense_model, the pruned model is the dense baseline; the caller's model
    keeps its training flag and weights."""
    _, pruned = _models(1)
    pruned.train()
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    res = benchmark_model(pruned, torch.randn(3, 1, 28, 28), tmp_path, batch_sizes=(1,),
                          formats=("torch", "compacted", "sparse"), **FAST)
    assert pruned.training
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    assert res["dense_torch"] == "torch_pruned" and res["dense_reference"] == "pruned_model"
    assert "torch_dense" not in res["backends"]
    assert res["backends"]["torch_pruned"]["latency"]["b1_t1"]["speedup_vs_dense_torch"] == 1.0
    assert any("no dense_model" in n for n in res["notes"])
    _check_result(res, tmp_path, [(1, 1)])


def test_missing_onnxruntime_is_noted(tmp_path, monkeypatch):
    if not HAS_ONNX:
        pytest.skip("onnx/onnxscript not installed")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    dense, pruned = _models(2)
    res = benchmark_model(pruned, torch.randn(1, 1, 28, 28), tmp_path, dense_model=dense,
                          batch_sizes=(1,), formats=("torch", "sparse", "onnx"), **FAST)
    assert "onnx_dense" not in res["backends"] and "onnx_compacted" not in res["backends"]
    assert "onnxruntime" in res["skipped"]["onnx_dense"]
    assert "onnxruntime" in res["skipped"]["onnx_compacted"]
    assert any("onnxruntime is not installed" in n for n in res["notes"])
    assert set(res["backends"]) == {"torch_dense", "torch_pruned", "sparse_runtime"}
    assert "onnx_dense" in res["sizes"]  # the file is still written and measured
    assert res["dense_backends"] == ["torch_dense"]
    _check_result(res, tmp_path, [(1, 1)])
    assert "Skipped" in (tmp_path / "bench.md").read_text()


def test_missing_executorch_is_noted(tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m.split(".")[0] == "executorch"] + ["executorch"]:
        monkeypatch.setitem(sys.modules, mod, None)  # import executorch... -> ImportError
    _, pruned = _models(3)
    res = benchmark_model(pruned, torch.randn(1, 1, 28, 28), tmp_path, batch_sizes=(1,),
                          formats=("torch", "pte"), **FAST)
    assert set(res["backends"]) == {"torch_pruned"}
    assert "pte_dense" in res["skipped"] and "pte_compacted" in res["skipped"]
    _check_result(res, tmp_path, [(1, 1)])


@pytest.mark.skipif(not HAS_ET, reason="executorch not installed "
                    "(pip install -c constraints.txt '.[export]')")
def test_executorch_batch1_only(tmp_path):
    """ExecuTorch programs have a fixed input shape; pte_batch_sizes=(1,) exports batch 1
    only, and pte_* have no entry at batch 2 (two lowerings: a few seconds)."""
    dense, pruned = _models(4)
    res = benchmark_model(pruned, torch.randn(1, 1, 28, 28), tmp_path, dense_model=dense,
                          batch_sizes=(1, 2), pte_batch_sizes=(1,), formats=("torch", "pte"),
                          **FAST)
    assert {"pte_dense", "pte_compacted"} <= set(res["backends"])
    assert "torch_compacted" not in res["backends"]  # compacted only as an export here
    for n in ("pte_dense", "pte_compacted"):
        assert res["backends"][n]["batch_sizes"] == [1]
        assert set(res["backends"][n]["latency"]) == {"b1_t1"}
    assert res["dense_backends"] == ["torch_dense", "pte_dense"]
    assert res["sizes"]["pte_compacted"]["bytes"] < res["sizes"]["pte_dense"]["bytes"]
    assert any("fixed input shape" in n for n in res["notes"])
    _check_result(res, tmp_path, [(1, 1), (2, 1)])


def test_bench_checkpoint(tmp_path):
    dense, pruned = _models(5)
    masks = masks_from_weights(pruned, [n for n, p in pruned.named_parameters() if p.dim() > 1])
    ck = save_checkpoint(tmp_path / "pruned.pt", pruned, kind="pruned", model_name="lenet5",
                         masks=masks, extra={"input_shape": [1, 28, 28]})
    dck = save_checkpoint(tmp_path / "dense.pt", dense, kind="dense", model_name="lenet5")
    res = bench_checkpoint(ck, tmp_path / "out", dense_checkpoint=dck, batch_sizes=(1,),
                           formats=("torch", "sparse"), **FAST)
    assert res["meta"]["checkpoint"] == str(ck) and res["meta"]["dense_checkpoint"] == str(dck)
    assert res["dense_torch"] == "torch_dense" and "lenet5" in res["title"]
    assert set(res["backends"]) == {"torch_dense", "torch_pruned", "sparse_runtime"}
    _check_result(res, tmp_path / "out", [(1, 1)])

    # no recorded input shape: the argument is needed
    ck2 = save_checkpoint(tmp_path / "noshape.pt", pruned, kind="pruned", model_name="lenet5")
    with pytest.raises(ConfigError, match="input shape"):
        bench_checkpoint(ck2, tmp_path / "out2", formats=("torch",), batch_sizes=(1,), **FAST)
    res2 = bench_checkpoint(ck2, tmp_path / "out2", input_shape=(1, 28, 28), formats=("torch",),
                            batch_sizes=(1,), **FAST)
    assert res2["dense_reference"] == "pruned_model"


def test_bad_arguments(tmp_path):
    _, pruned = _models(6)
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ConfigError, match="unknown format"):
        benchmark_model(pruned, x, tmp_path, formats=("torch", "tflite"))
    with pytest.raises(ConfigError, match="batch_sizes"):
        benchmark_model(pruned, x, tmp_path, batch_sizes=(0,))
    with pytest.raises(ConfigError, match="repeats"):
        benchmark_model(pruned, x, tmp_path, repeats=0)
    with pytest.raises(ConfigError, match="example_input"):
        benchmark_model(pruned, (x, "x"), tmp_path)
    assert not (tmp_path / "bench.json").exists()


# --------------------------------------------------------------------------- several inputs

ITRACKER_SHAPES = [[3, 32, 32], [3, 32, 32], [3, 32, 32], [625]]


def _itracker(seed: int = 0) -> nn.Module:
    """ITrackerMobile(size=32), magnitude-pruned to 90% zeros in every Conv/Linear weight.

    The weights are He-initialised and the kept ones scaled by sqrt(10) (the variance the
    pruning removed): with torch's default init and 90% zeros the signal dies out in the
    towers, the output is nearly the biases' and would not depend on which input goes
    where (swapping two inputs then moves it by less than the output check's tolerance).
    """
    torch.manual_seed(seed)
    model = build_model("itracker", size=32).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                nn.init.kaiming_normal_(w, nonlinearity="relu")
                thr = w.abs().flatten().kthvalue(int(0.9 * w.numel())).values
                w[w.abs() <= thr] = 0
                w *= 10 ** 0.5
    return model


def _itracker_example(batch: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(123)
    return tuple(torch.randn((batch, *s), generator=g) for s in ITRACKER_SHAPES)


@pytest.fixture(scope="module")
def itracker_run(tmp_path_factory):
    """Every backend on the four-input model, one run (ONNX / ExecuTorch when installed;
    batch-1 .pte only)."""
    model = _itracker()
    out = tmp_path_factory.mktemp("bench_itracker")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = benchmark_model(model, _itracker_example(), out, batch_sizes=(1, 2),
                              pte_batch_sizes=(1,), title="iTracker test", **FAST)
    finally:
        torch.set_num_threads(n)
    return res, out, model


def test_multi_input_every_backend_matches_torch(itracker_run):
    res, out, model = itracker_run
    assert res["input_shapes"] == ITRACKER_SHAPES and res["input_shape"] is None
    backends = set(res["backends"])
    assert {"torch_pruned", "torch_compacted", "sparse_runtime"} <= backends, res["skipped"]
    if HAS_ONNX and HAS_ORT:
        assert {"onnx_dense", "onnx_compacted"} <= backends, res["skipped"]
    for n in ("pte_dense", "pte_compacted"):
        if HAS_ET and n not in backends:  # only an unusable executorch install may skip it
            assert res["skipped"][n].startswith(("package missing", "executorch.runtime")), \
                res["skipped"][n]
    assert not {n: r for n, r in res["skipped"].items() if not n.startswith("pte_")}
    # every backend that ran: outputs within 1e-4 * (1 + max|torch|), timings, files, speedups
    _check_result(res, out, [(1, 1), (2, 1)])
    md = (out / "bench.md").read_text()
    assert ("- model `ITrackerMobile`, 4 inputs (N, 3, 32, 32), (N, 3, 32, 32), (N, 3, 32, 32), "
            "(N, 625), created ") in md


def test_multi_input_sparse_runtime_on_the_bench_inputs(itracker_run):
    """Independently of bench's own check: the sparse file it wrote, run on the inputs it
    used (bench_inputs), gives model(*xs)."""
    res, out, model = itracker_run
    inputs = bench_inputs(_itracker_example(), res["batch_sizes"], res["seed"])
    # documented draw order: one generator, batch size by batch size, input by input
    g = torch.Generator().manual_seed(res["seed"])
    for b in res["batch_sizes"]:
        want = [torch.randn((b, *s), generator=g) for s in ITRACKER_SHAPES]
        assert len(inputs[b]) == 4 and all(torch.equal(x, w) for x, w in zip(inputs[b], want))
    sm = runtime.load(out / res["sizes"]["sparse"]["path"])
    assert [list(s) for s in sm.input_shapes] == ITRACKER_SHAPES
    for b, xs in inputs.items():
        with torch.no_grad():
            ref = model(*xs).numpy()
            tol = 1e-4 * (1 + np.abs(ref).max())
            # the output check can see a misrouted input: swapping two of them (same
            # shape) moves the output far beyond bench's tolerance
            for i, j in ((0, 1), (1, 2), (0, 2)):
                ys = list(xs)
                ys[i], ys[j] = ys[j], ys[i]
                assert np.abs(model(*ys).numpy() - ref).max() > 100 * tol, (i, j)
        got = sm(*[x.numpy() for x in xs])
        assert got.shape == ref.shape == (b, 2)
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


def test_multi_input_validation(tmp_path):
    model = _itracker()
    face, left, right, grid = _itracker_example(2)
    with pytest.raises(ConfigError, match=r"same batch size.*\[2, 2, 1, 2\]"):
        benchmark_model(model, (face, left, right[:1], grid), tmp_path)
    with pytest.raises(ConfigError, match=r"example_input\[3\] must be a float tensor .*ndarray"):
        benchmark_model(model, [face, left, right, grid.numpy()], tmp_path)
    with pytest.raises(ConfigError, match="example_input.*empty tuple"):
        benchmark_model(model, (), tmp_path)
    with pytest.raises(ConfigError, match=r"example_input\[1\] must be a float tensor, got dtype"):
        benchmark_model(model, (face, left.long(), right, grid), tmp_path)
    with pytest.raises(ConfigError, match="example_input must be one float tensor"):
        benchmark_model(model, {"face": face}, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
    # one input: the values bench draws are those it always drew (results stay comparable)
    x = torch.randn(3, 1, 28, 28)
    g = torch.Generator().manual_seed(7)
    want = {b: torch.randn((b, 1, 28, 28), generator=g) for b in (1, 8)}
    for ex in (x, (x,), [x]):
        got = bench_inputs(ex, (1, 8), seed=7)
        assert set(got) == {1, 8} and all(len(v) == 1 and torch.equal(v[0], want[b])
                                          for b, v in got.items())


def test_bench_checkpoint_several_input_shapes(tmp_path):
    model = _itracker(1)
    masks = masks_from_weights(model, [n for n, p in model.named_parameters() if p.dim() > 1])
    ck = save_checkpoint(tmp_path / "it.pt", model, kind="pruned", model_name="itracker",
                         model_kwargs={"size": 32}, masks=masks,
                         extra={"input_shape": ITRACKER_SHAPES})
    fast = dict(batch_sizes=(1,), formats=("torch", "sparse"), **FAST)
    res = bench_checkpoint(ck, tmp_path / "o1", **fast)  # shapes recorded in the checkpoint
    assert res["input_shapes"] == ITRACKER_SHAPES
    assert set(res["backends"]) == {"torch_pruned", "sparse_runtime"}
    _check_result(res, tmp_path / "o1", [(1, 1)])
    res = bench_checkpoint(ck, tmp_path / "o2", input_shape=[(3, 32, 32)] * 3 + [(625,)],
                           **dict(fast, formats=("torch",)))
    assert res["input_shapes"] == ITRACKER_SHAPES
    with pytest.raises(ConfigError, match="mixes integers and shapes"):
        bench_checkpoint(ck, tmp_path / "o3", input_shape=[[3, 32, 32], 625], **fast)
    with pytest.raises(ConfigError, match=r"input_shape\[1\] must hold positive integers"):
        bench_checkpoint(ck, tmp_path / "o3", input_shape=[[3, 32, 32], [0]], **fast)
    assert not (tmp_path / "o3").exists()


def test_a_ratio_inside_the_noise_is_not_called_a_speedup():
    """Issue 20: bench reported noise as a speedup (a masked model "2.41x")."""
    from mobileprune.measure.bench import _fmt_x
    from mobileprune.measure.latency import speedup

    a = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.3}
    b = {"median_ms": 1.2, "p10_ms": 1.1, "p90_ms": 1.5}  # overlaps a
    c = {"median_ms": 3.0, "p10_ms": 2.8, "p90_ms": 3.3}
    assert speedup(a, b) is None and speedup(a, c) == pytest.approx(3.0)
    assert _fmt_x(1.2, True) == "within noise (1.20x)" and _fmt_x(3.0, False) == "3.00x"


def test_thread_counts_beyond_the_cpu_affinity_are_dropped(monkeypatch):
    from mobileprune.errors import ConfigError
    from mobileprune.measure import bench

    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert bench._allowed_threads((1, 2)) == ((1,), [2])
    with pytest.raises(ConfigError, match="1 CPU"):
        bench._allowed_threads((2, 4))
    assert bench._environment({})["cpu_affinity"] == [3]
