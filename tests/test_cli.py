"""The command line: every sub-command end to end on the embedded sample, and every
bad input giving a clear message and a non-zero exit without touching outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobileprune.checkpoint import load_checkpoint, save_checkpoint
from mobileprune.cli import main
from mobileprune.models import LeNet300100


def run(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse and error exits
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "dense.pt"
    assert run("train", "--model", "lenet5", "--epochs", "1", "--out", str(out), "--quiet") == 0
    return out


def test_help_of_every_command(capsys):
    for cmd in ("train", "prune", "eval", "report", "demo", "compact"):
        assert run(cmd, "--help") == 0
        assert f"usage: mobileprune {cmd}" in capsys.readouterr().out
    # The installed entry point and `python -m mobileprune` work too.
    r = subprocess.run([sys.executable, "-m", "mobileprune", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: mobileprune" in r.stdout
    assert "train" in r.stdout and "compact" in r.stdout


def test_train_eval_prune_report(dense, tmp_path, capsys):
    ck = load_checkpoint(dense)
    assert ck["kind"] == "dense" and ck["model"]["name"] == "lenet5"
    assert ck["metrics"]["test_accuracy"] > 0.8  # one epoch on 5,000 real MNIST images

    assert run("eval", str(dense), "--json") == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["dataset"] == "mnist-sample" and abs(ev["test_accuracy"] - ck["metrics"]["test_accuracy"]) < 1e-9

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("admm: {epochs: 1, update_every: 10}\nretrain: {epochs: 1}\n"
                   "default: 0.9\nlayers: {conv1: 0.5, fc1: {keep: 2000}}\n")
    out = tmp_path / "pruned.pt"
    assert run("prune", str(dense), "--config", str(cfg), "--out", str(out), "--quiet") == 0
    pruned = load_checkpoint(out)
    sd = pruned["state_dict"]
    assert int((sd["conv1.weight"] != 0).sum()) <= 250
    assert int((sd["conv2.weight"] != 0).sum()) <= 2500
    assert int((sd["fc1.weight"] != 0).sum()) <= 2000
    assert int((sd["fc2.weight"] != 0).sum()) <= 500
    for name, mask in pruned["masks"].items():
        assert not bool((sd[name][~mask] != 0).any())
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["totals"]["all_targets_met"] is True
    assert rep["totals"]["nonzero"] == sum(int((sd[f"{n}.weight"] != 0).sum())
                                           for n in ("conv1", "conv2", "fc1", "fc2"))
    assert "| fc1 |" in out.with_suffix(".md").read_text()

    capsys.readouterr()
    assert run("report", str(out), "--format", "json") == 0
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["totals"]["nonzero"] == rep["totals"]["nonzero"]
    assert [r["target_keep"] for r in rep2["layers"]] == [250, 2500, 2000, 500]


@pytest.mark.parametrize("cfg_text, message", [
    ("layers: {conv9: 0.5}", "unknown layer 'conv9'"),
    ("default: 1.0", "[0, 1)"),
    ("default: -0.2", "[0, 1)"),
    ("layers: {conv1: {keep: 501}}", "has 500 weights but the config keeps 501"),
    ("layers: [1, 2", "malformed YAML"),
])
def test_bad_config_exits_nonzero_and_keeps_output(dense, tmp_path, capsys, cfg_text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(cfg_text)
    out = tmp_path / "out.pt"
    out.write_bytes(b"previous result")
    assert run("prune", str(dense), "--config", str(cfg), "--out", str(out), "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert out.read_bytes() == b"previous result"


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    assert run("eval", str(bad)) == 2
    assert "corrupt" in capsys.readouterr().err
    plain = tmp_path / "plain.pt"
    torch.save(LeNet300100().state_dict(), plain)
    assert run("report", str(plain)) == 2
    assert "not a mobileprune checkpoint" in capsys.readouterr().err
    # A LeNet-300-100 checkpoint pruned with a LeNet-5 layer name.
    other = tmp_path / "other.pt"
    save_checkpoint(other, LeNet300100(), model_name="lenet300100")
    assert run("prune", str(other), "--config", "demo", "--out", str(tmp_path / "o.pt"), "--quiet") == 2
    assert "unknown layer 'conv1'" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_a_whole_pickled_model_says_what_to_save_instead(tmp_path, capsys):
    """`torch.save(model)` (code in the file) is refused in one line naming the class and the
    fix, with or without --model, never with torch's advice to load it unsafely."""
    path = tmp_path / "whole.pt"
    torch.save(LeNet300100(), path)
    for extra in ([], ["--model", "torch.nn:Identity"]):
        assert run("report", str(path), *extra) == 2
        err = capsys.readouterr().err.strip()
        assert "LeNet300100" in err and "model.state_dict()" in err and "--model" in err
        assert "\n" not in err and "weights_only=False" not in err


def test_unknown_model_is_named_before_the_data_is_looked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOBILEPRUNE_DATA", raising=False)
    assert run("train", "--model", "lenet6", "--dataset", "mnist", "--out", str(tmp_path / "d.pt")) == 2
    err = capsys.readouterr().err
    assert "unknown model 'lenet6'" in err and "lenet5" in err and "MOBILEPRUNE_DATA" not in err


def test_missing_data_dir(dense, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOBILEPRUNE_DATA", raising=False)
    assert run("eval", str(dense), "--dataset", "mnist", "--data-dir", str(tmp_path / "nope")) == 2
    assert "nope" in capsys.readouterr().err
    assert run("eval", str(dense), "--dataset", "mnist") == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "MOBILEPRUNE_DATA" in err


def test_missing_checkpoint_and_unknown_config(tmp_path, capsys):
    assert run("eval", str(tmp_path / "none.pt")) == 2
    assert "not found" in capsys.readouterr().err
    assert run("prune", str(tmp_path / "none.pt"), "--config", "no-such-config",
               "--out", str(tmp_path / "x.pt")) == 2
    assert "no-such-config" in capsys.readouterr().err


def test_prune_with_mobileprune_method(dense, tmp_path, capsys):
    out = tmp_path / "l0gl.pt"
    # Huge lam: every group of fc1 (columns) but a few must die; 1 round, 1 prox epoch.
    assert run("prune", str(dense), "--method", "l0_group_lasso", "--lam", "50", "--eta", "1e-4",
               "--rounds", "1", "--prox-epochs", "1", "--retrain-epochs", "0",
               "--out", str(out), "--quiet") == 0
    ck = load_checkpoint(out)
    sd = ck["state_dict"]
    assert ck["config"]["method"] == "l0_group_lasso" and ck["config"]["lam"] == 50
    fc1_cols = int((sd["fc1.weight"].abs().sum(0) > 0).sum())
    rep = json.loads(out.with_suffix(".json").read_text())
    row = {r["layer"]: r for r in rep["layers"]}["fc1"]
    assert row["active_in"] == fc1_cols < 800
    assert rep["totals"]["nonzero"] == sum(int((sd[f"{n}.weight"] != 0).sum())
                                           for n in ("conv1", "conv2", "fc1", "fc2"))
    assert run("prune", str(dense), "--method", "l1", "--lam", "1", "--out", str(tmp_path / "x.pt")) == 2
    assert "lam" in capsys.readouterr().err
    assert run("prune", str(dense), "--method", "l0", "--sparsity", "0.5", "--out", str(tmp_path / "x.pt")) == 2
    assert "--sparsity is for --method admm" in capsys.readouterr().err
    assert run("prune", str(dense), "--lam", "0.5", "--config", "demo", "--out", str(tmp_path / "x.pt")) == 2
    assert "--lam is for the proximal methods" in capsys.readouterr().err
    assert run("prune", str(dense), "--target-nonzero", "100", "--config", "demo",
               "--out", str(tmp_path / "x.pt")) == 2
    assert "--target-nonzero is for the proximal methods" in capsys.readouterr().err


def test_prune_target_nonzero_stops_the_rounds(dense, tmp_path):
    out = tmp_path / "t.pt"
    total = 430500  # LeNet-5 weights: round 1 (huge lam) goes far below this target
    assert run("prune", str(dense), "--method", "l0_group_lasso", "--lam", "50", "--eta", "1e-4",
               "--rounds", "3", "--prox-epochs", "1", "--retrain-epochs", "0",
               "--target-nonzero", str(total - 1), "--out", str(out), "--quiet",
               "--keep-run") == 0
    ck = load_checkpoint(out)
    assert ck["config"]["schedule"]["target_nonzero"] == total - 1
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["totals"]["nonzero"] <= total - 1
    state = load_checkpoint(tmp_path / "t.run" / "state.pt")
    assert state["extra"]["rounds_done"] == 1  # stopped after the first round, not 3


def test_prune_with_compact_schedule_saves_a_loadable_smaller_model(dense, tmp_path):
    """schedule.compact removes dead units between rounds: the saved pruned checkpoint
    has the smaller layers and rebuilds from the zoo (and a rerun resumes from it)."""
    from mobileprune.checkpoint import restore_model

    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: l0_group_lasso\nlam: 0.0\neta: 1.0e-4\n"
                   "layers: {fc1: {grouping: linear_out, lam: 25.0}}\n"
                   "schedule: {compact: true}\n")
    out = tmp_path / "c.pt"
    args = ("prune", str(dense), "--method", "l0_group_lasso", "--config", str(cfg), "--rounds", "1",
            "--prox-epochs", "1", "--retrain-epochs", "0", "--out", str(out), "--quiet", "--keep-run")
    assert run(*args) == 0
    ck = load_checkpoint(out)
    assert ck["extra"]["compacted"] is True
    hidden = ck["architecture"]["fc1.weight"][0]
    assert hidden < 500 and ck["architecture"]["fc2.weight"] == [10, hidden]
    m = restore_model(ck)
    assert m.fc1.out_features == hidden and torch.equal(m.fc1.weight, ck["state_dict"]["fc1.weight"])
    rep = json.loads(out.with_suffix(".json").read_text())
    fc1 = {r["layer"]: r for r in rep["layers"]}["fc1"]
    assert fc1["shape"] == ck["architecture"]["fc1.weight"] and fc1["units_out"] == hidden
    # compression is counted against the model as given (LeNet-5: 430,500 weights)
    t = rep["totals"]
    assert t["original_weights"] == 430500 and t["weights"] < 430500
    assert t["weight_compression"] == pytest.approx(430500 / t["nonzero"])
    assert "430,500 weights in the model as given" in out.with_suffix(".md").read_text()
    assert run(*args) == 0  # resumes from c.run/state.pt (the smaller model) and finishes
    assert load_checkpoint(out)["architecture"]["fc1.weight"][0] == hidden


def test_compact_command_roundtrip(tmp_path, capsys):
    torch.manual_seed(0)
    from mobileprune.checkpoint import restore_model
    from mobileprune.models import LeNet5

    m = LeNet5().eval()
    with torch.no_grad():
        m.conv1.weight[12:] = 0
        m.conv1.bias[12:] = 0
        m.conv2.weight[30:] = 0            # dead filters with nonzero bias: folded into fc1
        m.fc1.weight[:, 400:] = 0          # channels 25..49 of conv2 feed only zero weights
        m.fc1.weight[350:] = 0
    src = tmp_path / "pruned.pt"
    save_checkpoint(src, m, kind="pruned", model_name="lenet5", extra={"input_shape": [1, 28, 28]})
    out = tmp_path / "small.pt"
    assert run("compact", str(src), "--out", str(out), "--repeats", "5") == 0
    ck = torch.load(out, weights_only=True)
    assert ck["kind"] == "compacted"
    small = restore_model(load_checkpoint(out)).eval()
    assert (small.conv1.out_channels, small.conv2.in_channels) == (12, 12)
    assert small.conv2.out_channels == 25 and small.fc1.in_features == 25 * 16
    assert small.fc1.out_features == 350 and small.fc2.in_features == 350
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert float((small(x) - m(x)).abs().max()) <= 1e-5
    res = json.loads(out.with_suffix(".json").read_text())
    hand = (12 * 25 + 12) + (25 * 12 * 25 + 25) + (350 * 400 + 350) + (10 * 350 + 10)
    assert res["parameters"]["compacted"] == hand
    assert res["parameters"]["pruned"] == 431080
    assert res["macs"]["compacted"] == 12 * 25 * 576 + 25 * 12 * 25 * 64 + 350 * 400 + 10 * 350
    assert res["latency_batch1_ms"]["compacted"] > 0
    # no recorded input shape -> clear error
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, m, model_name="lenet5")
    assert run("compact", str(bare), "--out", str(tmp_path / "x.pt")) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_export_sparse_command(tmp_path):
    torch.manual_seed(0)
    import numpy as np

    from mobileprune import runtime
    from mobileprune.models import LeNet5

    m = LeNet5().eval()
    with torch.no_grad():
        for p in (m.conv2.weight, m.fc1.weight):
            p[torch.rand_like(p) < 0.9] = 0
    src = tmp_path / "pruned.pt"
    save_checkpoint(src, m, kind="pruned", model_name="lenet5", extra={"input_shape": [1, 28, 28]})
    out = tmp_path / "m.mps"
    assert run("export", str(src), "--format", "sparse", "--out", str(out)) == 0
    x = torch.randn(2, 1, 28, 28)
    y = runtime.load(out)(x.numpy())
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    dense_bytes = sum(p.numel() * 4 for p in m.parameters())
    assert out.stat().st_size < dense_bytes / 3


def test_bench_command(tmp_path, capsys):
    torch.manual_seed(0)
    from mobileprune.models import LeNet5

    m = LeNet5().eval()
    with torch.no_grad():
        m.fc1.weight[torch.rand_like(m.fc1.weight) < 0.95] = 0
        m.conv2.weight[25:] = 0
        m.conv2.bias[25:] = 0
    src = tmp_path / "pruned.pt"
    save_checkpoint(src, m, kind="pruned", model_name="lenet5", extra={"input_shape": [1, 28, 28]})
    out = tmp_path / "b"
    assert run("bench", str(src), "--out-dir", str(out), "--repeats", "3", "--warmup", "1",
               "--batch-sizes", "1", "--threads", "1", "--formats", "torch,compacted,sparse") == 0
    res = json.loads((out / "bench.json").read_text())
    lat = {k: v["latency"]["b1_t1"]["median_ms"] for k, v in res["backends"].items() if v.get("latency")}
    assert {"torch_pruned", "torch_compacted", "sparse_runtime"} <= set(lat)
    assert all(v > 0 for v in lat.values())
    assert all(b["outputs_match"] for b in res["backends"].values() if "outputs_match" in b)
    assert run("bench", str(src), "--threads", "0,1", "--out-dir", str(out)) == 2
    assert "--threads" in capsys.readouterr().err


def test_prune_regrow_flag(dense, tmp_path, capsys):
    """--regrow: retrain.regrow for ADMM (exact targets kept), schedule.final_regrow for
    the proximal methods (which need final_retrain_epochs)."""
    out = tmp_path / "r.pt"
    assert run("prune", str(dense), "--sparsity", "0.9", "--admm-epochs", "1", "--retrain-epochs", "1",
               "--regrow", "0.3", "--out", str(out), "--quiet") == 0
    ck = load_checkpoint(out)
    assert ck["config"]["retrain"]["regrow"] == 0.3
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["totals"]["all_targets_met"] is True
    assert run("prune", str(dense), "--method", "l0", "--eta", "1e-4", "--rounds", "1",
               "--regrow", "0.3", "--out", str(tmp_path / "x.pt")) == 2
    assert "final_regrow needs schedule.final_retrain_epochs" in capsys.readouterr().err
    assert run("prune", str(dense), "--sparsity", "0.9", "--regrow", "1.5",
               "--out", str(tmp_path / "x.pt")) == 2
    assert "regrow" in capsys.readouterr().err


def test_parse_input_shape_of_several_inputs(tmp_path, capsys):
    """bench --input-shape: one shape, or one per input separated by ';' (iTracker: four)."""
    from mobileprune.cli.args import parse_input_shape as _parse_input_shape
    from mobileprune.models import build_model

    assert _parse_input_shape("1,28,28") == (1, 28, 28)
    assert _parse_input_shape("3,32,32;3,32,32; 3,32,32 ;625") == [(3, 32, 32)] * 3 + [(625,)]
    torch.manual_seed(0)
    m = build_model("itracker", size=32).eval()
    src = tmp_path / "it.pt"
    save_checkpoint(src, m, kind="pruned", model_name="itracker", model_kwargs={"size": 32})
    out = tmp_path / "b"
    assert run("bench", str(src), "--input-shape", "3,32,32;3,32,32;3,32,32;625", "--out-dir",
               str(out), "--repeats", "2", "--warmup", "0", "--batch-sizes", "1", "--threads", "1",
               "--formats", "torch") == 0
    res = json.loads((out / "bench.json").read_text())
    assert res["input_shapes"] == [[3, 32, 32], [3, 32, 32], [3, 32, 32], [625]]
    header = "4 inputs (N, 3, 32, 32), (N, 3, 32, 32), (N, 3, 32, 32), (N, 625)"
    assert header in capsys.readouterr().out  # the printed bench.md
    for bad, message in (("3,32,32;;625", "--input-shape has an empty shape in '3,32,32;;625'"),
                         ("3,32,x;625", "--input-shape must be comma-separated integers per input"),
                         ("3,32,32;0", "--input-shape values must be positive")):
        assert run("bench", str(src), "--input-shape", bad, "--out-dir", str(tmp_path / "x")) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "x").exists()


def test_export_and_compact_several_inputs(tmp_path, capsys):
    """export / compact of a four-input model: the shapes recorded in the checkpoint (a
    list of shapes) or given as --input-shape with ';'; the sparse file runs like torch."""
    import numpy as np

    from mobileprune.models import build_model
    from mobileprune.runtime import load

    torch.manual_seed(0)
    m = build_model("itracker", size=32).eval()
    with torch.no_grad():
        m.conv_f2.weight[:40] = 0  # 40 of the face tower's 64 filters pruned
        m.conv_f2.bias[:40] = 0
    shapes = [[3, 32, 32], [3, 32, 32], [3, 32, 32], [625]]
    src = tmp_path / "it.pt"
    save_checkpoint(src, m, kind="pruned", model_name="itracker", model_kwargs={"size": 32},
                    extra={"input_shape": shapes})
    out = tmp_path / "it.mps"
    assert run("export", str(src), "--format", "sparse", "--out", str(out)) == 0
    sm = load(out)
    assert [list(s) for s in sm.input_shapes] == shapes
    xs = [torch.randn(2, *s) for s in shapes]
    with torch.no_grad():
        ref = m(*xs).numpy()
    assert np.abs(sm(*[x.numpy() for x in xs]) - ref).max() <= 1e-4 * np.abs(ref).max()
    small = tmp_path / "small.pt"
    assert run("compact", str(src), "--input-shape", "3,32,32;3,32,32;3,32,32;625",
               "--out", str(small), "--repeats", "2") == 0
    res = json.loads(small.with_suffix(".json").read_text())
    assert res["max_abs_diff"] < 1e-4
    assert res["parameters"]["compacted"] < res["parameters"]["pruned"]
    capsys.readouterr()


def test_report_targets_cover_multi_weight_modules():
    """`mobileprune report` rebuilds the recorded targets of every prunable weight, also
    the weights of an LSTM (named by parameter), not only modules with a `.weight`."""
    from mobileprune.cli.train import targets_from as _targets_from

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(4, 6)
            self.fc = torch.nn.Linear(6, 3)

    model = Tagger()
    ckpt = {"extra": {"targets": {"lstm.weight_ih_l0": 10, "lstm.weight_hh_l0": 20, "fc": 5, "gone": 1}}}
    got = {t.name: (t.param_name, t.shape, t.keep) for t in _targets_from(ckpt, model)}
    assert got == {"lstm.weight_ih_l0": ("lstm.weight_ih_l0", (24, 4), 10),
                   "lstm.weight_hh_l0": ("lstm.weight_hh_l0", (24, 6), 20),
                   "fc": ("fc.weight", (3, 6), 5)}


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("argv", [
    ("compact", "{ck}", "--out", "{ck}"),
    ("export", "{ck}", "--format", "sparse", "--out", "{ck}"),
    ("export", "{ck}", "--format", "onnx", "--out", "{dir}/./dense.pt"),
    ("report", "{ck}", "--out", "{ck}"),
    ("prune", "{ck}", "--sparsity", "0.5", "--out", "{ck}"),
    ("prune", "{ck}", "--sparsity", "0.5", "--out", "{dir}/dense.pt", "--run-dir", "{dir}"),
    ("export", "{ck}", "--format", "native", "--out", "{dir}"),
])
def test_an_output_that_is_an_input_is_refused(dense, tmp_path, capsys, argv):
    """Issue 20: `export --out X` / `compact --out X` where X is the input overwrote it."""
    ck = tmp_path / "dense.pt"
    ck.write_bytes(dense.read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(ck=ck, dir=tmp_path) for a in argv]
    assert run(*argv) == 2
    _one_line_error(capsys, "input", "choose another")
    assert ck.read_bytes() == dense.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_prune_report_beside_the_input_is_refused(dense, tmp_path, capsys):
    """OUT.json is written beside OUT: a config file called OUT.json is an input."""
    cfg = tmp_path / "p.json"
    cfg.write_text('{"default": 0.5, "admm": {"epochs": 1}, "retrain": {"epochs": 1}}')
    text = cfg.read_text()
    assert run("prune", str(dense), "--config", str(cfg), "--out", str(tmp_path / "p.pt")) == 2
    _one_line_error(capsys, "p.json")
    assert cfg.read_text() == text and not (tmp_path / "p.pt").exists()


def test_prune_removes_its_run_dir_unless_kept(dense, tmp_path):
    common = ("--sparsity", "0.5", "--admm-epochs", "1", "--retrain-epochs", "0", "--quiet")
    out = tmp_path / "a.pt"
    assert run("prune", str(dense), *common, "--out", str(out)) == 0
    assert out.exists() and not (tmp_path / "a.run").exists()
    assert not (tmp_path / "a.pt.lock").exists() and not (tmp_path / "a.run.lock").exists()
    assert run("prune", str(dense), *common, "--out", str(tmp_path / "b.pt"), "--keep-run") == 0
    assert (tmp_path / "b.run" / "state.pt").exists()
    mine = tmp_path / "mine"
    assert run("prune", str(dense), *common, "--out", str(tmp_path / "c.pt"), "--run-dir", str(mine)) == 0
    assert (mine / "state.pt").exists()  # a run dir the user named is never removed


def test_a_second_run_on_the_same_output_is_refused(dense, tmp_path, capsys):
    from mobileprune.files import output_lock

    out = tmp_path / "p.pt"
    with output_lock(out):  # as if another process were pruning into p.pt
        assert run("compact", str(dense), "--out", str(out), "--repeats", "1") == 2
        _one_line_error(capsys, "another mobileprune run", "p.pt")
        assert not out.exists()
    assert not (tmp_path / "p.pt.lock").exists()
    with output_lock(out):  # the lock is free again once released
        pass


def test_interrupt_exits_130_in_one_line(dense, monkeypatch, capsys):
    import mobileprune.cli.train as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_report", interrupted)
    assert run("report", str(dense)) == 130
    _one_line_error(capsys, "interrupted")


def test_unwritable_output_is_a_one_line_error(dense, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run("report", str(dense), "--out", str(blocker / "sub" / "r.md")) == 2
    _one_line_error(capsys, "file")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("model, shape", [
    ("lenet5", (1, 28, 28)), ("lenet300100", (1, 28, 28)), ("harcnn", (9, 128)),
    ("fernet", (1, 48, 48)), ("resnet20", (3, 32, 32)), ("resnet56", (3, 32, 32)),
    ("vggcifar", (3, 32, 32)),
])
def test_train_every_built_in_model_on_its_data(tmp_path, monkeypatch, model, shape):
    """Issue 20: `train --model harcnn --dataset ucihar` crashed (the model needs settings
    the CLI could not pass); the settings now follow the data set."""
    from torch.utils.data import TensorDataset

    from mobileprune.checkpoint import restore_model
    from mobileprune.data import registry

    g = torch.Generator().manual_seed(0)
    split = lambda n: TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 5, (n,), generator=g))
    bundle = registry.DataBundle(split(8), split(4), num_classes=5, input_shape=shape)
    monkeypatch.setitem(registry.DATASETS, "tiny", lambda data_dir: bundle)
    out = tmp_path / "m.pt"
    extra = ["--model-arg", "width=8", "--model-arg", "depth=2"] if model == "harcnn" else []
    assert run("train", "--model", model, "--dataset", "tiny", "--epochs", "1", "--batch-size", "4",
               "--out", str(out), "--quiet", *extra) == 0
    ck = load_checkpoint(out)
    m = restore_model(ck)  # rebuilt from the recorded settings
    with torch.no_grad():
        assert m.eval()(torch.zeros(2, *shape)).shape == (2, 5)
    if model == "harcnn":
        assert ck["model"]["kwargs"] == {"in_channels": 9, "num_classes": 5, "window": 128,
                                         "width": 8, "depth": 2}


def test_help_lists_every_model_and_data_set(capsys):
    from mobileprune.data.registry import DATASETS
    from mobileprune.models import MODELS

    assert run("train", "--help") == 0
    text = "".join(capsys.readouterr().out.split())  # help wraps lines, also at hyphens
    for name in MODELS:
        assert f"{name}(" in text
    assert "harcnn(in_channels,num_classes,window,width=128" in text
    for name in DATASETS:
        assert name in text
    assert "default:10" in text  # epochs


def test_a_users_own_model_from_a_state_dict(tmp_path, monkeypatch, capsys):
    """prune / compact / export / report take `--model package.module:factory` and a
    plain state dict."""
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(32, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    net = importlib.import_module("mymodels").tiny()
    with torch.no_grad():
        net[1].weight[::2] = 0  # every other hidden unit is dead
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    assert run("report", str(tmp_path / "sd.pt"), "--model", "mymodels:tiny", "--format", "json") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["nonzero"] == 16 * 784 + 10 * 32  # the weights of both Linear layers
    out = tmp_path / "small.pt"
    assert run("compact", str(tmp_path / "sd.pt"), "--model", "mymodels:tiny", "--input-shape", "1,28,28",
               "--out", str(out), "--repeats", "2") == 0
    assert load_checkpoint(out)["architecture"]["1.weight"] == [16, 784]
    mps = tmp_path / "m.mps"
    assert run("export", str(tmp_path / "sd.pt"), "--model", "mymodels:tiny", "--format", "sparse",
               "--input-shape", "1,28,28", "--out", str(mps)) == 0
    from mobileprune import runtime
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = net(x).numpy()
    assert abs(runtime.load(mps)(x.numpy()) - ref).max() <= 1e-4 * abs(ref).max()


def test_export_into_a_missing_directory_creates_it(tmp_path):
    """Issue 20: a sparse export into a missing directory ended in a traceback."""
    torch.manual_seed(0)
    src = tmp_path / "m.pt"
    net = LeNet300100().eval()
    save_checkpoint(src, net, kind="dense", model_name="lenet300100",
                    extra={"input_shape": [1, 28, 28]})
    out = tmp_path / "new" / "deeper" / "m.mps"
    assert run("export", str(src), "--format", "sparse", "--out", str(out)) == 0
    from mobileprune import runtime
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = net(x).numpy()
    assert abs(runtime.load(out)(x.numpy()) - ref).max() <= 1e-4 * abs(ref).max()


def _tiny_data(monkeypatch, shape):
    from torch.utils.data import TensorDataset

    from mobileprune.data import registry

    g = torch.Generator().manual_seed(0)
    split = lambda n: TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g))
    monkeypatch.setitem(registry.DATASETS, "tiny", lambda data_dir: registry.DataBundle(
        split(8), split(4), num_classes=3, input_shape=shape))


def test_train_shift_augments_every_batch(tmp_path, monkeypatch):
    """`train --shift 2`: every training batch goes through random_shift(x, 2) (the same
    translation the pruning configs' `shift` key applies), and the checkpoint records it."""
    from mobileprune.pipeline import train as T

    _tiny_data(monkeypatch, (1, 28, 28))
    seen = []
    real_shift = T.random_shift
    monkeypatch.setattr(T, "random_shift", lambda x, s, *a, **k: (seen.append((tuple(x.shape), s)),
                                                                   real_shift(x, s, *a, **k))[1])
    out = tmp_path / "m.pt"
    assert run("train", "--model", "lenet5", "--dataset", "tiny", "--epochs", "2", "--batch-size", "4",
               "--shift", "2", "--out", str(out), "--quiet") == 0
    assert seen == [((4, 1, 28, 28), 2)] * 4  # 2 epochs x 2 batches, each shifted by up to 2
    assert load_checkpoint(out)["metrics"]["shift"] == 2


@pytest.mark.parametrize("model, shape, flag, expected", [
    ("lenet5", (1, 28, 28), [], 2),                   # images: 2 pixels by default
    ("lenet5", (1, 28, 28), ["--shift", "0"], 0),     # turned off on request
    ("lenet300100", (12,), [], 0),                     # features: nothing to translate
])
def test_train_default_shift_follows_the_data(tmp_path, monkeypatch, model, shape, flag, expected):
    """Without --shift, images (C, H, W) of at least 16x16 train with a 2-pixel shift and
    other data with none; the checkpoint records the shift used."""
    from mobileprune.pipeline import train as T

    _tiny_data(monkeypatch, shape)
    seen = []
    real_shift = T.random_shift
    monkeypatch.setattr(T, "random_shift", lambda x, s, *a, **k: (seen.append(s), real_shift(x, s, *a, **k))[1])
    out = tmp_path / "m.pt"
    assert run("train", "--model", model, "--dataset", "tiny", "--epochs", "1", "--batch-size", "4",
               *flag, "--out", str(out), "--quiet") == 0
    assert seen == ([expected] * 2 if expected else [])
    assert load_checkpoint(out)["metrics"]["shift"] == expected
    assert [T.default_shift(s) for s in ((3, 32, 32), (1, 8, 8), (9, 128), (12,))] == [2, 0, 0, 0]


@pytest.mark.parametrize("shape, flag, words", [
    ((1, 28, 28), "-1", "--shift: must be an integer >= 0"),
    ((12,), "2", "--shift translates images (C, H, W) or 1-D signals (C, L); data set tiny has samples of shape (12,)"),
])
def test_train_bad_shift_is_a_one_line_error(tmp_path, monkeypatch, capsys, shape, flag, words):
    _tiny_data(monkeypatch, shape)
    out = tmp_path / "m.pt"
    assert run("train", "--model", "lenet300100", "--dataset", "tiny", "--epochs", "1", "--shift", flag,
               "--out", str(out), "--quiet") == 2
    assert words in _one_line_error(capsys, "")
    assert not out.exists()
