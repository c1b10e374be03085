"""The bad-input corpus (issue 20, item 5): every bad or hostile input to the command
line and the API gets one clear line ``error: ...`` and exit status 2 (130 for Ctrl-C),
no traceback, and no file written or changed.

Each CLI case runs ``main`` in-process on a folder of inputs whose bytes are recorded
before and compared after; a few cases also run in a real subprocess to show that no
traceback reaches the terminal.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileprune.checkpoint import load_checkpoint, save_checkpoint
from mobileprune.cli import main
from mobileprune.errors import MobilePruneError
from mobileprune.models import LeNet5, LeNet300100


def _run(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _save(path: Path, model, **kw) -> Path:
    save_checkpoint(path, model, kind=kw.pop("kind", "dense"), model_name=kw.pop("name", "lenet5"),
                    extra={"dataset": "mnist-sample", "input_shape": [1, 28, 28], **kw.pop("extra", {})},
                    **kw)
    return path


def _craft(path: Path, edit) -> Path:
    """A checkpoint of a small LeNet-300-100 with ``edit(ckpt)`` applied to its fields."""
    torch.manual_seed(0)
    _save(path, LeNet300100(), name="lenet300100")
    ck = torch.load(path, weights_only=True)
    edit(ck)
    torch.save(ck, path)
    return path


def _nan(ck):
    ck["state_dict"]["fc2.weight"][0, 0] = float("nan")


def _inf(ck):
    ck["state_dict"]["fc3.bias"][1] = float("inf")


def _huge_kwargs(ck):
    ck["model"]["kwargs"] = {"in_features": 10 ** 9}


def _huge_sizes(ck):
    ck["kind"] = "compacted"
    ck["extra"]["compacted"] = True
    ck["extra"]["layer_sizes"] = {"fc1": {"in_features": 10 ** 6, "out_features": 10 ** 6, "bias": True}}


def _huge_input(ck):
    ck["extra"]["input_shape"] = [100000, 100000, 1000]


def _text_input(ck):
    ck["extra"]["input_shape"] = "abc"


def _arch(ck):
    ck["architecture"]["fc1.weight"] = [10 ** 9, 784]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    _save(d / "dense.pt", LeNet5())
    (d / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    torch.save(LeNet5().state_dict(), d / "plain.pt")
    (d / "unknown_key.yaml").write_text("default: 0.5\nadmm: {epohcs: 2}\n")
    (d / "over.yaml").write_text("default: 1.5\n")
    (d / "not_mapping.yaml").write_text("- 1\n- 2\n")
    (d / "bad_syntax.yaml").write_text("default: [0.5\n")
    (d / "no_layer.yaml").write_text("layers: {conv9: 0.5}\n")
    (d / "file").write_text("a plain file")
    for name, edit in (("nan", _nan), ("inf", _inf), ("huge_kwargs", _huge_kwargs),
                       ("huge_sizes", _huge_sizes), ("huge_input", _huge_input),
                       ("text_input", _text_input), ("arch", _arch)):
        _craft(d / f"{name}.pt", edit)
    (d / "mods").mkdir()
    (d / "mods" / "usermods.py").write_text(
        "import torch\n"
        "def net():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n"
        "def not_a_model():\n    return 42\n")
    torch.save({"0.weight": torch.zeros(3, 3)}, d / "wrong_sd.pt")
    return d


# (argv, words the message must hold); {d} is the folder of inputs
CASES = [
    # train
    (["train", "--epochs", "-1", "--out", "{d}/o.pt"], ["--epochs", ">= 1"]),
    (["train", "--epochs", "0", "--out", "{d}/o.pt"], ["--epochs"]),
    (["train", "--epochs", "two", "--out", "{d}/o.pt"], ["--epochs"]),
    (["train", "--batch-size", "0", "--out", "{d}/o.pt"], ["--batch-size"]),
    (["train", "--lr", "0", "--out", "{d}/o.pt"], ["--lr"]),
    (["train", "--lr", "nan", "--out", "{d}/o.pt"], ["--lr"]),
    (["train", "--lr", "-1e-3", "--out", "{d}/o.pt"], ["--lr"]),
    (["train", "--weight-decay", "-1", "--out", "{d}/o.pt"], ["--weight-decay"]),
    (["train", "--optimizer", "lbfgs", "--out", "{d}/o.pt"], ["--optimizer"]),
    (["train", "--seed", "-1", "--out", "{d}/o.pt"], ["--seed"]),
    (["train", "--model", "nosuch", "--out", "{d}/o.pt"], ["unknown model", "lenet5"]),
    (["train", "--dataset", "nosuch", "--out", "{d}/o.pt"], ["unknown data set", "mnist-sample"]),
    (["train", "--model", "harcnn", "--out", "{d}/o.pt"], ["does not accept", "mnist-sample"]),
    (["train", "--model", "itracker", "--out", "{d}/o.pt"], ["does not accept"]),
    (["train", "--model", "lenet300100", "--model-arg", "in_features=100", "--out", "{d}/o.pt"],
     ["does not accept"]),
    (["train", "--model-arg", "width", "--out", "{d}/o.pt"], ["key=value"]),
    (["train", "--model-arg", "depth=3", "--out", "{d}/o.pt"], ["no setting depth", "num_classes"]),
    (["train", "--model-arg", "num_classes=-3", "--out", "{d}/o.pt"], ["cannot be built"]),
    (["train"], ["--out"]),
    (["train", "--out", "{d}/file/sub/o.pt", "--epochs", "1"], ["file"]),
    # prune
    (["prune", "{d}/missing.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["missing.pt"]),
    (["prune", "{d}/junk.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["junk.pt"]),
    (["prune", "{d}/plain.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["not a mobileprune checkpoint"]),
    (["prune", "{d}/dense.pt", "--sparsity", "1.0", "--out", "{d}/o.pt"], ["--sparsity"]),
    (["prune", "{d}/dense.pt", "--sparsity", "-0.1", "--out", "{d}/o.pt"], ["--sparsity"]),
    (["prune", "{d}/dense.pt", "--sparsity", "0.5", "--config", "demo", "--out", "{d}/o.pt"], ["exclusive"]),
    (["prune", "{d}/dense.pt", "--out", "{d}/o.pt"], ["--config", "--sparsity"]),
    (["prune", "{d}/dense.pt", "--config", "nosuch", "--out", "{d}/o.pt"], ["nosuch"]),
    (["prune", "{d}/dense.pt", "--config", "{d}/unknown_key.yaml", "--out", "{d}/o.pt"], ["epohcs"]),
    (["prune", "{d}/dense.pt", "--config", "{d}/over.yaml", "--out", "{d}/o.pt"], ["1.5"]),
    (["prune", "{d}/dense.pt", "--config", "{d}/not_mapping.yaml", "--out", "{d}/o.pt"], ["mapping"]),
    (["prune", "{d}/dense.pt", "--config", "{d}/bad_syntax.yaml", "--out", "{d}/o.pt"], ["bad_syntax.yaml"]),
    (["prune", "{d}/dense.pt", "--config", "{d}/no_layer.yaml", "--out", "{d}/o.pt"], ["conv9"]),
    (["prune", "{d}/dense.pt", "--sparsity", "0.5", "--lam", "1", "--out", "{d}/o.pt"], ["--lam"]),
    (["prune", "{d}/dense.pt", "--method", "l0_group_lasso", "--sparsity", "0.5", "--out", "{d}/o.pt"],
     ["--sparsity"]),
    (["prune", "{d}/dense.pt", "--method", "l1", "--rounds", "-1", "--out", "{d}/o.pt"], ["--rounds"]),
    (["prune", "{d}/dense.pt", "--method", "l1", "--lam", "-1", "--out", "{d}/o.pt"], ["--lam"]),
    (["prune", "{d}/dense.pt", "--sparsity", "0.5", "--admm-epochs", "-1", "--out", "{d}/o.pt"],
     ["--admm-epochs"]),
    (["prune", "{d}/dense.pt", "--method", "l1", "--target-nonzero", "0", "--out", "{d}/o.pt"],
     ["--target-nonzero"]),
    (["prune", "{d}/dense.pt", "--sparsity", "0.5", "--regrow", "1.5", "--out", "{d}/o.pt"], ["--regrow"]),
    (["prune", "{d}/dense.pt", "--method", "nosuch", "--out", "{d}/o.pt"], ["--method"]),
    (["prune", "{d}/dense.pt", "--sparsity", "0.5", "--out", "{d}/dense.pt"], ["input"]),
    (["prune", "{d}/dense.pt", "--sparsity", "0.5", "--dataset", "nosuch", "--out", "{d}/o.pt"],
     ["unknown data set"]),
    (["prune", "{d}/nan.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["NaN or Inf", "fc2.weight"]),
    (["prune", "{d}/inf.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["NaN or Inf", "fc3.bias"]),
    (["prune", "{d}/huge_kwargs.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["crafted"]),
    (["prune", "{d}/huge_sizes.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["layer_sizes"]),
    (["prune", "{d}/arch.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"], ["architecture"]),
    # compact / export / convert
    (["compact", "{d}/dense.pt", "--repeats", "0", "--out", "{d}/o.pt"], ["--repeats"]),
    (["compact", "{d}/dense.pt", "--threads", "0", "--out", "{d}/o.pt"], ["--threads"]),
    (["compact", "{d}/dense.pt", "--input-shape", ";;", "--out", "{d}/o.pt"], ["--input-shape"]),
    (["compact", "{d}/dense.pt", "--out", "{d}/dense.pt"], ["input"]),
    (["compact", "{d}/nan.pt", "--out", "{d}/o.pt"], ["NaN"]),
    (["export", "{d}/dense.pt", "--format", "tflite", "--out", "{d}/o.x"], ["--format"]),
    (["export", "{d}/dense.pt", "--format", "sparse", "--input-shape", "0,28,28", "--out", "{d}/o.mps"],
     ["positive"]),
    (["export", "{d}/dense.pt", "--format", "sparse", "--input-shape", "1,x", "--out", "{d}/o.mps"],
     ["integers"]),
    (["export", "{d}/dense.pt", "--format", "sparse", "--input-shape", "100000,100000,100",
      "--out", "{d}/o.mps"], ["elements"]),
    (["export", "{d}/huge_input.pt", "--format", "sparse", "--out", "{d}/o.mps"], ["elements"]),
    (["export", "{d}/text_input.pt", "--format", "sparse", "--out", "{d}/o.mps"], ["list of integers"]),
    (["export", "{d}/dense.pt", "--format", "sparse", "--out", "{d}/dense.pt"], ["input"]),
    (["export", "{d}/dense.pt", "--format", "native", "--out", "{d}"], ["holds the input"]),
    (["export", "{d}/dense.pt", "--format", "sparse", "--value-dtype", "int8", "--out", "{d}/o.mps"],
     ["--value-dtype"]),
    (["convert", "{d}/dense.pt", "{d}/dense.pt"], ["input"]),
    (["convert", "{d}/missing.mps", "{d}/o.mps"], ["missing.mps"]),
    (["convert", "{d}/junk.pt", "{d}/o.mps"], ["junk.pt"]),
    # report / eval / bench / demo
    (["report", "{d}/dense.pt", "--format", "xml"], ["--format"]),
    (["report", "{d}/dense.pt", "--out", "{d}/dense.pt"], ["input"]),
    (["report", "{d}/dense.pt", "--out", "{d}/file/sub/r.md"], ["file"]),
    (["report", "{d}/missing.pt"], ["missing.pt"]),
    (["eval", "{d}/dense.pt", "--dataset", "nosuch"], ["unknown data set"]),
    (["eval", "{d}/dense.pt", "--batch-size", "0"], ["--batch-size"]),
    (["bench", "{d}/dense.pt", "--repeats", "0"], ["--repeats"]),
    (["bench", "{d}/dense.pt", "--warmup", "-1"], ["--warmup"]),
    (["bench", "{d}/dense.pt", "--batch-sizes", "1,x", "--out-dir", "{d}/b"], ["--batch-sizes"]),
    (["bench", "{d}/dense.pt", "--threads", "0", "--out-dir", "{d}/b"], ["--threads"]),
    (["bench", "{d}/dense.pt", "--out-dir", "{d}"], ["holds the input"]),
    (["demo", "--epochs", "0"], ["--epochs"]),
    (["nosuch"], ["invalid choice"]),
    # a user's own model
    (["report", "{d}/plain.pt", "--model", "nocolon"], ["package.module:factory"]),
    (["report", "{d}/plain.pt", "--model", "nosuchmodule_xyz:net"], ["cannot import"]),
    (["report", "{d}/plain.pt", "--model", "usermods:missing"], ["no callable"]),
    (["report", "{d}/plain.pt", "--model", "usermods:not_a_model"], ["not a torch.nn.Module"]),
    (["report", "{d}/wrong_sd.pt", "--model", "usermods:net"], ["does not fit"]),
    (["report", "{d}/junk.pt", "--model", "usermods:net"], ["junk.pt"]),
]


@pytest.mark.parametrize("argv, words", CASES, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_cli_bad_input(files, capsys, monkeypatch, argv, words):
    monkeypatch.syspath_prepend(str(files / "mods"))
    before = _snapshot(files)
    code = _run([a.format(d=files) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert _snapshot(files) == before  # no file written or changed


def test_the_corpus_is_large():
    assert len(CASES) + len(API_CASES) >= 60


def test_ctrl_c_exits_130(files, monkeypatch, capsys):
    import mobileprune.cli.train as commands

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(commands, "cmd_report", interrupted)
    assert _run(["report", files / "dense.pt"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: interrupted") and "\n" not in err


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "-1", "--out", "x.pt"],
    ["prune", "{d}/nan.pt", "--sparsity", "0.5", "--out", "{d}/o.pt"],
    ["export", "{d}/huge_input.pt", "--format", "sparse", "--out", "{d}/o.mps"],
])
def test_no_traceback_in_a_real_process(files, tmp_path, argv):
    r = subprocess.run([sys.executable, "-m", "mobileprune", *[a.format(d=files) for a in argv]],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


# -- the API: bad input raises a MobilePruneError (a ValueError too) with a clear message
def _runtime_uint8(tmp_path):
    from mobileprune import export_sparse, runtime

    m = LeNet5().eval()
    export_sparse(m, torch.randn(1, 1, 28, 28), tmp_path / "m.mps")
    runtime.load(tmp_path / "m.mps")(np.zeros((1, 1, 28, 28), np.uint8))


def _runtime_shape(tmp_path):
    from mobileprune import export_sparse, runtime

    m = LeNet5().eval()
    export_sparse(m, torch.randn(1, 1, 28, 28), tmp_path / "m.mps")
    runtime.load(tmp_path / "m.mps")(np.zeros((1, 1, 27, 28), np.float32))


def _targets_out_of_range(tmp_path):
    from mobileprune.sparsity.targets import resolve_targets
    resolve_targets(LeNet5(), {"default": 1.0})


def _targets_unknown_layer(tmp_path):
    from mobileprune.sparsity.targets import resolve_targets
    resolve_targets(LeNet5(), {"layers": {"nosuch": 0.5}})


def _restore_foreign(tmp_path):
    from mobileprune.checkpoint import restore_model
    _save(tmp_path / "a.pt", LeNet5())
    restore_model(load_checkpoint(tmp_path / "a.pt"), LeNet300100())


def _build_bad_kwargs(tmp_path):
    from mobileprune.models import build_model
    build_model("lenet5", width=3)


def _kwargs_for_data(tmp_path):
    from mobileprune.models import kwargs_for_data
    kwargs_for_data("lenet5", (1, 28, 28), 10, {"depth": 2})


def _empty_dataset(tmp_path, monkeypatch=None):
    from torch.utils.data import TensorDataset

    from mobileprune.data import registry
    empty = registry.DataBundle(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0).long()),
                                TensorDataset(torch.zeros(1, 1, 28, 28), torch.zeros(1).long()), 10, (1, 28, 28))
    registry.DATASETS["_empty"] = lambda data_dir: empty
    try:
        registry.load_dataset("_empty")
    finally:
        del registry.DATASETS["_empty"]


def _resume_other_weights(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from mobileprune.pipeline.prune import admm_prune
    data = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    cfg = {"default": 0.5, "admm": {"epochs": 1}, "retrain": {"epochs": 1}}
    torch.manual_seed(0)
    admm_prune(LeNet300100(), data, cfg, run_dir=tmp_path / "run", progress=False, log=lambda s: None)
    admm_prune(LeNet300100(), data, cfg, run_dir=tmp_path / "run", progress=False, log=lambda s: None)


def _lock_twice(tmp_path):
    from mobileprune.files import output_lock
    with output_lock(tmp_path / "o.pt"), output_lock(tmp_path / "o.pt"):
        pass


API_CASES = [(_runtime_uint8, "dtype"), (_runtime_shape, "shape"), (_targets_out_of_range, "1.0"),
             (_targets_unknown_layer, "nosuch"), (_restore_foreign, "architecture"),
             (_build_bad_kwargs, "width"), (_kwargs_for_data, "depth"), (_empty_dataset, "empty"),
             (_resume_other_weights, "other model weights"), (_lock_twice, "another mobileprune run")]


@pytest.mark.parametrize("case, words", API_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_api_bad_input(tmp_path, case, words):
    with pytest.raises((MobilePruneError, ValueError)) as info:
        case(tmp_path)
    msg = str(info.value)
    assert words in msg and "\n" not in msg.strip(), msg
